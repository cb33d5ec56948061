"""k-core filtering: the fixed point, its counts, Beam = in-memory, ML-1M's known 5-core."""

import gzip
import os

import numpy as np
import pytest

from components.preprocessing import readers
from components.preprocessing.config import WindowConfig
from components.preprocessing.inmemory import from_interactions
from components.preprocessing.kcore import filter_round, item_counts, k_core
from components.preprocessing.vocabulary import Vocabulary
from components.preprocessing.transforms import (PreprocessConfig, PreprocessingError,
                                                  run_preprocessing)
from t2diff_tf.features import ExampleSpec


def test_one_round_drops_rare_items_then_short_users():
    result = filter_round(["a", "b", "c", "a"], [1, 2, 3, 4], {"a": 5, "b": 1, "c": 5},
                          min_item=2, min_user=3)
    assert result.items == ["a", "c", "a"] and result.timestamps == [1, 3, 4]
    assert result.rare_interactions == 1 and result.dropped_user_interactions == 0
    short = filter_round(["a", "b"], None, {"a": 5, "b": 1}, min_item=2, min_user=2)
    assert short.items is None and short.rare_interactions == 1
    assert short.dropped_user_interactions == 1


def test_a_chain_needs_several_rounds_and_ends_at_the_core():
    # Dropping item z drops user u3, whose loss makes item y rare, which drops u1.
    sequences = {"u1": (["x", "x", "y"], None), "u2": (["w", "w", "w"], None),
                 "u3": (["z", "y", "w"], None), "u4": (["x", "w", "x"], None)}
    kept, totals, rounds, converged = k_core(sequences, min_item=2, min_user=3, max_rounds=10)
    assert converged and rounds == 2
    assert set(kept) == {"u2", "u4"}
    assert totals == {"rare_item_interactions": 2, "dropped_user_interactions": 4,
                      "dropped_users": 2}
    counts = item_counts(kept)
    assert all(n >= 2 for n in counts.values())
    assert all(len(items) >= 3 for items, _ in kept.values())
    removed = totals["rare_item_interactions"] + totals["dropped_user_interactions"]
    assert removed + sum(len(i) for i, _ in kept.values()) == 12
    _, _, _, converged = k_core(sequences, min_item=2, min_user=3, max_rounds=1)
    assert not converged


def _write_log(path, rng):
    users = []
    with gzip.open(path, "wt") as f:
        for u in range(60):
            n = int(rng.integers(3, 12))
            items = rng.zipf(1.6, n) % 40
            f.write(" ".join([str(u + 1)] + [str(i + 1) for i in items]) + "\n")
            users.append(n)
    return sum(users)


def test_beam_core_equals_the_in_memory_core_and_every_row_is_counted(tmp_path):
    total = _write_log(tmp_path / "log.txt.gz", np.random.default_rng(3))
    config = PreprocessConfig(window=WindowConfig(ExampleSpec(history_length=5)),
                              min_user_interactions=4, min_item_interactions=4)
    stats = run_preprocessing(readers.SequenceFile(str(tmp_path / "log.txt.gz")),
                              str(tmp_path / "out"), config)
    assert stats["interactions_read"] == total
    assert stats["kept"] + sum(stats["filtered"].values()) + stats["rejected"] == total
    assert stats["kcore"]["converged"] and stats["filtered"]["item_below_min_interactions"] > 0

    rows = []
    with gzip.open(tmp_path / "log.txt.gz", "rt") as f:
        for line in f:
            user, *items = line.split()
            rows += [(user, item, t) for t, item in enumerate(items)]
    data = from_interactions(rows, {}, WindowConfig(ExampleSpec(history_length=5)),
                             min_user_interactions=4, min_item_interactions=4)
    assert data.num_items == stats["items"]
    assert sum(data.vocabulary.counts) == stats["kept"]
    beam_vocabulary = Vocabulary.read(str(tmp_path / "out"))
    assert beam_vocabulary == data.vocabulary
    assert len(data.splits["test"]["target"]) == stats["examples"]["test"]
    assert len(data.splits["train"]["target"]) == stats["examples"]["train"]


def test_a_core_not_reached_in_time_stops_the_run(tmp_path):
    path = tmp_path / "chain.txt"
    path.write_text("1 10 10 11\n2 12 12 12\n3 13 11 12\n4 10 12 10\n")  # two rounds
    config = PreprocessConfig(window=WindowConfig(ExampleSpec(history_length=3)),
                              min_user_interactions=3, min_item_interactions=2,
                              kcore_max_rounds=1)
    with pytest.raises(PreprocessingError, match="fixed point in 1 rounds"):
        run_preprocessing(readers.SequenceFile(str(path)), str(tmp_path / "out"), config)


def test_movielens_1m_5_core_has_its_published_size(ml1m_dir):
    """ML-1M's 5-core: 6,040 users, 3,416 items, 999,611 interactions (one round)."""
    sequences = {}
    with gzip.open(os.path.join(ml1m_dir, "sequences.txt.gz"), "rt") as f:
        for line in f:
            user, *items = line.split()
            sequences[user] = (items, None)
    kept, totals, rounds, converged = k_core(sequences, 5, 5, 10)
    assert converged and rounds == 1
    assert len(kept) == 6040
    assert len({i for items, _ in kept.values() for i in items}) == 3416
    assert sum(len(items) for items, _ in kept.values()) == 999_611
    assert totals["rare_item_interactions"] == 1_000_209 - 999_611
