"""The U-Net approximator: shapes for any length, masking, serialisation."""

import numpy as np
import pytest
import tensorflow as tf

from t2diff_tf.layers.unet import UNet1D, UNetConfig, sinusoidal_step_embedding

SMALL = UNetConfig(filters=(8, 16), kernel_size=3, step_embedding_dim=8)


@pytest.mark.parametrize("length", [1, 2, 7, 10, 11])
def test_output_shape_for_any_length(length):
    unet = UNet1D(4, SMALL)
    out = unet(tf.random.normal([3, length, 8]), tf.constant([1, 5, 50]))
    assert out.shape == (3, length, 4)


def test_depends_on_step():
    unet = UNet1D(4, SMALL)
    x = tf.random.normal([2, 6, 8])
    a = unet(x, tf.constant([1, 1])).numpy()
    b = unet(x, tf.constant([40, 40])).numpy()
    assert np.abs(a - b).max() > 1e-4


def test_step_embedding():
    e = sinusoidal_step_embedding(tf.constant([0, 3]), 6).numpy()
    assert e.shape == (2, 6)
    np.testing.assert_allclose(e[0], [0, 0, 0, 1, 1, 1], atol=1e-7)
    np.testing.assert_allclose(e[1, 0], np.sin(3.0), rtol=1e-6)


def test_padding_never_reaches_valid_positions():
    unet = UNet1D(4, UNetConfig(filters=(8, 8, 16), kernel_size=5, step_embedding_dim=8))
    mask = tf.constant([[0, 0, 0, 1, 1, 1, 1, 1, 1], [0] * 8 + [1]]) > 0
    x = tf.random.normal([2, 9, 8])
    steps = tf.constant([3, 17])
    base = unet(x, steps, mask=mask).numpy()
    garbage = tf.where(mask[:, :, None], x, 1e3 * tf.random.normal([2, 9, 8]))
    changed = unet(garbage, steps, mask=mask).numpy()
    valid = mask.numpy()
    np.testing.assert_allclose(changed[valid], base[valid], rtol=1e-5, atol=1e-5)
    assert np.all(changed[~valid] == 0) and np.all(base[~valid] == 0)
    # Without the mask the same change does move valid outputs: the check above can fail.
    unmasked = unet(garbage, steps).numpy()
    assert np.abs(unmasked[valid] - base[valid]).max() > 1e-3


def test_receptive_field_spans_the_session():
    """Dilation lets the first position see the last one in a 10-step session."""
    unet = UNet1D(2, SMALL)
    x = tf.random.normal([1, 10, 8])
    base = unet(x, tf.constant([2])).numpy()
    moved = unet(tf.tensor_scatter_nd_add(x, [[0, 9, 0]], [5.0]), tf.constant([2])).numpy()
    assert np.abs(moved[0, 0] - base[0, 0]).max() > 1e-5


def test_get_config_round_trip():
    unet = UNet1D(4, SMALL, name="approx")
    x, steps = tf.random.normal([2, 5, 8]), tf.constant([1, 2])
    out = unet(x, steps)
    config = unet.get_config()
    assert config["config"]["filters"] == (8, 16)
    clone = tf.keras.layers.deserialize(tf.keras.layers.serialize(unet))
    assert isinstance(clone, UNet1D) and clone.config == SMALL and clone.output_dim == 4
    clone(x, steps)
    clone.set_weights(unet.get_weights())
    np.testing.assert_allclose(clone(x, steps).numpy(), out.numpy(), rtol=1e-6)


def test_invalid_config():
    with pytest.raises(ValueError, match="kernel_size"):
        UNetConfig(kernel_size=4)
    with pytest.raises(ValueError, match="filters"):
        UNetConfig(filters=())
