"""One registry for every retrieval model: ``build_model(name, config, **data)``.

Names:

* ``"t2diff"`` -- :class:`~t2diff_tf.models.t2diff.T2Diff` (:class:`T2DiffConfig`).
* ``"mixed_attention"`` -- T2Diff without diffusion, the paper's "Mixed-attention only" ablation
  (a :class:`T2DiffConfig` whose ``diffusion`` is ignored).
* ``"mean_pool_two_tower"`` -- :class:`~t2diff_tf.models.two_tower.MeanPoolTwoTower`
  (:class:`TwoTowerConfig`), the YouTube-DNN style baseline.
* ``"sasrec"``, ``"gru4rec"`` -- the sequence baselines of
  :mod:`t2diff_tf.models.sequential` (:class:`SequentialConfig`).
* ``"caser"`` -- :class:`~t2diff_tf.models.caser.Caser` (:class:`CaserConfig`), convolutions over
  the last behaviours.
* ``"bert4rec"`` -- :class:`~t2diff_tf.models.bert4rec.BERT4Rec` (:class:`BERT4RecConfig`),
  a bidirectional Transformer trained as a cloze task.
* ``"dat_plus"`` -- :class:`~t2diff_tf.models.dat.DAT` (:class:`DATConfig`), the dual augmented
  two-tower with the adaptive-mimic mechanism and category alignment.
* ``"diffurec"`` -- :class:`~t2diff_tf.models.diffurec.DiffuRec` (:class:`DiffuRecConfig`),
  diffusion that generates the target's embedding.
* ``"fit"`` -- :class:`~t2diff_tf.models.fit.FIT` (:class:`FITConfig`), meta queries and a
  lightweight similarity scorer (late interaction; ``score_corpus`` ranks exactly).
* ``"hstu"`` -- :class:`~t2diff_tf.models.hstu.HSTU` (:class:`HSTUConfig`), pointwise attention
  with a relative position bias, cosine scores.
* ``"mamba4rec"`` -- :class:`~t2diff_tf.models.mamba4rec.Mamba4Rec` (:class:`Mamba4RecConfig`),
  selective state-space layers.
* ``"contrast_vae"`` -- :class:`~t2diff_tf.models.contrast_vae.ContrastVAE`
  (:class:`ContrastVAEConfig`), a Transformer VAE trained with the contrastive ELBO.
* ``"stosa"`` -- :class:`~t2diff_tf.models.stosa.STOSA` (:class:`STOSAConfig`), stochastic
  (Gaussian) self-attention scored by the Wasserstein distance, written as an inner product.
* ``"wo_dp"`` -- T2Diff diffusing the behaviours themselves, no drift preparation (the paper's
  W/O-DP ablation; a :class:`T2DiffConfig` whose ``diffusion.drift`` is forced off).

``data`` are the keyword arguments every model takes: ``num_items`` (required),
``item_features``, ``item_frequencies``, ``example_spec``.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Dict, Mapping, Optional, Tuple, Type, Union

from t2diff_tf.layers.diffusion import DiffusionConfig
from t2diff_tf.models.base import RetrievalModel
from t2diff_tf.models.bert4rec import BERT4Rec, BERT4RecConfig
from t2diff_tf.models.caser import Caser, CaserConfig
from t2diff_tf.models.contrast_vae import ContrastVAE, ContrastVAEConfig
from t2diff_tf.models.dat import DAT, DATConfig
from t2diff_tf.models.diffurec import DiffuRec, DiffuRecConfig
from t2diff_tf.models.fit import FIT, FITConfig
from t2diff_tf.models.hstu import HSTU, HSTUConfig
from t2diff_tf.models.mamba4rec import Mamba4Rec, Mamba4RecConfig
from t2diff_tf.models.sequential import GRU4Rec, SASRec, SequentialConfig
from t2diff_tf.models.stosa import STOSA, STOSAConfig
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


def _without_drift_preparation(config: T2DiffConfig, **data) -> T2Diff:
    diffusion = dataclasses.replace(config.diffusion or DiffusionConfig(), drift=False)
    return T2Diff(dataclasses.replace(config, diffusion=diffusion), name="wo_dp", **data)


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
    "dat_plus": RegisteredModel(
        DATConfig, lambda config, **data: DAT(config, **data),
        "DAT+: dual augmented two-tower (adaptive mimic + category alignment), mean-pooled "
        "history"),
    "caser": RegisteredModel(CaserConfig, lambda config, **data: Caser(config, **data),
                             "Caser: horizontal + vertical convolutions over the last behaviours"),
    "bert4rec": RegisteredModel(
        BERT4RecConfig, lambda config, **data: BERT4Rec(config, **data),
        "BERT4Rec: bidirectional Transformer, cloze (masked-item) training"),
    "diffurec": RegisteredModel(
        DiffuRecConfig, lambda config, **data: DiffuRec(config, **data),
        "DiffuRec: diffusion generates the target embedding (Transformer approximator)"),
    "fit": RegisteredModel(
        FITConfig, lambda config, **data: FIT(config, **data),
        "FIT: meta-query interests + lightweight similarity scorer (late interaction)"),
    "hstu": RegisteredModel(
        HSTUConfig, lambda config, **data: HSTU(config, **data),
        "HSTU: pointwise (SiLU) causal attention, next item at every position, cosine scores"),
    "mamba4rec": RegisteredModel(
        Mamba4RecConfig, lambda config, **data: Mamba4Rec(config, **data),
        "Mamba4Rec: selective state-space (Mamba) layers, next item at every position"),
    "contrast_vae": RegisteredModel(
        ContrastVAEConfig, lambda config, **data: ContrastVAE(config, **data),
        "ContrastVAE: causal Transformer VAE, contrastive ELBO over two views"),
    "stosa": RegisteredModel(
        STOSAConfig, lambda config, **data: STOSA(config, **data),
        "STOSA: stochastic self-attention, Wasserstein scores, next item at every position"),
    "wo_dp": RegisteredModel(T2DiffConfig, _without_drift_preparation,
                             "T2Diff without drift preparation (W/O DP)"),
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
