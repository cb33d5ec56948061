"""The benchmark harness on a tiny synthetic log: a results file the notebook can read."""

import importlib.util
import json
import os

import pytest

from components.preprocessing import readers
from components.preprocessing.config import WindowConfig
from components.preprocessing.synthetic import SyntheticConfig
from components.preprocessing.transforms import PreprocessConfig, run_preprocessing
from t2diff_tf.features import ExampleSpec
from t2diff_tf.training import TrainConfig

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SPEC = ExampleSpec(history_length=12)
TINY_T2DIFF = {"embedding_dim": 8, "session_size": 4, "attention_units": [8],
               "user_tower_units": [16], "item_tower_units": [16],
               "diffusion": {"schedule": {"num_steps": 10}}}


def load_script(name: str):
    """A ``benchmarks/`` script as a module (the folder is not a package)."""
    spec = importlib.util.spec_from_file_location(f"benchmarks_{name}",
                                                  os.path.join(ROOT, "benchmarks", f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def results_path(tmp_path_factory) -> str:
    """Runs the harness's per-run step on synthetic windows and writes a results file."""
    tmp_path = tmp_path_factory.mktemp("harness")
    harness = load_script("ml1m")
    root = str(tmp_path / "data")
    run_preprocessing(readers.SyntheticLog(SyntheticConfig(num_users=80, num_items=60,
                                                           num_clusters=6)),
                      root, PreprocessConfig(window=WindowConfig(SPEC, session_k=4)))
    data = {s: harness.load_split(root, s, SPEC) for s in ("train", "validation", "test")}
    train = TrainConfig(epochs=1, batch_size=64, verbose=0)
    runs = [{"label": "Two-tower (mean pool)", "model": "mean_pool_two_tower",
             "config": {"embedding_dim": 8}},
            {"label": "T2Diff, T = 10", "model": "t2diff", "config": TINY_T2DIFF}]
    results = [harness.run_one(r, 0, root, data, train, SPEC) for r in runs]
    path = str(tmp_path / "ml1m_tiny.json")
    with open(path, "w") as f:
        json.dump({"command": "test", "machine": "test",
                   "protocols": {"leave_one_out": {"data": root, "results": results}}}, f)
    return path


def test_run_records_metrics_intervals_cost_and_reverse_steps(results_path):
    with open(results_path) as f:
        results = json.load(f)["protocols"]["leave_one_out"]["results"]
    two_tower, t2diff = results
    for r in results:
        low, high = r["intervals"]["recall@20"]
        assert low <= r["metrics"]["recall@20"] <= high
        assert r["parameters"] > 0 and r["ms_per_user_batch_256"] > 0
        assert r["num_test_examples"] == 80
    assert two_tower["reverse_step_cosine"] is None
    cosine = t2diff["reverse_step_cosine"]
    assert cosine["steps"] == 10 and len(cosine["mean"]) == 10
    assert all(-1.0 <= v <= 1.0 for v in cosine["samples"]["10"])
    # The same weights ranked by the full chain and the fast sampler at S = 5 and S = T = 10.
    assert two_tower["sampler_comparison"] is None
    samplers = t2diff["sampler_comparison"]
    assert set(samplers) == {"full", "fast_S5", "fast_S10"}
    for values in samplers.values():
        assert 0.0 <= values["recall@20"] <= 1.0 and values["ms_per_user_batch_256"] > 0
    harness = load_script("ml1m")
    assert "| T2Diff, T = 10 |" in harness.markdown(results, "leave_one_out")


def test_paired_comparison_of_two_runs(results_path, tmp_path, capsys):
    compare = load_script("compare")
    with open(results_path) as f:
        two_tower, t2diff = json.load(f)["protocols"]["leave_one_out"]["results"]
    assert len(t2diff["test_ranks"]) == len(t2diff["test_users"]) == 80
    result = compare.main([results_path, "T2Diff, T = 10", results_path,
                           "Two-tower (mean pool)"])
    assert result["num_examples"] == 80
    for name in compare.METRICS:
        r = result[name]
        # The aligned per-user ranks give back each run's own reported metric.
        assert r["a"] == pytest.approx(t2diff["metrics"][name])
        assert r["b"] == pytest.approx(two_tower["metrics"][name])
        low, high = r["interval"]
        assert r["difference"] == pytest.approx(r["a"] - r["b"])
        assert low <= r["difference"] <= high
    assert "| recall@20 |" in capsys.readouterr().out
    # A run against itself differs by exactly nothing.
    same = compare.main([results_path, "T2Diff, T = 10", results_path, "T2Diff, T = 10"])
    assert same["recall@20"]["interval"] == [0.0, 0.0]
    # Runs of different training seeds: --seed picks A's, --seed-b B's.
    reseeded = str(tmp_path / "seed1.json")
    with open(reseeded, "w") as f:
        json.dump({"protocols": {"leave_one_out": {"results": [dict(t2diff, seed=1)]}}}, f)
    with pytest.raises(SystemExit, match="seed 0"):
        compare.main([results_path, "T2Diff, T = 10", reseeded, "T2Diff, T = 10"])
    across = compare.main([results_path, "T2Diff, T = 10", reseeded, "T2Diff, T = 10",
                           "--seed-b", "1"])
    assert across["recall@20"]["interval"] == [0.0, 0.0]
    # Runs written before the harness recorded ranks are refused by name.
    old = dict(t2diff, test_ranks=None)
    path = str(tmp_path / "old.json")
    with open(path, "w") as f:
        json.dump({"protocols": {"leave_one_out": {"results": [old]}}}, f)
    with pytest.raises(SystemExit, match="no per-user test ranks"):
        compare.main([path, "T2Diff, T = 10", results_path, "T2Diff, T = 10"])


def test_ablation_notebook_executes_on_a_results_file(results_path, monkeypatch):
    nbformat = pytest.importorskip("nbformat")
    from nbclient import NotebookClient

    monkeypatch.setenv("T2DIFF_RESULTS", results_path)
    notebook = nbformat.read(os.path.join(ROOT, "notebooks", "ablations.ipynb"), as_version=4)
    NotebookClient(notebook, timeout=300, kernel_name="python3",
                   resources={"metadata": {"path": os.path.join(ROOT, "notebooks")}}).execute()
    outputs = [o for cell in notebook.cells if cell.cell_type == "code" for o in cell.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    images = [o for o in outputs if "image/png" in o.get("data", {})]
    assert len(images) >= 4  # Table 2 bars, Table 4 curves, samplers, Figure 4 histograms
    text = "".join(o.get("text", "") for o in outputs)
    assert "2 runs from" in text
