"""Windows, sessions, time lags and protocol splits (pure Python, no Beam)."""

import numpy as np
import pytest
import tensorflow as tf

from components.preprocessing.config import (LEAVE_LAST_OUT, TEST, TIME_GAP, TRAIN,
                                             USER_HOLDOUT, VALIDATION, ProtocolConfig,
                                             WindowConfig)
from components.preprocessing.windows import (holdout_split, make_window, target_positions,
                                              to_example, user_window_examples, user_windows)
from t2diff_tf import features as F
from t2diff_tf.features import ExampleSpec, time_lag_bucket

WIN = WindowConfig(ExampleSpec(history_length=6), session_k=2)


def test_window_left_pads_and_keeps_latest_behaviours():
    items = [11, 12, 13, 14, 15, 16, 17, 18, 19]
    w = make_window("u", items, None, target_pos=3, config=WIN)
    assert w[F.HISTORY] == [0, 0, 0, 11, 12, 13]
    assert w[F.TARGET] == 14
    assert w[F.HISTORY_SESSION] == [-1, -1, -1, 1, 0, 0]
    assert w[F.SESSION_LENGTH] == 2
    # Without timestamps the lag counts steps: 3, 2, 1 -> log2 buckets 1 + floor(log2(1 + g)).
    assert w[F.HISTORY_TIME_LAG] == [0, 0, 0, 3, 2, 2]
    assert w[F.TARGET_TIMESTAMP] == 0

    w = make_window("u", items, None, target_pos=8, config=WIN)
    assert w[F.HISTORY] == [13, 14, 15, 16, 17, 18]  # truncated to the latest L
    assert w[F.HISTORY_SESSION] == [2, 2, 1, 1, 0, 0]


def test_time_gap_sessions_and_lags_in_seconds():
    cfg = WindowConfig(ExampleSpec(history_length=5), session_mode=TIME_GAP,
                       session_gap_seconds=1800)
    ts = [0, 60, 10_000, 10_100, 10_200, 50_000]
    w = make_window("u", [1, 2, 3, 4, 5, 6], ts, target_pos=5, config=cfg)
    assert w[F.HISTORY] == [1, 2, 3, 4, 5]
    assert w[F.HISTORY_SESSION] == [1, 1, 0, 0, 0]
    assert w[F.SESSION_LENGTH] == 3
    assert w[F.HISTORY_TIME_LAG] == [time_lag_bucket(50_000 - t, 32) for t in ts[:5]]
    assert w[F.TARGET_TIMESTAMP] == 50_000


def test_time_gap_without_timestamps_is_a_clear_error():
    cfg = WindowConfig(session_mode=TIME_GAP)
    with pytest.raises(ValueError, match="needs timestamps"):
        list(user_windows("u", [1, 2, 3, 4], None, cfg, ProtocolConfig()))


def test_time_lag_bucket_closed_form():
    assert time_lag_bucket(0, 32) == 1
    assert time_lag_bucket(1, 32) == 2
    assert time_lag_bucket(3, 32) == 3
    assert time_lag_bucket(2 ** 40, 32) == 31
    with pytest.raises(ValueError):
        time_lag_bucket(-1, 32)


def test_leave_one_out_positions_and_cap():
    assert target_positions("u", 6, ProtocolConfig()) == [
        (TRAIN, 1), (TRAIN, 2), (TRAIN, 3), (VALIDATION, 4), (TEST, 5)]
    capped = ProtocolConfig(max_train_windows_per_user=2)
    assert target_positions("u", 6, capped) == [
        (TRAIN, 2), (TRAIN, 3), (VALIDATION, 4), (TEST, 5)]
    assert target_positions("u", 2, ProtocolConfig()) == []


def test_leave_one_out_never_trains_on_validation_or_test_targets():
    items = list(range(1, 40))
    windows = list(user_windows("u", items, None, WIN, ProtocolConfig()))
    train_targets = {w[F.TARGET] for s, w in windows if s == TRAIN}
    assert items[-1] not in train_targets and items[-2] not in train_targets
    test = [w for s, w in windows if s == TEST]
    assert len(test) == 1 and test[0][F.HISTORY][-1] == items[-2]


def test_leave_last_out_trains_up_to_the_test_target_and_has_no_validation():
    """The HSTU papers' split: the second to last item is a training target; the test window
    is leave-one-out's."""
    protocol = ProtocolConfig(name=LEAVE_LAST_OUT)
    assert target_positions("u", 6, protocol) == [
        (TRAIN, 1), (TRAIN, 2), (TRAIN, 3), (TRAIN, 4), (TEST, 5)]
    capped = ProtocolConfig(name=LEAVE_LAST_OUT, max_train_windows_per_user=2)
    assert target_positions("u", 6, capped) == [(TRAIN, 3), (TRAIN, 4), (TEST, 5)]
    assert target_positions("u", 2, protocol) == [(TEST, 1)]
    assert protocol.min_sequence_length == 2 and not protocol.has_validation
    assert ProtocolConfig().has_validation
    items = list(range(1, 40))
    windows = list(user_windows("u", items, None, WIN, protocol))
    assert {s for s, _ in windows} == {TRAIN, TEST}
    assert items[-1] not in {w[F.TARGET] for s, w in windows if s == TRAIN}
    [test] = [w for s, w in windows if s == TEST]
    [loo_test] = [w for s, w in user_windows("u", items, None, WIN, ProtocolConfig())
                  if s == TEST]
    for name in test:
        np.testing.assert_array_equal(test[name], loo_test[name])


