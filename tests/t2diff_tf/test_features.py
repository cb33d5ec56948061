"""The example contract's writer: bytes and parse round trip."""

import numpy as np
import pytest
import tensorflow as tf

from t2diff_tf import features as F


def _reference(values, user_id):
    feature = {name: tf.train.Feature(int64_list=tf.train.Int64List(
        value=list(np.atleast_1d(v)))) for name, v in values.items()}
    feature[F.USER_ID] = tf.train.Feature(bytes_list=tf.train.BytesList(value=[user_id.encode()]))
    return tf.train.Example(features=tf.train.Features(feature=feature))


def test_int64_example_writes_the_bytes_of_one_feature_per_list():
    values = {F.HISTORY: [0, 0, 5, 2 ** 40], F.HISTORY_TIME_LAG: [0, 0, 3, 31],
              F.HISTORY_SESSION: [-1, -1, 1, 0], F.HISTORY_TIMESTAMPS: [0, 0, 10, 20],
              F.SESSION_LENGTH: 1, F.TARGET: np.int64(7), F.TARGET_TIMESTAMP: 0}
    got = F.int64_example(values, "user-ü").SerializeToString(deterministic=True)
    assert got == _reference(values, "user-ü").SerializeToString(deterministic=True)
    parsed = F.ExampleSpec(history_length=4).parse(tf.constant([got]))
    np.testing.assert_array_equal(parsed[F.HISTORY_SESSION][0], [-1, -1, 1, 0])
    assert parsed[F.USER_ID][0].numpy().decode() == "user-ü"
    # numpy rows are lists too.
    values[F.HISTORY] = np.array(values[F.HISTORY])
    assert F.int64_example(values, "user-ü").SerializeToString(deterministic=True) == got


def test_model_example_spec_covers_chunks_longer_than_the_windows():
    windows = F.ExampleSpec(history_length=50)
    longer = F.model_example_spec(windows, F.SequenceSpec(history_length=200))
    assert longer.history_length == 50 and longer.positions == 200
    assert longer.feature_spec()[F.HISTORY].shape == [50]  # windows parse as before
    # Chunks no longer than the windows, or none: the spec is unchanged.
    assert F.model_example_spec(windows, F.SequenceSpec(history_length=50)) is windows
    assert F.model_example_spec(windows, None) is windows
    assert windows.positions == 50
    with pytest.raises(ValueError, match="max_positions"):
        F.ExampleSpec(history_length=50, max_positions=20)


def test_trim_window_padding_keeps_one_shared_padding_column():
    history = tf.constant([[0, 0, 0, 0, 5, 6], [0, 0, 0, 7, 8, 9]], tf.int64)
    features = {F.HISTORY: history, F.HISTORY_TIME_LAG: history * 10,
                F.HISTORY_SESSION: history - 1, F.SESSION_LENGTH: tf.constant([2, 3], tf.int64),
                F.SEEN_ITEMS: tf.constant([[0, 0, 5, 6, 1, 2], [0, 7, 8, 9, 3, 4]], tf.int64)}
    trimmed = F.trim_window_padding(features)
    np.testing.assert_array_equal(trimmed[F.HISTORY], [[0, 0, 5, 6], [0, 7, 8, 9]])
    np.testing.assert_array_equal(trimmed[F.HISTORY_TIME_LAG], [[0, 0, 50, 60], [0, 70, 80, 90]])
    np.testing.assert_array_equal(trimmed[F.HISTORY_SESSION], [[-1, -1, 4, 5], [-1, 6, 7, 8]])
    # Features that are not per behaviour are left alone.
    np.testing.assert_array_equal(trimmed[F.SEEN_ITEMS], features[F.SEEN_ITEMS])
    np.testing.assert_array_equal(trimmed[F.SESSION_LENGTH], [2, 3])
    # A full row keeps every column.
    full = F.trim_window_padding({F.HISTORY: tf.constant([[1, 2, 3]], tf.int64)})
    assert full[F.HISTORY].shape == (1, 3)
