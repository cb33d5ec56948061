"""TF Serving's REST predict format, for testing SavedModels without a model server.

No TF Serving binary installs on this stack, so tests (and notebooks) check a SavedModel through
the same JSON a client would POST to ``/v1/models/<name>:predict``:

* **row format** -- ``{"signature_name": ..., "instances": [row, ...]}``: each row is an object
  ``{input name: value without the batch dimension}``; when the signature has a single input a
  row may be the bare value.
* **columnar format** -- ``{"signature_name": ..., "inputs": {input name: batched value}}``; with a
  single input, ``"inputs"`` may be the bare batched value.
* binary strings (e.g. serialized ``tf.Example``) are written ``{"b64": "<base64>"}``.

The response mirrors the server's: ``{"predictions": [...]}`` for rows (each an object of the
named outputs, or the bare value when there is one output) and ``{"outputs": ...}`` for columns.
"""

from __future__ import annotations

import base64
import json
from typing import Any, Dict, Mapping, Tuple, Union

import numpy as np
import tensorflow as tf

DEFAULT_SIGNATURE = "serving_default"

Request = Union[str, bytes, Mapping[str, Any]]


class RequestError(ValueError):
    """A request the server would reject (HTTP 400)."""


def _decode_b64(value: Any) -> Any:
    if isinstance(value, Mapping):
        if set(value) == {"b64"}:
            return base64.b64decode(value["b64"])
        raise RequestError(f"unexpected object in a tensor value: {sorted(value)}")
    if isinstance(value, list):
        return [_decode_b64(v) for v in value]
    return value


def _is_b64(value: Any) -> bool:
    return isinstance(value, Mapping) and set(value) == {"b64"}


def _load(request: Request) -> Mapping[str, Any]:
    if isinstance(request, (str, bytes)):
        try:
            request = json.loads(request)
        except json.JSONDecodeError as error:
            raise RequestError(f"request is not JSON: {error}") from error
    if not isinstance(request, Mapping):
        raise RequestError("a request must be a JSON object")
    return request


def input_specs(signature: Any) -> Dict[str, tf.TensorSpec]:
    """``{input name: TensorSpec}`` of a signature (a concrete function).

    Loaded SavedModel signatures take keyword inputs; a concrete function traced from a
    ``tf.function`` with an ``input_signature`` takes positional ones, named by their specs.
    """
    args, kwargs = signature.structured_input_signature
    specs = dict(kwargs)
    for spec in tf.nest.flatten(args):
        if not spec.name:
            raise ValueError("positional signature inputs need named TensorSpecs")
        specs[spec.name] = spec
    return specs


def _to_array(name: str, value: Any, spec: tf.TensorSpec) -> np.ndarray:
    value = _decode_b64(value)
    if spec.dtype == tf.string:
        array = np.asarray(value, dtype=object)
        array = np.vectorize(lambda v: v if isinstance(v, bytes) else str(v).encode(),
                             otypes=[object])(array) if array.size else array
    else:
        try:
            raw = np.asarray(value)
        except (ValueError, TypeError) as error:  # ragged rows, odd nesting
            raise RequestError(f"input {name!r} is not a rectangular array: {error}") from error
        if raw.dtype == object or raw.dtype.kind in "SU":
            raise RequestError(f"input {name!r} must be numeric ({spec.dtype.name})")
        if spec.dtype.is_integer and raw.dtype.kind == "f":
            if not np.all(np.mod(raw, 1) == 0):
                raise RequestError(f"input {name!r} must hold integers ({spec.dtype.name})")
        array = raw.astype(spec.dtype.as_numpy_dtype)
    if not spec.shape.is_compatible_with(array.shape):
        raise RequestError(f"input {name!r} has shape {list(array.shape)}, the signature takes "
                           f"{spec.shape}")
    return array


