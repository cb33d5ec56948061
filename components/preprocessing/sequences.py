"""From one user's time-ordered behaviours to training sequence chunks (pure Python, no Beam).

The sequence layout (``t2diff_tf.features.SequenceSpec``) gives a next-item model every training
interaction as a label once per epoch: a user's training prefix is cut, from the most recent item
backwards, into chunks of ``L + 1`` items that overlap by one item (the last input of one chunk
is the first of the next), so that each item after the user's first is a label in exactly one
chunk.

The training prefix is what the protocol allows a model to learn from:

* ``leave_one_out``: every item before the validation target (the last two items are the
  validation and test targets and never appear in a chunk, not even as inputs);
* ``user_holdout``: a training user's whole sequence; validation and test users give no chunk;
* ``leave_last_out``: every item before the test target.

The Beam pipeline calls :func:`user_chunks` per user; the in-memory path and the tests call it
directly, so the two can never disagree.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Dict, Iterator, List, Optional, Sequence


from components.preprocessing.config import LAST_K, LEAVE_LAST_OUT, LEAVE_ONE_OUT, TRAIN, \
    ProtocolConfig, WindowConfig
from components.preprocessing.windows import holdout_split, session_ids
from t2diff_tf import features as F

if TYPE_CHECKING:
    import tensorflow as tf

Chunk = Dict[str, object]


def training_prefix_length(user: str, n: int, protocol: ProtocolConfig) -> int:
    """How many of a user's ``n`` items (from the start) a model may train on."""
    if protocol.name == LEAVE_ONE_OUT:
        return n - 2 if n >= 3 else 0
    if protocol.name == LEAVE_LAST_OUT:
        return n - 1 if n >= 2 else 0
    return n if holdout_split(user, protocol) == TRAIN else 0


def chunk_bounds(n: int, spec: F.SequenceSpec) -> List[range]:
    """Index ranges of the chunks of a prefix of ``n`` items, oldest first.

    Chunks hold up to ``L + 1`` items and overlap by one, cut from the end, so the most recent
    chunk is full whenever the prefix is long enough; a prefix of one item gives no chunk (it has
    no label). ``spec.max_chunks_per_user`` keeps the latest chunks.
    """
    bounds = []
    end = n
    while end >= 2:
        start = max(0, end - spec.chunk_length)
        bounds.append(range(start, end))
        if start == 0:
            break
        end = start + 1
    if spec.max_chunks_per_user is not None:
        bounds = bounds[:spec.max_chunks_per_user]
    return bounds[::-1]


def user_chunks(user: str, items: Sequence[int], timestamps: Optional[Sequence[int]],
                window: WindowConfig, protocol: ProtocolConfig,
                spec: F.SequenceSpec) -> Iterator[Chunk]:
    """Every training chunk of one user (item ids 1..N in time order).

    Args:
      user: raw user id.
      items: the user's item ids in time order (validation and test targets included: the
        protocol decides what is cut off).
      timestamps: seconds per item, or ``None`` (step indices are stored instead).
      window: the session rule (time-gap sessions need timestamps).
      protocol: which prefix is training data.
      spec: chunk shape and cap.
    """
    n = training_prefix_length(user, len(items), protocol)
    if n < 2:
        return
    if window.session_mode == LAST_K:
        sessions = list(range(n))
    else:
        sessions = session_ids(timestamps, window, n)
    times = list(range(n)) if timestamps is None else [int(t) for t in timestamps[:n]]
    for positions in chunk_bounds(n, spec):
        pad = spec.chunk_length - len(positions)
        yield {
            F.USER_ID: user,
            F.SEQUENCE_ITEMS: [F.PADDING_ID] * pad + [int(items[j]) for j in positions],
            F.SEQUENCE_TIMESTAMPS: [0] * pad + [times[j] for j in positions],
            F.SEQUENCE_SESSIONS: [F.PADDING_SESSION] * pad + [sessions[j] for j in positions],
            F.SEQUENCE_LENGTH: len(positions),
        }


def chunk_labels(chunk: Chunk) -> List[int]:
    """The items a chunk teaches (every valid item but its first)."""
    valid = [i for i in chunk[F.SEQUENCE_ITEMS] if i != F.PADDING_ID]
    return valid[1:]


def to_example(chunk: Chunk) -> tf.train.Example:
    """A chunk as a ``tf.train.Example``."""
    return F.int64_example({name: chunk[name] for name in F.CHUNK_FEATURES + (F.SEQUENCE_LENGTH,)},
                           chunk[F.USER_ID])
