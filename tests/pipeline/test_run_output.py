"""What a person sees of a run: the noise filter (line by line, and on the process's file
descriptors, subprocesses included), and a real ``t2diff run``: one progress line per
component, no wheel-building output unless ``--verbose``."""

import json
import glob
import os
import re
import subprocess
import sys
import textwrap

from pipeline.output_filter import NoiseFilter
from pipeline.progress import OutputArtifact, summarize_artifact
from tests.pipeline.test_local_pipeline import SMALL

HERE = os.path.dirname(os.path.abspath(__file__))
BIN = os.path.dirname(sys.executable)
SAMPLE = os.path.join(HERE, "data", "run_output_sample.txt")
PROGRESS_END = re.compile(r"^\[(\d+)/(\d+)\] (\S+) (done in \S+|cached \(\S+\))(: .*)?$")


def test_the_filter_hides_wheel_building_pip_and_library_logs_and_keeps_the_rest():
    # Lines as a run wrote them (wheel packaging, pip, absl, TensorFlow, C++ logs, Python and
    # setuptools warnings), with the lines a person needs among them.
    with open(SAMPLE) as f:
        lines = f.read().splitlines()
    shown = NoiseFilter().shown(lines)
    assert shown == [
        "[5/9] ExampleValidator done in 0.2s: no anomalies in 3 splits",
        "RetrievalPusher: removed 1 folder(s) an interrupted push left in /tmp/x/serving",
        "training t2diff: ~3 min estimated for 3 epochs (206 steps/epoch, 250 ms/step; "
        "validation after each epoch not included)",
        "  indented line of a user's own output",
        "WARNING:absl:ScaNN recall@100 is 0.912 on 1000 probe queries; consider more "
        "num_leaves_to_search or reorder_k",
        "ERROR:absl:Execution 6 failed.",
        "[6/9] Trainer FAILED after 3m01s: ValueError"]
    assert len(lines) - len(shown) == 69  # everything else is hidden


FD_LEVEL = textwrap.dedent("""
    import subprocess, sys
    from pipeline.output_filter import filtered_output

    print("before")
    with filtered_output(sys.argv[1]):
        print("[1/2] A done in 1.0s: shown", flush=True)
        # A subprocess writing to the inherited descriptors, as setup.py bdist_wheel does.
        subprocess.run([sys.executable, "-c",
                        "import sys; print('running bdist_wheel'); print('copying a.py -> b'); "
                        "print('kept from a subprocess'); "
                        "print('WARNING:absl:noise', file=sys.stderr); "
                        "print('an error line', file=sys.stderr)"], check=True)
        print("Successfully installed tfx-user-code-Trainer-0.0", flush=True)
        print("[2/2] B done in 2.0s: shown", flush=True)
    print("after")
""")


def test_filtered_output_catches_subprocesses_and_keeps_everything_in_the_log(tmp_path):
    log = tmp_path / "logs" / "run.log"
    run = subprocess.run([sys.executable, "-c", FD_LEVEL, str(log)], capture_output=True,
                         text=True, timeout=120, cwd=os.path.dirname(os.path.dirname(HERE)))
    assert run.returncode == 0, run.stderr
    assert run.stdout.splitlines() == ["before", "[1/2] A done in 1.0s: shown",
                                       "kept from a subprocess", "[2/2] B done in 2.0s: shown",
                                       "after"]
    assert run.stderr.splitlines() == ["an error line"]
    logged = log.read_text().splitlines()
    for line in ("running bdist_wheel", "copying a.py -> b", "WARNING:absl:noise",
                 "Successfully installed tfx-user-code-Trainer-0.0", "kept from a subprocess",
                 "an error line"):
        assert line in logged


def progress_ends(output):
    return [m for m in map(PROGRESS_END.match, output.splitlines()) if m]