def test_user_holdout_split_is_seeded_and_proportional():
    protocol = ProtocolConfig(name=USER_HOLDOUT, seed=3)
    splits = [holdout_split(str(u), protocol) for u in range(20_000)]
    share = {s: splits.count(s) / len(splits) for s in (TRAIN, VALIDATION, TEST)}
    assert share[TEST] == pytest.approx(0.2, abs=0.01)
    assert share[VALIDATION] == pytest.approx(0.08, abs=0.01)
    assert splits == [holdout_split(str(u), protocol) for u in range(20_000)]
    other = [holdout_split(str(u), ProtocolConfig(name=USER_HOLDOUT, seed=4)) for u in range(2000)]
    assert other != splits[:2000]


def test_user_holdout_training_windows_follow_the_paper():
    protocol = ProtocolConfig.paper()
    train_user = next(str(u) for u in range(100) if holdout_split(str(u), protocol) == TRAIN)
    test_user = next(str(u) for u in range(100) if holdout_split(str(u), protocol) == TEST)
    assert target_positions(train_user, 80, protocol) == [(TRAIN, p) for p in range(70, 80)]
    assert target_positions(train_user, 30, protocol) == [(TRAIN, 29)]
    assert target_positions(test_user, 80, protocol) == [(TEST, 79)]


def test_example_round_trip_through_the_feature_spec():
    spec = ExampleSpec(history_length=6)
    w = make_window("user-7", [5, 6, 7, 8], None, 3, WindowConfig(spec))
    # tf.constant, not np.array: fixed-width numpy bytes drop a trailing NUL of the record.
    parsed = spec.parse(tf.constant([to_example(w).SerializeToString()]))
    assert parsed[F.USER_ID].numpy()[0] == b"user-7"
    np.testing.assert_array_equal(parsed[F.HISTORY].numpy()[0], w[F.HISTORY])
    np.testing.assert_array_equal(parsed[F.HISTORY_SESSION].numpy()[0], w[F.HISTORY_SESSION])
    assert parsed[F.TARGET].numpy()[0] == 8


def _random_histories(seed, users, max_length, max_item, gaps, with_time, start=0):
    """``(user, items, timestamps or None)`` of seeded random users: 2 to ``max_length - 1``
    items below ``max_item``, times ``start`` + running sums of draws from ``gaps``."""
    rng = np.random.default_rng(seed)
    for user in range(users):
        n = int(rng.integers(2, max_length))
        items = [int(i) for i in rng.integers(1, max_item, size=n)]
        times = ((np.cumsum(rng.choice(gaps, size=n)) + start).tolist() if with_time else None)
        yield str(user), items, times


@pytest.mark.parametrize("mode, with_time, protocol", [
    ("last_k", False, ProtocolConfig()),
    ("last_k", True, ProtocolConfig(max_train_windows_per_user=3)),
    (TIME_GAP, True, ProtocolConfig()),
    (TIME_GAP, True, ProtocolConfig(name=LEAVE_LAST_OUT)),
    (TIME_GAP, True, ProtocolConfig(name=USER_HOLDOUT, max_train_windows_per_user=None,
                                    min_target_position=4)),
])
def test_user_windows_at_once_equal_make_window_one_at_a_time(mode, with_time, protocol):
    """The vectorised windows are the reference ``make_window``'s, field for field."""
    window = WindowConfig(ExampleSpec(history_length=7, num_time_lag_buckets=40),
                          session_mode=mode, session_k=3, session_gap_seconds=100)
    # Gaps from 0 to past 2**49 (where a float log2 of 2**k - 1 rounds up).
    for user, items, times in _random_histories(4, 40, 30, 30, [0, 1, 7, 100, 101, 2 ** 49 - 2],
                                                with_time):
        got = list(user_windows(user, items, times, window, protocol))
        expected = [(split, make_window(user, items, times, pos, window))
                    for split, pos in target_positions(user, len(items), protocol)]
        assert got == expected


