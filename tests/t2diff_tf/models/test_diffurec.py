"""DiffuRec: the training loss in closed form, the reverse chain, masking, no target leakage."""

import dataclasses
import json

import numpy as np
import pytest
import tensorflow as tf

from t2diff_tf import features as F
from t2diff_tf.layers.schedules import NoiseSchedule
from t2diff_tf.models.diffurec import (DiffuRec, DiffuRecApproximator, DiffuRecConfig,
                                       truncated_linear_schedule)

NUM_ITEMS = 10
SPEC = F.ExampleSpec(history_length=6)
# lambda of order 1 so that x_r visibly reaches x0_hat (the paper's 0.001 barely does).
CONFIG = DiffuRecConfig(embedding_dim=8, num_blocks=1, num_heads=2, dropout=0.0,
                        embedding_dropout=0.0, schedule=truncated_linear_schedule(4),
                        lambda_mean=0.5, lambda_std=0.5)


def _model(config=CONFIG, **kwargs):
    return DiffuRec(config, num_items=NUM_ITEMS, example_spec=SPEC, **kwargs)


def _batch():
    history = np.array([[0, 0, 3, 5, 2, 7], [1, 2, 3, 4, 5, 6], [0, 0, 0, 0, 0, 4]], np.int64)
    return {F.HISTORY: tf.constant(history),
            F.HISTORY_TIME_LAG: tf.constant(np.where(history > 0, 1, 0)),
            F.HISTORY_SESSION: tf.constant(np.where(history > 0, 0, -1)),
            F.SESSION_LENGTH: tf.constant([4, 6, 1], tf.int64),
            F.TARGET: tf.constant([9, 8, 1], tf.int64)}


def test_config_round_trip_and_authors_schedule():
    config = DiffuRecConfig(schedule=truncated_linear_schedule(8), sampler="deterministic",
                            item_tower_units=(16,))
    assert DiffuRecConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    with pytest.raises(ValueError, match="sampler"):
        DiffuRecConfig(sampler="ddim")
    with pytest.raises(ValueError, match="lambda_std"):
        DiffuRecConfig(lambda_std=-1.0)
    # The authors' trunc_lin betas for T = 32.
    np.testing.assert_allclose(NoiseSchedule(DiffuRecConfig().schedule).betas,
                               np.linspace(0.0001 * 1000 / 32 + 0.01, 0.02 * 1000 / 32 + 0.01,
                                           32), rtol=1e-12)


def test_approximator_get_config_round_trip():
    layer = DiffuRecApproximator(num_steps=4, max_length=6, num_blocks=2, num_heads=2,
                                 feedforward_dim=12, dropout=0.1)
    clone = DiffuRecApproximator.from_config(layer.get_config())
    assert type(clone) is DiffuRecApproximator and clone.get_config() == layer.get_config()


@pytest.mark.parametrize("mse_weight", [0.0, 0.5])
def test_training_loss_is_the_closed_form(mse_weight):
    """CE of x0_hat over the corpus (+ MSE to x0), x0_hat from x_r = q_sample(v(target))."""
    model = _model(dataclasses.replace(CONFIG, mse_weight=mse_weight))
    features = _batch()
    rng = np.random.default_rng(1)
    steps = tf.constant([1, 3, 4], tf.int32)
    noise = tf.constant(rng.normal(size=(3, 8)), tf.float32)
    scale = tf.constant(rng.normal(0.5, 0.5, size=(3, 6, 8)), tf.float32)
    loss = float(model.compute_loss(features, training=True, steps=steps, noise=noise,
                                    scale=scale))

    # Closed form: q_sample and the injection in numpy, the encoder as a black box.
    abar = model.schedule.alphas_cumprod[steps.numpy() - 1][:, None]
    x0 = model.items(features[F.TARGET]).numpy()
    x_r = np.sqrt(abar) * x0 + np.sqrt(1.0 - abar) * noise.numpy()
    np.testing.assert_allclose(model.q_sample(tf.constant(x0), steps, noise).numpy(), x_r,
                               rtol=1e-5, atol=1e-6)
    vectors, mask = model.behaviours(features[F.HISTORY])
    d_r = model.approximator.step_embedding(steps).numpy()
    z = vectors.numpy() + scale.numpy() * (x_r + d_r)[:, None, :]
    _, states = model.approximator.encoder(tf.constant(z, tf.float32), mask=mask,
                                           return_sequence=True)
    x0_hat = states.numpy()[:, -1]
    logits = x0_hat @ model.corpus_embeddings().numpy().T
    logits -= logits.max(axis=1, keepdims=True)
    log_softmax = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
    ce = -log_softmax[np.arange(3), features[F.TARGET].numpy() - 1]
    expected = ce.mean() + mse_weight * np.mean((x0_hat - x0) ** 2)
    assert loss == pytest.approx(expected, rel=1e-4)
    # The noised target reaches x0_hat (the closed form is not vacuous).
    other = float(model.compute_loss(features, training=True, steps=steps, noise=-noise,
                                     scale=scale))
    assert abs(other - loss) > 1e-4


