"""The whole pipeline on a KuaiRand-27K-shaped log: time and peak memory per component.

    python benchmarks/pipeline_scale.py --rows 6472851       # KuaiRand-27K size
    python benchmarks/pipeline_scale.py --rows 500000        # a reduced size

Generates the synthetic log (``components.preprocessing.kuairand_synthetic``, reused when
present in ``--data-dir``), then runs, in a fresh process::

    t2diff run --source csv --input LOG --max-train-windows-per-user 50 \\
        --model mean_pool_two_tower --model-config '{"loss": {"kind": "sampled_softmax"}}' \\
        --epochs 1 --no-cache --output-root DIR

The resident memory of the whole process tree is sampled every 0.25 s with its time; after the
run, each component's execution times come from ML Metadata (its create and last-update times),
and each component gets its wall seconds and the peak of the samples taken while it ran.
``--follow-probability P`` generates the log with a sequential signal (a click within a session
is, with probability P, one of 8 videos the previous one determines): without it every click is
an independent popularity draw and no model can beat popularity, so the run's quality is then
popularity's. The results give, beside the model's test Recall@10/@20, popularity's on the same
test split (videos ranked by their count in the vocabulary, i.e. over all kept clicks, test
targets included: a generous baseline), so that the quality figure is a model check.

Results go to ``benchmarks/results/pipeline_scale.json``; the issue's target (the whole
KuaiRand-27K-size pipeline in at most 6 minutes on an idle machine) is checked when ``--rows`` is
that size.
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import sys
import tempfile
import time
from typing import List, Tuple


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from benchmarks.preprocess_scale import ensure_log, run_sampled  # noqa: E402

RESULTS = os.path.join(ROOT, "benchmarks", "results", "pipeline_scale.json")
TARGET_SECONDS = 6 * 60


def component_windows(metadata_path: str) -> List[Tuple[str, float, float]]:
    """``(component type, start s, end s)`` of every execution, from ML Metadata's SQLite file."""
    with sqlite3.connect(metadata_path) as db:
        rows = db.execute(
            "SELECT Type.name, Execution.create_time_since_epoch, "
            "Execution.last_update_time_since_epoch FROM Execution JOIN Type "
            "ON Execution.type_id = Type.id ORDER BY Execution.create_time_since_epoch").fetchall()
    return [(name.split(".")[-1], start / 1000.0, end / 1000.0) for name, start, end in rows]


def quality(out: str) -> dict:
    """The model's test Recall@10/@20 (from the run's output) and popularity's on the same test
    windows (items ranked by vocabulary count, all items ranked, as the evaluation ranks)."""
    import glob
    import re

    import numpy as np
    import tensorflow as tf

    with open(os.path.join(out, "run.log")) as f:
        log = f.read()
    model = {m: float(v) for m, v in re.findall(r"^\s+(recall@(?:10|20))\s+([0-9.]+) \[", log,
                                                flags=re.M)}
    (examples,) = glob.glob(os.path.join(out, "pipelines", "*", "PreprocessLogs", "examples",
                                         "*"))
    counts = {}
    with open(os.path.join(examples, "item_vocabulary.tsv")) as f:
        for line in f:
            int_id, _, count = line.rstrip("\n").split("\t")[:3]
            if int_id.isdigit():
                counts[int(int_id)] = int(count)
    ranked = sorted(counts, key=lambda i: (-counts[i], i))
    rank_of = {item: r for r, item in enumerate(ranked)}
    files = glob.glob(os.path.join(examples, "Split-test", "*.gz"))
    ranks = np.array([rank_of.get(tf.train.Example.FromString(r.numpy()).features
                                  .feature["target"].int64_list.value[0], len(ranked))
                      for r in tf.data.TFRecordDataset(files, compression_type="GZIP")])
    return {"model_test": model,
            "popularity_test": {f"recall@{k}": round(float((ranks < k).mean()), 4)
                                for k in (10, 20)},
            "test_windows": int(len(ranks))}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=6472851)
    parser.add_argument("--data-dir", default=os.path.join(tempfile.gettempdir(),
                                                           "kuairand_scale"))
    parser.add_argument("--results", default=RESULTS)
    parser.add_argument("--follow-probability", type=float, default=0.0,
                        help="sequential signal of the synthetic log (0: none)")
    parser.add_argument("--pipeline-arg", action="append", default=[],
                        help="an extra argument of `t2diff run`, e.g. --pipeline-arg=--batch-size=1024 "
                             "(repeatable)")
    args = parser.parse_args(argv)
    from benchmarks import machine

    log = ensure_log(args.rows, args.data_dir, args.follow_probability)
    out = tempfile.mkdtemp(prefix="pipeline_scale_", dir=args.data_dir)
    command = [sys.executable, "-m", "pipeline.cli", "run", "--source", "csv", "--input", log,
               "--max-train-windows-per-user", "50", "--model", "mean_pool_two_tower",
               "--model-config", json.dumps({"loss": {"kind": "sampled_softmax"}}),
               "--epochs", "1", "--no-cache", "--output-root", out] + args.pipeline_arg
    start = time.time()
    code, samples, loads = run_sampled(command, os.path.join(out, "run.log"))
    wall = time.time() - start
    components = []
    metadata = os.path.join(out, "metadata", "t2diff", "metadata.db")
    if os.path.exists(metadata):
        for name, begin, end in component_windows(metadata):
            inside = [rss for t, rss in samples if begin <= t <= end]
            components.append({"component": name, "seconds": round(end - begin, 1),
                               # None: the component ended before a sample was taken
                               "peak_rss_gb": round(max(inside) / 1e9, 2) if inside else None})
    result = {
        "command": "python benchmarks/pipeline_scale.py " + " ".join(argv or sys.argv[1:]),
        "pipeline_command": " ".join(command[1:]),
        "machine": machine.describe(),
        "note": "load_average_mean counts the run's own processes (about 2 on an idle 2-core "
                "machine); above that, other work shared the machine, and the target is for an "
                "idle one",
        "rows": args.rows, "exit_code": code, "wall_seconds": round(wall, 1),
        "peak_rss_gb": round(max((s for _, s in samples), default=0) / 1e9, 2),
        "load_average_mean": round(sum(loads) / max(1, len(loads)), 2),
        "components": components, "output_root": out,
        "follow_probability": args.follow_probability,
    }
    if code == 0:
        result["quality"] = quality(out)
    if args.rows == 6472851:
        miss = wall - TARGET_SECONDS
        result["target"] = (f"<= {TARGET_SECONDS} s: " + (
            f"not measured (the run failed, exit code {code})" if code else
            "met" if miss <= 0 else f"missed by {miss:.0f} s"))
    os.makedirs(os.path.dirname(args.results), exist_ok=True)
    with open(args.results, "w") as f:
        json.dump(result, f, indent=2)
    print(json.dumps(result, indent=2))
    return code


if __name__ == "__main__":
    sys.exit(main())
