"""Training sequence chunks: bounds, protocols, leakage on all of ML-1M, Beam = in-memory."""

import gzip
import os
from collections import Counter

import numpy as np
import pytest
import tensorflow as tf

from components.preprocessing import readers, synthetic
from components.preprocessing.config import (LEAVE_LAST_OUT, TIME_GAP, TRAIN, TRAIN_SEQUENCES,
                                             USER_HOLDOUT, ProtocolConfig, WindowConfig)
from components.preprocessing.inmemory import chunks_to_arrays, synthetic_arrays
from components.preprocessing.schema import sequence_schema, validate_examples
from components.preprocessing.sequences import (chunk_bounds, chunk_labels, to_example,
                                                user_chunks)
from components.preprocessing.transforms import (SEQUENCE_SCHEMA_FILE, PreprocessConfig,
                                                  run_preprocessing, split_dir)
from components.preprocessing.windows import holdout_split
from t2diff_tf import features as F
from t2diff_tf.features import ExampleSpec, SequenceSpec

WIN = WindowConfig(ExampleSpec(history_length=4))
LOO = ProtocolConfig()


@pytest.mark.parametrize("n, expected", [
    (0, []), (1, []), (2, [(0, 2)]), (4, [(0, 4)]), (5, [(0, 5)]),
    (6, [(0, 2), (1, 6)]),                  # overlap of one: item 1 is an input of both
    (14, [(0, 2), (1, 6), (5, 10), (9, 14)]),
])
def test_chunk_bounds_cover_every_label_once(n, expected):
    spec = SequenceSpec(history_length=4)   # chunks of 5 items
    bounds = chunk_bounds(n, spec)
    assert [(r.start, r.stop) for r in bounds] == expected
    labels = [j for r in bounds for j in list(r)[1:]]
    assert sorted(labels) == list(range(1, n)) if n >= 2 else labels == []


def test_max_chunks_keeps_the_latest():
    bounds = chunk_bounds(14, SequenceSpec(history_length=4, max_chunks_per_user=2))
    assert [(r.start, r.stop) for r in bounds] == [(5, 10), (9, 14)]


def test_leave_one_out_chunks_stop_before_the_validation_target():
    items = list(range(101, 111))            # 10 items: validation 109, test 110
    chunks = list(user_chunks("u", items, None, WIN, LOO, SequenceSpec(history_length=4)))
    seen = {i for c in chunks for i in c[F.SEQUENCE_ITEMS]}
    assert 109 not in seen and 110 not in seen
    assert sorted(i for c in chunks for i in chunk_labels(c)) == list(range(102, 109))
    last = chunks[-1]
    assert last[F.SEQUENCE_ITEMS] == [104, 105, 106, 107, 108]
    assert last[F.SEQUENCE_LENGTH] == 5
    # No time in the log: step indices stand in for timestamps, sessions are step indices.
    assert last[F.SEQUENCE_TIMESTAMPS] == [3, 4, 5, 6, 7]
    first = chunks[0]
    assert first[F.SEQUENCE_ITEMS] == [0, 101, 102, 103, 104]   # overlaps the next by one
    assert first[F.SEQUENCE_SESSIONS] == [F.PADDING_SESSION, 0, 1, 2, 3]
    assert first[F.SEQUENCE_TIMESTAMPS] == [0, 0, 1, 2, 3]
    assert first[F.SEQUENCE_LENGTH] == 4


def test_leave_last_out_chunks_stop_before_the_test_target():
    items = list(range(101, 111))            # 10 items: test 110; 109 is a training label
    protocol = ProtocolConfig(name=LEAVE_LAST_OUT)
    chunks = list(user_chunks("u", items, None, WIN, protocol, SequenceSpec(history_length=4)))
    assert 110 not in {i for c in chunks for i in c[F.SEQUENCE_ITEMS]}
    assert sorted(i for c in chunks for i in chunk_labels(c)) == list(range(102, 110))
    assert chunks[-1][F.SEQUENCE_ITEMS] == [105, 106, 107, 108, 109]
    assert list(user_chunks("u", [1, 2], None, WIN, protocol, SequenceSpec(4))) == []


def test_short_users_give_no_chunk():
    assert list(user_chunks("u", [1, 2, 3], None, WIN, LOO, SequenceSpec(4))) == []
    assert len(list(user_chunks("u", [1, 2, 3, 4], None, WIN, LOO, SequenceSpec(4)))) == 1


