"""Exact top-K retrieval in plain TensorFlow ops, servable by a stock TF Serving binary.

``scores = queries @ candidates^T`` (``[batch, N]``), then ``tf.math.top_k``; no custom ops, so
unlike the ScaNN index it needs nothing beyond ``tensorflow_model_server``. The candidate matrix
is a snapshot of the item tower taken at export time, stored as a non-trainable variable rather
than a graph constant so that large corpora stay clear of the 2 GB GraphDef limit (``N x d x 4``
bytes: 10M items at d = 64 would not fit in a constant).
"""

from __future__ import annotations

from typing import Optional, Tuple

import numpy as np
import tensorflow as tf


class BruteForceIndex(tf.Module):
    """Exact maximum inner-product search over a fixed candidate matrix.

    Args:
      candidates: ``[N, d]`` candidate embeddings.
      identifiers: ``[N]`` int64 ids returned for the rows (e.g. item ids ``1..N``; the padding
        id 0 is simply not among them).

    Call arguments:
      queries: ``[batch, d]`` query embeddings.
      k: how many candidates to return (capped at ``N``).

    Returns:
      ``(scores [batch, k] float32, ids [batch, k] int64)``, best first; ties go to the lower
      row (``tf.math.top_k``'s rule).
    """

    def __init__(self, candidates: np.ndarray, identifiers: np.ndarray,
                 name: Optional[str] = None):
        super().__init__(name=name)
        candidates = np.asarray(candidates, dtype=np.float32)
        identifiers = np.asarray(identifiers, dtype=np.int64)
        if candidates.ndim != 2:
            raise ValueError(f"candidates must be [N, d], got shape {candidates.shape}")
        if identifiers.shape != (candidates.shape[0],):
            raise ValueError(f"identifiers must be [N] = [{candidates.shape[0]}], "
                             f"got shape {identifiers.shape}")
        self.num_candidates, self.embedding_dim = candidates.shape
        self.candidates = tf.Variable(candidates, trainable=False, name="candidates")
        self.identifiers = tf.Variable(identifiers, trainable=False, name="identifiers")

    def __call__(self, queries: tf.Tensor, k: int) -> Tuple[tf.Tensor, tf.Tensor]:
        k = min(int(k), self.num_candidates)
        scores = tf.linalg.matmul(tf.cast(queries, tf.float32), self.candidates, transpose_b=True)
        top_scores, rows = tf.math.top_k(scores, k=k)
        return top_scores, tf.gather(self.identifiers, rows)


# Scores held at once by ``numpy_top_k``: 2**24 float32 (64 MB). Without a bound, 2,000 probe
# queries against 108K items held 0.86 GB of scores plus 1.7 GB of argpartition's int64 rows.
MAX_SCORES_AT_ONCE = 1 << 24


def numpy_top_k(queries: np.ndarray, candidates: np.ndarray, k: int,
                max_scores: int = MAX_SCORES_AT_ONCE) -> Tuple[np.ndarray, np.ndarray]:
    """Reference exact top-K in numpy: ``(scores [b, k], rows [b, k])``, best first.

    ``argpartition`` then a sort of the ``k`` survivors, so it costs ``O(N)`` per query beyond
    the matmul. Ties are broken towards the lower row, also across the k-th place
    (``tf.math.top_k``'s rule; plain ``argpartition`` splits tied scores at the cut
    arbitrarily). Queries go through in blocks of at most ``max_scores`` scores (``[rows, N]``,
    at least one query a block), so memory stays bounded by the block, not by ``b x N``; each
    query's result does not depend on the blocking.
    """
    queries = np.asarray(queries, np.float32)
    candidates = np.asarray(candidates, np.float32)
    k = min(int(k), candidates.shape[0])
    rows_per_block = max(1, int(max_scores) // max(1, candidates.shape[0]))
    top_scores = np.empty((queries.shape[0], k), np.float32)
    top_rows = np.empty((queries.shape[0], k), np.int64)
    if k <= 0:
        return top_scores, top_rows
    for begin in range(0, queries.shape[0], rows_per_block):
        end = begin + rows_per_block
        top_scores[begin:end], top_rows[begin:end] = _block_top_k(queries[begin:end],
                                                                   candidates, k)
    return top_scores, top_rows


def _block_top_k(queries: np.ndarray, candidates: np.ndarray, k: int
                 ) -> Tuple[np.ndarray, np.ndarray]:
    """``numpy_top_k`` of one block of queries: ``[rows, d]`` -> ``([rows, k], [rows, k])``."""
    scores = queries @ candidates.T
    if k < scores.shape[1]:
        part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
        kept = np.take_along_axis(scores, part, axis=1)
        kth = kept.min(axis=1, keepdims=True)
        # argpartition splits equal scores at the cut arbitrarily; where the k-th score is tied
        # beyond the cut, take the tied rows from the lowest up, as tf.math.top_k does
        straddling = np.flatnonzero((scores == kth).sum(axis=1) > (kept == kth).sum(axis=1))
        for query in straddling:
            above = np.flatnonzero(scores[query] > kth[query, 0])
            tied = np.flatnonzero(scores[query] == kth[query, 0])[:k - above.size]
            part[query] = np.concatenate([above, tied])
    else:
        part = np.broadcast_to(np.arange(scores.shape[1]), scores.shape)
    part_scores = np.take_along_axis(scores, part, axis=1)
    order = np.lexsort((part, -part_scores), axis=1)
    rows = np.take_along_axis(part, order, axis=1)
    return np.take_along_axis(scores, rows, axis=1), rows
