"""DAT+: mimic and category alignment losses in closed form, stop-gradients, masking, training."""

import json

import numpy as np
import pytest
import tensorflow as tf

from t2diff_tf import features as F
from t2diff_tf.models.base import LossConfig
from t2diff_tf.models.dat import (CATEGORY_ALIGNMENT, ITEM_MIMIC, USER_MIMIC, DAT,
                                  AugmentedVectors, DATConfig, category_alignment_loss)

NUM_ITEMS = 10
SPEC = F.ExampleSpec(history_length=6)
CONFIG = DATConfig(embedding_dim=8, user_tower_units=(16,), item_tower_units=(16,),
                   user_mimic_weight=0.3, item_mimic_weight=0.7, category_alignment_weight=2.0)
GENRES = np.zeros([NUM_ITEMS + 1, 3], np.float32)
GENRES[1:, 0] = 1                 # every item is genre 0 (the majority)
GENRES[[2, 4, 6, 8, 10], 1] = 1
GENRES[[3, 9], 2] = 1


def _batch():
    history = np.array([[0, 0, 3, 5, 2, 7], [1, 2, 3, 4, 5, 6], [0, 0, 0, 0, 0, 9],
                        [0, 0, 0, 4, 4, 1]], np.int64)
    valid = history > 0
    return {F.HISTORY: tf.constant(history),
            F.HISTORY_TIME_LAG: tf.constant(np.where(valid, 1, 0)),
            F.HISTORY_SESSION: tf.constant(np.where(valid, 0, -1)),
            F.SESSION_LENGTH: tf.constant([4, 6, 1, 3], tf.int64),
            F.HISTORY_TIMESTAMPS: tf.constant(np.where(valid, np.cumsum(valid, axis=1), 0)),
            F.TARGET: tf.constant([9, 8, 2, 3], tf.int64)}


def _model(config=CONFIG, **kwargs):
    kwargs.setdefault("item_features", GENRES)
    model = DAT(config, num_items=NUM_ITEMS, example_spec=SPEC, **kwargs)
    model.compute_loss(_batch())  # builds every weight
    return model


def _normalize(x):
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _covariance_loss(x, genres):
    """numpy: sum over the other genres of ||cov(major) - cov(g)||_F^2."""
    members = genres > 0
    counts = members.sum(0)
    major = int(np.argmax(counts))
    if counts[major] < 2:
        return 0.0
    reference = np.cov(x[members[:, major]], rowvar=False)
    return sum(np.sum((reference - np.cov(x[members[:, g]], rowvar=False)) ** 2)
               for g in range(genres.shape[1]) if g != major and counts[g] >= 2)


def test_config_round_trip_and_validation():
    restored = DATConfig.from_dict(json.loads(json.dumps(CONFIG.to_dict())))
    assert restored == CONFIG
    assert isinstance(restored.loss, LossConfig) and restored.loss.temperature == 0.05
    with pytest.raises(ValueError, match="item_mimic_weight"):
        DATConfig(item_mimic_weight=-1.0)
    with pytest.raises(ValueError, match="embedding_dim"):
        DATConfig(embedding_dim=0)


def test_augmented_vectors_lookup_pooling_and_config():
    layer = AugmentedVectors(5, 3, name="aug")
    ids = tf.constant([[0, 2, 4], [0, 0, 1]], tf.int64)
    pooled = layer(ids, mask=tf.not_equal(ids, 0)).numpy()
    table = layer.table.numpy()
    np.testing.assert_allclose(pooled, [(table[2] + table[4]) / 2, table[1]], rtol=1e-6)
    np.testing.assert_allclose(layer(tf.constant([3, 0])).numpy(), table[[3, 0]])
    clone = AugmentedVectors.from_config(layer.get_config())
    assert clone.get_config() == layer.get_config()
    clone(ids)
    clone.set_weights(layer.get_weights())
    np.testing.assert_allclose(clone(ids, mask=tf.not_equal(ids, 0)).numpy(), pooled)


