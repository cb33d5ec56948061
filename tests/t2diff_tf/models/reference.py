"""Shared inputs and numpy references of the model tests (imported as
``tests.t2diff_tf.models.reference``; pytest.ini puts the repository root on the path)."""

import numpy as np
import tensorflow as tf

from t2diff_tf import features as F


def two_windows(history=((0, 0, 3, 5, 2, 7), (1, 2, 3, 4, 5, 6))):
    """Two windows of length 6, by default one left-padded (4 behaviours) and one full; the
    session is every valid behaviour; targets 9 and 8."""
    history = np.array(history, np.int64)
    return {F.HISTORY: tf.constant(history),
            F.HISTORY_TIME_LAG: tf.ones_like(history), F.HISTORY_SESSION: tf.zeros_like(history),
            F.SESSION_LENGTH: tf.constant((history > 0).sum(axis=1), tf.int64),
            F.TARGET: tf.constant([9, 8], tf.int64)}


def next_item_softmax_loss(states: np.ndarray, corpus: np.ndarray, features) -> float:
    """Mean softmax cross-entropy of every valid position's next item (the history's own next
    behaviour, then the target) over the corpus ``[N, d]``, from states ``[batch, L, d]``."""
    history = np.asarray(features[F.HISTORY])
    labels = np.concatenate([history[:, 1:], np.asarray(features[F.TARGET])[:, None]], axis=1)
    losses = []
    for b, t in zip(*np.nonzero(history)):
        logits = corpus @ states[b, t]
        logits = logits - logits.max()
        losses.append(np.log(np.exp(logits).sum()) - logits[labels[b, t] - 1])
    assert len(losses) == int((history > 0).sum())
    return float(np.mean(losses))


def squared_wasserstein_numpy(mean1, cov1, mean2, cov2):
    """Squared 2-Wasserstein distance between diagonal Gaussians (numpy, broadcast)."""
    return (((mean1 - mean2) ** 2).sum(-1)
            + ((np.sqrt(cov1) - np.sqrt(cov2)) ** 2).sum(-1))
