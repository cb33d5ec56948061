"""Full-corpus ranking metrics, tie rule, history exclusion, bootstrap intervals, evaluate()."""

import numpy as np
import pytest
import tensorflow as tf

from t2diff_tf import features as F
from t2diff_tf import metrics as M
from t2diff_tf.metrics import (bootstrap_interval, evaluate, paired_difference, ranking_metrics,
                               target_ranks)


def test_ranks_and_pessimistic_ties():
    scores = tf.constant([[0.1, 0.9, 0.5, 0.5],
                          [0.3, 0.3, 0.3, 0.3],
                          [1.0, 0.0, 0.0, 0.0]])
    ranks = target_ranks(scores, tf.constant([3, 1, 1])).numpy()
    # Row 0: item 2 scores higher, item 4 ties -> rank 3. Row 1: all tie -> last. Row 2: first.
    np.testing.assert_array_equal(ranks, [3, 4, 1])


def test_numpy_ranks_equal_tensorflow_ranks_with_ties_and_exclusions():
    """evaluate() ranks an embedding model's scores with numpy: the same ranks, pessimistic
    ties and history exclusion included (scores drawn from few values, so ties are many)."""
    rng = np.random.default_rng(0)
    for trial in range(20):
        batch, n, m = int(rng.integers(1, 9)), int(rng.integers(1, 30)), int(rng.integers(0, 12))
        scores = rng.integers(0, 4, size=(batch, n)).astype(np.float32)
        targets = rng.integers(1, n + 1, size=batch)
        exclude = rng.integers(0, n + 1, size=(batch, m)) if trial % 2 else None
        expected = target_ranks(tf.constant(scores), tf.constant(targets),
                                None if exclude is None else tf.constant(exclude)).numpy()
        got = M.target_ranks_numpy(scores.copy(), targets, exclude)
        np.testing.assert_array_equal(got, expected)
    scores = np.array([[0.9, 0.8, 0.7, 0.6, 0.5]], np.float32)
    assert M.target_ranks_numpy(scores.copy(), np.array([4]), np.array([[0, 1, 2, 4]]))[0] == 2


def test_history_exclusion_never_drops_the_target():
    scores = tf.constant([[0.9, 0.8, 0.7, 0.6, 0.5]])
    history = tf.constant([[0, 1, 2, 4]])
    assert target_ranks(scores, tf.constant([4]), history).numpy()[0] == 2  # 1, 2 dropped; 3 stays
    # The target in the history is kept; padding 0 is not an item.
    assert target_ranks(scores, tf.constant([2]), history).numpy()[0] == 1
    assert target_ranks(scores, tf.constant([2])).numpy()[0] == 2


def test_ranking_metrics_closed_forms():
    out = ranking_metrics(np.array([1, 2, 5, 30]), ks=(2, 10))
    np.testing.assert_allclose(out["recall@2"], [1, 1, 0, 0])
    np.testing.assert_allclose(out["recall@10"], [1, 1, 1, 0])
    np.testing.assert_allclose(out["mrr@2"], [1, 0.5, 0, 0])
    np.testing.assert_allclose(out["mrr@10"], [1, 0.5, 0.2, 0])
    np.testing.assert_allclose(out["ndcg@10"], [1, 1 / np.log2(3), 1 / np.log2(6), 0])
    # A 0-based rank would give an infinite reciprocal rank: refused by name instead.
    with pytest.raises(ValueError, match="1-based"):
        ranking_metrics(np.array([0, 3]))


def test_bootstrap_interval_covers_the_mean_and_is_seeded():
    rng = np.random.default_rng(0)
    values = (rng.random(2000) < 0.3).astype(float)
    low, high = bootstrap_interval(values, num_resamples=500, seed=1)
    assert low < values.mean() < high
    # Binomial standard error ~ 0.0102: the 95% interval is about +-0.02.
    assert 0.03 < high - low < 0.05
    assert (low, high) == bootstrap_interval(values, num_resamples=500, seed=1)
    assert (low, high) != bootstrap_interval(values, num_resamples=500, seed=2)


def test_bootstrap_resamples_users_not_examples():
    """Ten users with 100 identical examples each: the spread is that of 10 draws, not 1000."""
    values = np.repeat(np.arange(10) % 2, 100).astype(float)
    users = np.repeat(np.arange(10), 100)
    by_user = bootstrap_interval(values, users, num_resamples=1000, seed=0)
    by_example = bootstrap_interval(values, None, num_resamples=1000, seed=0)
    assert (by_user[1] - by_user[0]) > 4 * (by_example[1] - by_example[0])


def test_paired_difference_is_narrower_than_the_two_intervals_and_sees_a_small_gain():
    """Model b hits 30% of 2000 users; model a hits the same users plus 2% more. Each model's
    own interval is about +-0.02 wide, so they overlap; the paired interval excludes 0."""
    rng = np.random.default_rng(0)
    b = (rng.random(2000) < 0.3).astype(float)
    a = b.copy()
    a[np.flatnonzero(b == 0)[:40]] = 1.0
    difference, low, high = paired_difference(a, b, num_resamples=1000, seed=0)
    assert difference == pytest.approx(0.02)
    assert 0.0 < low < 0.02 < high
    a_low, _ = bootstrap_interval(a, num_resamples=1000, seed=0)
    _, b_high = bootstrap_interval(b, num_resamples=1000, seed=0)
    assert a_low < b_high  # the unpaired intervals overlap
    # Identical models: a zero difference with a zero-width interval.
    assert paired_difference(b, b) == (0.0, 0.0, 0.0)
    with pytest.raises(ValueError, match="same examples"):
        paired_difference(a, b[:10])


