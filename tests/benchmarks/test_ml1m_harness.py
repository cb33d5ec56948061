"""The benchmark harness on a tiny synthetic log: a results file the notebook can read."""

import importlib.util
import json
import os

import numpy as np
import pytest

from components.preprocessing import readers
from components.preprocessing.config import WindowConfig
from components.preprocessing.synthetic import SyntheticConfig
from components.preprocessing.transforms import PreprocessConfig, run_preprocessing
from components.preprocessing.config import TRAIN_SEQUENCES
from t2diff_tf import features as F
from t2diff_tf.features import ExampleSpec, SequenceSpec
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
                      root, PreprocessConfig(window=WindowConfig(SPEC, session_k=4),
                                             sequences=SequenceSpec(12)))
    data = {s: harness.load_split(root, s, SPEC) for s in ("train", "validation", "test")}
    train = TrainConfig(epochs=1, batch_size=64, verbose=0)
    runs = [{"label": "Two-tower (mean pool)", "model": "mean_pool_two_tower",
             "config": {"embedding_dim": 8}},
            {"label": "T2Diff, T = 10", "model": "t2diff", "config": TINY_T2DIFF}]
    results = [harness.run_one(r, 0, root, data, train, SPEC) for r in runs]
    # SASRec on the sequence layout, two epochs: a time-to-quality curve for the notebook.
    chunks = dict(data, **{TRAIN_SEQUENCES: harness.load_sequences(root, SequenceSpec(12))})
    # A run spec's training override (4 length buckets sized by positions, not the default
    # batch of chunks) reaches the run and its record.
    results.append(harness.run_one({"label": "SASRec", "model": "sasrec",
                                    "config": {"embedding_dim": 8},
                                    "train": {"length_buckets": 4,
                                              "positions_per_batch": 256}}, 0, root, chunks,
                                   TrainConfig(epochs=2, batch_size=32, verbose=0), SPEC))
    path = str(tmp_path / "ml1m_tiny.json")
    with open(path, "w") as f:
        json.dump({"command": "test", "machine": "test",
                   "protocols": {"leave_one_out": {"data": root, "results": results}}}, f)
    return path


def test_run_records_metrics_intervals_cost_and_reverse_steps(results_path):
    with open(results_path) as f:
        results = json.load(f)["protocols"]["leave_one_out"]["results"]
    two_tower, t2diff, sasrec = results
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
    # Both evaluations, with intervals; seen items excluded can only rank targets higher.
    for r in results:
        for name, value in r["metrics_seen_excluded"].items():
            assert value >= r["metrics"][name] - 1e-9
            low, high = r["intervals_seen_excluded"][name]
            assert low <= value <= high
        # Without seen_items (not attached here) the whole history falls back to the window.
        assert r["metrics_window_seen_excluded"] == r["metrics_seen_excluded"]
    assert sasrec["train"]["length_buckets"] == 4 and sasrec["layout"] == "sequences"
    assert sasrec["train"]["positions_per_batch"] == 256
    curve = sasrec["time_to_quality"]
    assert len(curve["train_seconds"]) == 2 == len(curve["val_recall@10"])
    assert curve["train_seconds"][0] < curve["train_seconds"][1]


def test_a_resumed_run_reports_the_training_of_every_process(results_path):
    """A run killed after its first epoch and resumed records only the resumed process's wall
    time in ``train_seconds``; the table reports the training clock over every epoch."""
    with open(results_path) as f:
        sasrec = json.load(f)["protocols"]["leave_one_out"]["results"][2]
    harness = load_script("ml1m")
    resumed = dict(sasrec, train_seconds=2.3,
                   time_to_quality=dict(sasrec["time_to_quality"], train_seconds=[941.9, 1880.4]))
    assert harness.training_seconds(resumed) == 1880.4
    row = next(line for line in harness.markdown([resumed], "leave_one_out").splitlines()
               if line.startswith("| SASRec |"))
    assert row.split(" | ")[8] == "1880"
    # A record from before the training clock has only the process's wall time.
    legacy = {k: v for k, v in sasrec.items() if k != "time_to_quality"}
    assert harness.training_seconds(dict(legacy, train_seconds=12.5)) == 12.5


