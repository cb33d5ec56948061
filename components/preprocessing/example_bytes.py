"""Serialized ``tf.train.Example`` s of int64 features, many at once, without a proto each.

The preprocessing writes about one example per training interaction. Building each as a
``tf.train.Example`` (``features.int64_example``) and serializing it cost about 30 microseconds
an example, the largest share of the preprocessing's CPU after the reader. :func:`int64_examples`
writes the protobuf wire format directly: the varints of every value of every example are
computed with numpy for all the examples of a user at once, and each example is then one
``bytes.join`` of fixed pieces and its slices. The bytes are equal to
``int64_example(...).SerializeToString(deterministic=True)`` (features in the order that
serialization writes map keys; a test
compares them on random values, negative and 64-bit ones included), so outputs do not change.

Wire format used (``tensorflow/core/example/example.proto``, ``feature.proto``)::

    Example   { Features features = 1; }
    Features  { map<string, Feature> feature = 1; }   # entries: key = 1, value = 2
    Feature   { oneof { BytesList bytes_list = 1; FloatList float_list = 2;
                        Int64List int64_list = 3; } }
    Int64List { repeated int64 value = 1 [packed = true]; }
    BytesList { repeated bytes value = 1; }
"""

from __future__ import annotations

import functools
from typing import List, Mapping, Tuple

import numpy as np

from t2diff_tf import features as F

_LENGTH_DELIMITED_1 = b"\x0a"  # field 1, wire type 2
_LENGTH_DELIMITED_2 = b"\x12"  # field 2, wire type 2
_LENGTH_DELIMITED_3 = b"\x1a"  # field 3, wire type 2

#: Varints of 0..16383 (the lengths of nearly every piece), looked up instead of computed.
_SMALL_VARINTS = [bytes([n]) if n < 128 else bytes([(n & 0x7F) | 0x80, n >> 7])
                  for n in range(1 << 14)]


def varint(n: int) -> bytes:
    """The base-128 varint of ``n >= 0`` (a length or a non-negative value)."""
    if n < 1 << 14:
        return _SMALL_VARINTS[n]
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _delimited(tag: bytes, payload: bytes) -> bytes:
    return tag + varint(len(payload)) + payload


#: ``_THRESHOLDS[j]`` = 2**(7 (j + 1)): a value at or above it needs more than ``j + 1`` bytes.
_THRESHOLDS = np.array([1 << s for s in range(7, 64, 7)], np.uint64)


def varint_bytes(values: np.ndarray) -> Tuple[bytes, np.ndarray]:
    """The int64 varints of every entry of ``values`` (any shape, any integer dtype; a negative
    value takes 10 bytes, as protobuf writes an int64), concatenated in row-major order.

    Returns ``(data, bounds)``: entry ``i`` (flat index) is ``data[bounds[i]:bounds[i + 1]]``
    (``bounds``: ``[values.size + 1]`` int64).

    Work is grouped by varint length, so it is proportional to the bytes written: a few padded
    negative values do not make every value 10 bytes wide in the intermediate arrays.
    """
    v = np.ascontiguousarray(values, dtype=np.int64).view(np.uint64).ravel()
    nbytes = np.searchsorted(_THRESHOLDS, v, side="right") + 1
    bounds = np.zeros(v.size + 1, np.int64)
    np.cumsum(nbytes, out=bounds[1:])
    out = np.empty(int(bounds[-1]), np.uint8)
    for length in np.flatnonzero(np.bincount(nbytes)).tolist():
        at = np.flatnonzero(nbytes == length)
        chosen = v[at]
        shifts = np.arange(0, 7 * length, 7, dtype=np.uint64)
        groups = ((chosen[:, None] >> shifts) & np.uint64(0x7F)).astype(np.uint8)
        groups[:, :-1] |= 0x80  # the continuation bit on all but the last byte
        out[bounds[at][:, None] + np.arange(length)] = groups
    return out.tobytes(), bounds