def test_time_gap_sessions_and_timestamps():
    window = WindowConfig(ExampleSpec(history_length=4), session_mode=TIME_GAP,
                          session_gap_seconds=100)
    ts = [0, 10, 500, 510, 2000, 2010, 2020]
    [chunk] = user_chunks("u", [1, 2, 3, 4, 5, 6, 7], ts, window, LOO, SequenceSpec(8))
    assert chunk[F.SEQUENCE_ITEMS] == [0, 0, 0, 0, 1, 2, 3, 4, 5]
    assert chunk[F.SEQUENCE_TIMESTAMPS] == [0, 0, 0, 0, 0, 10, 500, 510, 2000]
    assert chunk[F.SEQUENCE_SESSIONS] == [-1, -1, -1, -1, 0, 0, 1, 1, 2]


def test_user_holdout_chunks_only_training_users():
    protocol = ProtocolConfig(name=USER_HOLDOUT, seed=3)
    spec = SequenceSpec(history_length=4)
    users = [f"user{i}" for i in range(200)]
    for user in users:
        chunks = list(user_chunks(user, list(range(1, 13)), None, WIN, protocol, spec))
        if holdout_split(user, protocol) == TRAIN:
            assert sorted(i for c in chunks for i in chunk_labels(c)) == list(range(2, 13))
        else:
            assert chunks == []


def test_chunk_example_round_trips_through_the_spec():
    spec = SequenceSpec(history_length=4)
    [chunk] = user_chunks("u", [5, 6, 7, 8, 9], None, WIN, LOO, spec)
    parsed = spec.parse(tf.constant([to_example(chunk).SerializeToString()]))
    assert parsed[F.SEQUENCE_ITEMS].numpy().tolist() == [[0, 0, 5, 6, 7]]
    assert parsed[F.SEQUENCE_LENGTH].numpy().tolist() == [3]
    assert parsed[F.USER_ID].numpy().tolist() == [b"u"]
    window = F.sequence_as_window(parsed)
    assert window[F.HISTORY].numpy().tolist() == [[0, 0, 5, 6]]
    assert window[F.TARGET].numpy().tolist() == [7]


def _random_users_chunks(seed, users, lengths, with_time, window, spec):
    """``users`` random logs (``lengths``: the range of their sizes; times in seconds, or
    ``None``), each as ``(user, items, times, its chunks as one int64 batch or None)``."""
    rng = np.random.default_rng(seed)
    for user in range(users):
        n = int(rng.integers(*lengths))
        items = [int(i) for i in rng.integers(1, 20, size=n)]
        times = (np.cumsum(rng.choice([0, 5, 60, 500, 10 ** 6], size=n)).tolist()
                 if with_time else None)
        chunks = list(user_chunks(str(user), items, times, window, LOO, spec))
        batch = ({name: tf.constant([c[name] for c in chunks], tf.int64)
                  for name in F.CHUNK_FEATURES} if chunks else None)
        yield str(user), items, times, batch


@pytest.mark.parametrize("with_time", [False, True])
def test_a_chunk_as_a_window_is_the_window_of_its_last_item(with_time):
    """``sequence_as_window`` gives a next-item model the window the preprocessing writes for
    the chunk's last item (``make_window`` with ``L`` = the chunk's inputs): its history,
    their timestamps (or step indices) and their time lags to the target."""
    from components.preprocessing.windows import make_window

    L = 5
    window = WindowConfig(ExampleSpec(history_length=L, num_time_lag_buckets=12))
    compared = 0
    for user, items, times, batch in _random_users_chunks(5, 20, (4, 30), with_time, window,
                                                          SequenceSpec(L)):
        got = F.sequence_as_window(batch, num_time_lag_buckets=12)
        for row, bounds in enumerate(chunk_bounds(len(items) - 2, SequenceSpec(L))):
            expected = make_window(user, items, times, bounds.stop - 1, window)
            for name in (F.HISTORY, F.HISTORY_TIMESTAMPS, F.HISTORY_TIME_LAG, F.TARGET):
                np.testing.assert_array_equal(got[name][row], expected[name], name)
            compared += 1
    assert compared >= 20


