"""SASRec and GRU4Rec: the all-position loss in closed form, and the inference embedding."""

import numpy as np
import pytest
import tensorflow as tf

from t2diff_tf import features as F
from t2diff_tf.models.registry import build_model
from tests.t2diff_tf.models.reference import next_item_softmax_loss, two_windows

SPEC = F.ExampleSpec(history_length=6)



@pytest.mark.parametrize("name", ["sasrec", "gru4rec"])
def test_loss_is_the_mean_softmax_over_every_valid_position(name):
    model = build_model(name, {"embedding_dim": 8, "dropout": 0.0}, num_items=10,
                        example_spec=SPEC)
    features = two_windows()
    loss = float(model.compute_loss(features, training=False))
    states = model._states(features[F.HISTORY], training=False).numpy()
    assert loss == pytest.approx(
        next_item_softmax_loss(states, model.corpus_embeddings().numpy(), features), rel=1e-4)


@pytest.mark.parametrize("name", ["sasrec", "gru4rec"])
def test_user_embedding_is_the_last_state(name):
    model = build_model(name, {"embedding_dim": 8}, num_items=10, example_spec=SPEC)
    features = two_windows()
    e_u = model.query_embeddings(features).numpy()
    states = model._states(features[F.HISTORY], training=False).numpy()
    np.testing.assert_allclose(e_u, states[:, -1], atol=1e-6)
    # The target is a label, never an input.
    other = dict(features, **{F.TARGET: tf.constant([1, 1], tf.int64)})
    np.testing.assert_allclose(model.query_embeddings(other).numpy(), e_u, atol=1e-6)


def test_sasrec_learns_an_order_a_bag_cannot_see(order_task):
    """Sequences a->b->c and c->b->a hold the same items; only order tells the next item."""
    model = build_model("sasrec", {"embedding_dim": 16, "dropout": 0.0}, num_items=6,
                        example_spec=SPEC)
    order_task().assert_learned(model, learning_rate=0.02, epochs=15)


def test_tied_normalised_sasrec_scores_cosines_and_divides_by_the_temperature():
    config = {"embedding_dim": 8, "dropout": 0.0, "tied_item_embeddings": True,
              "scale_embeddings": True, "normalize": True, "temperature": 0.05}
    model = build_model("sasrec", config, num_items=10, example_spec=SPEC)
    features = two_windows()
    e_u = model.query_embeddings(features).numpy()
    corpus = model.corpus_embeddings().numpy()
    np.testing.assert_allclose(np.linalg.norm(e_u, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(corpus, axis=1), 1.0, atol=1e-5)
    # Tied: the candidates are the (normalised) input item vectors, no item tower.
    raw = model.items(tf.range(1, 11)).numpy()
    np.testing.assert_allclose(corpus, raw / np.linalg.norm(raw, axis=1, keepdims=True),
                               atol=1e-6)
    assert not any("item_tower" in v.name for v in model.trainable_variables)
    states = model._states(features[F.HISTORY], training=False).numpy()
    # tf.math.l2_normalize's rule: x / sqrt(max(|x|^2, 1e-12)) (padded states stay 0).
    states /= np.sqrt(np.maximum((states ** 2).sum(axis=-1, keepdims=True), 1e-12))
    expected = next_item_softmax_loss(states / 0.05, corpus, features)
    assert float(model.compute_loss(features)) == pytest.approx(expected, rel=1e-4)


def test_sasrec_reference_recipe_config():
    """``block="sasrec"`` builds the reference block; ``embedding_stddev`` sets the item
    embeddings' initial spread; both survive the config round trip; bad values are refused."""
    config = {"embedding_dim": 64, "dropout": 0.0, "block": "sasrec", "embedding_stddev": 0.02,
              "tied_item_embeddings": True}
    model = build_model("sasrec", config, num_items=500, example_spec=SPEC)
    model.query_embeddings(two_windows())
    assert model.encoder.block == "sasrec" and model.config.block == "sasrec"
    assert model.items.id_embeddings.numpy().std() == pytest.approx(0.02, rel=0.1)
    assert build_model("sasrec", {"embedding_dim": 64}, num_items=500, example_spec=SPEC
                       ).config.block == "pre_norm"
    with pytest.raises(ValueError, match="block"):
        build_model("sasrec", {"block": "post"}, num_items=5, example_spec=SPEC)
    with pytest.raises(ValueError, match="embedding_stddev"):
        build_model("sasrec", {"embedding_stddev": 0.0}, num_items=5, example_spec=SPEC)


@pytest.mark.parametrize("kind", ["sampled_softmax", "gbce"])
def test_sampled_losses_train_every_position(kind):
    model = build_model("sasrec", {"embedding_dim": 8, "loss": {"kind": kind,
                                                                 "num_negatives": 4}},
                        num_items=10, item_frequencies=np.arange(11.0), example_spec=SPEC)
    features = two_windows()
    with tf.GradientTape() as tape:
        loss = model.compute_loss(features, training=True)
    grads = tape.gradient(loss, model.trainable_variables)
    assert np.isfinite(float(loss)) and float(loss) > 0
    assert all(g is not None for g in grads)
