"""The loss of a next-item model at every position of a sequence: full, sampled or gBCE.

A sequence model produces one query per valid position; each query's label is the next item.
With ``P`` labelled positions in a batch and ``N`` items, the losses are:

* ``full_softmax``: cross-entropy of the softmax over all ``N`` items. Exact; its ``[P, N]``
  logits are most of the training FLOPs at small ``d``.
* ``sampled_softmax``: the softmax over the label and ``M`` negatives drawn once per batch from
  ``Q`` (the items' target frequencies) and *shared* by every position, so the logits are
  ``[P, 1 + M]``. Every logit ``s_i`` is corrected to ``s_i - log(M Q(i))`` (logQ; Bengio &
  Senecal 2008, Yi et al. 2019), and negatives equal to a position's label are removed
  (accidental hits).
* ``gbce``: generalised binary cross-entropy (Petrov & Macdonald, RecSys 2023) over the label
  and ``M`` shared negatives drawn uniformly: ``beta * softplus(-s+) + sum softplus(s-)`` with
  ``alpha = M / (N - 1)`` and ``beta = alpha * (t * (1 - 1/alpha) + 1/alpha)``; ``t = 0`` is
  plain BCE, ``t = 1`` makes the sigmoid calibrated to the full softmax.

Each loss is averaged over the ``P`` positions. ``logits_dtype="bfloat16"`` computes the logits'
matmul in bfloat16 (inputs rounded, logits returned to float32 before the softmax): on CPUs with
AVX512-BF16 and oneDNN that halves the cost of the largest matmul (``benchmarks/
sequence_training_speed.py`` measures it).
"""

from __future__ import annotations

import dataclasses
from typing import Optional

import numpy as np
import tensorflow as tf


FULL_SOFTMAX = "full_softmax"
SAMPLED_SOFTMAX = "sampled_softmax"
GBCE = "gbce"
KINDS = (FULL_SOFTMAX, SAMPLED_SOFTMAX, GBCE)


@dataclasses.dataclass(frozen=True)
class NextItemLossConfig:
    """Which loss and its settings.

    Attributes:
      kind: ``"full_softmax"`` (default), ``"sampled_softmax"`` or ``"gbce"``.
      num_negatives: ``M``, negatives shared across the batch (sampled losses).
      gbce_t: gBCE's calibration parameter ``t`` in ``[0, 1]`` (0.75 in the gSASRec paper).
      logits_dtype: ``"float32"`` or ``"bfloat16"`` (the logits' matmul only).
    """

    kind: str = FULL_SOFTMAX
    num_negatives: int = 256
    gbce_t: float = 0.75
    logits_dtype: str = "float32"

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"loss kind must be one of {KINDS}, got {self.kind!r}")
        if self.num_negatives < 1:
            raise ValueError(f"num_negatives must be >= 1, got {self.num_negatives}")
        if not 0.0 <= self.gbce_t <= 1.0:
            raise ValueError(f"gbce_t must be in [0, 1], got {self.gbce_t}")
        if self.logits_dtype not in ("float32", "bfloat16"):
            raise ValueError(f"logits_dtype must be 'float32' or 'bfloat16', got "
                             f"{self.logits_dtype!r}")


def _logits(queries: tf.Tensor, items: tf.Tensor, dtype: str) -> tf.Tensor:
    """``queries [P, d] @ items [n, d]^T`` -> ``[P, n]`` float32, multiplied in ``dtype``."""
    if dtype == "float32":
        return tf.matmul(queries, items, transpose_b=True)
    return tf.cast(tf.matmul(tf.cast(queries, dtype), tf.cast(items, dtype), transpose_b=True),
                   tf.float32)


def gbce_beta(num_negatives: int, num_items: int, t: float) -> float:
    """gSASRec's ``beta = alpha (t (1 - 1/alpha) + 1/alpha)``, ``alpha = M / (N - 1)``."""
    alpha = min(1.0, num_negatives / max(1, num_items - 1))
    return alpha * (t * (1.0 - 1.0 / alpha) + 1.0 / alpha)


