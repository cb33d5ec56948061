"""From one user's time-ordered behaviours to window examples (pure Python, no Beam).

The Beam pipeline calls these per user; the in-memory path and the tests call them directly, so
the two can never disagree.
"""

from __future__ import annotations

import hashlib
from typing import (TYPE_CHECKING, Dict, Iterator, List, NamedTuple, Optional, Sequence, Tuple,
                    Union)

import numpy as np

from components.preprocessing import example_bytes
from components.preprocessing.config import (LAST_K, LEAVE_LAST_OUT, LEAVE_ONE_OUT, TEST,
                                             TRAIN, VALIDATION, ProtocolConfig, WindowConfig)
from t2diff_tf import features as F

if TYPE_CHECKING:
    import tensorflow as tf

Window = Dict[str, object]


class UserHistory(NamedTuple):
    """One user's behaviours in time order: item ids (1..N) and their timestamps (``None``
    when the log has no time)."""

    user: str
    items: Sequence[int]
    timestamps: Optional[Sequence[int]]


def session_ids(timestamps: Optional[Sequence[int]], config: WindowConfig,
                length: int) -> List[int]:
    """Time-gap session number of every behaviour (0, 1, ... increasing with time): a new
    session starts after a gap of more than ``config.session_gap_seconds``.

    Only used by the ``time_gap`` mode; needs timestamps.
    """
    if timestamps is None:
        raise ValueError("session_mode='time_gap' needs timestamps; this log has none "
                         "(use session_mode='last_k')")
    times = np.asarray(timestamps[:length], np.int64)
    starts = np.diff(times) > config.session_gap_seconds
    return np.concatenate([[0], np.cumsum(starts)]).astype(np.int64)[:length].tolist()


