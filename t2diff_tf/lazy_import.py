"""Modules imported on their first use.

The data contract (:mod:`t2diff_tf.features`, :mod:`t2diff_tf.sequence_windows`) is imported by
the Beam preprocessing, which needs only its names, dataclasses and ``time_lag_bucket``:
importing TensorFlow there cost about 6 s in the command and again in every Beam worker, an
eighth of a 6.5M-row preprocessing (BENCHMARKS.md). Those modules hold TensorFlow as a
:class:`LazyModule`; everything that computes with TensorFlow imports it as usual.
"""

from __future__ import annotations

import importlib
import types


class LazyModule(types.ModuleType):
    """Stands for the module ``name`` and imports it on the first attribute access (as
    TensorFlow's own ``lazy_loader`` does); afterwards its attributes are this object's."""

    def _load(self) -> types.ModuleType:
        module = importlib.import_module(self.__name__)
        self.__dict__.update(module.__dict__)
        return module

    def __getattr__(self, name: str):
        return getattr(self._load(), name)

    def __dir__(self):
        return dir(self._load())


tensorflow = LazyModule("tensorflow")