class NextItemLoss(tf.keras.layers.Layer):
    """Per-position next-item loss (see the module docstring).

    Args:
      config: the loss.
      num_items: ``N`` (item ids ``1..N``).
      item_frequencies: ``[N + 1]`` target frequencies (row 0 = padding); the proposal ``Q`` of
        the sampled softmax. Uniform when omitted.

    Call arguments:
      queries: ``[P, d]`` one query per labelled position.
      labels: ``[P]`` int item ids ``1..N``.
      item_embeddings: a callable ``ids [n] -> [n, d]`` (the item tower).
      seed: optional ``[2]`` int stateless seed of the negatives (default: a fresh draw).

    Returns:
      The scalar mean loss over the ``P`` positions (0 when ``P = 0``).
    """

    def __init__(self, config: NextItemLossConfig, num_items: int,
                 item_frequencies: Optional[np.ndarray] = None, **kwargs):
        super().__init__(**kwargs)
        self.config = config
        self.num_items = int(num_items)
        if item_frequencies is None:
            q = np.ones(self.num_items, np.float64)
        else:
            q = np.asarray(item_frequencies, np.float64)[1:self.num_items + 1]
            q = np.maximum(q, 0.0)
            if q.sum() <= 0:
                q = np.ones(self.num_items, np.float64)
        q = q / q.sum()
        # Items never seen as targets still get a small mass, so every item can be drawn.
        q = 0.99 * q + 0.01 / self.num_items
        self._log_q = tf.constant(np.log(q), tf.float32)
        self._beta = gbce_beta(config.num_negatives, self.num_items, config.gbce_t)

    def _negatives(self, seed: Optional[tf.Tensor]) -> tf.Tensor:
        """``[M]`` item ids ``1..N``, shared across the batch."""
        m = self.config.num_negatives
        logits = (self._log_q if self.config.kind == SAMPLED_SOFTMAX
                  else tf.zeros([self.num_items]))[None, :]
        if seed is None:
            draw = tf.random.categorical(logits, m, dtype=tf.int64)
        else:
            draw = tf.random.stateless_categorical(logits, m, seed, dtype=tf.int64)
        return draw[0] + 1

    def call(self, queries: tf.Tensor, labels: tf.Tensor, item_embeddings,
             seed: Optional[tf.Tensor] = None) -> tf.Tensor:
        labels = tf.cast(labels, tf.int64)
        count = tf.cast(tf.size(labels), tf.float32)
        if self.config.kind == FULL_SOFTMAX:
            corpus = item_embeddings(tf.range(1, self.num_items + 1, dtype=tf.int64))
            logits = _logits(queries, corpus, self.config.logits_dtype)
            losses = tf.nn.sparse_softmax_cross_entropy_with_logits(labels - 1, logits)
            return tf.math.divide_no_nan(tf.reduce_sum(losses), count)

        negatives = self._negatives(seed)
        positive = tf.reduce_sum(queries * item_embeddings(labels), axis=-1)        # [P]
        negative = _logits(queries, item_embeddings(negatives), self.config.logits_dtype)  # [P, M]
        hit = tf.equal(labels[:, None], negatives[None, :])
        if self.config.kind == SAMPLED_SOFTMAX:
            m = float(self.config.num_negatives)
            positive -= tf.gather(self._log_q, labels - 1) + np.log(m)
            negative -= tf.gather(self._log_q, negatives - 1)[None, :] + np.log(m)
            negative = tf.where(hit, tf.constant(-1e9, negative.dtype), negative)
            logits = tf.concat([positive[:, None], negative], axis=1)
            losses = tf.nn.sparse_softmax_cross_entropy_with_logits(
                tf.zeros_like(labels, tf.int32), logits)
        else:
            negative_terms = tf.where(hit, tf.zeros_like(negative), tf.nn.softplus(negative))
            losses = self._beta * tf.nn.softplus(-positive) + tf.reduce_sum(negative_terms, -1)
        return tf.math.divide_no_nan(tf.reduce_sum(losses), count)
