"""The PyTorch recipe probe reads ML-1M as the pipeline does: the same chunks, the same splits.

Only its data path is tested here (it needs no PyTorch): a screen whose chunks or evaluation
inputs differed from the pipeline's would rank recipes on another problem.
"""

import gzip

import numpy as np
import pytest

from benchmarks import torch_sasrec_probe as probe
from components.preprocessing.sequences import chunk_bounds
from t2diff_tf import features as F


@pytest.mark.parametrize("history_length", [1, 3, 200])
def test_training_chunks_are_the_pipelines_chunks(history_length):
    rng = np.random.default_rng(0)
    spec = F.SequenceSpec(history_length=history_length)
    histories = [list(rng.integers(1, 50, size=n)) for n in [0, 1, 2, 3, 4, 5, 201, 202, 402, 700]]
    expected = [[h[j] for j in bounds] for h in histories
                for bounds in reversed(chunk_bounds(len(h), spec))]
    assert probe.training_chunks(histories, history_length) == expected


def test_every_item_after_a_users_first_is_a_label_once():
    history = list(range(1, 451))
    chunks = probe.training_chunks([history], 200)
    labels = [item for chunk in chunks for item in chunk[1:]]
    assert sorted(labels) == history[1:]
    assert max(len(c) for c in chunks) == 201


def test_right_padded_keeps_the_latest_items_oldest_first():
    out = probe.right_padded([[1, 2, 3, 4, 5], [7]], 3)
    np.testing.assert_array_equal(out, [[3, 4, 5], [7, 0, 0]])


def test_read_sequences_maps_raw_ids_to_one_based_sorted_ids(tmp_path):
    path = tmp_path / "sequences.txt.gz"
    with gzip.open(path, "wt") as f:
        f.write("1 30 10 20\n2 20 40 30 10\n3 50 60\n")  # user 3 is too short to split
    assert probe.read_sequences(str(path)) == [[3, 1, 2], [2, 4, 3, 1]]
