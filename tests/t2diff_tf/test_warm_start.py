"""Warm start across a changed vocabulary: kept items keep their rows, new items get fresh
rows, removed items go, every other weight is copied, and a SavedModel is a valid base."""

import numpy as np
import pytest
import tensorflow as tf

from t2diff_tf import features as F
from t2diff_tf import warm_start as W
from t2diff_tf.models.registry import build_model
from t2diff_tf.serving.signatures import UserTowerModule

SPEC = F.ExampleSpec(history_length=6)
# Old vocabulary a..h; the new one drops "c" and "f", adds "x", "y", "z" and reorders the rest.
OLD_RAW = ("a", "b", "c", "d", "e", "f", "g", "h")
NEW_RAW = ("x", "h", "a", "y", "e", "d", "b", "z", "g")


def features_for(raw_ids):
    """One side feature per item, derived from its raw id (the same for an item in both)."""
    matrix = np.zeros((len(raw_ids) + 1, 3), np.float32)
    for i, raw in enumerate(raw_ids, start=1):
        matrix[i, ord(raw) % 3] = 1.0
    return matrix


def build(name, raw_ids, extra_item=False, config=None):
    n = len(raw_ids) + int(extra_item)
    feats = features_for(raw_ids)
    if extra_item:
        feats = np.concatenate([feats, np.zeros((1, feats.shape[1]), np.float32)])
    model = build_model(name, config or {"embedding_dim": 8}, num_items=n, item_features=feats,
                        item_frequencies=np.full(n + 1, 1.0 / n, np.float32), example_spec=SPEC)
    W.create_variables(model, SPEC)
    return model


def randomize(model, seed=1):
    """Moves every trainable weight away from its initial value (a stand-in for training)."""
    rng = np.random.default_rng(seed)
    for v in model.trainable_weights:
        v.assign(rng.normal(0.0, 0.5, v.shape).astype(v.dtype.as_numpy_dtype))


def test_mapping_through_raw_ids():
    mapping = W.ItemIdMapping.from_raw_ids(OLD_RAW, NEW_RAW)
    assert mapping.old_ids.tolist() == [0, 0, 8, 1, 0, 5, 4, 2, 0, 7]
    assert (mapping.items_kept, mapping.items_added, mapping.items_removed) == (6, 3, 2)
    with pytest.raises(ValueError, match="more than once"):
        W.ItemIdMapping.from_raw_ids(("a", "a"), ("a",))


@pytest.mark.parametrize("name", ["mean_pool_two_tower", "sasrec", "t2diff", "dat_plus"])
def test_rows_follow_raw_ids_and_other_weights_are_copied(name):
    old = build(name, OLD_RAW)
    randomize(old)
    tf.keras.utils.set_random_seed(7)
    fresh = build(name, NEW_RAW)  # what the new model is without warm start
    tf.keras.utils.set_random_seed(7)
    new = build(name, NEW_RAW)
    probe = build(name, NEW_RAW, extra_item=True)
    mapping = W.ItemIdMapping.from_raw_ids(OLD_RAW, NEW_RAW)
    report = W.transfer_weights(old, new, probe, mapping)

    old_table = old.items.id_embeddings.numpy()
    new_table = new.items.id_embeddings.numpy()
    fresh_table = fresh.items.id_embeddings.numpy()
    assert "items/id_embeddings" in " ".join(report.remapped)
    for j, raw in enumerate(NEW_RAW, start=1):
        if raw in OLD_RAW:  # a kept item: its old row, wherever its id moved
            np.testing.assert_array_equal(new_table[j], old_table[OLD_RAW.index(raw) + 1])
        else:  # a new item: the fresh initial row, not any old one
            np.testing.assert_array_equal(new_table[j], fresh_table[j])
            assert not any(np.allclose(new_table[j], row) for row in old_table)
    for raw in set(OLD_RAW) - set(NEW_RAW):  # removed items: their rows are gone
        row = old_table[OLD_RAW.index(raw) + 1]
        assert not any(np.allclose(row, r) for r in new_table)
    np.testing.assert_array_equal(new_table[0], old_table[0])
    # The side features are the new vocabulary's data, never the old model's.
    np.testing.assert_array_equal(new.items.feature_matrix.numpy(), features_for(NEW_RAW))
    assert any("feature_matrix" in w for w, _ in report.kept_initial)
    # Everything that is not an item table is the old model's.
    tables = W.item_indexed(new, probe)
    for o, n, is_table in zip(old.weights, new.weights, tables):
        if not is_table:
            np.testing.assert_array_equal(o.numpy(), n.numpy(), err_msg=n.name)
    assert len(report.copied) == sum(not t for t in tables)