def test_beam_writes_the_same_chunks_as_the_in_memory_path(tmp_path):
    log = synthetic.SyntheticConfig(num_users=120, num_items=80, num_clusters=4)
    spec = SequenceSpec(history_length=12)
    window = WindowConfig(ExampleSpec(history_length=12))
    config = PreprocessConfig(window=window, sequences=spec)
    stats = run_preprocessing(readers.SyntheticLog(log), str(tmp_path), config)
    files = tf.io.gfile.glob(os.path.join(split_dir(str(tmp_path), TRAIN_SEQUENCES), "*.gz"))
    records = [r.numpy() for r in tf.data.TFRecordDataset(files, compression_type="GZIP")]
    written = spec.parse(tf.constant(records))
    expected = synthetic_arrays(log, window, sequences=spec).splits[TRAIN_SEQUENCES]

    def rows(arrays):
        return sorted((u.decode() if isinstance(u, bytes) else u, tuple(items))
                      for u, items in zip(np.asarray(arrays[F.USER_ID]),
                                          np.asarray(arrays[F.SEQUENCE_ITEMS]).tolist()))

    assert rows({k: v.numpy() for k, v in written.items()}) == rows(expected)
    # Every training window's target is a chunk label exactly once.
    assert stats["examples"][TRAIN_SEQUENCES] == len(records)
    assert stats["sequence_labels"] == stats["examples"]["train"]
    schema_path = os.path.join(str(tmp_path), SEQUENCE_SCHEMA_FILE)
    assert os.path.exists(schema_path)
    assert validate_examples(files, sequence_schema(spec, stats["items"])) == []


@pytest.mark.parametrize("protocol, held_out", [(LOO, 2), (ProtocolConfig(name=LEAVE_LAST_OUT), 1)])
def test_no_validation_or_test_target_is_a_training_label_on_all_of_ml1m(ml1m_dir, protocol,
                                                                        held_out):
    """Every ML-1M user: the chunks teach exactly the items before the first held-out target
    (leave-one-out: validation; leave-last-out: test), in order, once each; the held-out
    positions never appear, not even as inputs."""
    spec = SequenceSpec(history_length=200)
    sequences = {}
    with gzip.open(os.path.join(ml1m_dir, "sequences.txt.gz"), "rt") as f:
        for line in f:
            user, *items = line.split()
            sequences[user] = ([int(i) for i in items], None)
    arrays = chunks_to_arrays(sequences, WindowConfig(ExampleSpec(200)), protocol, spec)
    by_user = {}
    for user, row in zip(arrays[F.USER_ID], arrays[F.SEQUENCE_ITEMS]):
        by_user.setdefault(user.decode(), []).append(row[row != 0].tolist())
    assert len(by_user) == 6040
    total = 0
    for user, (items, _) in sequences.items():
        chunks = by_user[user]
        labels = [i for c in chunks for i in c[1:]]
        assert labels == items[1:-held_out], user
        inputs = Counter(i for c in chunks for i in c)
        for target in items[-held_out:]:
            assert target not in inputs or items.count(target) > 1
        total += len(labels)
    assert total == sum(len(items) - 1 - held_out for items, _ in sequences.values())


@pytest.mark.parametrize("mode, with_time", [("last_k", False), ("last_k", True),
                                             (TIME_GAP, True)])
def test_chunk_windows_equal_the_windows_preprocessing_writes(mode, with_time):
    """The trainer's windows of every chunk position are the preprocessing's own windows
    (``make_window``) wherever the chunk holds the window's whole history."""
    from components.preprocessing.windows import make_window
    from t2diff_tf.sequence_windows import chunk_windows

    window = WindowConfig(ExampleSpec(history_length=6, num_time_lag_buckets=12),
                          session_mode=mode, session_k=3, session_gap_seconds=100)
    spec = SequenceSpec(history_length=9)
    compared = 0
    for user, items, times, batch in _random_users_chunks(3, 30, (3, 40), with_time, window,
                                                          spec):
        if batch is None:
            continue
        got = chunk_windows(batch, window.sequence_windows())
        row = 0
        for bounds in chunk_bounds(len(items) - 2, spec):
            for p in list(bounds)[1:]:
                if bounds.start == 0 or p - bounds.start >= 6:
                    expected = make_window(user, items, times, p, window)
                    for name in F.QUERY_FEATURES + (F.TARGET,):
                        np.testing.assert_array_equal(got[name][row], expected[name], name)
                    compared += 1
                row += 1
        assert row == len(got[F.TARGET])
    assert compared > 300
