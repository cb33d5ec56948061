"""FIT: the LSS in closed form, exact corpus scoring, the loss, masking, the single-vector
approximation, the routing temperature, a tiny task, and evaluate() ranking by score_corpus."""

import json

import numpy as np
import pytest
import tensorflow as tf

from t2diff_tf import features as F
from t2diff_tf.metrics import evaluate, target_ranks
from t2diff_tf.models.base import LossConfig
from t2diff_tf.models.fit import FIT, FITConfig, LightweightSimilarityScorer, MetaQueryModule

SPEC = F.ExampleSpec(history_length=6)
NUM_ITEMS = 9
CONFIG = FITConfig(embedding_dim=8, num_meta_queries=3, num_item_heads=2, user_tower_units=(16,),
                   item_tower_units=(16,), scorer_units=(5,), temperature_decay_steps=100)


def _batch():
    history = np.array([[0, 0, 3, 5, 2, 7], [1, 2, 3, 4, 5, 6], [0, 0, 0, 0, 0, 9]], np.int64)
    return {F.HISTORY: tf.constant(history),
            F.HISTORY_TIME_LAG: tf.ones_like(history), F.HISTORY_SESSION: tf.zeros_like(history),
            F.SESSION_LENGTH: tf.constant([4, 6, 1], tf.int64),
            F.HISTORY_TIMESTAMPS: tf.zeros_like(history),
            F.TARGET: tf.constant([9, 8, 1], tf.int64)}


def _model(config=CONFIG, seed=0, num_items=NUM_ITEMS, item_features=None):
    tf.keras.utils.set_random_seed(seed)
    model = FIT(config, num_items=num_items, item_features=item_features, example_spec=SPEC)
    model.score_corpus(_batch())  # builds every layer
    # Give the LSS's MLP a non-zero output layer (it starts at zero) so that the tests see it.
    output = model.scorer._output
    output.kernel.assign(tf.random.normal(output.kernel.shape, seed=seed))
    output.bias.assign([0.3])
    return model


def _dense(layer, x):
    return x @ layer.kernel.numpy() + layer.bias.numpy()


def _swish(x):
    return x / (1.0 + np.exp(-x))


def _softmax(x, axis=-1):
    x = x - x.max(axis=axis, keepdims=True)
    e = np.exp(x)
    return e / e.sum(axis=axis, keepdims=True)


def _numpy_scores(model, interests, item_ids):
    """LSS scores ``[batch, k]`` of ``interests`` [batch, m, d] against ``item_ids`` [k]."""
    c = model.config
    vectors = model.items(tf.constant(item_ids)).numpy()
    e = vectors
    for layer in model.item_tower.layers:
        e = _dense(layer, e)
        if layer.activation is tf.keras.activations.swish:
            e = _swish(e)
    heads = _dense(model.item_heads, e).reshape(len(item_ids), c.num_item_heads, c.embedding_dim)
    if c.routing:
        tau = float(model.routing_temperature())
        routing = _softmax(vectors @ model.meta_queries.meta_matrix.numpy().T / tau)
    else:
        routing = np.ones([len(item_ids), c.num_meta_queries])
    scores = np.zeros([interests.shape[0], len(item_ids)])
    w = model.scorer.linear_weights.numpy()
    for b in range(interests.shape[0]):
        for i in range(len(item_ids)):
            s = routing[i][:, None] * (interests[b] @ heads[i].T)  # [m, m']
            h = s.reshape(-1)
            for layer in model.scorer._hidden:
                h = _swish(_dense(layer, h))
            scores[b, i] = (w * s).sum() + _dense(model.scorer._output, h)[0]
    return scores


