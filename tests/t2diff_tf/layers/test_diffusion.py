"""Drift diffusion: drift preparation, forward process, loss, samplers, gradient isolation."""

import dataclasses

import numpy as np
import pytest
import tensorflow as tf

from t2diff_tf.layers.diffusion import (DiffusionConfig, DriftDiffusion, fast_sampler_steps)
from t2diff_tf.layers.schedules import ScheduleConfig
from t2diff_tf.layers.unet import UNetConfig

SMALL = DiffusionConfig(schedule=ScheduleConfig(num_steps=12),
                        approximator=UNetConfig(filters=(8, 16), step_embedding_dim=8),
                        sampler_steps=4)


def _inputs(batch=3, n=5, d=4):
    x = tf.random.normal([batch, n, d])
    target = tf.random.normal([batch, d])
    mask = tf.constant([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1], [0, 0, 0, 0, 1]][:batch]) > 0
    return x, target, mask


def test_drift_preparation():
    layer = DriftDiffusion(4, SMALL)
    x, target, mask = _inputs()
    z0 = layer.prepare(x, target, mask).numpy()
    x, target, m = x.numpy(), target.numpy(), mask.numpy()
    following = np.concatenate([x[:, 1:], target[:, None]], axis=1)
    np.testing.assert_allclose(z0[m], (following - x)[m], rtol=1e-6)
    assert np.all(z0[~m] == 0)
    np.testing.assert_allclose(z0[:, -1], target - x[:, -1], rtol=1e-6)


def test_without_drift_preparation_diffuses_the_next_behaviours():
    layer = DriftDiffusion(4, dataclasses.replace(SMALL, drift=False))
    x, target, mask = _inputs()
    z0 = layer.prepare(x, target, mask).numpy()
    np.testing.assert_allclose(z0[:, -1], target.numpy(), rtol=1e-6)
    np.testing.assert_allclose(z0[1, :-1], x.numpy()[1, 1:], rtol=1e-6)
    z0_hat = tf.random.normal([3, 5, 4])
    np.testing.assert_allclose(layer.utilise(z0_hat, x).numpy(), z0_hat.numpy()[:, -1])