@pytest.mark.parametrize("normalize", [True, False])
def test_loss_is_tower_softmax_plus_weighted_mimic_and_alignment(normalize):
    loss_config = LossConfig(temperature=0.05 if normalize else None)
    config = DATConfig(**dict(CONFIG.to_dict(), l2_normalize=normalize, loss=loss_config))
    model = _model(config)
    features = _batch()
    history = features[F.HISTORY].numpy()
    target = features[F.TARGET].numpy()
    user_table = model.user_augmentation.table.numpy()
    item_table = model.item_augmentation.table.numpy()

    # The towers, rebuilt from their parts.
    valid = history > 0
    a_u = np.stack([user_table[row[mask]].mean(0) for row, mask in zip(history, valid)])
    items = model.items(features[F.HISTORY]).numpy()
    pooled = np.stack([items[b][valid[b]].mean(0) for b in range(len(history))])
    p_u = model.user_head(tf.constant(np.concatenate([pooled, a_u], 1))).numpy()
    ids = np.arange(1, NUM_ITEMS + 1)
    corpus = model.item_tower(tf.concat(
        [model.items(ids), tf.constant(item_table[ids])], axis=1)).numpy()
    if normalize:
        p_u, corpus = _normalize(p_u), _normalize(corpus)
    np.testing.assert_allclose(model.query_embeddings(features).numpy(), p_u, atol=1e-5)
    np.testing.assert_allclose(model.corpus_embeddings().numpy(), corpus, atol=1e-5)
    p_v = corpus[target - 1]

    # Closed forms.
    user_mimic = np.mean(np.sum((a_u - p_v) ** 2, axis=1))
    item_mimic = np.mean(np.sum((item_table[target] - p_u) ** 2, axis=1))
    alignment = _covariance_loss(p_v, GENRES[target])
    assert alignment > 0
    logits = p_u @ corpus.T / (0.05 if normalize else 1.0)
    logits -= logits.max(1, keepdims=True)
    tower = np.mean(np.log(np.exp(logits).sum(1)) - logits[np.arange(len(target)), target - 1])

    losses = {k: float(v) for k, v in model.auxiliary_losses(features).items()}
    assert losses[USER_MIMIC] == pytest.approx(user_mimic, rel=1e-4)
    assert losses[ITEM_MIMIC] == pytest.approx(item_mimic, rel=1e-4)
    assert losses[CATEGORY_ALIGNMENT] == pytest.approx(alignment, rel=1e-3, abs=1e-7)
    auxiliary = 0.3 * user_mimic + 0.7 * item_mimic + 2.0 * alignment
    assert float(model.user_tower(features)[1]) == pytest.approx(auxiliary, rel=1e-4)
    assert float(model.compute_loss(features)) == pytest.approx(tower + auxiliary, rel=1e-4)


def test_category_alignment_loss_closed_form():
    rng = np.random.default_rng(1)
    x = rng.normal(size=[9, 4]).astype(np.float32)
    genres = np.zeros([9, 4], np.float32)
    genres[[0, 2, 3, 5, 8], 1] = 1   # the majority genre is 1 (5 members)
    genres[[1, 2, 4], 0] = 1
    genres[[6, 7, 8], 2] = 1
    genres[[3], 3] = 1               # a single member: no covariance, skipped
    got = float(category_alignment_loss(tf.constant(x), tf.constant(genres)))
    assert got == pytest.approx(_covariance_loss(x, genres), rel=1e-5)
    # Ties go to the lowest genre index; without two populated genres there is nothing to align.
    tie = np.zeros([4, 2], np.float32)
    tie[[0, 1], 0] = tie[[2, 3], 1] = 1
    assert float(category_alignment_loss(tf.constant(x[:4]), tf.constant(tie))) == \
        pytest.approx(_covariance_loss(x[:4], tie), rel=1e-5)
    assert float(category_alignment_loss(tf.constant(x[:3]), tf.constant(
        np.eye(3, dtype=np.float32)))) == 0.0
    # Without side features DAT has no categories, hence no alignment loss.
    plain = DAT(CONFIG, num_items=NUM_ITEMS, example_spec=SPEC)
    assert float(plain.auxiliary_losses(_batch())[CATEGORY_ALIGNMENT]) == 0.0


def _gradients(model, loss_fn):
    with tf.GradientTape() as tape:
        loss = loss_fn()
    grads = tape.gradient(loss, model.trainable_variables)
    return {v.name: (g is not None and float(tf.reduce_max(tf.abs(tf.convert_to_tensor(g)))) > 0)
            for v, g in zip(model.trainable_variables, grads)}


def test_mimic_losses_train_only_the_augmented_vectors():
    model = _model()
    features = _batch()
    reached = _gradients(model, lambda: sum(
        model.auxiliary_losses(features, training=True)[k] for k in (USER_MIMIC, ITEM_MIMIC)))
    augmented = {model.user_augmentation.table.name, model.item_augmentation.table.name}
    assert {name for name, hit in reached.items() if hit} == augmented
    # Each mimic loss moves only its own tower's augmented vectors, on the rows it used.
    with tf.GradientTape() as tape:
        user_mimic = model.auxiliary_losses(features, training=True)[USER_MIMIC]
    grads = tape.gradient(user_mimic, [model.user_augmentation.table,
                                       model.item_augmentation.table])
    assert grads[1] is None
    rows = np.flatnonzero(np.abs(tf.convert_to_tensor(grads[0]).numpy()).sum(1))
    np.testing.assert_array_equal(rows, np.unique(features[F.HISTORY].numpy()[
        features[F.HISTORY].numpy() > 0]))
    # The category alignment loss, by contrast, trains the item tower (never the user side).
    reached = _gradients(model, lambda: model.auxiliary_losses(features)[CATEGORY_ALIGNMENT])
    item_tower = {v.name for v in model.item_tower.trainable_variables}
    assert item_tower <= {name for name, hit in reached.items() if hit}
    for variable in model.user_head.trainable_variables + [model.user_augmentation.table]:
        assert not reached[variable.name]