def test_paired_comparison_of_two_runs(results_path, tmp_path, capsys):
    compare = load_script("compare")
    with open(results_path) as f:
        two_tower, t2diff, _ = json.load(f)["protocols"]["leave_one_out"]["results"]
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
        # Each side's own interval is the one its run reported (the same bootstrap).
        assert r["a_interval"] == pytest.approx(t2diff["intervals"][name], abs=1e-9)
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
    with pytest.raises(SystemExit, match="no per-user test_ranks"):
        compare.main([path, "T2Diff, T = 10", results_path, "T2Diff, T = 10"])


def test_paired_comparison_averages_several_seeds_per_user(results_path, tmp_path):
    compare = load_script("compare")
    with open(results_path) as f:
        two_tower, t2diff, _ = json.load(f)["protocols"]["leave_one_out"]["results"]
    # Seed 1 ranks every target first (rank 1): each user's seed-averaged recall is the mean of the two.
    perfect = str(tmp_path / "perfect.json")
    with open(perfect, "w") as f:
        json.dump({"protocols": {"leave_one_out": {"results": [
            dict(t2diff, seed=1, test_ranks=[1] * len(t2diff["test_ranks"]))]}}}, f)
    result = compare.main([f"{results_path},{perfect}", "T2Diff, T = 10", results_path,
                           "Two-tower (mean pool)", "--seed", "0,1", "--seed-b", "0"])
    assert result["num_runs"] == [2, 1]
    for name in ("recall@10", "recall@20"):
        r = result[name]
        assert r["a_per_seed"] == pytest.approx([t2diff["metrics"][name], 1.0])
        assert r["a"] == pytest.approx((t2diff["metrics"][name] + 1.0) / 2)
        assert r["difference"] == pytest.approx(r["a"] - two_tower["metrics"][name])
    # One file and one seed on each side give what a plain comparison gives.
    plain = compare.main([results_path, "T2Diff, T = 10", results_path, "Two-tower (mean pool)"])
    twice = compare.main([f"{results_path},{results_path}", "T2Diff, T = 10", results_path,
                          "Two-tower (mean pool)", "--seed", "0"])
    assert twice["recall@20"]["interval"] == plain["recall@20"]["interval"]
    with pytest.raises(SystemExit, match="pair them one to one"):
        compare.main([f"{results_path},{perfect}", "T2Diff, T = 10", results_path,
                      "T2Diff, T = 10", "--seed", "0,1,2"])


def test_paired_comparison_with_seen_items_excluded(results_path):
    compare = load_script("compare")
    with open(results_path) as f:
        two_tower, _, sasrec = json.load(f)["protocols"]["leave_one_out"]["results"]
    result = compare.main([results_path, "SASRec", results_path, "Two-tower (mean pool)",
                           "--seen-excluded"])
    for name in compare.METRICS:
        # The excluded ranks give back each run's own seen-excluded metric, not the ranked one.
        assert result[name]["a"] == pytest.approx(sasrec["metrics_seen_excluded"][name])
        assert result[name]["b"] == pytest.approx(two_tower["metrics_seen_excluded"][name])
    # A user-id range keeps exactly the users inside it.
    users = [int(u) for u in sasrec["test_users"]]
    low, high = sorted(users)[10], sorted(users)[39]
    subset = compare.main([results_path, "SASRec", results_path, "SASRec",
                           "--users", f"{low}-{high}"])
    assert subset["num_examples"] == sum(low <= u <= high for u in users) == 30
    with pytest.raises(SystemExit):
        compare.main([results_path, "SASRec", results_path, "SASRec", "--users", "9-1"])