def _entry_prefix(name: str) -> bytes:
    """A map entry's bytes up to its value's length: ``0a len key 12``."""
    return _delimited(_LENGTH_DELIMITED_1, name.encode()) + _LENGTH_DELIMITED_2


def _map_key_order(name: str) -> List[int]:
    """The order of map keys in protobuf's deterministic serialization (upb): by bytes, and a
    key before any key it is a prefix of ("history_time_lag" before "history")."""
    return list(name.encode()) + [256]


def int64_examples(features: Mapping[str, np.ndarray], user_id: str) -> List[bytes]:
    """Serialized examples, one per row: ``features`` maps a name to ``[rows]`` (one int64
    each) or ``[rows, length]`` (an int64 list each); every example also holds ``user_id`` as
    the ``features.USER_ID`` bytes feature.

    Equal, byte for byte, to ``features.int64_example({name: row's value}, user_id)
    .SerializeToString(deterministic=True)`` for every row.
    """
    if F.USER_ID in features:
        raise ValueError(f"{F.USER_ID!r} is the bytes feature; pass it as user_id")
    names = sorted(list(features) + [F.USER_ID], key=_map_key_order)
    columns = []
    for name in names:
        if name != F.USER_ID:
            values = np.asarray(features[name])
            columns.append(values[:, None] if values.ndim == 1 else values)
    rows = columns[0].shape[0] if columns else 0
    for name, values in zip([n for n in names if n != F.USER_ID], columns):
        if values.ndim != 2 or values.shape[0] != rows:
            raise ValueError(f"feature {name!r} has shape {values.shape}; expected [{rows}] "
                             f"or [{rows}, length]")
    if rows == 0:
        return []
    # Every value of every feature of every row in one pass: row r's varints of feature k are
    # data[starts[r, k]:starts[r, k + 1]].
    data, bounds = varint_bytes(np.concatenate(columns, axis=1))
    width = sum(c.shape[1] for c in columns)
    first_column = np.cumsum([0] + [c.shape[1] for c in columns])
    starts = bounds[np.arange(rows)[:, None] * width + first_column].tolist()

    bytes_list = _delimited(_LENGTH_DELIMITED_1, _delimited(_LENGTH_DELIMITED_1,
                                                              str(user_id).encode()))
    user_entry = _delimited(_LENGTH_DELIMITED_1,
                            _entry_prefix(F.USER_ID) + varint(len(bytes_list)) + bytes_list)
    prefixes = [_entry_prefix(name) for name in names if name != F.USER_ID]
    user_at = names.index(F.USER_ID)
    examples = []
    for row in starts:
        body = []
        for k, prefix in enumerate(prefixes):
            if k == user_at:
                body.append(user_entry)
            a, b = row[k], row[k + 1]
            body.append(_feature_header(prefix, b - a))
            body.append(data[a:b])
        if user_at == len(prefixes):
            body.append(user_entry)
        size = sum(map(len, body))
        body.insert(0, _LENGTH_DELIMITED_1 + varint(size))
        examples.append(b"".join(body))
    return examples


@functools.lru_cache(maxsize=1 << 16)
def _feature_header(entry_prefix: bytes, packed_length: int) -> bytes:
    """A map entry's bytes before its Int64List's packed varints (``packed_length`` bytes;
    they depend on nothing else, so they are cached):
    ``0a len [0a len key 12 len [1a len [0a len]]]``; an empty list has no packed field, but
    the Feature still holds the (empty) Int64List."""
    int64_list_header = (_LENGTH_DELIMITED_1 + varint(packed_length)) if packed_length else b""
    list_length = len(int64_list_header) + packed_length
    feature_header = _LENGTH_DELIMITED_3 + varint(list_length) + int64_list_header
    feature_length = len(feature_header) - len(int64_list_header) + list_length
    entry_length = len(entry_prefix) + len(varint(feature_length)) + feature_length
    return (_LENGTH_DELIMITED_1 + varint(entry_length) + entry_prefix + varint(feature_length)
            + feature_header)
