"""CausalTransformer: causality, masking and serialisation."""

import numpy as np
import pytest
import tensorflow as tf

from t2diff_tf.layers.causal_transformer import BLOCK_STYLES, CausalTransformer


def _inputs(batch=3, length=7, dim=8):
    x = tf.random.normal([batch, length, dim], seed=1)
    mask = tf.constant([[False, False, True, True, True, True, True],
                        [True] * 7,
                        [False] * 5 + [True, True]])
    return x, mask


@pytest.mark.parametrize("block", BLOCK_STYLES)
def test_position_t_ignores_later_positions(block):
    layer = CausalTransformer(max_length=7, num_blocks=2, num_heads=2, dropout=0.0, block=block)
    x, mask = _inputs()
    base = layer(x, mask=mask).numpy()
    changed = tf.concat([x[:, :4], x[:, 4:] + 5.0], axis=1)
    out = layer(changed, mask=mask).numpy()
    np.testing.assert_allclose(out[:, :4], base[:, :4], atol=1e-5)
    assert not np.allclose(out[:, 4:], base[:, 4:])


@pytest.mark.parametrize("block", BLOCK_STYLES)
def test_padded_positions_do_not_leak_and_are_zero(block):
    layer = CausalTransformer(max_length=7, num_blocks=2, dropout=0.0, block=block)
    x, mask = _inputs()
    base = layer(x, mask=mask).numpy()
    noisy = tf.where(mask[..., None], x, x + 100.0)
    out = layer(noisy, mask=mask).numpy()
    valid = mask.numpy()
    np.testing.assert_allclose(out[valid], base[valid], atol=1e-5)
    assert np.all(out[~valid] == 0.0)


def test_config_round_trip():
    layer = CausalTransformer(max_length=7, num_blocks=3, num_heads=2, dropout=0.1,
                              block="sasrec")
    clone = CausalTransformer.from_config(layer.get_config())
    assert (clone.max_length, clone.num_blocks, clone.num_heads, clone.dropout,
            clone.block) == (7, 3, 2, 0.1, "sasrec")
    with pytest.raises(ValueError, match="block"):
        CausalTransformer(max_length=7, block="post_norm")


def test_sasrec_block_matches_the_reference_formula():
    """One block of SASRec's reference code: ``q = LN(x); x = q + MHA(q, k=v=x); x = LN(x);
    x += FFN(x)``, then the final LayerNorm; padded positions zeroed."""
    layer = CausalTransformer(max_length=7, num_blocks=1, dropout=0.0, block="sasrec")
    x, mask = _inputs()
    out = layer(x, mask=mask).numpy()
    keep = tf.cast(mask, tf.float32)[..., None]
    h = (x + layer.positions[None]) * keep
    causal = tf.linalg.band_part(tf.ones([7, 7], tf.bool), -1, 0)
    attend = tf.logical_or(tf.logical_and(causal[None], mask[:, None, :]),
                           tf.eye(7, dtype=tf.bool)[None])
    q = layer.attention_norms[0](h)
    y = layer.ffn_norms[0](q + layer.attention[0](q, h, key=h, attention_mask=attend))
    expected = layer.final_norm((y + layer.ffn[0](y)) * keep) * keep
    np.testing.assert_allclose(out, expected.numpy(), atol=1e-5)
    # ... which is not the pre-norm block's result with the same weights.
    layer.block = "pre_norm"
    assert not np.allclose(layer(x, mask=mask).numpy(), out, atol=1e-3)


def test_sasrec_block_kernels_start_from_normal_0_02():
    layer = CausalTransformer(max_length=7, num_blocks=2, block="sasrec")
    layer(tf.zeros([1, 7, 64]), mask=tf.ones([1, 7], tf.bool))
    kernels = np.concatenate([w.numpy().ravel() for w in layer.trainable_weights
                              if "kernel" in w.name])
    assert abs(kernels.std() - 0.02) < 0.002
    relu = layer.ffn[0].layers[0].activation
    assert relu is tf.keras.activations.relu