def test_paired_comparison_picks_the_seen_filter(results_path, tmp_path, capsys):
    compare = load_script("compare")
    with open(results_path) as f:
        _, _, sasrec = json.load(f)["protocols"]["leave_one_out"]["results"]
    # A copy whose window-filtered ranks put every target first: only --seen-filter window
    # reads them, so its recall is 1 while the other two filters give the run's own figures.
    window_first = str(tmp_path / "window_first.json")
    with open(window_first, "w") as f:
        json.dump({"protocols": {"leave_one_out": {"results": [dict(
            sasrec, test_ranks_window_seen_excluded=[1] * len(sasrec["test_ranks"]))]}}}, f)
    runs = [window_first, "SASRec", results_path, "SASRec"]
    window = compare.main(runs + ["--seen-filter", "window"])
    assert window["recall@10"]["a"] == 1.0
    assert window["recall@10"]["b"] == pytest.approx(
        sasrec["metrics_window_seen_excluded"]["recall@10"])
    assert "the test window's seen items excluded" in capsys.readouterr().out
    history = compare.main(runs + ["--seen-filter", "history"])
    assert history == compare.main(runs + ["--seen-excluded"])
    assert history["recall@10"]["a"] == pytest.approx(sasrec["metrics_seen_excluded"]["recall@10"])
    ranked = compare.main(runs + ["--seen-filter", "none"])
    assert ranked["recall@10"]["a"] == pytest.approx(sasrec["metrics"]["recall@10"])
    with pytest.raises(SystemExit):
        compare.main(runs + ["--seen-excluded", "--seen-filter", "window"])


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
    # Table 2 bars, Table 4 curves, samplers, Figure 4 histograms, time to quality
    assert len(images) >= 5
    text = "".join(o.get("text", "") for o in outputs)
    assert "3 runs from" in text


def test_seen_items_are_each_users_whole_history(tmp_path):
    """``attach_seen_items`` adds every item before the example's target, beyond the window."""
    harness = load_script("ml1m")
    data_dir = tmp_path / "ml"
    data_dir.mkdir()
    users = {str(u): [str(100 + (u * 7 + j) % 40) for j in range(8 + u)] for u in range(1, 7)}
    import gzip
    with gzip.open(data_dir / "sequences.txt.gz", "wt") as f:
        for user, items in users.items():
            f.write(" ".join([user] + items) + "\n")
    root = str(tmp_path / "out")
    spec = ExampleSpec(history_length=3)
    run_preprocessing(readers.SequenceFile(str(data_dir / "sequences.txt.gz")), root,
                      PreprocessConfig(window=WindowConfig(spec), min_user_interactions=3))
    data = {s: harness.load_split(root, s, spec) for s in ("validation", "test")}
    harness.attach_seen_items(str(data_dir), root, data, "leave_one_out", None)
    lookup = harness.Vocabulary.read(root).lookup()
    for split, cut in (("validation", 2), ("test", 1)):
        arrays = data[split]
        for user, seen in zip(arrays[F.USER_ID], arrays[F.SEEN_ITEMS]):
            items = [lookup[i] for i in users[user.decode()]]
            assert seen[seen != 0].tolist() == items[:-cut]
            assert len(items[:-cut]) > spec.history_length  # longer than the window


def test_a_work_dir_cached_under_an_older_window_contract_is_preprocessed_again(tmp_path):
    """The harness reuses a cached preprocessing only when its schema holds today's window
    features; one written before a feature joined the contract (say ``history_timestamps``)
    is rebuilt instead of failing to parse."""
    import gzip

    from components.preprocessing.schema import read_schema, schema_text
    from components.preprocessing.transforms import SCHEMA_FILE

    harness = load_script("ml1m")
    data_dir = tmp_path / "ml"
    data_dir.mkdir()
    with gzip.open(data_dir / "sequences.txt.gz", "wt") as f:
        for user in range(1, 21):
            f.write(f"{user} " + " ".join(str(1 + (user * 7 + k) % 15) for k in range(8)) + "\n")
    (data_dir / "movies.dat").write_text("".join(f"{i}::Film {i}::Drama\n" for i in range(1, 16)))

    def build():
        return harness.preprocess(str(data_dir), "leave_one_out", str(tmp_path / "work"), 5, 0, 0)

    root = build()
    schema_path = os.path.join(root, SCHEMA_FILE)
    old = read_schema(schema_path)
    kept = [f for f in old.feature if f.name != F.HISTORY_TIMESTAMPS]
    del old.feature[:]
    old.feature.extend(kept)
    with open(schema_path, "w") as f:
        f.write(schema_text(old))
    marker = os.path.join(root, "written_before")
    open(marker, "w").close()
    assert build() == root
    assert not os.path.exists(marker)  # rebuilt
    assert F.HISTORY_TIMESTAMPS in {f.name for f in read_schema(schema_path).feature}
    open(marker, "w").close()
    assert build() == root and os.path.exists(marker)  # today's contract: reused


