"""Mamba4Rec: sequential recommendation with selective state space models.

Liu, Lin, Wang, Liu & Caverlee, "Mamba4Rec: Towards Efficient Sequential Recommendation with
Selective State Space Models", 2024 (arXiv:2403.03900), built on Mamba (Gu & Dao, 2023).

What is implemented (paper Section 3 and the authors' code):

* Embedding layer: the behaviours' item vectors (the shared
  :class:`~t2diff_tf.layers.items.ItemRepresentation`), then dropout and LayerNorm; no positional
  embedding (the recurrence carries the order).
* Mamba layers (:class:`~t2diff_tf.layers.mamba.MambaEncoder`): each a Mamba block
  (:class:`~t2diff_tf.layers.mamba.MambaBlock`: in-projection to ``2 * expand * d``, causal
  depthwise conv1d (kernel ``conv_kernel``) + SiLU on one branch, the selective SSM with
  input-dependent ``Delta`` (softplus of a rank-``dt_rank`` projection), ``B``, ``C``,
  diagonal ``A = -exp(A_log)`` ``[expand * d, state_dim]`` and the skip ``D``, gated by SiLU of
  the other branch, out-projection), dropout, the residual connection (only when stacking more
  than one layer, as in the authors' code) and LayerNorm, then the position-wise feed-forward
  network (``d -> 4d`` GELU ``-> d``, dropout, residual, LayerNorm).
* The user embedding ``e_u`` is the output at the last position (the most recent behaviour;
  histories are left-padded), scored by dot product against the item tower.
* The selective scan is exact, in pure TensorFlow: a ``tf.scan`` over time
  (``scan="sequential"``, default) or a log-depth parallel prefix scan (Hillis-Steele over the
  associative operator of the linear recurrence; ``scan="parallel"``); both give the same
  result. No fused hardware-aware kernel (Mamba's CUDA scan) -- the maths are the same, but the
  states ``[batch, L, expand * d, state_dim]`` are kept for the backward pass.
* Left padding never leaks: padded inputs, ``x`` and ``Delta`` are zeroed there, so the state
  stays exactly 0 until the first valid behaviour (see :mod:`t2diff_tf.layers.mamba`).

Simplified / adapted:

* Training: like SASRec in this library (:class:`~t2diff_tf.models.sequential.NextItemModel`),
  the next item is predicted at *every* valid position with a full softmax over the corpus; the
  authors' RecBole code uses only the last position's next item (cross-entropy over all items).
  ``all_positions=False`` trains on the window's target only.
* Output side: the registry's linear item tower over the shared item representation instead of
  the tied item-embedding table.
* Initialisation: ``A``, ``D``, ``Delta``'s bias, the convolution and the ``Delta``
  projection follow Mamba's reference; the other projections are ``N(0, 0.02)`` as in the
  authors' code (which, re-initialising every ``nn.Linear``, also zeroes ``Delta``'s bias -- we
  keep Mamba's log-uniform ``Delta`` in ``[0.001, 0.1]`` instead).
"""

from __future__ import annotations

import dataclasses
from typing import Optional

import numpy as np
import tensorflow as tf

from t2diff_tf import features as F
from t2diff_tf.layers.mamba import SCAN_METHODS, MambaEncoder
from t2diff_tf.models.config import DictConfig
from t2diff_tf.layers.next_item_loss import NextItemLossConfig
from t2diff_tf.models.sequential import NextItemModel


@dataclasses.dataclass(frozen=True)
class Mamba4RecConfig(DictConfig):
    """Hyperparameters of :class:`Mamba4Rec` (defaults: the authors' ``config.yaml``).

    Attributes:
      embedding_dim: ``d`` (paper: 64).
      num_blocks: Mamba layers (paper: 1).
      state_dim: SSM state size ``N`` per channel (paper: 32).
      conv_kernel: width of the causal depthwise convolution (paper: 4).
      expand: inner width ``expand * d`` of the Mamba block (paper: 2).
      dt_rank: rank of ``Delta``'s projection; ``None`` = ``ceil(d / 16)`` (Mamba's "auto").
      dropout: dropout rate (paper: 0.2 on MovieLens-1M, 0.4 on the Amazon data).
      scan: ``"sequential"`` (``tf.scan`` over time; default, fastest on CPU, least memory) or
        ``"parallel"`` (log-depth prefix scan over materialised ``[batch, L, D, N]`` factors).
      all_positions: train on every position's next item (else only on the window's target).
      loss: the per-position loss (full softmax, sampled softmax or gBCE).
    """

    embedding_dim: int = 64
    num_blocks: int = 1
    state_dim: int = 32
    conv_kernel: int = 4
    expand: int = 2
    dt_rank: Optional[int] = None
    dropout: float = 0.2
    scan: str = "sequential"
    all_positions: bool = True
    loss: NextItemLossConfig = NextItemLossConfig()

    def __post_init__(self):
        if isinstance(self.loss, dict):
            object.__setattr__(self, "loss", NextItemLossConfig(**self.loss))
        for name in ("embedding_dim", "num_blocks", "state_dim", "conv_kernel", "expand"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.dt_rank is not None and self.dt_rank < 1:
            raise ValueError(f"dt_rank must be >= 1 or None, got {self.dt_rank}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        if self.scan not in SCAN_METHODS:
            raise ValueError(f"scan must be one of {SCAN_METHODS}, got {self.scan!r}")


class Mamba4Rec(NextItemModel):
    """Mamba4Rec (see the module docstring).

    Args:
      config: hyperparameters.
      num_items, item_features, item_frequencies, example_spec: see
        :class:`~t2diff_tf.models.base.RetrievalModel`.
    """

    def __init__(self, config: Mamba4RecConfig = Mamba4RecConfig(), *, num_items: int,
                 item_features: Optional[np.ndarray] = None,
                 item_frequencies: Optional[np.ndarray] = None,
                 example_spec: F.ExampleSpec = F.ExampleSpec(), name: str = "mamba4rec"):
        super().__init__(config, num_items=num_items, item_features=item_features,
                         item_frequencies=item_frequencies, example_spec=example_spec,
                         name=name)
        self.encoder = MambaEncoder(config.num_blocks, config.state_dim, config.conv_kernel,
                                    config.expand, config.dt_rank, config.dropout, config.scan,
                                    name="encoder")

    def encode(self, vectors: tf.Tensor, mask: tf.Tensor, training: bool) -> tf.Tensor:
        """``[batch, L, d]`` behaviour vectors (padding zeroed) -> ``[batch, L, d]`` causal
        states, 0 at padded positions."""
        return self.encoder(vectors, mask=mask, training=training)
