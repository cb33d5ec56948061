"""The speed benchmark on a tiny configuration: every variant measured, plain and XLA."""

import json
import sys

from tests.benchmarks.test_ml1m_harness import ROOT, load_script


def test_model_speed_writes_every_variant_plain_and_xla(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(f"{ROOT}/benchmarks")  # the script imports benchmarks/machine.py
    try:
        speed = load_script("model_speed")
    finally:
        sys.modules.pop("machine", None)  # keep the suite's module table as it was
    output = tmp_path / "speed.json"
    speed.main(["--num-items", "40", "--history-length", "12", "--session-size", "4",
                "--embedding-dim", "8", "--batch-size", "16", "--train-steps", "2",
                "--diffusion-steps", "5", "--fast-steps", "2", "--repeats", "2",
                "--latency-batches", "1,4", "--output", str(output)])
    result = json.loads(output.read_text())
    rows = {row["model"]: row for row in result["results"]}
    assert set(rows) == {"mean_pool_two_tower", "mixed_attention",
                         "t2diff (full chain T=5)", "t2diff (fast S=2)"}
    for row in rows.values():
        assert row["train_examples_per_s"] > 0
        for batch in (1, 4):
            for suffix in ("", "_xla"):
                per_call = row[f"latency_ms_per_call_batch{batch}{suffix}"]
                assert per_call > 0
                assert row[f"latency_ms_per_user_batch{batch}{suffix}"] == per_call / batch
    full, fast = rows["t2diff (full chain T=5)"], rows["t2diff (fast S=2)"]
    # Same approximator, 5 steps against 2: the FLOPs scale with the steps exactly.
    assert full["reverse_process_mflop_per_user"] > 0
    assert abs(full["reverse_process_mflop_per_user"] / fast["reverse_process_mflop_per_user"]
               - 5 / 2) < 1e-9
    assert "reverse_process_mflop_per_user" not in rows["mixed_attention"]
    assert result["settings"]["diffusion_steps"] == 5
    assert "model_speed.py" in result["command"]
