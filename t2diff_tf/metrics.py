"""Full-corpus evaluation: Recall@K, MRR@K and NDCG@K with bootstrap confidence intervals.

Every query is scored against every item ``1..N`` (padding 0 is never a candidate). With one
target per example:

* **rank** -- ``1 + #{items scored higher than the target} + #{other items scored equal}``:
  ties are counted *pessimistically* (a tied item is ranked before the target), so a constant
  model ranks every target last rather than first.
* **Recall@K** -- ``1[rank <= K]`` (= hit rate with one target).
* **MRR@K** -- ``1 / rank`` if ``rank <= K`` else 0.
* **NDCG@K** -- ``1 / log2(1 + rank)`` if ``rank <= K`` else 0.

Optionally the items the user has already seen are excluded from the ranking (the target itself
never is): the example's ``seen_items`` when it has them (the whole history), else its
``history`` window (the last ``L`` items). Reported values are means over examples; the 95% intervals are a
percentile bootstrap over *users* (each user's examples are resampled together), seeded.
:func:`paired_difference` compares two models ranked on the same examples: one bootstrap draw
of users serves both, so the interval of the difference is not the (wider) pair of intervals.
"""

from __future__ import annotations

import dataclasses
import weakref
from typing import Dict, Iterable, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import tensorflow as tf

from t2diff_tf import features as F

DEFAULT_KS = (2, 10, 20, 100)
TIE_RULE = "pessimistic"


def target_ranks(scores: tf.Tensor, targets: tf.Tensor,
                 exclude: Optional[tf.Tensor] = None) -> tf.Tensor:
    """1-based ranks of the targets among all items.

    Args:
      scores: ``[batch, N]``; column ``j`` scores item ``j + 1``.
      targets: ``[batch]`` item ids in ``1..N``.
      exclude: optional ``[batch, M]`` item ids to drop from the ranking (0 and the target are
        ignored), e.g. the history.

    Returns:
      ``[batch]`` int32 ranks (pessimistic ties).
    """
    scores = tf.convert_to_tensor(scores)
    columns = tf.cast(targets, tf.int32) - 1
    batch = tf.shape(scores)[0]
    rows = tf.range(batch)
    if exclude is not None:
        exclude = tf.cast(exclude, tf.int32)
        drop = tf.logical_and(tf.not_equal(exclude, F.PADDING_ID),
                              tf.not_equal(exclude, columns[:, None] + 1))
        index = tf.stack([tf.broadcast_to(rows[:, None], tf.shape(exclude)), exclude - 1], -1)
        index = tf.boolean_mask(index, drop)
        scores = tf.tensor_scatter_nd_update(
            scores, index, tf.fill(tf.shape(index)[:1], tf.constant(-np.inf, scores.dtype)))
    target_scores = tf.gather(scores, columns, batch_dims=1)[:, None]
    # 1 + (items scoring higher) + (other items tied with it) = items scoring at least as high,
    # the target included: one pass over the [batch, N] scores instead of two.
    return tf.reduce_sum(tf.cast(scores >= target_scores, tf.int32), axis=1)


def ranking_metrics(ranks: np.ndarray, ks: Sequence[int] = DEFAULT_KS) -> Dict[str, np.ndarray]:
    """Per-example ``recall@K``, ``mrr@K`` and ``ndcg@K`` from 1-based ranks ``[n]``."""
    ranks = np.asarray(ranks, dtype=np.float64)
    if ranks.size and not (ranks >= 1).all():
        raise ValueError(f"ranks are 1-based; got a rank of {ranks.min():g}")
    out = {}
    for k in ks:
        hit = ranks <= k
        out[f"recall@{k}"] = hit.astype(np.float64)
        out[f"mrr@{k}"] = np.where(hit, 1.0 / ranks, 0.0)
        out[f"ndcg@{k}"] = np.where(hit, 1.0 / np.log2(1.0 + ranks), 0.0)
    return out