class _FixedModel:
    """A stand-in model: the query of an example is one-hot on item ``history[-1] + 1``."""

    def __init__(self, num_items):
        self.num_items = num_items

    def corpus_embeddings(self):
        return tf.eye(self.num_items)

    def query_embeddings(self, features, training=False):
        nxt = tf.cast(features[F.HISTORY][:, -1], tf.int32)  # next item id = last + 1
        return tf.one_hot(nxt, self.num_items)  # column nxt scores item nxt + 1


def test_evaluate_with_a_known_model():
    n = 6
    history = np.array([[0, 1, 2], [0, 2, 3], [1, 2, 4], [0, 0, 1]])
    data = {
        F.HISTORY: history, F.HISTORY_TIME_LAG: np.ones_like(history),
        F.HISTORY_SESSION: np.zeros_like(history), F.SESSION_LENGTH: np.array([2, 2, 3, 1]),
        F.HISTORY_TIMESTAMPS: np.zeros_like(history),
        F.TARGET: np.array([3, 4, 1, 6]),
        F.USER_ID: np.array([b"a", b"b", b"c", b"d"]),
    }
    result = evaluate(_FixedModel(n), data, ks=(1, 5), num_bootstrap=200, batch_size=3)
    # Targets 3 and 4 are predicted (rank 1); the others tie with five items at 0 (rank 6).
    assert result["recall@1"] == pytest.approx(0.5)
    assert result["recall@5"] == pytest.approx(0.5)
    assert result["mrr@5"] == pytest.approx(0.5)
    assert result.num_examples == 4 and result.num_users == 4 and result.num_items == n
    low, high = result.intervals["recall@1"]
    assert 0.0 <= low <= 0.5 <= high <= 1.0
    assert result.tie_rule == "pessimistic" and not result.exclude_history
    excluded = evaluate(_FixedModel(n), data, ks=(1, 5), exclude_history=True, num_bootstrap=0)
    # Excluding the 2..3 history items lifts the missed targets above the cut-off 5.
    assert excluded["recall@5"] == pytest.approx(1.0)
    assert excluded.intervals == {}
    assert excluded.as_dict()["metrics"]["recall@1"] == pytest.approx(0.5)
    assert "ranks" not in excluded.as_dict()
    # Per-example ranks in dataset order, with their users, for paired comparisons.
    np.testing.assert_array_equal(result.ranks, [1, 1, 6, 6])
    np.testing.assert_array_equal(result.groups, data[F.USER_ID])


def test_seen_items_beyond_the_window_are_excluded_too():
    """``seen_items`` (the whole history) replaces the window's last-L history for exclusion."""
    n = 6
    history = np.array([[0, 1], [0, 2]])
    data = {
        F.HISTORY: history, F.HISTORY_TIME_LAG: np.ones_like(history),
        F.HISTORY_SESSION: np.zeros_like(history), F.SESSION_LENGTH: np.array([1, 1]),
        F.HISTORY_TIMESTAMPS: np.zeros_like(history),
        F.TARGET: np.array([5, 6]),
        F.USER_ID: np.array([b"a", b"b"]),
    }
    # Both targets tie at score 0 with every item but the predicted one.
    window_only = evaluate(_FixedModel(n), data, ks=(10,), exclude_history=True, num_bootstrap=0)
    np.testing.assert_array_equal(window_only.ranks, [5, 5])   # item 1 (2) dropped
    data[F.SEEN_ITEMS] = np.array([[3, 4, 1, 0], [1, 3, 4, 2]])
    full = evaluate(_FixedModel(n), data, ks=(10,), exclude_history=True, num_bootstrap=0)
    np.testing.assert_array_equal(full.ranks, [3, 2])
    # Without exclusion seen_items changes nothing.
    assert evaluate(_FixedModel(n), data, ks=(10,), num_bootstrap=0).ranks.tolist() == [6, 6]


class _FlipModel:
    """Scores item ``i`` by ``+i`` or ``-i`` after a Python flag: what a sampler setting is."""

    num_items = 5

    def __init__(self):
        self.flip = False

    def query_embeddings(self, features, training=False):
        sign = -1.0 if self.flip else 1.0
        return tf.fill([tf.shape(features[F.TARGET])[0], 1], sign)

    def corpus_embeddings(self):
        return np.arange(1, 6, dtype=np.float32)[:, None]


def test_evaluate_traces_python_settings_anew_and_a_kept_ranker_reuses_its_trace():
    model = _FlipModel()
    data = {name: np.zeros([2, 3], np.int64) for name in F.SEQUENCE_FEATURES}
    data.update({F.SESSION_LENGTH: np.zeros([2], np.int64), F.TARGET: np.array([5, 5])})
    assert M.evaluate(model, data, ks=(1,), num_bootstrap=0).metrics["recall@1"] == 1.0
    ranker = M.make_ranker(model)
    assert M.evaluate(model, data, ks=(1,), num_bootstrap=0, ranker=ranker)["recall@1"] == 1.0
    model.flip = True  # item 5 is now last
    assert M.evaluate(model, data, ks=(1,), num_bootstrap=0).metrics["recall@1"] == 0.0
    # The kept ranker still holds its first trace: reuse it only while the settings stay.
    assert M.evaluate(model, data, ks=(1,), num_bootstrap=0, ranker=ranker)["recall@1"] == 1.0
    with pytest.raises(ValueError):
        M.evaluate(model, data, ks=(1,), num_bootstrap=0, exclude_history=True, ranker=ranker)
