"""The numpy exact top-K: best first, ties to the lower row, the same in any blocking."""

import numpy as np
import pytest

from t2diff_tf.serving import brute_force
from t2diff_tf.serving.brute_force import numpy_top_k


def _full_sort_top_k(queries, candidates, k):
    """Reference: sort every score of a query (descending score, then ascending row)."""
    scores = queries.astype(np.float32) @ candidates.astype(np.float32).T
    rows = np.stack([np.lexsort((np.arange(scores.shape[1]), -row)) for row in scores])[:, :k]
    return np.take_along_axis(scores, rows, axis=1), rows


@pytest.mark.parametrize("max_scores", [1, 37, 40 * 5, 10 ** 9])
@pytest.mark.parametrize("k", [1, 7, 40])
def test_equals_full_sort_in_any_blocking(max_scores, k):
    rng = np.random.default_rng(3)
    # small integers: many equal scores, so the tie rule is exercised
    candidates = rng.integers(-2, 3, size=(40, 4)).astype(np.float32)
    queries = rng.integers(-2, 3, size=(13, 4)).astype(np.float32)
    scores, rows = numpy_top_k(queries, candidates, k, max_scores=max_scores)
    expected_scores, expected_rows = _full_sort_top_k(queries, candidates, k)
    np.testing.assert_array_equal(rows, expected_rows)
    np.testing.assert_array_equal(scores, expected_scores)
    assert rows.dtype == np.int64 and scores.dtype == np.float32


def test_blocks_hold_at_most_max_scores(monkeypatch):
    seen = []
    block = brute_force._block_top_k

    def recording(queries, candidates, k):
        seen.append(queries.shape[0] * candidates.shape[0])
        return block(queries, candidates, k)

    monkeypatch.setattr(brute_force, "_block_top_k", recording)
    rng = np.random.default_rng(4)
    numpy_top_k(rng.normal(size=(100, 3)), rng.normal(size=(50, 3)), 5, max_scores=1000)
    assert max(seen) <= 1000 and sum(seen) == 100 * 50 and len(seen) == 5
    seen.clear()  # a block holds one query even when a row alone is over the bound
    numpy_top_k(rng.normal(size=(3, 3)), rng.normal(size=(50, 3)), 5, max_scores=10)
    assert seen == [50, 50, 50]


def test_k_capped_at_candidates_and_no_queries():
    rng = np.random.default_rng(5)
    candidates = rng.normal(size=(6, 2))
    scores, rows = numpy_top_k(rng.normal(size=(2, 2)), candidates, 10)
    assert rows.shape == (2, 6) and sorted(rows[0]) == list(range(6))
    assert np.all(np.diff(scores, axis=1) <= 0)
    scores, rows = numpy_top_k(np.zeros((0, 2)), candidates, 3)
    assert scores.shape == (0, 3) and rows.shape == (0, 3)
    scores, rows = numpy_top_k(rng.normal(size=(2, 2)), candidates, 0)
    assert scores.shape == (2, 0) and rows.shape == (2, 0)