def bootstrap_interval(values: np.ndarray, groups: Optional[np.ndarray] = None,
                       num_resamples: int = 1000, confidence: float = 0.95, seed: int = 0,
                       chunk: int = 100) -> Tuple[float, float]:
    """Percentile bootstrap interval of the mean of ``values`` ``[n]``.

    With ``groups`` (e.g. user ids, ``[n]``) whole groups are resampled: the statistic of a
    resample is ``sum(values of drawn groups) / count(examples of drawn groups)``.
    """
    values = np.asarray(values, dtype=np.float64)
    if values.size == 0:
        return float("nan"), float("nan")
    if groups is None:
        sums, counts = values, np.ones_like(values)
    else:
        _, inverse = np.unique(np.asarray(groups), return_inverse=True)
        sums = np.bincount(inverse, weights=values)
        counts = np.bincount(inverse).astype(np.float64)
    rng = np.random.default_rng(seed)
    n = sums.size
    stats = []
    for start in range(0, num_resamples, chunk):
        draws = rng.integers(0, n, size=(min(chunk, num_resamples - start), n))
        stats.append(sums[draws].sum(axis=1) / counts[draws].sum(axis=1))
    stats = np.concatenate(stats)
    alpha = (1.0 - confidence) / 2.0
    low, high = np.quantile(stats, [alpha, 1.0 - alpha])
    return float(low), float(high)


def paired_difference(values_a: np.ndarray, values_b: np.ndarray,
                      groups: Optional[np.ndarray] = None, num_resamples: int = 1000,
                      confidence: float = 0.95, seed: int = 0) -> Tuple[float, float, float]:
    """``mean(a) - mean(b)`` and its percentile bootstrap interval for per-example values of
    two models on the same examples (``[n]`` each, aligned), resampling whole ``groups``.

    Returns:
      ``(difference, low, high)``; an interval above 0 says ``a`` beats ``b`` at that level.
    """
    values_a = np.asarray(values_a, dtype=np.float64)
    values_b = np.asarray(values_b, dtype=np.float64)
    if values_a.shape != values_b.shape:
        raise ValueError(f"paired values need the same examples: {values_a.shape} vs "
                         f"{values_b.shape}")
    difference = values_a - values_b
    low, high = bootstrap_interval(difference, groups, num_resamples, confidence, seed)
    return float(difference.mean()) if difference.size else float("nan"), low, high


@dataclasses.dataclass(frozen=True)
class EvaluationResult:
    """Full-corpus metrics of one model on one split.

    Attributes:
      metrics: ``{"recall@20": mean, ...}``.
      intervals: ``{"recall@20": (low, high), ...}`` bootstrap intervals over users.
      num_examples: examples ranked.
      num_users: distinct users (examples without ``user_id`` count as one user each).
      num_items: corpus size ``N``.
      exclude_history: whether history items were removed from the ranking.
      tie_rule: how ties were ranked.
      confidence: interval level.
      ranks: ``[num_examples]`` the target's rank in each example, in dataset order (for
        paired comparisons; not in :meth:`as_dict`).
      groups: ``[num_examples]`` the example's ``user_id``, or ``None`` without one.
    """

    metrics: Dict[str, float]
    intervals: Dict[str, Tuple[float, float]]
    num_examples: int
    num_users: int
    num_items: int
    exclude_history: bool
    tie_rule: str = TIE_RULE
    confidence: float = 0.95
    ranks: Optional[np.ndarray] = dataclasses.field(default=None, compare=False, repr=False)
    groups: Optional[np.ndarray] = dataclasses.field(default=None, compare=False, repr=False)

    def __getitem__(self, name: str) -> float:
        return self.metrics[name]

    def as_dict(self) -> Dict[str, object]:
        out = {field.name: getattr(self, field.name) for field in dataclasses.fields(self)
               if field.name not in ("ranks", "groups")}
        out["intervals"] = {k: list(v) for k, v in self.intervals.items()}
        return out


