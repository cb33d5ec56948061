"""BERT4Rec: the cloze masks, the masked-item loss in closed form, the
[MASK]-position user embedding, and an order it learns."""

import numpy as np
import pytest
import tensorflow as tf

from t2diff_tf import features as F
from t2diff_tf.models.bert4rec import BERT4Rec, BERT4RecConfig
from tests.t2diff_tf.models.reference import two_windows

SPEC = F.ExampleSpec(history_length=6)


def _model(**overrides):
    config = BERT4RecConfig(**{"embedding_dim": 8, "dropout": 0.0, **overrides})
    return BERT4Rec(config, num_items=10, example_spec=SPEC)


# Cloze sequence of two_windows(): [[0, 3, 5, 2, 7, 9], [2, 3, 4, 5, 6, 8]].
FIXED_MASK = np.array([[True, False, True, False, False, True],     # padding: ignored
                       [False, True, False, False, True, False]])


# -- masks -----------------------------------------------------------------------------------------

def test_cloze_masks_valid_positions_at_the_mask_probability():
    model = _model(mask_probability=0.3, next_item_probability=0.0)
    tokens = tf.constant(np.tile([[0, 0, 1, 2, 3, 4, 5, 6, 7, 8]], (4000, 1)), tf.int64)
    sample = tf.function(model.sample_cloze_mask)
    masked = sample(tokens).numpy()
    assert not masked[:, :2].any()  # never padding
    assert masked.any(axis=1).all()  # every row predicts something
    # Rows the draw left empty mask their last position: P = rho + (1 - rho)^8 there.
    assert masked[:, 2:-1].mean() == pytest.approx(0.3, abs=0.02)
    assert masked[:, -1].mean() == pytest.approx(0.3 + 0.7 ** 8, abs=0.02)
    # Two calls of the traced function draw different masks (the draw is not frozen into it).
    assert not np.array_equal(masked, sample(tokens).numpy())


def test_next_item_rows_mask_the_last_position_only():
    tokens = tf.constant(np.tile([[0, 1, 2, 3, 4, 5]], (4000, 1)), tf.int64)
    only_last = _model(next_item_probability=1.0).sample_cloze_mask(tokens).numpy()
    np.testing.assert_array_equal(only_last, np.tile([[False] * 5 + [True]], (4000, 1)))
    masked = _model(mask_probability=0.2, next_item_probability=0.5).sample_cloze_mask(
        tokens).numpy()
    last_only = masked[:, -1] & ~masked[:, :-1].any(axis=1)
    # P(last only) = 0.5 + 0.5 * 0.8^4 (a cloze row masking only, or nothing but, the last).
    assert last_only.mean() == pytest.approx(0.5 + 0.5 * 0.8 ** 4, abs=0.03)


# -- loss ------------------------------------------------------------------------------------------

def _closed_form_loss(model, features, mask):
    tokens = np.concatenate([features[F.HISTORY].numpy()[:, 1:],
                             features[F.TARGET].numpy()[:, None]], axis=1)
    mask = mask & (tokens != 0)
    states = model.encode(tf.constant(tokens), tf.constant(mask)).numpy()
    corpus = model.corpus_embeddings().numpy()
    kernel, bias = (w.numpy() for w in model.output_projection.weights)
    losses = []
    for b, t in zip(*np.nonzero(mask)):
        query = tf.nn.gelu(states[b, t] @ kernel + bias).numpy()
        logits = corpus @ query
        logits = logits - logits.max()
        losses.append(np.log(np.exp(logits).sum()) - logits[tokens[b, t] - 1])
    return np.mean(losses), len(losses)


def test_loss_is_the_mean_softmax_over_exactly_the_masked_positions():
    model = _model()
    features = two_windows()
    loss = float(model.masked_item_loss(features, masked=tf.constant(FIXED_MASK)))
    expected, count = _closed_form_loss(model, features, FIXED_MASK)
    assert count == 4  # the padded position of row 0 is not predicted
    assert loss == pytest.approx(expected, rel=1e-4)
    # Evaluation mode predicts the target at the last position only.
    last = np.zeros_like(FIXED_MASK)
    last[:, -1] = True
    expected_last, _ = _closed_form_loss(model, features, last)
    assert float(model.compute_loss(features, training=False)) == pytest.approx(expected_last,
                                                                                 rel=1e-4)