def _numpy_interests(model, history):
    """The Meta Query Module and the user FFN in numpy: ``[batch, m, d]``."""
    mqm = model.meta_queries
    q = mqm.meta_matrix.numpy()
    d = q.shape[1]
    hard = _softmax(q @ q.T / np.sqrt(d)) @ q
    # Right-aligned positions: column l gets position L - 1 - l (the last behaviour is 0).
    x = model.items(tf.constant(history)).numpy() + \
        mqm.positions.numpy()[:history.shape[1]][::-1][None]
    out = np.zeros([history.shape[0], q.shape[0], d])
    for b in range(history.shape[0]):
        valid = history[b] != 0
        keys = x[b, valid] @ mqm.key_kernel.numpy()
        values = x[b, valid] @ mqm.value_kernel.numpy()
        if valid.any():
            out[b] = _softmax(hard @ keys.T / np.sqrt(d)) @ values
    h = out
    for layer in model.user_head.layers:
        h = _dense(layer, h)
        if layer.activation is tf.keras.activations.swish:
            h = _swish(h)
    return h


@pytest.mark.parametrize("routing", [True, False])
def test_lss_closed_form_against_numpy(routing):
    model = _model(FITConfig(**{**CONFIG.to_dict(), "routing": routing}))
    features = _batch()
    interests = model.interests(features).numpy()
    np.testing.assert_allclose(interests, _numpy_interests(model, features[F.HISTORY].numpy()),
                               rtol=1e-4, atol=1e-5)
    ids = np.array([4, 1, 9, 4], np.int64)
    got = model.score_items(features, tf.constant(ids)).numpy()
    np.testing.assert_allclose(got, _numpy_scores(model, interests, ids), rtol=1e-4, atol=1e-5)


def test_score_corpus_equals_score_items_on_all_ids():
    model = _model()
    features = _batch()
    corpus = model.score_corpus(features).numpy()
    assert corpus.shape == (3, NUM_ITEMS)
    all_ids = np.arange(1, NUM_ITEMS + 1)
    np.testing.assert_allclose(model.score_items(features, all_ids).numpy(), corpus,
                               rtol=1e-5, atol=1e-6)
    # One shortlist per row ([batch, k]) gathers the same exact scores.
    shortlists = np.array([[9, 1, 5], [2, 2, 8], [7, 3, 1]], np.int64)
    np.testing.assert_allclose(model.score_items(features, shortlists).numpy(),
                               np.take_along_axis(corpus, shortlists - 1, axis=1),
                               rtol=1e-5, atol=1e-6)


def test_loss_is_a_softmax_over_exactly_the_n_lss_scores():
    model = _model(FITConfig(**{**CONFIG.to_dict(), "loss": LossConfig(temperature=0.5)}))
    features = _batch()
    loss = float(model.compute_loss(features, training=False))
    logits = model.score_corpus(features).numpy() / 0.5
    target = features[F.TARGET].numpy()
    log_probs = np.log(_softmax(logits))
    assert loss == pytest.approx(-np.mean(log_probs[np.arange(3), target - 1]), rel=1e-5)
    assert int(model.train_steps.numpy()) == 0  # evaluation does not advance the schedule


