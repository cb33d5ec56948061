"""The selective scan, the Mamba block and the Mamba encoder: closed forms against a numpy loop,
the parallel scan against the sequential one (values and gradients), causality, left padding and
serialisation."""

import numpy as np
import pytest
import tensorflow as tf

from t2diff_tf.layers.mamba import MambaBlock, MambaEncoder, linear_recurrence, selective_scan
from tests.t2diff_tf.layers.initial_weights import assert_random_weights_start_apart


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


def test_no_two_projections_start_from_the_same_draws():
    layer = MambaEncoder(num_blocks=2, state_dim=4, dropout=0.0)
    x, mask = _encoder_inputs()
    layer(x, mask=mask)
    assert_random_weights_start_apart(layer)
