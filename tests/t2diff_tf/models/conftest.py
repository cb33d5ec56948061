"""Fixtures of the model tests: the order task every sequence model must solve."""

from typing import Optional, Sequence

import numpy as np
import pytest
import tensorflow as tf

from t2diff_tf import features as F


class OrderTask:
    """Histories that hold the same items in two orders, each order followed by its own item.

    Only the order tells the next item, so a bag-of-items user tower cannot solve it. ``n``
    windows of length ``length``, left-padded; the order of each window is a fair coin (seeded).
    """

    def __init__(self, first: Sequence[int] = (1, 2, 3), second: Sequence[int] = (3, 2, 1),
                 targets: Sequence[int] = (4, 5), n: int = 512, length: int = 6, seed: int = 0):
        rng = np.random.default_rng(seed)
        padding = [0] * (length - len(first))
        rows, next_items = [], []
        for _ in range(n):
            order = 0 if rng.random() < 0.5 else 1
            rows.append(padding + list((first, second)[order]))
            next_items.append(targets[order])
        history = np.array(rows, np.int64)
        self.targets = list(targets)
        self.data = {F.HISTORY: history, F.HISTORY_TIME_LAG: np.ones_like(history),
                     F.HISTORY_SESSION: np.zeros_like(history),
                     F.HISTORY_TIMESTAMPS: np.cumsum(history > 0, axis=1),
                     F.SESSION_LENGTH: np.full(n, len(first), np.int64),
                     F.TARGET: np.array(next_items, np.int64)}
        # One window of each order.
        self.probes = [next_items.index(targets[0]), next_items.index(targets[1])]

    def dataset(self, batch_size: int = 64) -> tf.data.Dataset:
        return tf.data.Dataset.from_tensor_slices(self.data).batch(batch_size)

    def predictions(self, model, rows: Optional[Sequence[int]] = None) -> np.ndarray:
        """The top-scored item of each row (default: the probes), by the model's exact scorer
        when it has one (``score_corpus``), else by ``e_u . e_i`` over the corpus."""
        rows = self.probes if rows is None else rows
        query = {name: tf.constant(self.data[name][rows]) for name in F.QUERY_FEATURES}
        if hasattr(model, "score_corpus"):
            scores = model.score_corpus(query)
        else:
            scores = model.query_embeddings(query) @ tf.transpose(model.corpus_embeddings())
        return tf.argmax(scores, axis=1).numpy() + 1

    def assert_learned(self, model, learning_rate: float, epochs: int,
                       rows: Optional[Sequence[int]] = None) -> None:
        """Trains ``model`` with Adam and checks it predicts every row's next item."""
        model.compile(optimizer=tf.keras.optimizers.Adam(learning_rate))
        model.fit(self.dataset(), epochs=epochs, verbose=0)
        rows = self.probes if rows is None else rows
        np.testing.assert_array_equal(self.predictions(model, rows), self.data[F.TARGET][rows])


@pytest.fixture
def order_task():
    """The :class:`OrderTask` class, to build a task with the orders a test needs."""
    return OrderTask