def test_warm_started_model_answers_like_the_old_one_on_kept_items(tmp_path):
    """Through a SavedModel: a history of kept items gives the old model's user embedding, and
    kept items' corpus embeddings are the old ones (same side features)."""
    name = "mean_pool_two_tower"
    old = build(name, OLD_RAW)
    randomize(old)
    module = UserTowerModule(old, SPEC)
    tf.saved_model.save(module, str(tmp_path / "serving"), signatures=module.signatures())

    restored = build(name, OLD_RAW)
    W.restore_saved_model_weights(restored, str(tmp_path / "serving"))
    new = build(name, NEW_RAW)
    W.transfer_weights(restored, new, build(name, NEW_RAW, extra_item=True),
                       W.ItemIdMapping.from_raw_ids(OLD_RAW, NEW_RAW))

    kept = ["h", "a", "e", "d", "b", "g"]
    old_history = [[OLD_RAW.index(r) + 1 for r in kept]]
    new_history = [[NEW_RAW.index(r) + 1 for r in kept]]

    def query(history):
        return {F.HISTORY: tf.constant(history, tf.int64),
                F.HISTORY_TIME_LAG: tf.ones([1, 6], tf.int64),
                F.HISTORY_SESSION: tf.zeros([1, 6], tf.int64),
                F.SESSION_LENGTH: tf.constant([3], tf.int64),
                F.HISTORY_TIMESTAMPS: tf.zeros([1, 6], tf.int64)}

    np.testing.assert_allclose(new.query_embeddings(query(new_history)),
                               old.query_embeddings(query(old_history)), rtol=1e-5, atol=1e-6)
    old_corpus, new_corpus = np.asarray(old.corpus_embeddings()), np.asarray(new.corpus_embeddings())
    for raw in kept:
        np.testing.assert_allclose(new_corpus[NEW_RAW.index(raw)], old_corpus[OLD_RAW.index(raw)],
                                   rtol=1e-5, atol=1e-6)


def test_changed_shapes_keep_their_initial_value_and_another_architecture_is_refused():
    old = build("mean_pool_two_tower", OLD_RAW, config={"embedding_dim": 8})
    new = build("mean_pool_two_tower", NEW_RAW, config={"embedding_dim": 4})
    probe = build("mean_pool_two_tower", NEW_RAW, extra_item=True, config={"embedding_dim": 4})
    before = [w.numpy().copy() for w in new.weights]
    report = W.transfer_weights(old, new, probe, W.ItemIdMapping.from_raw_ids(OLD_RAW, NEW_RAW))
    assert any("id_embeddings" in w and "shape (9, 8)" in r for w, r in report.kept_initial)
    for b, w in zip(before, new.weights):
        if b.shape != tuple(next(o for o in old.weights
                                 if W.normalized_name(o, old) == W.normalized_name(w, new)
                                 ).shape):
            np.testing.assert_array_equal(b, w.numpy())
    with pytest.raises(ValueError, match="not the same architecture"):
        W.transfer_weights(build("sasrec", OLD_RAW), build("mean_pool_two_tower", NEW_RAW),
                           build("mean_pool_two_tower", NEW_RAW, extra_item=True),
                           W.ItemIdMapping.from_raw_ids(OLD_RAW, NEW_RAW))


def test_restoring_needs_a_saved_model_of_the_same_architecture(tmp_path):
    with pytest.raises(ValueError, match="no SavedModel variables"):
        W.restore_saved_model_weights(build("mean_pool_two_tower", OLD_RAW), str(tmp_path))
    sasrec = build("sasrec", OLD_RAW)
    module = UserTowerModule(sasrec, SPEC)
    tf.saved_model.save(module, str(tmp_path / "sasrec"), signatures=module.signatures())
    with pytest.raises(ValueError, match="another architecture"):
        W.restore_saved_model_weights(build("t2diff", OLD_RAW), str(tmp_path / "sasrec"))


def test_a_model_trained_by_fit_is_a_valid_base():
    """A model whose variables Keras' fit created (named without the model's prefix) maps onto
    one built by ``create_variables``."""
    from t2diff_tf.training import TrainConfig, fit

    def make():
        return build_model("mean_pool_two_tower", {"embedding_dim": 8}, num_items=len(OLD_RAW),
                           item_features=features_for(OLD_RAW),
                           item_frequencies=np.full(9, 0.125, np.float32), example_spec=SPEC)

    batch = W.dummy_batch(SPEC, len(OLD_RAW), batch_size=8)
    data = tf.data.Dataset.from_tensors(batch)
    old, _ = fit(make, data, None, TrainConfig(epochs=1, verbose=0))
    new = build("mean_pool_two_tower", NEW_RAW)
    report = W.transfer_weights(old, new, build("mean_pool_two_tower", NEW_RAW, extra_item=True),
                                W.ItemIdMapping.from_raw_ids(OLD_RAW, NEW_RAW))
    assert report.remapped and report.copied
    np.testing.assert_array_equal(new.items.id_embeddings.numpy()[NEW_RAW.index("a") + 1],
                                  old.items.id_embeddings.numpy()[1])
