"""Windows of every chunk position: exact time-lag buckets, shapes, masking and leakage."""

import numpy as np
import pytest
import tensorflow as tf

from t2diff_tf import features as F
from t2diff_tf.sequence_windows import SequenceWindowConfig, chunk_windows
from t2diff_tf.training import sequence_windows_dataset


def test_time_lag_buckets_equal_the_python_rule_at_every_power_of_two():
    gaps = set(range(0, 4100))
    for k in range(1, 53):
        gaps.update({2 ** k - 2, 2 ** k - 1, 2 ** k, 2 ** k + 1})
    rng = np.random.default_rng(0)
    gaps.update(int(g) for g in rng.integers(0, 2 ** 40, size=2000))
    gaps = sorted(gaps)
    for buckets in (3, 32, 64):
        got = F.time_lag_buckets(tf.constant(gaps, tf.int64), buckets).numpy()
        expected = [F.time_lag_bucket(g, buckets) for g in gaps]
        np.testing.assert_array_equal(got, expected)


def _chunk(items, times=None, sessions=None, width=None):
    n = len(items)
    width = width or n
    pad = width - n
    times = list(range(n)) if times is None else times
    sessions = list(range(n)) if sessions is None else sessions
    return {F.SEQUENCE_ITEMS: [0] * pad + list(items),
            F.SEQUENCE_TIMESTAMPS: [0] * pad + list(times),
            F.SEQUENCE_SESSIONS: [-1] * pad + list(sessions)}


def _batch(*chunks):
    return {name: tf.constant([c[name] for c in chunks], tf.int64) for name in chunks[0]}


def test_every_labelled_position_gives_one_window_in_chunk_order():
    config = SequenceWindowConfig(window_length=3, num_time_lag_buckets=8, session_k=2)
    windows = chunk_windows(_batch(_chunk([5, 6, 7, 8, 9]), _chunk([3, 4], width=5)), config)
    np.testing.assert_array_equal(windows[F.TARGET], [6, 7, 8, 9, 4])
    np.testing.assert_array_equal(windows[F.HISTORY],
                                  [[0, 0, 5], [0, 5, 6], [5, 6, 7], [6, 7, 8], [0, 0, 3]])
    # Steps back to the target: 3, 2, 1 -> buckets 1 + floor(log2(1 + gap)).
    np.testing.assert_array_equal(windows[F.HISTORY_TIME_LAG][2], [3, 2, 2])
    np.testing.assert_array_equal(windows[F.HISTORY_TIME_LAG][0], [0, 0, 2])
    # Last-k (k = 2) sessions counted back from the last behaviour; -1 on padding.
    np.testing.assert_array_equal(windows[F.HISTORY_SESSION],
                                  [[-1, -1, 0], [-1, 0, 0], [1, 0, 0], [1, 0, 0], [-1, -1, 0]])
    np.testing.assert_array_equal(windows[F.SESSION_LENGTH], [1, 2, 2, 2, 1])


def test_time_gap_sessions_and_seconds():
    config = SequenceWindowConfig(window_length=4, num_time_lag_buckets=32, session_k=None)
    chunk = _chunk([1, 2, 3, 4, 5], times=[0, 10, 5000, 5010, 9000], sessions=[0, 0, 1, 1, 2])
    windows = chunk_windows(_batch(chunk), config)
    last = {k: v[-1].numpy() for k, v in windows.items()}
    np.testing.assert_array_equal(last[F.HISTORY], [1, 2, 3, 4])
    np.testing.assert_array_equal(last[F.HISTORY_SESSION], [1, 1, 0, 0])
    assert last[F.SESSION_LENGTH] == 2
    np.testing.assert_array_equal(
        last[F.HISTORY_TIME_LAG], [F.time_lag_bucket(9000 - t, 32) for t in (0, 10, 5000, 5010)])


def test_no_window_contains_its_target_or_anything_after_it():
    # Item ids are positions + 1, so "before the target" is "a smaller id".
    rng = np.random.default_rng(1)
    chunks = []
    for _ in range(20):
        n = int(rng.integers(2, 30))
        chunks.append(_chunk(list(range(1, n + 1)), width=30))
    config = SequenceWindowConfig(window_length=7, session_k=3)
    windows = chunk_windows(_batch(*chunks), config)
    history, target = windows[F.HISTORY].numpy(), windows[F.TARGET].numpy()
    assert len(target) == sum(sum(1 for i in c[F.SEQUENCE_ITEMS] if i) - 1 for c in chunks)
    for h, t in zip(history, target):
        valid = h[h != 0]
        assert len(valid) == min(7, t - 1)
        np.testing.assert_array_equal(valid, np.arange(t - len(valid), t))


def test_the_dataset_yields_every_label_once_per_pass():
    rng = np.random.default_rng(2)
    rows = []
    for _ in range(37):
        n = int(rng.integers(1, 12))
        rows.append(_chunk(list(rng.integers(1, 50, size=n)), width=12))
    arrays = {name: np.array([r[name] for r in rows]) for name in rows[0]}
    expected = sorted(int(i) for r in rows for i in [x for x in r[F.SEQUENCE_ITEMS] if x][1:])
    dataset = sequence_windows_dataset(arrays, SequenceWindowConfig(window_length=5), 16,
                                       shuffle_buffer=100, seed=0)
    for _ in range(2):
        batches = list(dataset)
        assert all(b[F.HISTORY].shape[1] == 5 for b in batches)
        assert sorted(int(t) for b in batches for t in b[F.TARGET]) == expected


@pytest.mark.parametrize("bad", [dict(window_length=0), dict(num_time_lag_buckets=2),
                                 dict(session_k=0)])
def test_config_is_checked(bad):
    with pytest.raises(ValueError):
        SequenceWindowConfig(**bad)
