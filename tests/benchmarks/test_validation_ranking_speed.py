"""The validation-ranking benchmark times both passes and checks they rank alike."""

import json

from benchmarks import validation_ranking_speed as V


def test_both_passes_are_timed_and_rank_alike(tmp_path):
    out = tmp_path / "speed.json"
    V.main(["--data-dir", str(tmp_path / "no-data"), "--history-length", "12",
            "--num-items", "40", "--model-config", '{"embedding_dim": 8}', "--repeats", "1",
            "--output", str(out)])
    result = json.loads(out.read_text())
    assert set(result["passes"]) == {"untrimmed", "sorted_and_trimmed"}
    assert result["same_ranks"] is True
    assert result["users"] == 6040 and result["speedup"] > 0


def test_history_lengths_fall_back_to_uniform_without_the_data(tmp_path):
    lengths = V.history_lengths(str(tmp_path), 12, 100, seed=0)
    assert len(lengths) == 100 and lengths.min() >= 1 and lengths.max() <= 12