def test_deterministic_reverse_chain_is_the_posterior_mean_recursion():
    config = dataclasses.replace(CONFIG, sampler="deterministic")
    model = _model(config)
    features = _batch()
    e_u = model.query_embeddings(features).numpy()
    assert e_u.shape == (3, 8)
    np.testing.assert_array_equal(model.query_embeddings(features).numpy(), e_u)

    # x_T = 0, lambda = its mean, x_{r-1} = c0_r x0_hat + c1_r x_r; e_u = x0_hat at r = 1.
    vectors, mask = model.behaviours(features[F.HISTORY])
    s = model.schedule
    x = np.zeros([3, 8], np.float32)
    for r in range(model.num_steps, 0, -1):
        steps = tf.fill([3], r)
        x0_hat = model.approximator(vectors, tf.constant(x), steps, config.lambda_mean,
                                    mask=mask).numpy()
        x = (s.posterior_mean_coef1[r - 1] * x0_hat
             + s.posterior_mean_coef2[r - 1] * x).astype(np.float32)
    np.testing.assert_allclose(e_u, x0_hat, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(x, x0_hat, rtol=1e-5, atol=1e-6)  # c0_1 = 1, c1_1 = 0
    final, trajectory = model.reverse_chain(vectors, mask, return_trajectory=True)
    assert trajectory.shape == (model.num_steps, 3, 8)
    np.testing.assert_allclose(trajectory[-1].numpy(), final.numpy(), atol=1e-6)
    # Every step moved the prediction (x_r reaches the approximator).
    assert np.abs(trajectory[0].numpy() - trajectory[-1].numpy()).max() > 1e-4


def test_stochastic_sampler_is_random_unless_seeded():
    model = _model()
    features = _batch()
    seed = tf.constant([3, 4])
    a = model.sample(features, seed=seed).numpy()
    np.testing.assert_array_equal(model.sample(features, seed=seed).numpy(), a)
    assert np.abs(model.sample(features, seed=tf.constant([5, 6])).numpy() - a).max() > 1e-4
    assert np.abs(model.sample(features).numpy() - model.sample(features).numpy()).max() > 1e-4
    deterministic = model.sample(features, sampler="deterministic").numpy()
    assert np.abs(deterministic - a).max() > 1e-4
    with pytest.raises(ValueError, match="sampler"):
        model.sample(features, sampler="ddim")


def test_padding_changes_nothing():
    config = dataclasses.replace(CONFIG, sampler="deterministic")
    model = _model(config)
    features = _batch()
    inject = dict(steps=tf.constant([2, 2, 2]), noise=tf.random.normal([3, 8]),
                  scale=tf.random.normal([3, 6, 8], 0.5, 0.5))
    e_u = model.query_embeddings(features).numpy()
    x0_hat = model.user_tower(features, training=True, **inject)[0].numpy()
    # Garbage in the padding row of the embedding table and in the padded side features.
    table = model.items.id_embeddings
    table.assign(tf.tensor_scatter_nd_update(table, [[0]], 50.0 * tf.ones([1, 8])))
    changed = dict(features, **{F.HISTORY_TIME_LAG: tf.fill([3, 6], 7),
                                F.HISTORY_SESSION: tf.fill([3, 6], 2)})
    np.testing.assert_allclose(model.query_embeddings(changed).numpy(), e_u, atol=1e-5)
    np.testing.assert_allclose(model.user_tower(changed, training=True, **inject)[0].numpy(),
                               x0_hat, atol=1e-5)
    # The check can fail: an early valid behaviour does change e_u.
    history = features[F.HISTORY].numpy().copy()
    history[1, 0] = 9
    moved = model.query_embeddings(dict(features, **{F.HISTORY: tf.constant(history)}))
    assert np.abs(moved.numpy()[1] - e_u[1]).max() > 1e-4


@pytest.mark.parametrize("sampler", ["deterministic", "stochastic"])
def test_target_is_never_an_input_at_inference(sampler):
    model = _model(dataclasses.replace(CONFIG, sampler=sampler))
    features = _batch()
    other = dict(features, **{F.TARGET: tf.constant([1, 1, 9], tf.int64)})
    if sampler == "deterministic":
        e_u = model.query_embeddings(features).numpy()
        np.testing.assert_array_equal(model.query_embeddings(other).numpy(), e_u)
        np.testing.assert_array_equal(model.user_tower(other, training=False)[0].numpy(), e_u)
    seed = tf.constant([1, 2])
    np.testing.assert_array_equal(model.sample(other, seed=seed).numpy(),
                                  model.sample(features, seed=seed).numpy())


def test_diffurec_learns_an_order_a_bag_cannot_see(order_task):
    """1->2->3 and 2->1->3 hold the same items and end alike; only the order tells the next."""
    # The paper's lambda ~ N(0.001, 0.001) and stochastic sampler.
    model = DiffuRec(DiffuRecConfig(embedding_dim=16, num_blocks=1, num_heads=2, dropout=0.0,
                                    embedding_dropout=0.0, schedule=truncated_linear_schedule(8)),
                     num_items=6, example_spec=SPEC)
    order_task(second=(2, 1, 3)).assert_learned(model, learning_rate=0.01, epochs=10,
                                                rows=range(8))
