"""ContrastVAE: the KL and InfoNCE terms in closed form, the ContrastELBO, the KL annealing, the
deterministic posterior-mean user embedding, padding invariance, and an order it learns."""

import numpy as np
import pytest
import tensorflow as tf

from t2diff_tf import features as F
from t2diff_tf.models.contrast_vae import (ContrastVAE, ContrastVAEConfig, GaussianPosterior,
                                           gaussian_kl, info_nce)
from tests.t2diff_tf.models.reference import next_item_softmax_loss, two_windows

SPEC = F.ExampleSpec(history_length=6)
NUM_ITEMS = 10



def _model(**overrides):
    config = ContrastVAEConfig(**{"embedding_dim": 8, "dropout": 0.0, "kl_warmup_steps": 10,
                                  **overrides})
    return ContrastVAE(config, num_items=NUM_ITEMS, example_spec=SPEC)


# -- closed forms ----------------------------------------------------------------------------------

def _np_kl(mean, log_variance):
    return 0.5 * np.sum(mean ** 2 + np.exp(log_variance) - 1.0 - log_variance, axis=-1)


def _np_info_nce(a, b, temperature):
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    vectors = np.concatenate([a, b])  # anchor k's positive is k +- B
    n, batch = len(vectors), len(a)
    losses = []
    for k in range(n):
        positive = (k + batch) % n
        others = [j for j in range(n) if j != k]
        scores = np.array([vectors[k] @ vectors[j] for j in others]) / temperature
        positive_score = vectors[k] @ vectors[positive] / temperature
        losses.append(-positive_score + np.log(np.exp(scores).sum()))
    return np.mean(losses)


def test_gaussian_kl_matches_the_closed_form():
    rng = np.random.default_rng(0)
    mean = rng.normal(size=(2, 4, 3)).astype(np.float32)
    log_variance = rng.normal(size=(2, 4, 3)).astype(np.float32)
    mask = np.array([[False, True, True, True], [True, True, False, True]])
    expected = _np_kl(mean, log_variance)[mask].mean()
    assert float(gaussian_kl(mean, log_variance, mask)) == pytest.approx(expected, rel=1e-5)
    assert float(gaussian_kl(mean, log_variance)) == pytest.approx(
        _np_kl(mean, log_variance).mean(), rel=1e-5)
    # The prior itself costs nothing, and an empty mask gives 0 (not NaN).
    assert float(gaussian_kl(np.zeros((3, 2), np.float32), np.zeros((3, 2), np.float32))) == 0.0
    assert float(gaussian_kl(mean, log_variance, np.zeros((2, 4), bool))) == 0.0


def test_info_nce_matches_the_closed_form():
    rng = np.random.default_rng(1)
    a = rng.normal(size=(5, 4)).astype(np.float32)
    b = rng.normal(size=(5, 4)).astype(np.float32)
    for temperature in (1.0, 0.3):
        assert float(info_nce(a, b, temperature)) == pytest.approx(
            _np_info_nce(a, b, temperature), rel=1e-5)
    # Aligned views (each row nearest its own other view) score lower than mismatched ones.
    aligned = float(info_nce(a, a + 0.01 * b, 0.5))
    assert aligned < float(info_nce(a, b, 0.5))
    # Cosine similarity: the scale of either view does not matter.
    assert float(info_nce(3.0 * a, b, 0.5)) == pytest.approx(float(info_nce(a, b, 0.5)), rel=1e-5)


# -- the posterior layer ---------------------------------------------------------------------------

