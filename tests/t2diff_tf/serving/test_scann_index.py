"""ScaNN configuration defaults, the brute-force fallback, and the exact TF index."""

import numpy as np
import pytest
import tensorflow as tf

from t2diff_tf.serving.brute_force import BruteForceIndex, numpy_top_k
from t2diff_tf.serving.scann_index import (BRUTE_FORCE, TREE_AH, ScannConfig,
                                           build_pybind_index, build_scann_layer,
                                           load_pybind_index)


def test_small_corpus_falls_back_to_brute_force():
    resolved = ScannConfig().resolve(corpus_size=300, k=100)
    assert resolved.mode == BRUTE_FORCE and resolved.is_exact
    assert resolved.num_leaves is None and resolved.k == 100
    assert ScannConfig().resolve(corpus_size=50, k=100).k == 50


def test_automatic_tree_for_large_corpus():
    resolved = ScannConfig().resolve(corpus_size=100_000, k=100)
    assert resolved.mode == TREE_AH
    assert resolved.num_leaves == 632  # 2 sqrt(N)
    assert resolved.num_leaves_to_search == 64  # 10 %
    assert resolved.reorder_k == 400 and resolved.training_sample_size == 100_000
    assert resolved.anisotropic_quantization_threshold == 0.2
    text = resolved.scann_config_text(64)
    assert "num_children: 632" in text and "approx_num_neighbors: 400" in text
    assert "noise_shaping_threshold: 0.2" in text


def test_explicit_tree_must_stay_below_the_corpus():
    assert ScannConfig(num_leaves=10).resolve(100, 5).mode == TREE_AH
    with pytest.raises(ValueError, match="too many"):
        ScannConfig(num_leaves=80).resolve(100, 5)


@pytest.mark.parametrize("kwargs", [
    {"num_leaves": 1}, {"num_leaves": 10, "num_leaves_to_search": 11},
    {"dimensions_per_block": 0}, {"reorder_k": -1}, {"leaves_to_search_fraction": 0.0},
])
def test_config_validation(kwargs):
    with pytest.raises(ValueError):
        ScannConfig(**kwargs)


def test_brute_force_fallback_is_exact(tmp_path):
    rng = np.random.default_rng(0)
    candidates = rng.normal(size=(300, 8)).astype(np.float32)
    queries = rng.normal(size=(16, 8)).astype(np.float32)
    ids = np.arange(1, 301)
    _, rows = numpy_top_k(queries, candidates, 10)
    resolved = ScannConfig().resolve(300, 10)
    layer = build_scann_layer(candidates, ids, resolved)
    _, found = layer(tf.constant(queries))
    np.testing.assert_array_equal(found.numpy(), rows + 1)
    index = build_pybind_index(candidates, ids, resolved)
    index.serialize(str(tmp_path / "searcher"), resolved)
    _, found = load_pybind_index(str(tmp_path / "searcher")).search(queries, k=10)
    np.testing.assert_array_equal(found, rows + 1)


def test_tf_brute_force_index_matches_numpy():
    rng = np.random.default_rng(1)
    candidates = rng.normal(size=(500, 8)).astype(np.float32)
    queries = rng.normal(size=(7, 8)).astype(np.float32)
    index = BruteForceIndex(candidates, np.arange(1, 501))
    scores, ids = index(tf.constant(queries), k=20)
    expected_scores, rows = numpy_top_k(queries, candidates, 20)
    np.testing.assert_array_equal(ids.numpy(), rows + 1)
    np.testing.assert_allclose(scores.numpy(), expected_scores, rtol=1e-5)
    assert index(tf.constant(queries), k=1000)[1].shape == [7, 500]  # k capped at N