def test_padding_and_target_never_change_the_user_embedding():
    model = _model()
    features = _batch()
    e_u = model.query_embeddings(features).numpy()
    # Padded positions: other side features, and other values in every table's padding row.
    padded = features[F.HISTORY].numpy() == 0
    other = dict(features, **{
        F.HISTORY_TIME_LAG: tf.constant(np.where(padded, 7, 1)),
        F.HISTORY_SESSION: tf.constant(np.where(padded, 3, 0)),
        F.TARGET: tf.constant([1, 1, 1, 1], tf.int64)})
    for table in (model.items.id_embeddings, model.user_augmentation.table,
                  model.item_augmentation.table):
        table.assign(tf.tensor_scatter_nd_update(table, [[0]], tf.fill([1, 8], 5.0)))
    np.testing.assert_allclose(model.query_embeddings(other).numpy(), e_u, atol=1e-6)
    # The target feeds only the auxiliary loss; without it (inference) there is none.
    query = {name: features[name] for name in F.QUERY_FEATURES}
    e_query, auxiliary = model.user_tower(query)
    np.testing.assert_allclose(e_query.numpy(), e_u, atol=1e-6)
    assert float(auxiliary) == 0.0
    np.testing.assert_allclose(model.user_tower(features)[0].numpy(), e_u, atol=1e-6)
    served = model.serving_user_tower()(query)["user_embedding"].numpy()
    np.testing.assert_allclose(served, e_u, atol=1e-5)


def test_corpus_embeddings_use_the_item_augmented_vectors():
    model = _model()
    before = model.corpus_embeddings().numpy()
    table = model.item_augmentation.table
    table.assign(tf.tensor_scatter_nd_update(table, [[3]], tf.ones([1, 8])))
    after = model.corpus_embeddings().numpy()
    changed = np.flatnonzero(np.abs(after - before).sum(1) > 1e-6)
    np.testing.assert_array_equal(changed, [2])  # row 2 is item 3
    np.testing.assert_allclose(model.candidate_embeddings(tf.constant([3, 7])).numpy(),
                               after[[2, 6]], atol=1e-6)


def test_sampled_softmax_builds_and_trains_a_step():
    config = DATConfig(**dict(CONFIG.to_dict(), loss=LossConfig("sampled_softmax", 0.1)))
    model = DAT(config, num_items=NUM_ITEMS, example_spec=SPEC, item_features=GENRES,
                item_frequencies=np.full(NUM_ITEMS + 1, 1.0))
    assert np.isfinite(float(model.compute_loss(_batch())))


def test_dat_learns_a_tiny_task_and_its_augmented_vectors_mimic():
    """Histories drawn from items 1-4 are followed by item 9, from 5-8 by item 10."""
    rng = np.random.default_rng(0)
    rows, targets = [], []
    for _ in range(512):
        group = rng.integers(2)
        n = rng.integers(1, 5)
        row = np.zeros(6, np.int64)
        row[6 - n:] = rng.integers(1, 5, size=n) + 4 * group
        rows.append(row)
        targets.append(9 + group)
    history = np.stack(rows)
    data = {F.HISTORY: history, F.HISTORY_TIME_LAG: (history > 0).astype(np.int64),
            F.HISTORY_SESSION: np.where(history > 0, 0, -1),
            F.HISTORY_TIMESTAMPS: np.zeros_like(history),
            F.SESSION_LENGTH: (history > 0).sum(1), F.TARGET: np.array(targets, np.int64)}
    model = DAT(DATConfig(embedding_dim=16, user_tower_units=(32,), item_tower_units=(32,),
                          loss=LossConfig(temperature=0.1)),
                num_items=NUM_ITEMS, example_spec=SPEC, item_features=GENRES)
    batch = {k: tf.constant(v[:64]) for k, v in data.items()}
    start = {k: float(v) for k, v in model.auxiliary_losses(batch).items()}
    model.compile(optimizer=tf.keras.optimizers.Adam(0.02))
    history_ = model.fit(tf.data.Dataset.from_tensor_slices(data).batch(64), epochs=10,
                         verbose=0).history
    assert history_["tower_loss"][-1] < 0.2 * history_["tower_loss"][0]
    scores = model.query_embeddings(batch) @ tf.transpose(model.corpus_embeddings())
    predicted = tf.argmax(scores, axis=1).numpy() + 1
    np.testing.assert_array_equal(predicted, data[F.TARGET][:64])
    end = {k: float(v) for k, v in model.auxiliary_losses(batch).items()}
    assert end[USER_MIMIC] < 0.2 * start[USER_MIMIC]
    assert end[ITEM_MIMIC] < 0.2 * start[ITEM_MIMIC]