def test_posterior_reparameterises_and_keeps_padding_at_the_prior():
    layer = GaussianPosterior(3)
    states = tf.random.normal([2, 4, 5], seed=3)
    mask = tf.constant([[False, True, True, True], [True] * 4])
    z, mean, log_variance = layer(states, mask=mask)
    np.testing.assert_array_equal(z.numpy(), mean.numpy())  # no sampling: z = mean
    noise = tf.random.normal([2, 4, 3], seed=4)
    z, mean, log_variance = layer(states, mask=mask, sample=True, noise=noise)
    valid = mask.numpy()
    np.testing.assert_allclose(
        z.numpy()[valid],
        (mean.numpy() + np.exp(0.5 * log_variance.numpy()) * noise.numpy())[valid], rtol=1e-5)
    for tensor in (z, mean, log_variance):
        assert np.all(tensor.numpy()[~valid] == 0.0)
    clone = GaussianPosterior.from_config(layer.get_config())
    assert clone.latent_dim == 3


def test_config_validation_and_round_trip():
    config = ContrastVAEConfig(embedding_dim=16, temperature=0.2, kl_warmup_steps=0)
    assert ContrastVAEConfig.from_dict(config.to_dict()) == config
    for bad in ({"temperature": 0.0}, {"kl_warmup_steps": -1}, {"dropout": 1.0},
                {"kl_weight": -0.1}, {"contrastive_weight": -1.0}, {"num_heads": 0}):
        with pytest.raises(ValueError):
            ContrastVAEConfig(**bad)


# -- the ContrastELBO ------------------------------------------------------------------------------

def _np_reconstruction(model, states, features):
    return next_item_softmax_loss(states, model.corpus_embeddings().numpy(), features)


def test_training_terms_are_the_two_view_contrast_elbo():
    model = _model(temperature=0.7)
    features = two_windows()
    noise = (tf.random.normal([2, 6, 8], seed=5), tf.random.normal([2, 6, 8], seed=6))
    reconstruction, kl, contrastive = model.contrast_elbo(features, training=True, noise=noise)
    valid = features[F.HISTORY].numpy() != 0
    expected_rec, expected_kl, last = [], [], []
    for eps in noise:  # dropout is 0: a view is a function of its noise only
        view = model.view(features[F.HISTORY], training=True, sample=True, noise=eps)
        mean, log_variance, z = view.mean.numpy(), view.log_variance.numpy(), view.z.numpy()
        np.testing.assert_allclose(
            z[valid], (mean + np.exp(0.5 * log_variance) * eps.numpy())[valid], rtol=1e-5,
            atol=1e-6)
        expected_rec.append(_np_reconstruction(model, view.states.numpy(), features))
        expected_kl.append(_np_kl(mean, log_variance)[valid].mean())
        last.append(z[:, -1])
    assert float(reconstruction) == pytest.approx(np.mean(expected_rec), rel=1e-4)
    assert float(kl) == pytest.approx(np.mean(expected_kl), rel=1e-4)
    assert float(contrastive) == pytest.approx(_np_info_nce(*last, 0.7), rel=1e-4)


def test_loss_weights_the_terms_and_evaluation_is_one_deterministic_view():
    model = _model(kl_weight=0.5, contrastive_weight=0.25)
    features = two_windows()
    model.train_steps.assign(4)  # beta = 0.5 * 4 / 10
    view = model.view(features[F.HISTORY])
    expected = _np_reconstruction(model, view.states.numpy(), features) + 0.2 * _np_kl(
        view.mean.numpy(), view.log_variance.numpy())[features[F.HISTORY].numpy() != 0].mean()
    assert float(model.compute_loss(features, training=False)) == pytest.approx(expected, rel=1e-4)
    assert int(model.train_steps.numpy()) == 4  # evaluation does not advance the schedule
    terms = (tf.constant(1.0), tf.constant(2.0), tf.constant(3.0))
    model.contrast_elbo = lambda features, training=False: terms
    assert float(model.compute_loss(features, training=True)) == pytest.approx(
        1.0 + 0.2 * 2.0 + 0.25 * 3.0)
    assert int(model.train_steps.numpy()) == 5


