"""CausalTransformer: causality, masking and serialisation."""

import numpy as np
import pytest
import tensorflow as tf

from t2diff_tf.layers.causal_transformer import (BLOCK_STYLES, POSITION_ORIGINS,
                                                 CausalTransformer)
from tests.t2diff_tf.layers.causal_encoder_checks import (
    assert_padded_positions_do_not_leak_and_are_zero, assert_position_t_ignores_later_positions,
    sequences)
from tests.t2diff_tf.layers.initial_weights import assert_random_weights_start_apart


@pytest.mark.parametrize("origin", POSITION_ORIGINS)
@pytest.mark.parametrize("block", BLOCK_STYLES)
def test_position_t_ignores_later_positions(block, origin):
    assert_position_t_ignores_later_positions(CausalTransformer(
        max_length=7, num_blocks=2, num_heads=2, dropout=0.0, block=block,
        position_origin=origin))


@pytest.mark.parametrize("origin", POSITION_ORIGINS)
@pytest.mark.parametrize("block", BLOCK_STYLES)
def test_padded_positions_do_not_leak_and_are_zero(block, origin):
    assert_padded_positions_do_not_leak_and_are_zero(CausalTransformer(
        max_length=7, num_blocks=2, dropout=0.0, block=block, position_origin=origin))


def test_config_round_trip():
    layer = CausalTransformer(max_length=7, num_blocks=3, num_heads=2, dropout=0.1,
                              block="sasrec", position_origin="first")
    clone = CausalTransformer.from_config(layer.get_config())
    assert (clone.max_length, clone.num_blocks, clone.num_heads, clone.dropout,
            clone.block, clone.position_origin) == (7, 3, 2, 0.1, "sasrec", "first")
    with pytest.raises(ValueError, match="block"):
        CausalTransformer(max_length=7, block="post_norm")
    with pytest.raises(ValueError, match="position_origin"):
        CausalTransformer(max_length=7, position_origin="middle")


def _positions_only(origin):
    """No blocks: the output is ``LN(x + position) * keep``, the positional term alone."""
    layer = CausalTransformer(max_length=7, num_blocks=0, dropout=0.0, position_origin=origin)
    x, mask = sequences()
    out = layer(x, mask=mask).numpy()
    return layer, x, mask, out


def test_positions_counted_from_the_last_behaviour():
    layer, x, mask, out = _positions_only("last")
    # The most recent behaviour (column 6) takes the last embedding in every row.
    expected = layer.final_norm(x + layer.positions[None]) * tf.cast(mask, tf.float32)[..., None]
    np.testing.assert_allclose(out, expected.numpy(), atol=1e-5)


def test_positions_counted_from_the_oldest_behaviour():
    """Row 0 holds 5 behaviours in columns 2..6: they take embeddings 0..4, as SASRec's
    reference code (right-padded, indexed from 0) gives the same sequence."""
    layer, x, mask, out = _positions_only("first")
    valid = mask.numpy()
    for row in range(3):
        columns = np.flatnonzero(valid[row])
        index = np.arange(len(columns))
        summed = x[row].numpy()[columns] + layer.positions.numpy()[index]
        expected = layer.final_norm(summed[None]).numpy()[0]
        np.testing.assert_allclose(out[row, columns], expected, atol=1e-5)
        assert np.all(out[row, ~valid[row]] == 0.0)
    # The output of a behaviour does not depend on how much padding precedes the sequence.
    wider = tf.concat([tf.random.normal([3, 3, 8], seed=2), x], axis=1)
    wider_mask = tf.concat([tf.zeros([3, 3], tf.bool), mask], axis=1)
    blocks = CausalTransformer(max_length=10, num_blocks=2, dropout=0.0, position_origin="first")
    blocks(wider, mask=wider_mask)
    narrow = CausalTransformer(max_length=7, num_blocks=2, dropout=0.0, position_origin="first")
    narrow(x, mask=mask)
    narrow.set_weights([w[:7] if w.shape == (10, 8) else w for w in blocks.get_weights()])
    np.testing.assert_allclose(blocks(wider, mask=wider_mask).numpy()[:, 3:][valid],
                               narrow(x, mask=mask).numpy()[valid], atol=1e-5)


def test_sasrec_block_matches_the_reference_formula():
    """One block of SASRec's reference code: ``q = LN(x); x = q + MHA(q, k=v=x); x = LN(x);
    x += FFN(x)``, then the final LayerNorm; padded positions zeroed."""
    layer = CausalTransformer(max_length=7, num_blocks=1, dropout=0.0, block="sasrec")
    x, mask = sequences()
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



@pytest.mark.parametrize("block", BLOCK_STYLES)
def test_no_two_kernels_start_equal(block):
    layer = CausalTransformer(max_length=7, num_blocks=2, block=block)
    layer(tf.zeros([1, 7, 16]), mask=tf.ones([1, 7], tf.bool))
    assert_random_weights_start_apart(layer)