def test_leave_last_out_trains_a_fixed_number_of_epochs_through_the_validation_item(tmp_path,
                                                                                   capsys):
    """The HSTU papers' split end to end: the second to last item of each user is a training
    label, no validation split is read, the run trains exactly ``--epochs`` epochs with no
    selection, and the test windows are leave-one-out's."""
    import gzip

    harness = load_script("ml1m")
    data_dir = tmp_path / "ml"
    data_dir.mkdir()
    users = {str(u): [str(1 + (u * 7 + k) % 15) for k in range(6 + u % 4)] for u in range(1, 31)}
    with gzip.open(data_dir / "sequences.txt.gz", "wt") as f:
        for user, items in users.items():
            f.write(" ".join([user] + items) + "\n")
    (data_dir / "movies.dat").write_text("".join(f"{i}::Film {i}::Drama\n" for i in range(1, 16)))
    runs = tmp_path / "runs.json"
    runs.write_text(json.dumps([{"label": "SASRec", "model": "sasrec",
                                 "config": {"embedding_dim": 8}}]))
    output = str(tmp_path / "results" / "leave_last_out")
    common = ["--data-dir", str(data_dir), "--layout", "sequences", "--history-length", "6",
              "--runs", str(runs), "--batch-size", "8", "--verbose", "0"]
    # One epoch, then the same run asked for two: it resumes from its checkpoint, and the
    # record counts both epochs, not only the one this process trained.
    for epochs in ("1", "2"):
        harness.main(common + ["--work-dir", str(tmp_path / "work"), "--protocol",
                               "leave_last_out", "--epochs", epochs, "--output", output,
                               "--checkpoint-dir", str(tmp_path / "checkpoints"),
                               "--verbose", "2"])  # Keras prints each epoch it trains
    printed = capsys.readouterr().out
    assert "no validation split; training 2 epochs and keeping the last weights" in printed
    assert "Epoch 2/2" in printed and "Epoch 1/2" not in printed  # resumed, not retrained
    report = json.load(open(output + ".json"))
    [run] = report["protocols"]["leave_last_out"]["results"]
    assert run["epochs_run"] == 2 and run["best_epoch"] is None and run["selection"] is None
    assert run["num_test_examples"] == len(users)
    # Dropping the whole history drops a superset of the window's items, which drops a
    # superset of nothing: each user's rank can only improve along that order.
    ranked, window, whole = (np.asarray(run[k]) for k in (
        "test_ranks", "test_ranks_window_seen_excluded", "test_ranks_seen_excluded"))
    assert (whole <= window).all() and (window <= ranked).all()
    root = report["protocols"]["leave_last_out"]["data"]
    lookup = harness.Vocabulary.read(root).lookup()
    chunks = harness.load_sequences(root, SequenceSpec(6))
    chunk_ends = {}  # chunks are left-padded: each one's newest item is its last
    for user, row in zip(chunks[F.USER_ID], chunks[F.SEQUENCE_ITEMS]):
        chunk_ends.setdefault(user.decode(), set()).add(int(row[-1]))
    for user, items in users.items():
        assert lookup[items[-2]] in chunk_ends[user], user  # the validation item is a label
    loo = harness.preprocess(str(data_dir), "leave_one_out", str(tmp_path / "work"), 6, 1, 0,
                             sequences=SequenceSpec(6))
    spec = ExampleSpec(history_length=6)
    ours, theirs = harness.load_split(root, "test", spec), harness.load_split(loo, "test", spec)
    order, loo_order = ours[F.USER_ID].argsort(), theirs[F.USER_ID].argsort()
    for name in ours:
        assert (ours[name][order] == theirs[name][loo_order]).all(), name