def test_drift_utilisation():
    layer = DriftDiffusion(4, SMALL)
    x, target, mask = _inputs()
    z0 = layer.prepare(x, target, mask)
    # The true drift is utilised back into the true target.
    np.testing.assert_allclose(layer.utilise(z0, x).numpy(), target.numpy(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("step", [1, 6, 12])
def test_q_sample_moments(step):
    layer = DriftDiffusion(2, SMALL)
    samples = 40000
    z0 = tf.fill([samples, 1, 2], 1.5)
    zr = layer.q_sample(z0, tf.fill([samples], step)).numpy()
    abar = layer.schedule.alphas_cumprod[step - 1]
    # Standard errors: sd / sqrt(n) ~ 0.005 for the mean; 5 sigma tolerances.
    np.testing.assert_allclose(zr.mean(axis=0), np.sqrt(abar) * 1.5, atol=0.03)
    np.testing.assert_allclose(zr.var(axis=0), 1.0 - abar, rtol=0.04, atol=0.002)


def test_q_sample_with_given_noise_is_exact():
    layer = DriftDiffusion(2, SMALL)
    z0, noise = tf.random.normal([2, 3, 2]), tf.random.normal([2, 3, 2])
    s = layer.schedule
    got = layer.q_sample(z0, tf.constant([2, 9]), noise).numpy()
    want = (s.sqrt_alphas_cumprod[[1, 8]][:, None, None] * z0.numpy()
            + s.sqrt_one_minus_alphas_cumprod[[1, 8]][:, None, None] * noise.numpy())
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_loss_is_masked_mean_squared_error():
    layer = DriftDiffusion(4, SMALL)
    _, _, mask = _inputs()
    z0, z0_hat = tf.random.normal([3, 5, 4]), tf.random.normal([3, 5, 4])
    m = mask.numpy()
    want = np.mean((z0.numpy() - z0_hat.numpy())[m] ** 2)
    assert layer.diffusion_loss(z0, z0_hat, mask).numpy() == pytest.approx(want, rel=1e-5)
    # Padded positions do not count.
    noisy = tf.where(mask[:, :, None], z0_hat, 100.0)
    assert layer.diffusion_loss(z0, noisy, mask).numpy() == pytest.approx(want, rel=1e-5)


def test_gradient_isolation():
    layer = DriftDiffusion(4, SMALL)
    x, target, mask = _inputs()
    with tf.GradientTape(persistent=True) as tape:
        tape.watch([x, target])
        x_hat, loss = layer(x, mask=mask, target=target, training=True)
        downstream = tf.reduce_sum(tf.square(x_hat))
    # The diffusion loss trains the approximator ...
    grads = tape.gradient(loss, layer.trainable_variables)
    assert any(g is not None and float(tf.reduce_sum(tf.abs(g))) > 0 for g in grads)
    # ... but never the embeddings it was given,
    assert tape.gradient(loss, x) is None and tape.gradient(loss, target) is None
    # and a loss on x_hat reaches neither the approximator nor the embeddings.
    assert all(g is None for g in tape.gradient(downstream, layer.trainable_variables))
    assert tape.gradient(downstream, x) is None


def test_training_x_hat_options():
    x, target, mask = _inputs()
    leak = DriftDiffusion(4, SMALL)
    x_hat, loss = leak(x, mask=mask, target=target, training=True)
    assert x_hat.shape == (3, 4) and loss.shape == ()
    clean = DriftDiffusion(4, dataclasses.replace(SMALL, training_x_hat="inference_sampler",
                                                  sampler="fast"))
    clean(x, mask=mask, target=target, training=True)
    clean.set_weights(leak.get_weights())
    # Without leakage the training x_hat is the inference one: independent of the target.
    a, _ = clean(x, mask=mask, target=target, training=True)
    b, _ = clean(x, mask=mask, target=target + 10.0, training=True)
    np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-6)
    c, _ = leak(x, mask=mask, target=target + 10.0, training=True)
    assert np.abs(c.numpy() - x_hat.numpy()).max() > 1e-3
    with pytest.raises(ValueError, match="target"):
        leak(x, mask=mask, training=True)


def test_inference_without_target():
    layer = DriftDiffusion(4, SMALL)
    x, _, mask = _inputs()
    x_hat, loss = layer(x, mask=mask)
    assert x_hat.shape == (3, 4) and float(loss) == 0.0


def test_reverse_chain_shapes_and_seed():
    layer = DriftDiffusion(4, SMALL)
    x, target, mask = _inputs()
    layer(x, mask=mask, target=target)
    z0, trajectory = layer.reverse_chain(x, mask, seed=tf.constant([1, 2]),
                                         return_trajectory=True)
    assert z0.shape == (3, 5, 4) and trajectory.shape == (12, 3, 5, 4)
    # The chain ends in the last prediction (no noise on step 1), zero on padding.
    np.testing.assert_allclose(z0.numpy(), trajectory[-1].numpy() * mask.numpy()[:, :, None],
                               rtol=1e-5, atol=1e-6)
    again = layer.reverse_chain(x, mask, seed=tf.constant([1, 2]))
    np.testing.assert_allclose(again.numpy(), z0.numpy(), rtol=1e-6)
    other = layer.reverse_chain(x, mask, seed=tf.constant([3, 4]))
    assert np.abs(other.numpy() - z0.numpy()).max() > 1e-4
    # Unseeded: stochastic.
    s1, s2 = layer.sample(x, mask, sampler="full"), layer.sample(x, mask, sampler="full")
    assert np.abs(s1.numpy() - s2.numpy()).max() > 1e-5


def test_samplers_in_a_graph_with_a_static_batch():
    """A traced call with a fully static input shape (e.g. batch 1 at serving)."""
    layer = DriftDiffusion(4, SMALL)
    x, target, mask = _inputs()
    layer(x, mask=mask, target=target)
    for sampler in ("full", "fast"):
        traced = tf.function(lambda x, m: layer.sample(x, m, sampler=sampler))
        assert traced(x[:1], mask[:1]).shape == (1, 4)


def test_fast_sampler_is_deterministic():
    layer = DriftDiffusion(4, SMALL)
    x, target, mask = _inputs()
    layer(x, mask=mask, target=target)
    a = layer.sample(x, mask, sampler="fast").numpy()
    b = layer.sample(x, mask, sampler="fast").numpy()
    assert a.shape == (3, 4)
    np.testing.assert_array_equal(a, b)
    _, trajectory = layer.fast_sample(x, mask, return_trajectory=True)
    assert trajectory.shape == (4, 3, 5, 4)
    traced = tf.function(lambda x: layer.sample(x, mask, sampler="fast"))
    np.testing.assert_allclose(traced(x).numpy(), a, rtol=1e-5, atol=1e-6)


def test_fast_sampler_steps():
    np.testing.assert_array_equal(fast_sampler_steps(50, 5), [50, 38, 26, 13, 1])
    np.testing.assert_array_equal(fast_sampler_steps(12, 12), np.arange(12, 0, -1))
    np.testing.assert_array_equal(fast_sampler_steps(10, 1), [10])


def test_fast_sampler_with_all_steps_is_ddim():
    """S = T, one step by hand: z_{t-1} = sqrt(abar_{t-1}) z0_hat + sqrt(1-abar_{t-1}) eps_hat."""
    config = dataclasses.replace(SMALL, schedule=ScheduleConfig(num_steps=2), sampler_steps=2)
    layer = DriftDiffusion(4, config)
    x, target, mask = _inputs()
    layer(x, mask=mask, target=target)
    z0, trajectory = layer.fast_sample(x, mask, return_trajectory=True)
    abar = layer.schedule.alphas_cumprod
    z0_hat_2 = layer.predict_start(tf.zeros_like(x), x, tf.fill([3], 2), mask)
    eps = (0.0 - np.sqrt(abar[1]) * z0_hat_2) / np.sqrt(1 - abar[1])
    z1 = np.sqrt(abar[0]) * z0_hat_2 + np.sqrt(1 - abar[0]) * eps
    z0_hat_1 = layer.predict_start(z1, x, tf.fill([3], 1), mask)
    np.testing.assert_allclose(trajectory[0].numpy(), z0_hat_2.numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(z0.numpy(), z0_hat_1.numpy(), rtol=1e-5, atol=1e-6)


def test_get_config_round_trip():
    layer = DriftDiffusion(4, dataclasses.replace(SMALL, drift=False, sampler="fast"))
    x, target, mask = _inputs()
    layer(x, mask=mask, target=target)
    clone = DriftDiffusion.from_config(layer.get_config())
    assert clone.config == layer.config and clone.embedding_dim == 4
    clone(x, mask=mask, target=target)
    clone.set_weights(layer.get_weights())
    np.testing.assert_allclose(clone.sample(x, mask).numpy(), layer.sample(x, mask).numpy(),
                               rtol=1e-5, atol=1e-6)
    via_keras = tf.keras.layers.deserialize(tf.keras.layers.serialize(layer))
    assert isinstance(via_keras, DriftDiffusion) and via_keras.config == layer.config


def test_invalid_config():
    with pytest.raises(ValueError, match="sampler_steps"):
        DiffusionConfig(schedule=ScheduleConfig(num_steps=5), sampler_steps=6)
    with pytest.raises(ValueError, match="sampler"):
        DiffusionConfig(sampler="ddim")


def _cosine(a, b):
    a = tf.reshape(a, [tf.shape(a)[0], -1])
    b = tf.reshape(b, [tf.shape(b)[0], -1])
    return float(tf.reduce_mean(tf.reduce_sum(
        tf.math.l2_normalize(a, -1) * tf.math.l2_normalize(b, -1), -1)))


def test_trained_toy_denoiser_approaches_true_drift_along_reverse_steps():
    """Paper Figure 4 on a toy: sequences with a constant per-user drift plus noise.

    After training, cos(z0_hat_t, z0) must rise from the first (noisiest) reverse step to the
    last, for the full chain and the fast sampler; an untrained or broken chain stays flat.
    """
    d, n = 8, 6
    rng = np.random.default_rng(0)

    def batch(size):
        start = rng.normal(size=(size, 1, d))
        drift = rng.normal(size=(size, 1, d))
        seq = start + np.arange(n + 1)[None, :, None] * drift
        seq = seq + 0.1 * rng.normal(size=seq.shape)
        return tf.constant(seq[:, :n], tf.float32), tf.constant(seq[:, n], tf.float32)

    config = DiffusionConfig(schedule=ScheduleConfig(num_steps=20),
                             approximator=UNetConfig(filters=(16, 32), step_embedding_dim=16),
                             sampler_steps=10)
    layer = DriftDiffusion(d, config)
    optimizer = tf.keras.optimizers.Adam(3e-3)

    @tf.function
    def train_step(x, y):
        with tf.GradientTape() as tape:
            _, loss = layer(x, target=y, training=True)
        variables = layer.trainable_variables
        optimizer.apply_gradients(zip(tape.gradient(loss, variables), variables))
        return loss

    x, y = batch(256)
    z0 = layer.prepare(x, y)
    untrained = layer.predicted_start_trajectory(x, sampler="full", seed=tf.constant([0, 1]))
    untrained_cos = [_cosine(t, z0) for t in untrained]
    for _ in range(250):
        loss = train_step(*batch(128))
    assert float(loss) < 0.5
    for sampler in ("full", "fast"):
        trajectory = layer.predicted_start_trajectory(x, sampler=sampler, seed=tf.constant([0, 1]))
        cos = np.array([_cosine(t, z0) for t in trajectory])
        assert cos[-1] > 0.9, (sampler, cos)
        assert cos[-1] > cos[0] + 0.01, (sampler, cos)
        half = len(cos) // 2
        assert cos[half:].mean() > cos[:half].mean(), (sampler, cos)
    assert max(untrained_cos) < 0.5