def request_columns(request: Request, specs: Mapping[str, tf.TensorSpec]
                    ) -> Tuple[Dict[str, Any], bool]:
    """The request's values per input name (still JSON values) and whether it used rows."""
    request = _load(request)
    has_rows, has_columns = "instances" in request, "inputs" in request
    if has_rows == has_columns:
        raise RequestError('a request needs exactly one of "instances" and "inputs"')
    names = sorted(specs)
    if has_rows:
        rows = request["instances"]
        if not isinstance(rows, list) or not rows:
            raise RequestError('"instances" must be a non-empty list')
        named = [isinstance(r, Mapping) and not _is_b64(r) for r in rows]
        if all(named):
            keys = {frozenset(r) for r in rows}
            if len(keys) != 1:
                raise RequestError("every instance must name the same inputs")
            return {name: [r[name] for r in rows] for name in next(iter(keys))}, True
        if any(named):
            raise RequestError("mixed named and bare instances")
        if len(names) != 1:
            raise RequestError(f"bare instances need a single-input signature; this one takes "
                               f"{names}")
        return {names[0]: list(rows)}, True
    columns = request["inputs"]
    if isinstance(columns, Mapping) and not _is_b64(columns):
        return dict(columns), False
    if len(names) != 1:
        raise RequestError(f'a bare "inputs" value needs a single-input signature; this one '
                           f"takes {names}")
    return {names[0]: columns}, False


def request_to_tensors(request: Request, signature: Any) -> Dict[str, tf.Tensor]:
    """The keyword tensors to call ``signature`` with for a REST ``request``.

    Args:
      request: the JSON body (text or parsed), row or columnar format.
      signature: a loaded signature, e.g. ``tf.saved_model.load(path).signatures[name]``.

    Raises:
      RequestError: missing, unknown or mistyped inputs, or inconsistent batch sizes.
    """
    specs = input_specs(signature)
    columns, _ = request_columns(request, specs)
    missing, unknown = set(specs) - set(columns), set(columns) - set(specs)
    if missing or unknown:
        raise RequestError(f"inputs do not match the signature: missing {sorted(missing)}, "
                           f"unknown {sorted(unknown)}")
    arrays = {name: _to_array(name, columns[name], specs[name]) for name in specs}
    batches = {a.shape[0] for a in arrays.values() if a.ndim}
    if len(batches) > 1:
        raise RequestError(f"inputs disagree on the batch size: {sorted(batches)}")
    return {name: tf.constant(array, dtype=specs[name].dtype) for name, array in arrays.items()}


def _json_value(tensor: tf.Tensor) -> Any:
    array = tensor.numpy() if hasattr(tensor, "numpy") else np.asarray(tensor)
    if array.dtype == object or array.dtype.kind == "S":
        return np.vectorize(lambda v: {"b64": base64.b64encode(v).decode()},
                            otypes=[object])(array).tolist()
    return array.tolist()


def format_response(outputs: Mapping[str, tf.Tensor], row_format: bool) -> Dict[str, Any]:
    """The server's JSON response for a signature's ``outputs``."""
    values = {name: _json_value(tensor) for name, tensor in outputs.items()}
    single = len(values) == 1
    if not row_format:
        return {"outputs": next(iter(values.values())) if single else values}
    batch = len(next(iter(values.values())))
    if single:
        return {"predictions": next(iter(values.values()))}
    return {"predictions": [{name: value[row] for name, value in values.items()}
                            for row in range(batch)]}


def predict(loaded: Any, request: Request) -> Dict[str, Any]:
    """Answers a REST predict ``request`` with a loaded SavedModel, as TF Serving would.

    Args:
      loaded: ``tf.saved_model.load(version_dir)``.
      request: the JSON body; ``signature_name`` defaults to ``serving_default``.
    """
    body = _load(request)
    name = body.get("signature_name", DEFAULT_SIGNATURE)
    if name not in loaded.signatures:
        raise RequestError(f"unknown signature {name!r}; the model has "
                           f"{sorted(loaded.signatures)}")
    signature = loaded.signatures[name]
    _, row_format = request_columns(body, input_specs(signature))
    return format_response(signature(**request_to_tensors(body, signature)), row_format)
