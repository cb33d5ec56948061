"""Which positions of a left-padded ``history`` are valid, in the session, or long-term.

With ``L`` positions (oldest first, padding 0 on the left) and ``s = min(session_length, K)``:

* the **session** is the last ``s`` valid behaviours, read through a window of the last ``K``
  positions (``K = session_size``) so that its tensors have a fixed length;
* the **long-term history** is every valid behaviour before the session.

Positions ``L - K .. L - s - 1`` of the window are masked out of the session and belong to the
long-term history, so every valid behaviour is in exactly one of the two.
"""

from __future__ import annotations

from typing import NamedTuple

import tensorflow as tf

from t2diff_tf import features as F


class BehaviourMasks(NamedTuple):
    """Boolean masks of one batch.

    Attributes:
      valid: ``[batch, L]``, ``history != 0``.
      session: ``[batch, K]``, the session inside the window of the last ``K`` positions.
      long_term: ``[batch, L]``, valid behaviours before the session.
    """

    valid: tf.Tensor
    session: tf.Tensor
    long_term: tf.Tensor


def behaviour_masks(history: tf.Tensor, session_length: tf.Tensor, session_size: int
                    ) -> BehaviourMasks:
    """Masks of ``history`` ``[batch, L]`` given ``session_length`` ``[batch]`` and ``K``.

    ``K`` is capped at ``L``; the window is ``history[:, L - K:]``.
    """
    length = history.shape[1]
    if length is None:
        raise ValueError("history must have a static length L")
    window = min(int(session_size), length)
    valid = tf.not_equal(history, F.PADDING_ID)
    s = tf.clip_by_value(tf.cast(tf.reshape(session_length, [-1]), tf.int32), 0, window)
    positions = tf.range(length)[None, :]
    in_session = positions >= length - s[:, None]
    session = tf.logical_and(in_session, valid)[:, length - window:]
    long_term = tf.logical_and(tf.logical_not(in_session), valid)
    return BehaviourMasks(valid=valid, session=session, long_term=long_term)
