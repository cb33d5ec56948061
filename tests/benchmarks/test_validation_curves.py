"""The validation-curve table reads selection.json and results JSON alike."""

import json

from benchmarks import validation_curves as V


def test_curves_from_a_running_and_a_finished_run(tmp_path):
    run = tmp_path / "T2Diff_seed0" / "selection"
    run.mkdir(parents=True)
    (run / "selection.json").write_text(json.dumps({"epochs": [
        {"epoch": 1, "val_recall@10": 0.2, "val_ndcg@10": 0.1, "train_seconds": 600.0},
        {"epoch": 2, "val_recall@10": 0.3, "val_ndcg@10": 0.09, "train_seconds": 1200.0}]}))
    results = tmp_path / "sasrec.json"
    results.write_text(json.dumps({"protocols": {"leave_one_out": {"results": [
        {"label": "SASRec", "time_to_quality": {"val_recall@10": [0.1, 0.15, 0.25],
                                                "val_ndcg@10": [0.05, 0.07, 0.12],
                                                "train_seconds": [40, 80, 120]}}]}}}))
    curves = {"T2Diff": V.read_curve(str(tmp_path / "T2Diff_seed0")),
              "SASRec": V.read_curve(str(results), "SASRec")}
    lines = V.table(curves).splitlines()
    assert lines[2] == "| 1 | 10 | 0.2000 / 0.1000 | 0.1000 / 0.0500 |"
    assert lines[4] == "| 3 |  |  | 0.2500 / 0.1200 |"
    # The best epoch is chosen on NDCG: epoch 1 for T2Diff, epoch 3 for SASRec.
    assert lines[-1] == ("| best NDCG@10 so far | | 0.2000 / 0.1000 (epoch 1) | "
                         "0.2500 / 0.1200 (epoch 3) |")