def target_ranks_numpy(scores: np.ndarray, targets: np.ndarray,
                       exclude: Optional[np.ndarray] = None) -> np.ndarray:
    """:func:`target_ranks` with numpy (the same ranks; a test holds the two equal).

    Args:
      scores: ``[batch, N]`` float; written to where ``exclude`` drops items.
      targets: ``[batch]`` item ids in ``1..N``.
      exclude: optional ``[batch, M]`` item ids to drop (0 and the target are ignored).
    """
    targets = np.asarray(targets, np.int64)
    if exclude is not None:
        exclude = np.asarray(exclude, np.int64)
        rows, at = np.nonzero((exclude != F.PADDING_ID) & (exclude != targets[:, None]))
        scores[rows, exclude[rows, at] - 1] = -np.inf
    target_scores = scores[np.arange(len(targets)), targets - 1]
    return np.count_nonzero(scores >= target_scores[:, None], axis=1).astype(np.int32)


def _batches(dataset: Union[tf.data.Dataset, Mapping[str, np.ndarray]], batch_size: int
             ) -> Iterable[Mapping[str, tf.Tensor]]:
    if isinstance(dataset, Mapping):
        dataset = tf.data.Dataset.from_tensor_slices(dict(dataset)).batch(batch_size)
    return dataset


def _unsorted(values: np.ndarray, order: np.ndarray) -> np.ndarray:
    """``values`` in sorted order (``values[i]`` belongs to input row ``order[i]``) -> input
    order."""
    out = np.empty_like(values)
    out[order] = values
    return out


def make_ranker(model, exclude_history: bool = False):
    """A ``(features, corpus) -> [batch]`` target-rank function of ``model`` (numpy ranks;
    ``corpus``: ``[N, d]`` float32 item embeddings, unused by a ``score_corpus`` model).

    The query embeddings (or a ``score_corpus`` model's scores) come from one traced function;
    the ``[batch, N]`` scores of an embedding model are a numpy (BLAS) product, about 2.5x
    faster here than TensorFlow's for these shapes (a 64-wide product against 108K items:
    BENCHMARKS.md), and the ranks are counted with numpy.

    :func:`evaluate` makes a fresh one per call, so a change of the model's Python settings (e.g.
    T2Diff's sampler) is always traced anew; a caller that ranks the same model repeatedly with
    only its weights changing (validation after every epoch) makes one and passes it as
    ``ranker``: T2Diff's reverse chain then is traced once, not every epoch. The corpus is an
    argument, so new weights need no retrace.
    """
    model_ref = weakref.ref(model)  # a cached ranker must not keep the model alive
    scores_itself = getattr(model, "score_corpus", None) is not None

    @tf.function(reduce_retracing=True)
    def traced(features):
        """An embedding model's ``[batch, d]`` queries, or a ``score_corpus`` model's ranks."""
        current = model_ref()
        if scores_itself:
            return target_ranks(current.score_corpus(features), features[F.TARGET],
                                _excluded(features) if exclude_history else None)
        return tf.cast(current.query_embeddings(features, training=False), tf.float32)

    def rank_batch(features, corpus):
        out = traced(features).numpy()
        if scores_itself:
            return out
        exclude = np.asarray(_excluded(features)) if exclude_history else None
        return target_ranks_numpy(out @ corpus.T, np.asarray(features[F.TARGET]), exclude)

    rank_batch.exclude_history = exclude_history
    return rank_batch


def _excluded(features):
    """The items a history-excluding ranking drops: ``seen_items`` when given, else the
    history window."""
    return features[F.SEEN_ITEMS] if F.SEEN_ITEMS in features else features[F.HISTORY]


