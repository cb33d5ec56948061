"""HSTU as a retrieval model: the next item at every position, cosine scores.

Zhai et al., "Actions Speak Louder than Words: Trillion-Parameter Sequential Transducers for
Generative Recommendations", ICML 2024. The published ML-1M figures (HSTU-large: Recall@10
0.3294, NDCG@10 0.1893; a TensorFlow reimplementation with a full softmax: 0.3419 / 0.1944) are
the highest we know on ML-1M leave-one-out, seen items excluded.

What is implemented (defaults: the reference's ML-1M "large" configuration):

* Inputs: the shared item vectors times ``sqrt(d)`` plus learned positions counted from the
  oldest behaviour, then dropout (the reference's positional input preprocessor).
* Encoder: :class:`~t2diff_tf.layers.hstu.HSTUEncoder` -- ``num_blocks`` HSTU blocks (SiLU
  pointwise attention, a relative position bias, ``u``-gating).
* Scores: the L2-normalised last state against the L2-normalised item vectors of the same
  table (tied embeddings), the training logits divided by ``temperature`` (0.05).
* Training: like SASRec (:class:`~t2diff_tf.models.sequential.NextItemModel`), the next item at
  every valid position; the loss is the full softmax by default (the TensorFlow
  reimplementation's), sampled softmax (the reference's 128 negatives) or gBCE.

Not implemented: the bias for the bucketed time gap between behaviours (our window examples
carry no per-behaviour timestamps); the reference's jagged kernels (dense, masked maths here).
"""

from __future__ import annotations

import dataclasses

from t2diff_tf.layers.hstu import HSTUEncoder
from t2diff_tf.layers.next_item_loss import NextItemLossConfig
from t2diff_tf.models.config import DictConfig
from t2diff_tf.models.sequential import NextItemModel, check_next_item_settings


@dataclasses.dataclass(frozen=True)
class HSTUConfig(DictConfig):
    """Hyperparameters of :class:`HSTU` (defaults: the reference's ML-1M HSTU-large).

    Attributes:
      embedding_dim: ``d`` (50).
      num_blocks: HSTU blocks (8).
      num_heads: attention heads (2).
      linear_dim: per-head width of ``u`` and ``v`` (25).
      attention_dim: per-head width of ``q`` and ``k`` (25).
      dropout: on the inputs and in each block (0.2).
      all_positions: train on every position's next item (else only on the window's target).
      loss: the per-position loss (full softmax, sampled softmax or gBCE).
      temperature: training logits (cosines) are divided by it; rankings do not depend on it.
      embedding_stddev: the item embeddings start from ``N(0, embedding_stddev)``.
      tied_item_embeddings: score against the input item table itself (HSTU's).
      scale_embeddings: multiply the input item vectors by ``sqrt(d)`` (HSTU's).
      normalize: cosine scores, user and item vectors L2-normalised (HSTU's).
    """

    embedding_dim: int = 50
    num_blocks: int = 8
    num_heads: int = 2
    linear_dim: int = 25
    attention_dim: int = 25
    dropout: float = 0.2
    all_positions: bool = True
    loss: NextItemLossConfig = NextItemLossConfig()
    temperature: float = 0.05
    embedding_stddev: float = 0.02
    tied_item_embeddings: bool = True
    scale_embeddings: bool = True
    normalize: bool = True

    def __post_init__(self):
        check_next_item_settings(self)
        for name in ("num_blocks", "num_heads", "linear_dim", "attention_dim"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")


class HSTU(NextItemModel):
    """HSTU (Zhai et al., 2024) over the behaviour sequence; see the module docstring."""

    def __init__(self, config: HSTUConfig = HSTUConfig(), *, name: str = "hstu", **data):
        super().__init__(config, name=name, **data)
        self.encoder = HSTUEncoder(self.example_spec.positions, config.num_blocks,
                                   config.num_heads, config.linear_dim, config.attention_dim,
                                   config.dropout, name="encoder")

    def encode(self, vectors, mask, training):
        return self.encoder(vectors, mask=mask, training=training)