def test_training_loss_uses_a_drawn_mask():
    model = _model(next_item_probability=0.0, mask_probability=1.0)
    features = two_windows()
    # rho = 1: every valid position is masked.
    every = np.concatenate([features[F.HISTORY].numpy()[:, 1:],
                            features[F.TARGET].numpy()[:, None]], axis=1) != 0
    loss = float(model.compute_loss(features, training=True))
    expected, count = _closed_form_loss(model, features, every)
    assert count == 11
    assert loss == pytest.approx(expected, rel=1e-4)


def test_masked_items_and_padding_are_never_inputs():
    model = _model()
    features = two_windows()
    tokens = model.cloze_sequence(features).numpy()
    mask = FIXED_MASK & (tokens != 0)
    states = model.encode(tf.constant(tokens), tf.constant(mask)).numpy()
    loss = float(model.masked_item_loss(features, masked=tf.constant(FIXED_MASK)))
    # The identity of a masked item reaches no state (it is only a label).
    other = np.where(mask, 1, tokens)
    np.testing.assert_allclose(model.encode(tf.constant(other), tf.constant(mask)).numpy(),
                               states, atol=1e-6)
    # Neither the padding id's embedding nor the padding's other features change anything.
    e_u = model.query_embeddings(features).numpy()
    table = model.items.id_embeddings
    table.assign(tf.tensor_scatter_nd_update(table, [[0]], [tf.fill([8], 5.0)]))
    padded = dict(features, **{F.HISTORY_TIME_LAG: tf.constant(np.full((2, 6), 7, np.int64))})
    np.testing.assert_allclose(model.encode(tf.constant(tokens), tf.constant(mask)).numpy(),
                               states, atol=1e-6)
    np.testing.assert_allclose(model.query_embeddings(padded).numpy(), e_u, atol=1e-6)
    assert float(model.masked_item_loss(padded, masked=tf.constant(FIXED_MASK))) == \
        pytest.approx(loss, rel=1e-6)


# -- inference -------------------------------------------------------------------------------------

def test_user_embedding_is_the_output_at_an_appended_mask():
    model = _model()
    features = two_windows()
    e_u = model.query_embeddings(features).numpy()
    history = features[F.HISTORY].numpy()
    # Whatever item sits at the appended position, it is [MASK]ed: e.g. the target itself.
    tokens = np.concatenate([history[:, 1:], features[F.TARGET].numpy()[:, None]], axis=1)
    last = np.zeros(tokens.shape, bool)
    last[:, -1] = True
    states = model.encode(tf.constant(tokens), tf.constant(last)).numpy()
    np.testing.assert_allclose(e_u, model.output_projection(states[:, -1]).numpy(), atol=1e-6)
    # The target is a label, never an input; the oldest behaviour is dropped.
    other = dict(features, **{F.TARGET: tf.constant([1, 1], tf.int64)})
    np.testing.assert_allclose(model.query_embeddings(other).numpy(), e_u, atol=1e-6)
    older = history.copy()
    older[1, 0] = 9
    np.testing.assert_allclose(
        model.query_embeddings(dict(features, **{F.HISTORY: tf.constant(older)})).numpy(),
        e_u, atol=1e-6)
    # The [MASK] vector is what the last position reads.
    model.mask_embedding.assign(tf.random.normal([8], seed=3))
    assert not np.allclose(model.query_embeddings(features).numpy(), e_u, atol=1e-4)


def test_config_validation_and_round_trip():
    config = BERT4RecConfig.from_dict({"mask_probability": 0.4, "num_heads": 4})
    assert BERT4RecConfig.from_dict(config.to_dict()) == config
    for bad in ({"mask_probability": 0.0}, {"next_item_probability": 1.5}, {"dropout": 1.0},
                {"num_blocks": 0}):
        with pytest.raises(ValueError):
            BERT4RecConfig(**bad)


def test_bert4rec_learns_an_order_a_bag_cannot_see(order_task):
    """Sequences a->b->c and c->b->a hold the same items; only order tells the next item."""
    model = BERT4Rec(BERT4RecConfig(embedding_dim=16, num_heads=1, dropout=0.0), num_items=6,
                     example_spec=SPEC)
    order_task().assert_learned(model, learning_rate=0.01, epochs=15)
