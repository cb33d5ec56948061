"""Noise schedules against their closed forms."""

import math

import numpy as np
import pytest
import tensorflow as tf

from t2diff_tf.layers.schedules import NoiseSchedule, ScheduleConfig, make_betas


def test_authors_exponential_schedule_closed_form():
    schedule = NoiseSchedule(ScheduleConfig(kind="exponential", num_steps=50))
    r = np.arange(1, 51)
    np.testing.assert_allclose(schedule.betas, 1e-2 * np.exp(4.5 * r / 50), rtol=1e-12)
    assert 0.0105 < schedule.betas[0] < 0.0115
    assert 0.89 < schedule.betas[-1] < 0.91


def test_paper_exponent_per_step():
    betas = make_betas(ScheduleConfig(num_steps=10, scale=1e-3, rate=0.3, exponent_per_step=True))
    np.testing.assert_allclose(betas, 1e-3 * np.exp(0.3 * np.arange(1, 11)), rtol=1e-12)


@pytest.mark.parametrize("steps", [10, 50, 200])
def test_shapes_share_endpoints(steps):
    exp = NoiseSchedule(ScheduleConfig(kind="exponential", num_steps=steps)).betas
    lin = NoiseSchedule(ScheduleConfig(kind="linear", num_steps=steps)).betas
    log = NoiseSchedule(ScheduleConfig(kind="logarithmic", num_steps=steps)).betas
    for betas in (lin, log):
        assert betas.shape == (steps,)
        np.testing.assert_allclose([betas[0], betas[-1]], [exp[0], exp[-1]], rtol=1e-12)
    np.testing.assert_allclose(np.diff(lin), (exp[-1] - exp[0]) / (steps - 1), rtol=1e-9)
    r = np.arange(1, steps + 1)
    np.testing.assert_allclose(
        log, exp[0] + (exp[-1] - exp[0]) * np.log(r) / math.log(steps), rtol=1e-12)
    # Concave / linear / convex: the midpoint ordering of the three shapes.
    mid = steps // 2
    assert log[mid] > lin[mid] > exp[mid]


def test_betas_are_clipped():
    betas = make_betas(ScheduleConfig(num_steps=50, scale=0.5, rate=4.5, max_beta=0.95))
    assert betas.max() == pytest.approx(0.95)
    assert betas.min() >= 1e-8


@pytest.mark.parametrize("kind", ["linear", "logarithmic", "exponential"])
def test_derived_quantities_match_ddpm(kind):
    s = NoiseSchedule(ScheduleConfig(kind=kind, num_steps=20))
    alphas = 1.0 - s.betas
    abar = np.cumprod(alphas)
    abar_prev = np.concatenate([[1.0], abar[:-1]])
    np.testing.assert_allclose(s.alphas, alphas)
    np.testing.assert_allclose(s.alphas_cumprod, abar)
    np.testing.assert_allclose(s.alphas_cumprod_prev, abar_prev)
    np.testing.assert_allclose(s.sqrt_alphas_cumprod ** 2 + s.sqrt_one_minus_alphas_cumprod ** 2,
                               1.0, rtol=1e-12)
    var = s.betas * (1 - abar_prev) / (1 - abar)
    np.testing.assert_allclose(s.posterior_variance, var)
    assert s.posterior_variance[0] == 0.0
    np.testing.assert_allclose(s.posterior_log_variance_clipped[1:], np.log(var[1:]))
    assert s.posterior_log_variance_clipped[0] == pytest.approx(np.log(var[1]))
    np.testing.assert_allclose(s.posterior_mean_coef1, s.betas * np.sqrt(abar_prev) / (1 - abar))
    np.testing.assert_allclose(s.posterior_mean_coef2,
                               (1 - abar_prev) * np.sqrt(alphas) / (1 - abar))
    # At r = 1 the posterior mean is z0 itself.
    assert s.posterior_mean_coef1[0] == pytest.approx(1.0)
    assert s.posterior_mean_coef2[0] == pytest.approx(0.0)
    # The schedule ends (nearly) in pure noise.
    assert s.alphas_cumprod[-1] < 0.05


def test_posterior_is_the_gaussian_product():
    """mu~ and beta~ equal the Bayes posterior of z_{r-1} given z_r and z0 (scalar check)."""
    s = NoiseSchedule(ScheduleConfig(num_steps=10))
    r, z0, zr = 6, 0.7, -0.4
    a_prev, beta = s.alphas_cumprod_prev[r - 1], s.betas[r - 1]
    # prior z_{r-1} ~ N(sqrt(a_prev) z0, 1 - a_prev); likelihood z_r ~ N(sqrt(1-beta) z_{r-1}, beta)
    precision = 1 / (1 - a_prev) + (1 - beta) / beta
    mean = (np.sqrt(a_prev) * z0 / (1 - a_prev) + np.sqrt(1 - beta) * zr / beta) / precision
    assert s.posterior_variance[r - 1] == pytest.approx(1 / precision)
    assert (s.posterior_mean_coef1[r - 1] * z0 + s.posterior_mean_coef2[r - 1] * zr
            == pytest.approx(mean))


def test_gather_uses_one_based_steps():
    s = NoiseSchedule(ScheduleConfig(num_steps=5))
    got = s.gather("betas", tf.constant([1, 5, 3])).numpy()
    np.testing.assert_allclose(got, s.betas[[0, 4, 2]].astype(np.float32))


def test_invalid_config():
    with pytest.raises(ValueError, match="kind"):
        ScheduleConfig(kind="cosine")
    with pytest.raises(ValueError, match="num_steps"):
        ScheduleConfig(num_steps=0)
