"""Mamba4Rec: the selective scan and the Mamba block in closed form, causality, left padding,
the all-position loss, serialisation, and an order it learns that a bag cannot see."""

import numpy as np
import pytest
import tensorflow as tf

from t2diff_tf import features as F
from t2diff_tf.layers.mamba import MambaBlock, MambaEncoder, linear_recurrence, selective_scan
from t2diff_tf.models.mamba4rec import Mamba4Rec, Mamba4RecConfig
from tests.t2diff_tf.models.reference import next_item_softmax_loss, two_windows

SPEC = F.ExampleSpec(history_length=6)


def _softplus(v):
    return np.log1p(np.exp(v))


def _silu(v):
    return v / (1.0 + np.exp(-v))


def _numpy_scan(x, delta, a, b, c, d):
    """The selective SSM as a plain loop: h = exp(Delta A) h + Delta B x, y = C.h + D x."""
    batch, length, channels = x.shape
    y = np.zeros_like(x)
    for i in range(batch):
        h = np.zeros_like(a)  # [D, N]
        for t in range(length):
            h = np.exp(delta[i, t][:, None] * a) * h + \
                (delta[i, t] * x[i, t])[:, None] * b[i, t][None, :]
            y[i, t] = h @ c[i, t] + d * x[i, t]
    return y


def _scan_inputs(batch=2, length=7, channels=3, state=4, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(batch, length, channels)).astype(np.float32)
    delta = _softplus(rng.normal(size=(batch, length, channels))).astype(np.float32)
    a = -np.exp(rng.normal(size=(channels, state))).astype(np.float32)
    b = rng.normal(size=(batch, length, state)).astype(np.float32)
    c = rng.normal(size=(batch, length, state)).astype(np.float32)
    d = rng.normal(size=(channels,)).astype(np.float32)
    return x, delta, a, b, c, d


@pytest.mark.parametrize("method", ["parallel", "sequential"])
def test_selective_scan_matches_a_numpy_loop(method):
    inputs = _scan_inputs()
    y = selective_scan(*(tf.constant(v) for v in inputs), method=method).numpy()
    np.testing.assert_allclose(y, _numpy_scan(*inputs), rtol=1e-4, atol=1e-5)