@pytest.mark.parametrize("mode, with_time, protocol", [
    ("last_k", False, ProtocolConfig()),
    (TIME_GAP, True, ProtocolConfig(max_train_windows_per_user=4)),
    (TIME_GAP, True, ProtocolConfig(name=USER_HOLDOUT, max_train_windows_per_user=None,
                                    min_target_position=4)),
])
def test_user_window_examples_are_the_bytes_of_each_window_proto(mode, with_time, protocol):
    """What the preprocessing writes (no proto per window) is byte for byte the deterministic
    serialization of ``to_example`` of each window, split by split in target order."""
    window = WindowConfig(ExampleSpec(history_length=6, num_time_lag_buckets=40),
                          session_mode=mode, session_k=2, session_gap_seconds=100)
    for user, items, times in _random_histories(5, 30, 25, 200_000, [0, 1, 100, 101, 2 ** 40],
                                                with_time, start=1_600_000_000):
        expected = {}
        for split, w in user_windows(user, items, times, window, protocol):
            expected.setdefault(split, []).append(
                to_example(w).SerializeToString(deterministic=True))
        assert user_window_examples(user, items, times, window, protocol) == expected


@pytest.mark.parametrize("mode", ["last_k", TIME_GAP])
def test_many_users_at_once_are_each_users_examples_in_turn(mode):
    """A batch of users laid end to end (what the Beam step serializes) gives each user's own
    examples and serving example: no window looks back into the previous user's behaviours,
    and sessions and lags restart at every user; a log without time mixed in is computed
    after the timed users."""
    from components.preprocessing.windows import (UserHistory, serving_window_example,
                                                  serving_window_examples,
                                                  users_window_examples)

    window = WindowConfig(ExampleSpec(history_length=6, num_time_lag_buckets=40),
                          session_mode=mode, session_k=2, session_gap_seconds=100)
    protocol = ProtocolConfig(max_train_windows_per_user=4)
    timed = [UserHistory(*h) for h in _random_histories(
        7, 12, 12, 50, [0, 1, 100, 101, 2 ** 40], True, start=1_600_000_000)]
    # Later users start earlier in time than earlier users end: boundaries must not leak.
    timed[3] = timed[3]._replace(timestamps=[t - 10 ** 12 for t in timed[3].timestamps])
    untimed = ([UserHistory(*h) for h in _random_histories(8, 5, 12, 50, [0], False)]
               if mode == "last_k" else [])
    histories = timed[:6] + untimed + timed[6:]

    expected = {}
    for h in timed + untimed:
        for split, examples in user_window_examples(*h, window, protocol).items():
            expected.setdefault(split, []).extend(examples)
    assert users_window_examples(histories, window, protocol) == expected
    assert serving_window_examples(histories, window) == [
        serving_window_example(*h, window) for h in histories]


def test_out_of_time_order_in_a_batch_names_the_user():
    from components.preprocessing.windows import UserHistory, users_window_examples

    histories = [UserHistory("a", [1, 2, 3, 4], [1, 2, 3, 4]),
                 UserHistory("b", [1, 2, 3, 4], [10, 5, 20, 30])]
    with pytest.raises(ValueError, match="user b's behaviours are not in time order"):
        users_window_examples(histories, WIN, ProtocolConfig())


def test_user_windows_refuse_behaviours_out_of_time_order():
    with pytest.raises(ValueError, match="time order"):
        list(user_windows("u", [1, 2, 3, 4], [10, 5, 20, 30], WIN, ProtocolConfig()))


@pytest.mark.parametrize("mode, with_time", [("last_k", False), ("last_k", True),
                                             (TIME_GAP, True)])
def test_serving_window_is_the_window_of_a_next_item_at_the_latest_time(mode, with_time):
    """A serving window is ``make_window``'s window for an item appended after the latest one
    (at the latest timestamp), without the target: the last behaviour is in the history."""
    from components.preprocessing.windows import (serving_example, serving_window,
                                                  serving_window_example)

    window = WindowConfig(ExampleSpec(history_length=6), session_mode=mode, session_k=2,
                          session_gap_seconds=100)
    rng = np.random.default_rng(5)
    for n in (1, 2, 5, 6, 7, 20):
        items = [int(i) for i in rng.integers(1, 30, size=n)]
        times = np.cumsum(rng.choice([0, 50, 500], size=n)).tolist() if with_time else None
        got = serving_window("u", items, times, window)
        extended = make_window("u", items + [1], None if times is None else times + [times[-1]],
                               n, window)
        del extended[F.TARGET]
        assert got == extended
        assert got[F.HISTORY][-1] == items[-1]
        # Closed forms: the latest behaviour is 0 s (bucket 1) or 1 step (bucket 2) back.
        assert got[F.HISTORY_TIME_LAG][-1] == (1 if with_time else 2)
        assert got[F.TARGET_TIMESTAMP] == (times[-1] if with_time else 0)
        assert got[F.HISTORY_SESSION][-1] == 0 and F.TARGET not in got
        # What the preprocessing writes: the same bytes, without a proto.
        assert serving_window_example("u", items, times, window) == serving_example(
            got).SerializeToString(deterministic=True)