def test_cli_run_prints_one_progress_line_per_component_and_verbose_shows_the_noise(tmp_path):
    root = tmp_path / "root"
    command = [os.path.join(BIN, "t2diff"), "run", *SMALL, "--output-root", str(root)]
    env = dict(os.environ)
    env.pop("T2DIFF_VERBOSE", None)
    run = subprocess.run(command, capture_output=True, text=True, timeout=900, env=env)
    assert run.returncode == 0, run.stderr[-3000:]
    out = run.stdout + run.stderr

    ends = progress_ends(run.stdout)
    total = int(ends[0].group(2))
    ids = [m.group(3) for m in ends]
    assert len(ids) == total and len(set(ids)) == total  # one line per component, each once
    assert [int(m.group(1)) for m in ends] == list(range(1, total + 1))
    for component in ("PreprocessLogs", "StatisticsGen", "SchemaGen", "ExampleValidator",
                      "Trainer", "RetrievalEvaluator", "RetrievalPusher"):
        assert component in ids
    assert all(m.group(4).startswith("done in") for m in ends)  # a fresh run: nothing cached

    # The counts in the lines are the artifacts' own.
    by_id = {m.group(3): m.group(5) for m in ends}
    stats = json.load(open(glob.glob(f"{root}/pipelines/t2diff/PreprocessLogs/examples/*/"
                                     "stats.json")[0]))
    assert f"{stats['interactions_read']:,} rows read, {stats['kept']:,} kept" in \
        by_id["PreprocessLogs"]
    assert f"{stats['rejected']:,} dead-lettered" in by_id["PreprocessLogs"]
    assert "mean_pool_two_tower, 1 epoch, best val recall@20 " in by_id["Trainer"]
    assert re.search(r"blessed: (yes|no)", by_id["RetrievalEvaluator"])
    assert re.search(r"pushed version \d+|not pushed", by_id["RetrievalPusher"])
    # Training said what it would take and how each epoch went.
    assert re.search(r"^training mean_pool_two_tower: ~\d+ (s|min|h) estimated for 1 epoch ",
                     run.stdout, re.M)
    assert re.search(r"^mean_pool_two_tower epoch 1/1 done in ", run.stdout, re.M)
    # The table is still there, and none of the noise.
    assert "Blessed:" in run.stdout and "recall@20" in run.stdout
    for noise in ("running bdist_wheel", "Successfully installed", "WARNING:absl:",
                  "WARNING:tensorflow:", "Epoch 1/1"):
        assert noise not in out
    log = re.search(r"the full output goes to (\S+) ", run.stdout).group(1)
    with open(log) as f:
        logged = f.read()
    assert "running bdist_wheel" in logged and "Successfully installed" in logged

    # Again with --verbose: the data components come from the cache (the Trainer and what
    # follows may run again: a blessed model now serves), the wheel is still built (TFX packages
    # the module at every run) and now printed, with the same progress lines.
    again = subprocess.run(command + ["--verbose"], capture_output=True, text=True, timeout=900,
                           env=env)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "running bdist_wheel" in again.stdout + again.stderr
    second = {m.group(3): m for m in progress_ends(again.stdout)}
    assert sorted(second) == sorted(ids)
    for component in ("PreprocessLogs", "StatisticsGen", "SchemaGen", "ExampleValidator"):
        assert second[component].group(4).startswith("cached"), second[component].group(0)
    assert second["PreprocessLogs"].group(5) == by_id["PreprocessLogs"]


def test_an_unknown_artifact_type_is_named_with_its_uri(tmp_path):
    artifact = OutputArtifact("candidates", "BatchCandidates", str(tmp_path))
    assert summarize_artifact(artifact) == f"candidates (BatchCandidates) at {tmp_path}"
    assert summarize_artifact(OutputArtifact("model_run", "ModelRun", str(tmp_path))) is None
    pushed = OutputArtifact("pushed_model", "PushedModel", str(tmp_path), {"pushed": 0})
    assert summarize_artifact(pushed) == "not pushed"


def test_quick_components_take_one_line_and_slow_ones_also_a_start_line():
    import threading
    import time

    from pipeline.progress import RunProgress

    class Clock:
        now = 100.0

        def __call__(self):
            return self.now

    clock, lines, shown = Clock(), [], threading.Event()

    def write(line):
        lines.append(line)
        shown.set()

    progress = RunProgress(3, start_line_after_seconds=0.5, clock=clock, write=write)
    progress.started("Quick")
    clock.now += 0.4
    progress.finished("Quick", None)
    shown.clear()
    progress.started("Slow")
    assert shown.wait(10)  # the start line comes from a timer thread
    clock.now += 75
    progress.finished("Slow", None)
    progress.started("Broken")
    progress.failed("Broken", ValueError("bad"))
    assert lines[0] == "[1/3] Quick done in 0.4s: skipped (inputs not available)"
    assert lines[1:3] == ["[2/3] Slow running ...",
                          "[2/3] Slow done in 1m15s: skipped (inputs not available)"]
    time.sleep(0.7)  # a cancelled start line never comes
    assert lines[3:] == ["[3/3] Broken FAILED after 0.0s: ValueError"]