def test_parallel_and_sequential_scans_agree_in_value_and_gradient():
    inputs = [tf.constant(v) for v in _scan_inputs(length=13, seed=1)]  # 13: not a power of 2
    results = []
    for method in ("parallel", "sequential"):
        with tf.GradientTape() as tape:
            tape.watch(inputs)
            y = selective_scan(*inputs, method=method)
            loss = tf.reduce_sum(tf.sin(y))
        results.append([y] + tape.gradient(loss, inputs))
    for parallel, sequential in zip(*results):
        np.testing.assert_allclose(parallel.numpy(), sequential.numpy(), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("method", ["parallel", "sequential"])
def test_zero_delta_and_input_keep_the_state_at_zero_through_left_padding(method):
    x, delta, a, b, c, d = _scan_inputs()
    x[:, :3], delta[:, :3] = 0.0, 0.0
    decay = tf.exp(tf.constant(delta)[..., None] * a)
    drive = tf.constant(delta * x)[..., None] * tf.constant(b)[:, :, None, :]
    states = linear_recurrence(decay, drive, method).numpy()
    assert np.all(states[:, :3] == 0.0)
    # The states after the padding are those of the unpadded sequence.
    tail = linear_recurrence(decay[:, 3:], drive[:, 3:], method).numpy()
    np.testing.assert_allclose(states[:, 3:], tail, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("scan", ["parallel", "sequential"])
def test_mamba_block_matches_the_closed_form(scan):
    layer = MambaBlock(state_dim=4, conv_kernel=3, expand=2, dt_rank=2, scan=scan)
    x = np.random.default_rng(2).normal(size=(2, 6, 5)).astype(np.float32)
    out = layer(tf.constant(x)).numpy()
    w = {name: getattr(layer, name).numpy() for name in (
        "in_kernel", "conv_kernel_weights", "conv_bias", "x_kernel", "dt_kernel", "dt_bias",
        "a_log", "d_skip", "out_kernel")}
    inner, n, k = 10, 4, 3
    xz = x @ w["in_kernel"]
    u, z = xz[..., :inner], xz[..., inner:]
    padded = np.concatenate([np.zeros((2, k - 1, inner), np.float32), u], axis=1)
    conv = np.stack([sum(w["conv_kernel_weights"][j] * padded[:, t + j] for j in range(k))
                     for t in range(6)], axis=1) + w["conv_bias"]
    u = _silu(conv)
    proj = u @ w["x_kernel"]
    dt, b, c = proj[..., :2], proj[..., 2:2 + n], proj[..., 2 + n:]
    delta = _softplus(dt @ w["dt_kernel"] + w["dt_bias"])
    y = _numpy_scan(u, delta, -np.exp(w["a_log"]), b, c, w["d_skip"])
    expected = (y * _silu(z)) @ w["out_kernel"]
    np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-5)
    # Mamba's initialisation: S4D-real A, D = 1, Delta's bias in the softplus^-1 of [1e-3, 0.1].
    np.testing.assert_allclose(w["a_log"][3], np.log([1.0, 2.0, 3.0, 4.0]), rtol=1e-6)
    np.testing.assert_array_equal(w["d_skip"], 1.0)
    assert np.all((_softplus(w["dt_bias"]) > 9e-4) & (_softplus(w["dt_bias"]) < 0.11))


def _encoder_inputs():
    x = tf.random.normal([3, 7, 8], seed=1)
    mask = tf.constant([[False, False, True, True, True, True, True],
                        [True] * 7,
                        [False] * 5 + [True, True]])
    return x, mask


@pytest.mark.parametrize("num_blocks", [1, 2])
def test_position_t_ignores_later_positions(num_blocks):
    layer = MambaEncoder(num_blocks=num_blocks, state_dim=4, dropout=0.0)
    x, mask = _encoder_inputs()
    base = layer(x, mask=mask).numpy()
    # (Not a constant shift: the input LayerNorm would remove it.)
    changed = tf.concat([x[:, :4], x[:, 4:] + tf.random.normal([3, 3, 8], seed=2)], axis=1)
    out = layer(changed, mask=mask).numpy()
    np.testing.assert_allclose(out[:, :4], base[:, :4], atol=1e-5)
    assert np.abs(out[:, 4:] - base[:, 4:]).max() > 0.1


@pytest.mark.parametrize("num_blocks", [1, 2])
def test_padded_positions_do_not_leak_and_are_zero(num_blocks):
    layer = MambaEncoder(num_blocks=num_blocks, state_dim=4, dropout=0.0)
    x, mask = _encoder_inputs()
    base = layer(x, mask=mask).numpy()
    noise = 10.0 * tf.random.normal([3, 7, 8], seed=2)
    out = layer(tf.where(mask[..., None], x, noise), mask=mask).numpy()
    valid = mask.numpy()
    np.testing.assert_allclose(out[valid], base[valid], atol=1e-5)
    assert np.all(out[~valid] == 0.0)
    # Left padding is invisible: the valid suffix alone gives the same outputs.
    np.testing.assert_allclose(layer(x[2:, 5:], mask=mask[2:, 5:]).numpy(), base[2:, 5:],
                               atol=1e-5)


def test_layer_configs_round_trip():
    block = MambaBlock(state_dim=8, conv_kernel=3, expand=3, dt_rank=2, dt_min=0.01,
                       dt_max=0.2, scan="sequential")
    clone = MambaBlock.from_config(block.get_config())
    assert (clone.state_dim, clone.conv_kernel, clone.expand, clone.dt_rank, clone.dt_min,
            clone.dt_max, clone.scan) == (8, 3, 3, 2, 0.01, 0.2, "sequential")
    encoder = MambaEncoder(num_blocks=2, state_dim=8, conv_kernel=3, expand=3, dt_rank=None,
                           dropout=0.1, scan="sequential")
    clone = MambaEncoder.from_config(encoder.get_config())
    assert (clone.num_blocks, clone.state_dim, clone.conv_kernel, clone.expand, clone.dt_rank,
            clone.dropout, clone.scan) == (2, 8, 3, 3, None, 0.1, "sequential")


def test_config_dict_round_trip_and_validation():
    config = Mamba4RecConfig(embedding_dim=16, num_blocks=2, scan="sequential")
    assert Mamba4RecConfig.from_dict(config.to_dict()) == config
    with pytest.raises(ValueError):
        Mamba4RecConfig(scan="fft")
    with pytest.raises(ValueError):
        Mamba4RecConfig(dropout=1.0)
    with pytest.raises(ValueError):
        Mamba4RecConfig(state_dim=0)


def _model(**overrides):
    config = Mamba4RecConfig(**{"embedding_dim": 8, "state_dim": 4, "dropout": 0.0,
                                **overrides})
    return Mamba4Rec(config, num_items=10, example_spec=SPEC)



@pytest.mark.parametrize("scan", ["parallel", "sequential"])
def test_loss_is_the_mean_softmax_over_every_valid_position(scan):
    model = _model(num_blocks=2, scan=scan)
    features = two_windows()
    loss = float(model.compute_loss(features, training=False))
    states = model._states(features[F.HISTORY], training=False).numpy()
    assert loss == pytest.approx(
        next_item_softmax_loss(states, model.corpus_embeddings().numpy(), features), rel=1e-4)


def test_user_embedding_is_the_last_state_and_ignores_padding_and_target():
    model = _model()
    features = two_windows()
    e_u = model.query_embeddings(features).numpy()
    states = model._states(features[F.HISTORY], training=False).numpy()
    np.testing.assert_allclose(e_u, states[:, -1], atol=1e-6)
    other = dict(features, **{F.TARGET: tf.constant([1, 1], tf.int64)})
    np.testing.assert_allclose(model.query_embeddings(other).numpy(), e_u, atol=1e-6)
    # More or less left padding changes nothing (no positional embedding).
    for history in ([[3, 5, 2, 7]], [[0, 0, 0, 0, 0, 3, 5, 2, 7]]):
        padded = model._states(tf.constant(history, tf.int64), training=False).numpy()
        np.testing.assert_allclose(padded[0, -4:], states[0, -4:], atol=1e-5)
    # Causal: changing a later behaviour leaves the earlier states unchanged.
    changed = model._states(tf.constant([[0, 0, 3, 5, 9, 9]], tf.int64), training=False).numpy()
    np.testing.assert_allclose(changed[0, :4], states[0, :4], atol=1e-6)
    assert np.abs(changed[0, 4:] - states[0, 4:]).max() > 0.01


def test_mamba4rec_learns_an_order_a_bag_cannot_see(order_task):
    """1->2->3 and 2->1->3 hold the same items and end alike; only order tells the next item."""
    model = Mamba4Rec(Mamba4RecConfig(embedding_dim=16, state_dim=8, dropout=0.0),
                      num_items=6, example_spec=SPEC)
    task = order_task(second=(2, 1, 3))
    task.assert_learned(model, learning_rate=0.02, epochs=15,
                        rows=range(len(task.data[F.TARGET])))