def make_window(user: str, items: Sequence[int], timestamps: Optional[Sequence[int]],
                target_pos: int, config: WindowConfig,
                sessions: Optional[Sequence[int]] = None) -> Window:
    """The example whose target is ``items[target_pos]`` (``target_pos >= 1``).

    Args:
      user: raw user id.
      items: the user's item ids (1..N) in time order.
      timestamps: seconds per item, or ``None`` when the log has no time (lags are then counted
        in steps).
      target_pos: index of the target in ``items``.
      config: window shapes and session rule.
      sessions: precomputed :func:`session_ids` (time-gap mode); computed when omitted.
    """
    if not 1 <= target_pos < len(items):
        raise ValueError(f"target_pos must be in [1, {len(items)}), got {target_pos}")
    L = config.example.history_length
    start = max(0, target_pos - L)
    positions = range(start, target_pos)
    pad = L - len(positions)

    if config.session_mode == LAST_K:
        k = config.session_k
        sess = [(target_pos - 1 - j) // k for j in positions]
    else:
        if sessions is None:
            sessions = session_ids(timestamps, config, len(items))
        current = sessions[target_pos - 1]
        sess = [current - sessions[j] for j in positions]
    session_length = sum(1 for s in sess if s == 0)

    if timestamps is not None:
        t_target = timestamps[target_pos]
        lags = [config.example.time_lag_bucket(t_target - timestamps[j]) for j in positions]
        times = [int(timestamps[j]) for j in positions]
        target_ts = int(t_target)
    else:
        lags = [config.example.time_lag_bucket(target_pos - j) for j in positions]
        times = list(positions)  # step indices
        target_ts = 0

    return {
        F.USER_ID: user,
        F.HISTORY: [F.PADDING_ID] * pad + [int(items[j]) for j in positions],
        F.HISTORY_TIME_LAG: [0] * pad + lags,
        F.HISTORY_SESSION: [F.PADDING_SESSION] * pad + sess,
        F.HISTORY_TIMESTAMPS: [0] * pad + times,
        F.SESSION_LENGTH: session_length,
        F.TARGET: int(items[target_pos]),
        F.TARGET_TIMESTAMP: target_ts,
    }


def serving_window(user: str, items: Sequence[int], timestamps: Optional[Sequence[int]],
                   config: WindowConfig) -> Window:
    """The window that asks for a user's *next* item, after everything the log holds: the last
    ``L`` behaviours, the last one included (what online serving and nightly batch candidates
    embed; ``make_window`` windows end before a known target). It has no ``target``. Time lags
    are measured to the user's latest behaviour (its own lag is 0 seconds), or, without time,
    counted in steps to the next position (the latest is 1 step back), as ``make_window`` counts
    them; ``target_timestamp`` is that latest timestamp (0 without time)."""
    if len(items) < 1:
        raise ValueError("a serving window needs at least one behaviour")
    # The window of a next item appended at the latest time, without that item.
    window = make_window(user, list(items) + [F.PADDING_ID],
                         None if timestamps is None else list(timestamps) + [timestamps[-1]],
                         len(items), config)
    del window[F.TARGET]
    return window


def serving_example(window: Window) -> tf.train.Example:
    """A serving window as a ``tf.train.Example`` (no ``target``)."""
    return F.int64_example({name: window[name] for name in F.QUERY_FEATURES
                            + (F.TARGET_TIMESTAMP,)}, window[F.USER_ID])


def serving_window_example(user: str, items: Sequence[int],
                           timestamps: Optional[Sequence[int]], config: WindowConfig) -> bytes:
    """The serialized :func:`serving_example` of :func:`serving_window` (the same bytes as its
    ``SerializeToString(deterministic=True)``; a test holds them equal), from
    :func:`window_arrays` without a proto."""
    return serving_window_examples([UserHistory(user, items, timestamps)], config)[0]


def serving_window_examples(histories: Sequence[UserHistory], config: WindowConfig
                            ) -> List[bytes]:
    """:func:`serving_window_example` of many users at once, in the order of ``histories``."""
    out = [b""] * len(histories)
    for rows, group in _grouped_by_time(histories):
        lengths = [len(h.items) for h in group]
        if min(lengths, default=1) < 1:
            raise ValueError("a serving window needs at least one behaviour")
        # The window of a next item appended at each user's latest time, without that item.
        items = [list(h.items) + [F.PADDING_ID] for h in group]
        times = (None if group[0].timestamps is None
                 else [list(h.timestamps) + [h.timestamps[-1]] for h in group])
        first = np.cumsum([0] + [n + 1 for n in lengths[:-1]])
        features = window_arrays([h.user for h in group], np.concatenate(items),
                                 None if times is None else np.concatenate(times),
                                 first + np.array(lengths, np.int64), config, first=first)
        examples = example_bytes.int64_examples(
            {name: features[name] for name in F.QUERY_FEATURES + (F.TARGET_TIMESTAMP,)},
            [h.user for h in group])
        for row, example in zip(rows, examples):
            out[row] = example
    return out


def _grouped_by_time(histories: Sequence[UserHistory]
                     ) -> Iterator[Tuple[List[int], List[UserHistory]]]:
    """``histories`` split into those with timestamps and those without (one log has one or
    the other; a mixed batch is computed in two parts), each with its rows in ``histories``."""
    for timed in (True, False):
        rows = [r for r, h in enumerate(histories) if (h.timestamps is not None) == timed]
        if rows:
            yield rows, [histories[r] for r in rows]


def user_fraction(user: str, seed: int) -> float:
    """A uniform number in [0, 1) fixed by ``(seed, user)``: stable across runs and runners."""
    digest = hashlib.sha256(f"{seed}:{user}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2.0 ** 64


def holdout_split(user: str, protocol: ProtocolConfig) -> str:
    """The split a user belongs to under the user hold-out protocol."""
    u = user_fraction(user, protocol.seed)
    if u < protocol.test_fraction:
        return TEST
    if u < protocol.test_fraction + (1.0 - protocol.test_fraction) * protocol.validation_fraction:
        return VALIDATION
    return TRAIN


def target_positions(user: str, n: int, protocol: ProtocolConfig) -> List[Tuple[str, int]]:
    """``(split, target position)`` pairs of a user with ``n`` behaviours (``n >= 2``)."""
    cap = protocol.max_train_windows_per_user
    if protocol.name == LEAVE_ONE_OUT:
        if n < 3:
            return []
        train = list(range(1, n - 2))
        if cap is not None:
            train = train[-cap:]
        return [(TRAIN, p) for p in train] + [(VALIDATION, n - 2), (TEST, n - 1)]
    if protocol.name == LEAVE_LAST_OUT:
        train = list(range(1, n - 1))
        if cap is not None:
            train = train[-cap:]
        return [(TRAIN, p) for p in train] + [(TEST, n - 1)]
    split = holdout_split(user, protocol)
    if split != TRAIN:
        return [(split, n - 1)]
    train = list(range(protocol.min_target_position, n)) or [n - 1]
    if cap is not None:
        train = train[-cap:]
    return [(TRAIN, p) for p in train]


def time_lag_buckets(gaps: np.ndarray, num_buckets: int) -> np.ndarray:
    """:func:`t2diff_tf.features.time_lag_bucket` of an int array of gaps ``>= 0``, exact below
    ``2**53``: ``frexp`` returns the bit length of ``1 + g`` as the exponent."""
    return np.minimum(num_buckets - 1, np.frexp((gaps + 1).astype(np.float64))[1])


class UserWindowArrays(NamedTuple):
    """Every window of one user, feature by feature: ``splits[r]`` and ``target_positions[r]``
    name row ``r``; ``features`` maps each of ``features.SEQUENCE_FEATURES`` to ``[rows, L]``
    and each of ``features.SCALAR_FEATURES`` to ``[rows]`` (int64)."""

    splits: List[str]
    target_positions: List[int]
    features: Dict[str, np.ndarray]


def window_arrays(user: Union[str, Sequence[str]], items: Sequence[int],
                  timestamps: Optional[Sequence[int]], positions: np.ndarray,
                  window: WindowConfig, first: Optional[np.ndarray] = None
                  ) -> Dict[str, np.ndarray]:
    """:func:`make_window` of each target position in ``positions`` ``[P]``, computed for all
    of them at once with numpy (the preprocessing's hot loop: a Python loop per window position
    costs about 4x more; a test checks that the two agree).

    Args:
      user: the user (or, with ``first``, the user of each row ``[P]``), for error messages.
      items, timestamps: ``[N]`` behaviours in time order; several users' one after another
        when ``first`` is given.
      positions: ``[P]`` target indices into ``items``.
      first: ``[P]`` the index of the first behaviour of each row's user (the window looks
        back no further); 0 for every row by default. Each position is ``>= first + 1``.

    Returns each of ``features.SEQUENCE_FEATURES`` as ``[P, L]`` and each of
    ``features.SCALAR_FEATURES`` as ``[P]`` (int64).
    """
    L = window.example.history_length
    first = np.zeros_like(positions) if first is None else np.asarray(first, np.int64)
    index = positions[:, None] + np.arange(-L, 0)                    # [P, L] behaviour indices
    valid = index >= first[:, None]
    safe = np.where(valid, index, 0)
    ids = np.asarray(items, np.int64)
    history = np.where(valid, ids[safe], F.PADDING_ID)

    if window.session_mode == LAST_K:
        back = (positions[:, None] - 1 - index) // window.session_k
    else:
        # Session numbers over all users' behaviours at once: only differences within one
        # user's behaviours are used, so numbering across users' boundaries does not matter.
        numbers = np.asarray(session_ids(timestamps, window, len(items)), np.int64)
        back = numbers[positions - 1][:, None] - numbers[safe]
    session = np.where(valid, back, F.PADDING_SESSION)
    session_length = (session == 0).sum(axis=1)

    if timestamps is not None:
        times = np.asarray(timestamps, np.int64)
        gaps = times[positions][:, None] - times[safe]
        history_times = times[safe]
        target_times = times[positions]
    else:
        gaps = positions[:, None] - index
        history_times = index - first[:, None]  # step indices in each user's log
        target_times = np.zeros_like(positions)
    backwards = valid & (gaps < 0)
    if backwards.any():
        row = int(np.flatnonzero(backwards.any(axis=1))[0])
        name = user if isinstance(user, str) else user[row]
        raise ValueError(f"time gap must be >= 0, got {int(gaps[backwards].min())} "
                         f"(user {name}'s behaviours are not in time order)")
    lags = np.where(valid, time_lag_buckets(np.maximum(gaps, 0), window.example.num_time_lag_buckets),
                    0)
    return {F.HISTORY: history, F.HISTORY_TIME_LAG: lags, F.HISTORY_SESSION: session,
            F.HISTORY_TIMESTAMPS: np.where(valid, history_times, 0),
            F.SESSION_LENGTH: session_length, F.TARGET: ids[positions],
            F.TARGET_TIMESTAMP: target_times}


def user_window_arrays(user: str, items: Sequence[int], timestamps: Optional[Sequence[int]],
                       window: WindowConfig, protocol: ProtocolConfig
                       ) -> Optional[UserWindowArrays]:
    """Every window of one user under ``protocol`` (:func:`window_arrays` of its target
    positions); ``None`` when the user has no target."""
    targets = target_positions(user, len(items), protocol)
    if not targets:
        return None
    positions = np.fromiter((p for _, p in targets), np.int64, len(targets))
    return UserWindowArrays(splits=[split for split, _ in targets],
                            target_positions=positions.tolist(),
                            features=window_arrays(user, items, timestamps, positions, window))


def user_windows(user: str, items: Sequence[int], timestamps: Optional[Sequence[int]],
                 window: WindowConfig, protocol: ProtocolConfig
                 ) -> Iterator[Tuple[str, Window]]:
    """Every ``(split, window)`` of one user under ``protocol``, as :func:`make_window` dicts
    (from :func:`user_window_arrays`)."""
    arrays = user_window_arrays(user, items, timestamps, window, protocol)
    if arrays is None:
        return
    values = {name: a.tolist() for name, a in arrays.features.items()}
    for row, split in enumerate(arrays.splits):
        yield split, {F.USER_ID: user, **{name: v[row] for name, v in values.items()}}


def user_window_examples(user: str, items: Sequence[int], timestamps: Optional[Sequence[int]],
                         window: WindowConfig, protocol: ProtocolConfig
                         ) -> Dict[str, List[bytes]]:
    """The serialized examples of every window of one user, by split, in target order: the
    bytes of ``to_example(w).SerializeToString(deterministic=True)`` for each ``w`` of
    :func:`user_windows`, written without a proto per window
    (``example_bytes.int64_examples``; a test holds the two equal)."""
    return users_window_examples([UserHistory(user, items, timestamps)], window, protocol)


def users_window_examples(histories: Sequence[UserHistory], window: WindowConfig,
                          protocol: ProtocolConfig) -> Dict[str, List[bytes]]:
    """:func:`user_window_examples` of many users at once: by split, user after user in the
    order of ``histories`` (those with timestamps before those without, when a batch mixes
    them), each user's in target order.

    One numpy pass builds every window of the batch (the users' behaviours laid end to end,
    each window bounded by its user's first behaviour), and one
    ``example_bytes.int64_examples`` call serializes them: the per-user cost of many small
    numpy calls is paid once per batch.
    """
    examples: Dict[str, List[bytes]] = {}
    for _, group in _grouped_by_time(histories):
        splits: List[str] = []
        positions: List[int] = []
        firsts: List[int] = []
        users: List[str] = []
        offset = 0
        for history in group:
            targets = target_positions(history.user, len(history.items), protocol)
            splits += [split for split, _ in targets]
            positions += [offset + p for _, p in targets]
            firsts += [offset] * len(targets)
            users += [history.user] * len(targets)
            offset += len(history.items)
        if not positions:
            continue
        timed = group[0].timestamps is not None
        features = window_arrays(
            users, np.concatenate([np.asarray(h.items, np.int64) for h in group]),
            np.concatenate([np.asarray(h.timestamps, np.int64) for h in group]) if timed else None,
            np.array(positions, np.int64), window, first=np.array(firsts, np.int64))
        for split, example in zip(splits, example_bytes.int64_examples(features, users)):
            examples.setdefault(split, []).append(example)
    return examples


def to_example(window: Window) -> tf.train.Example:
    """A window as a ``tf.train.Example``."""
    return F.int64_example({name: window[name] for name in F.SEQUENCE_FEATURES + F.SCALAR_FEATURES},
                           window[F.USER_ID])