def test_kl_weight_warms_up_linearly_and_is_saved_with_the_weights(tmp_path):
    model = _model(kl_weight=0.4, kl_warmup_steps=8)
    assert float(model.kl_weight()) == 0.0
    model.train_steps.assign(2)
    assert float(model.kl_weight()) == pytest.approx(0.1)
    model.train_steps.assign(100)
    assert float(model.kl_weight()) == pytest.approx(0.4)  # capped after the warm-up
    model.train_steps.assign(0)
    model.compile(optimizer=tf.keras.optimizers.Adam(1e-3))
    for _ in range(3):  # eager Keras steps (Model.fit is exercised by the order task below)
        model.train_step(two_windows())
    assert int(model.train_steps.numpy()) == 3  # one per training step
    assert float(model.kl_weight()) == pytest.approx(0.4 * 3 / 8)
    model.save_weights(str(tmp_path / "weights"))
    restored = _model(kl_weight=0.4, kl_warmup_steps=8)
    restored.compute_loss(two_windows())  # builds the layers
    restored.load_weights(str(tmp_path / "weights"))
    assert int(restored.train_steps.numpy()) == 3
    constant = _model(kl_weight=0.3, kl_warmup_steps=0)
    assert float(constant.kl_weight()) == pytest.approx(0.3)


# -- inference -------------------------------------------------------------------------------------

def test_user_embedding_is_the_decoded_posterior_mean_and_deterministic():
    model = _model(dropout=0.3)  # dropout and sampling are off at inference
    features = two_windows()
    e_u = model.query_embeddings(features).numpy()
    np.testing.assert_array_equal(model.query_embeddings(features).numpy(), e_u)
    view = model.view(features[F.HISTORY])
    np.testing.assert_array_equal(view.z.numpy(), view.mean.numpy())
    np.testing.assert_allclose(e_u, view.states.numpy()[:, -1], atol=1e-6)
    # The target is a label, never an input.
    other = dict(features, **{F.TARGET: tf.constant([1, 1], tf.int64)})
    np.testing.assert_array_equal(model.query_embeddings(other).numpy(), e_u)
    # Training views are random (dropout + sampling): the two views of a batch differ.
    first = model.view(features[F.HISTORY], training=True).z.numpy()
    second = model.view(features[F.HISTORY], training=True).z.numpy()
    assert not np.allclose(first, second)


def test_left_padding_and_the_padding_vector_change_nothing():
    model = _model()
    features = two_windows()
    e_u = model.query_embeddings(features).numpy()
    loss = float(model.compute_loss(features))
    # The first row without (some of) its left padding: positions are aligned on the right.
    for start in (1, 2):
        cut = {F.HISTORY: features[F.HISTORY][:1, start:]}
        np.testing.assert_allclose(model.query_embeddings(cut).numpy(), e_u[:1], atol=1e-5)
    # The padding id's embedding and the other features of padded positions are never read.
    model.items.id_embeddings[0].assign(tf.fill([8], 50.0))
    noisy = dict(features, **{F.HISTORY_TIME_LAG: tf.fill([2, 6], tf.constant(7, tf.int64)),
                              F.HISTORY_SESSION: tf.fill([2, 6], tf.constant(3, tf.int64))})
    np.testing.assert_allclose(model.query_embeddings(noisy).numpy(), e_u, atol=1e-5)
    assert float(model.compute_loss(noisy)) == pytest.approx(loss, rel=1e-5)


def test_contrast_vae_learns_an_order_a_bag_cannot_see(order_task):
    """Sequences a->b->c and c->b->a hold the same items; only order tells the next item."""
    tf.random.set_seed(0)
    model = ContrastVAE(ContrastVAEConfig(embedding_dim=16, dropout=0.0, kl_warmup_steps=40),
                        num_items=6, example_spec=SPEC)
    order_task().assert_learned(model, learning_rate=0.02, epochs=5)
    assert int(model.train_steps.numpy()) == 5 * 8  # Model.fit advances the KL schedule
