"""Serving exports: user-tower and top-K SavedModels, ScaNN indices, TF Serving files.

Entry point: :func:`t2diff_tf.serving.export.export_for_serving`. Modules:

  ``signatures``           the SavedModel signatures (named query inputs, serialized examples).
  ``brute_force``          exact top-K in plain TF ops (stock TF Serving).
  ``scann_index``          :class:`ScannConfig`, the TFRS ScaNN layer and the pybind searcher.
  ``warmup``               ``assets.extra/tf_serving_warmup_requests``.
  ``model_server_config``  ``models.config``.
  ``manifest``             ``manifest.json``.
  ``rest``                 TF Serving REST requests -> signature inputs (tests, notebooks).
  ``atomic``               all-or-nothing directory writes.
  ``export``               :func:`export_for_serving`.
  ``batch_candidates``     every user's top-K from a pushed bundle, to Parquet or TFRecord.

Submodules are imported lazily so that ``import t2diff_tf.serving.rest`` stays light.
"""

import importlib
from typing import Any

_EXPORTS = {
    "export_for_serving": "export", "ExportResult": "export", "ServingNames": "export",
    "ScannConfig": "scann_index", "ResolvedScannConfig": "scann_index",
    "load_pybind_index": "scann_index", "BruteForceIndex": "brute_force",
    "ServingManifest": "manifest", "read_manifest": "manifest",
    "predict": "rest", "request_to_tensors": "rest", "RequestError": "rest",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
