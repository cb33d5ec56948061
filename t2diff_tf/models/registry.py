"""One registry for every retrieval model: ``build_model(name, config, **data)``.

Names:

* ``"t2diff"`` -- :class:`~t2diff_tf.models.t2diff.T2Diff` (:class:`T2DiffConfig`).
* ``"mixed_attention"`` -- T2Diff without diffusion, the paper's "Mixed-attention only" ablation
  (a :class:`T2DiffConfig` whose ``diffusion`` is ignored).
* ``"mean_pool_two_tower"`` -- :class:`~t2diff_tf.models.two_tower.MeanPoolTwoTower`
  (:class:`TwoTowerConfig`), the YouTube-DNN style baseline.
* ``"sasrec"``, ``"gru4rec"`` -- the sequence baselines of
  :mod:`t2diff_tf.models.sequential` (:class:`SequentialConfig`).

``data`` are the keyword arguments every model takes: ``num_items`` (required),
``item_features``, ``item_frequencies``, ``example_spec``.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Dict, Mapping, Optional, Tuple, Type, Union

from t2diff_tf.models.base import RetrievalModel
from t2diff_tf.models.sequential import GRU4Rec, SASRec, SequentialConfig
from t2diff_tf.models.t2diff import T2Diff, T2DiffConfig
from t2diff_tf.models.two_tower import MeanPoolTwoTower, TwoTowerConfig


@dataclasses.dataclass(frozen=True)
class RegisteredModel:
    """A registry entry: how to build the model and which configuration class it takes."""

    config_class: Type
    build: Callable[..., RetrievalModel]
    description: str


def _mixed_attention(config: T2DiffConfig, **data) -> T2Diff:
    return T2Diff(dataclasses.replace(config, diffusion=None), name="mixed_attention", **data)


MODELS: Dict[str, RegisteredModel] = {
    "t2diff": RegisteredModel(T2DiffConfig, lambda config, **data: T2Diff(config, **data),
                              "T2Diff: drift diffusion + mixed attention"),
    "mixed_attention": RegisteredModel(T2DiffConfig, _mixed_attention,
                                       "T2Diff without diffusion (Mixed-attention only)"),
    "mean_pool_two_tower": RegisteredModel(
        TwoTowerConfig, lambda config, **data: MeanPoolTwoTower(config, **data),
        "mean-pooled two-tower baseline (YouTube-DNN style)"),
    "sasrec": RegisteredModel(SequentialConfig, lambda config, **data: SASRec(config, **data),
                              "SASRec: causal self-attention, next item at every position"),
    "gru4rec": RegisteredModel(SequentialConfig, lambda config, **data: GRU4Rec(config, **data),
                               "GRU4Rec: recurrent encoder, next item at every position"),
}


def available_models() -> Tuple[str, ...]:
    """The registered names, sorted."""
    return tuple(sorted(MODELS))


def build_model(name: str, config: Optional[Union[Any, Mapping[str, Any]]] = None,
                **data) -> RetrievalModel:
    """Builds the registered model ``name``.

    Args:
      name: a registered name (see :func:`available_models`).
      config: the model's configuration dataclass, a dict of its fields (e.g. from JSON), or
        ``None`` for the defaults.
      **data: ``num_items`` and optionally ``item_features``, ``item_frequencies``,
        ``example_spec``.

    Raises:
      ValueError: unknown name, or a configuration of the wrong class.
    """
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; known models: {', '.join(available_models())}")
    entry = MODELS[name]
    if config is None:
        config = entry.config_class()
    elif isinstance(config, Mapping):
        config = entry.config_class(**config)
    elif not isinstance(config, entry.config_class):
        raise ValueError(f"model {name!r} takes a {entry.config_class.__name__}, "
                         f"got {type(config).__name__}")
    if "num_items" not in data:
        raise ValueError("build_model needs num_items=...")
    return entry.build(config, **data)
