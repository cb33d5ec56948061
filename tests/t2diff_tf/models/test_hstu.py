"""HSTU's time bias inputs: the bucket of every (query, key) pair of a window."""

import numpy as np
import pytest
import tensorflow as tf

from t2diff_tf import features as F
from t2diff_tf.models.hstu import HSTU, HSTUConfig, next_behaviour_time_buckets


def _windows():
    """Two windows of 5: one left-padded by two, one full; times in seconds."""
    history = np.array([[0, 0, 4, 5, 6], [1, 2, 3, 4, 5]])
    times = np.array([[0, 0, 100, 103, 1100], [10, 10, 11, 20, 30]])
    lags = np.array([[0, 0, 11, 11, 9], [6, 6, 6, 5, 4]])  # to each window's target
    return {F.HISTORY: tf.constant(history), F.HISTORY_TIMESTAMPS: tf.constant(times),
            F.HISTORY_TIME_LAG: tf.constant(lags)}


def test_buckets_time_each_query_at_its_next_behaviour():
    buckets = next_behaviour_time_buckets(_windows(), num_buckets=32).numpy()
    bucket = lambda gap: F.time_lag_bucket(gap, 32)  # noqa: E731
    times = _windows()[F.HISTORY_TIMESTAMPS].numpy()
    for b, first in ((0, 2), (1, 0)):
        for i in range(5):
            for j in range(5):
                if j > i or j < first:
                    expected = 0  # a later key or padding: masked
                elif i == 4:
                    expected = _windows()[F.HISTORY_TIME_LAG].numpy()[b, j]  # to the target
                else:
                    expected = bucket(times[b, i + 1] - times[b, j])
                assert buckets[b, i, j] == expected, (b, i, j)
    # Same-second behaviours (gap 0) have bucket 1, distinct from the padding bucket 0.
    assert buckets[1, 0, 0] == 1


def test_trimming_left_padding_keeps_the_valid_buckets():
    full = next_behaviour_time_buckets(_windows(), 32).numpy()
    trimmed = next_behaviour_time_buckets(
        {n: v[:1, 2:] for n, v in _windows().items()}, 32).numpy()
    np.testing.assert_array_equal(trimmed[0], full[0, 2:, 2:])


def test_the_time_bias_reads_the_timestamps():
    """With ``time_bias`` the user embedding depends on the behaviours' times; without it, it
    does not."""
    spec = F.ExampleSpec(history_length=5)
    windows = {**_windows(), F.HISTORY_SESSION: tf.zeros([2, 5], tf.int64),
               F.SESSION_LENGTH: tf.constant([3, 5], tf.int64)}
    shifted = dict(windows, **{F.HISTORY_TIMESTAMPS: windows[F.HISTORY_TIMESTAMPS] * 1000})
    for time_bias in (True, False):
        tf.keras.utils.set_random_seed(0)
        model = HSTU(HSTUConfig(embedding_dim=8, num_blocks=2, linear_dim=4, attention_dim=4,
                                time_bias=time_bias), num_items=10, example_spec=spec)
        model.query_embeddings(windows)  # builds the weights
        for layer in model.encoder.time_biases:  # weights large enough to matter
            layer.buckets.assign(tf.range(layer.num_buckets, dtype=tf.float32))
        base = model.query_embeddings(windows).numpy()
        moved = model.query_embeddings(shifted).numpy()
        assert np.allclose(base, moved, atol=1e-6) != time_bias


def test_config_checks_and_passes_the_encoder_options():
    with pytest.raises(ValueError, match="attention_normalization"):
        HSTUConfig(attention_normalization="softmax")
    with pytest.raises(ValueError, match="residual"):
        HSTUConfig(residual="normalised_input")
    assert HSTU(HSTUConfig(residual="normalized_input"), num_items=5).encoder.residual == (
        "normalized_input")
    with pytest.raises(ValueError, match="position_origin"):
        HSTUConfig(position_origin="newest")
    encoder = HSTU(HSTUConfig(position_origin="last", relative_position_bias=False),
                   num_items=5).encoder
    assert (encoder.position_origin, encoder.relative_position_bias) == ("last", False)