def evaluate(model, dataset: Union[tf.data.Dataset, Mapping[str, np.ndarray]],
             ks: Sequence[int] = DEFAULT_KS, exclude_history: bool = False,
             num_bootstrap: int = 1000, confidence: float = 0.95, seed: int = 0,
             batch_size: int = 256, ranker=None,
             trim_padding: Optional[bool] = None) -> EvaluationResult:
    """Ranks every example's target among all items ``1..N`` with the model's inference towers.

    Args:
      model: a :class:`~t2diff_tf.models.base.RetrievalModel` (``query_embeddings``,
        ``corpus_embeddings``, ``num_items``). A model with a ``score_corpus(features)`` method
        (``[batch, N]`` exact scores of items ``1..N``, e.g. FIT's late-interaction scorer) is
        ranked by it instead of ``query_embeddings @ corpus_embeddings.T``.
      dataset: batched feature dicts (a ``tf.data.Dataset``) or a dict of numpy arrays (batched
        here by ``batch_size``); needs the query features and ``target``; ``user_id`` groups the
        bootstrap.
      ks: cut-offs.
      exclude_history: remove the items the user has seen from the ranking: ``seen_items``
        when the examples carry it, else the ``history`` window.
      num_bootstrap: bootstrap resamples (0: no intervals).
      confidence: interval level.
      seed: bootstrap seed.
      batch_size: batch size when ``dataset`` is a dict of arrays.
      ranker: a :func:`make_ranker` of this model and ``exclude_history`` to reuse (default: a
        fresh one, traced for this call).
      trim_padding: rank each batch with the left padding its rows share dropped
        (:func:`t2diff_tf.features.trim_window_padding`), and a dict of arrays in order of
        history length, so that short histories are batched together (ranks and groups come
        back in the input's order). ``None``: for the models that train on trimmed sequence
        chunks (``trains_on_sequences``), whose towers do not depend on the padding: on ML-1M
        at L = 200 that halves the tower's work.
    """
    if ranker is not None and ranker.exclude_history != exclude_history:
        raise ValueError("the ranker was made with another exclude_history")
    rank_batch = ranker if ranker is not None else make_ranker(model, exclude_history)
    corpus = (np.zeros([0, 0], np.float32) if getattr(model, "score_corpus", None) is not None
              else np.asarray(model.corpus_embeddings(), np.float32))

    if trim_padding is None:
        trim_padding = bool(getattr(model, "trains_on_sequences", False))
    order = None
    if trim_padding and isinstance(dataset, Mapping):
        order = np.argsort((np.asarray(dataset[F.HISTORY]) != F.PADDING_ID).sum(axis=1),
                           kind="stable")
        dataset = {name: np.asarray(values)[order] for name, values in dataset.items()}

    ranks, users = [], []
    for batch in _batches(dataset, batch_size):
        names = F.QUERY_FEATURES + (F.TARGET,)
        if exclude_history and F.SEEN_ITEMS in batch:
            names += (F.SEEN_ITEMS,)
        query = {name: batch[name] for name in names}
        if trim_padding:
            query = F.trim_window_padding(query)
        ranks.append(np.asarray(rank_batch(query, corpus)))
        if F.USER_ID in batch:
            users.append(np.asarray(batch[F.USER_ID]))
    ranks = np.concatenate(ranks) if ranks else np.zeros([0], np.int32)
    groups = np.concatenate(users) if users and sum(map(len, users)) == len(ranks) else None
    if order is not None:  # back to the input's order
        ranks = _unsorted(ranks, order)
        groups = _unsorted(groups, order) if groups is not None else None
    per_example = ranking_metrics(ranks, ks)
    metrics = {name: float(values.mean()) if values.size else float("nan")
               for name, values in per_example.items()}
    intervals = {}
    if num_bootstrap > 0:
        intervals = {name: bootstrap_interval(values, groups, num_bootstrap, confidence, seed)
                     for name, values in per_example.items()}
    num_users = len(np.unique(groups)) if groups is not None else len(ranks)
    return EvaluationResult(metrics, intervals, int(len(ranks)), int(num_users),
                            int(model.num_items), exclude_history, TIE_RULE, confidence,
                            ranks=ranks, groups=groups)