def test_padding_changes_nothing_and_gets_no_attention():
    model = _model()
    features = _batch()
    scores = model.score_corpus(features).numpy()
    query = model.query_embeddings(features).numpy()
    # Another padding vector, and other lags / sessions at the padded positions.
    model.items.id_embeddings[0].assign(tf.random.normal([8], stddev=10.0))
    lags = features[F.HISTORY_TIME_LAG].numpy().copy()
    lags[0, :2] = 7
    changed = dict(features, **{F.HISTORY_TIME_LAG: tf.constant(lags),
                                F.HISTORY_SESSION: tf.fill([3, 6], tf.constant(3, tf.int64))})
    np.testing.assert_allclose(model.score_corpus(changed).numpy(), scores, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(model.query_embeddings(changed).numpy(), query, atol=1e-6)
    history = features[F.HISTORY]
    _, weights = model.meta_queries(model.items(history), mask=tf.not_equal(history, 0),
                                    return_weights=True)
    weights = weights.numpy()
    assert np.all(weights[0, :, :2] == 0.0) and np.all(weights[2, :, :5] == 0.0)
    np.testing.assert_allclose(weights.sum(-1), 1.0, rtol=1e-6)


def test_target_is_never_an_input():
    model = _model()
    features = _batch()
    other = dict(features, **{F.TARGET: tf.constant([1, 1, 1], tf.int64)})
    np.testing.assert_array_equal(model.score_corpus(other).numpy(),
                                  model.score_corpus(features).numpy())
    without = {k: v for k, v in features.items() if k != F.TARGET}
    np.testing.assert_array_equal(model.query_embeddings(without).numpy(),
                                  model.query_embeddings(features).numpy())


def test_single_vector_is_exactly_the_linear_part_of_the_lss():
    model = _model()
    features = _batch()
    approximate = (model.query_embeddings(features) @ tf.transpose(model.corpus_embeddings()))
    assert model.query_embeddings(features).shape == (3, 3 * 8)
    assert model.corpus_embeddings().shape == (NUM_ITEMS, 3 * 8)
    interests = model.interests(features)
    routing, heads = model.item_side(model.corpus_ids())
    linear = model.scorer.linear(model.similarity(interests, routing, heads, per_row=False))
    np.testing.assert_allclose(approximate.numpy(), linear.numpy(), rtol=1e-4, atol=1e-5)
    # With the MLP's output layer at zero (its initial state) the LSS is linear plus nothing:
    # the single-vector ranking is then the exact ranking.
    model.scorer._output.kernel.assign(tf.zeros_like(model.scorer._output.kernel))
    model.scorer._output.bias.assign([0.0])
    np.testing.assert_allclose(approximate.numpy(), model.score_corpus(features).numpy(),
                               rtol=1e-4, atol=1e-5)


def test_retrieve_rescores_the_shortlist_exactly():
    model = _model()
    features = _batch()
    exact = model.score_corpus(features).numpy()
    scores, ids = model.retrieve(features, k=3, shortlist=NUM_ITEMS)  # shortlist = everything
    np.testing.assert_array_equal(ids.numpy(), np.argsort(-exact, axis=1)[:, :3] + 1)
    np.testing.assert_allclose(scores.numpy(), -np.sort(-exact, axis=1)[:, :3], rtol=1e-5)
    scores, ids = model.retrieve(features, k=2, shortlist=4)
    np.testing.assert_allclose(scores.numpy(), np.take_along_axis(exact, ids.numpy() - 1, 1),
                               rtol=1e-5, atol=1e-6)


def test_routing_temperature_decays_during_training_only():
    model = _model()
    assert float(model.routing_temperature()) == pytest.approx(1.0)
    model.train_steps.assign(50)
    assert float(model.routing_temperature()) == pytest.approx(0.05 ** 0.5, rel=1e-5)
    model.train_steps.assign(10_000)
    assert float(model.routing_temperature()) == pytest.approx(0.05)
    model.train_steps.assign(0)
    model.compile(optimizer=tf.keras.optimizers.Adam(1e-3))
    data = {k: v.numpy() for k, v in _batch().items()}
    model.fit(tf.data.Dataset.from_tensor_slices(data).batch(1), epochs=2, verbose=0)
    assert int(model.train_steps.numpy()) == 6
    constant = FIT(FITConfig(**{**CONFIG.to_dict(), "temperature_decay_steps": 0}),
                   num_items=NUM_ITEMS, example_spec=SPEC)
    constant.train_steps.assign(10_000)
    assert float(constant.routing_temperature()) == pytest.approx(1.0)


def test_side_features_reach_the_routing_and_the_item_heads():
    genres = np.zeros([NUM_ITEMS + 1, 2], np.float32)
    genres[1:5, 0] = 1.0
    genres[5:, 1] = 1.0
    model = _model(item_features=genres)
    before = model.score_corpus(_batch()).numpy()
    model.items.feature_embeddings.assign(model.items.feature_embeddings + 1.0)
    assert not np.allclose(model.score_corpus(_batch()).numpy(), before)


def test_config_round_trip_and_validation():
    config = FITConfig(**{**CONFIG.to_dict(), "loss": LossConfig(temperature=0.1)})
    assert FITConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    with pytest.raises(ValueError, match="full softmax"):
        FITConfig(loss=LossConfig(kind="sampled_softmax"))
    with pytest.raises(ValueError, match="temperature"):
        FITConfig(initial_temperature=0.1, final_temperature=0.5)
    with pytest.raises(ValueError):
        FITConfig(num_meta_queries=0)
    assert _model().model_config()["query_dim"] == 24


@pytest.mark.parametrize("layer,shape", [
    (MetaQueryModule(3, max_positions=6), [2, 6, 4]),
    (LightweightSimilarityScorer((4,), "relu"), [2, 5, 3, 2]),
])
def test_get_config_round_trip(layer, shape):
    x = tf.random.normal(shape, seed=1)
    out = layer(x).numpy()
    clone = tf.keras.layers.deserialize(tf.keras.layers.serialize(layer))
    assert type(clone) is type(layer) and clone.get_config() == layer.get_config()
    clone(x)
    clone.set_weights(layer.get_weights())
    np.testing.assert_allclose(clone(x).numpy(), out, rtol=1e-5, atol=1e-6)


def test_fit_learns_an_order_a_bag_cannot_see(order_task):
    """Sequences a->b->c and c->b->a hold the same items; only order tells the next item."""
    tf.keras.utils.set_random_seed(0)
    config = FITConfig(embedding_dim=16, num_meta_queries=2, num_item_heads=2,
                       user_tower_units=(32,), item_tower_units=(32,))
    model = FIT(config, num_items=6, example_spec=SPEC)
    task = order_task()
    task.assert_learned(model, learning_rate=0.02, epochs=10)  # ranked by score_corpus
    # Without positions the user tower sees a bag: both probes get the same interests.
    probe = {k: tf.constant(v[task.probes]) for k, v in task.data.items()}
    bag = FIT(FITConfig(**{**config.to_dict(), "use_positions": False}), num_items=6,
              example_spec=SPEC)
    np.testing.assert_allclose(*bag.interests(probe).numpy(), rtol=1e-5, atol=1e-6)


class _ScoringModel:
    """A stand-in whose single vectors rank item 1 first but whose exact scores put
    ``history[-1] + 1`` first: evaluate() must use the exact scores."""

    num_items = 6

    def corpus_embeddings(self):
        return tf.one_hot([0] * self.num_items, self.num_items)

    def query_embeddings(self, features, training=False):
        return tf.one_hot(tf.zeros_like(features[F.HISTORY][:, -1], tf.int32), self.num_items)

    def score_corpus(self, features):
        return tf.one_hot(tf.cast(features[F.HISTORY][:, -1], tf.int32), self.num_items)


def test_evaluate_ranks_by_score_corpus():
    history = np.array([[0, 1, 2], [0, 2, 3], [1, 2, 4]])
    data = {F.HISTORY: history, F.HISTORY_TIME_LAG: np.ones_like(history),
            F.HISTORY_SESSION: np.zeros_like(history), F.SESSION_LENGTH: np.array([2, 2, 3]),
            F.HISTORY_TIMESTAMPS: np.zeros_like(history),
            F.TARGET: np.array([3, 4, 5])}
    result = evaluate(_ScoringModel(), data, ks=(1,), num_bootstrap=0)
    assert result["recall@1"] == pytest.approx(1.0)
    # A FIT model: evaluate's ranks are those of its exact corpus scores.
    model = _model()
    features = _batch()
    expected = target_ranks(model.score_corpus(features), features[F.TARGET]).numpy()
    arrays = {k: v.numpy() for k, v in features.items()}
    result = evaluate(model, arrays, ks=(1, 5), num_bootstrap=0)
    assert result["recall@5"] == pytest.approx(np.mean(expected <= 5))
    assert result["mrr@5"] == pytest.approx(np.mean(np.where(expected <= 5, 1.0 / expected, 0)))
