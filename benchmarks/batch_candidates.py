"""Batch candidates: users per second from a pushed bundle, exact search against ScaNN.

    python benchmarks/batch_candidates.py --bundle outputs/batch_demo/serving \\
        --examples 'outputs/batch_demo/pipelines/t2diff/PreprocessLogs/examples/1/Split-test/*'

Runs :func:`t2diff_tf.serving.batch_candidates.generate_candidates` (what ``t2diff candidates``
runs) once per index and output format on the same windows, and reports for each:

* users/s end to end after the bundle is loaded (both passes: reading and choosing each user's
  window, then user tower + search + raw-id mapping + writing), and the two passes' seconds;
* for ScaNN, recall@K of its item lists against the exact run's (same users).

Writes ``benchmarks/results/batch_candidates.json`` (with the machine and its load average,
since the cores may be shared) and prints a Markdown table.
"""

import argparse
import json
import os
import sys
import tempfile
import time

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from t2diff_tf.serving import batch_candidates as B  # noqa: E402
from machine import describe  # noqa: E402  (benchmarks/machine.py)

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results",
                       "batch_candidates.json")


def recall_against(found, exact):
    """Mean |found ∩ exact| / |exact| over users (rows in the same order)."""
    total = 0.0
    for f, e in zip(found, exact):
        total += len(set(f) & set(e)) / len(e)
    return total / max(len(exact), 1)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", required=True, help="bundle or push destination")
    parser.add_argument("--examples", required=True, nargs="+", help="window files or globs")
    parser.add_argument("--top-k", type=int, default=100)
    parser.add_argument("--batch-size", type=int, default=1024)
    parser.add_argument("--runs", default="exact:parquet,scann:parquet,exact:tfrecord",
                        help="index:format pairs, comma-separated")
    parser.add_argument("--output", default=RESULTS, help="results JSON")
    args = parser.parse_args(argv)

    started = time.perf_counter()
    bundle = B.CandidateBundle(args.bundle)
    load_seconds = time.perf_counter() - started
    rows, outputs = [], {}
    with tempfile.TemporaryDirectory() as workdir:
        for run in args.runs.split(","):
            index, output_format = run.split(":")
            suffix = ".parquet" if output_format == B.PARQUET else ".tfrecord.gz"
            output = os.path.join(workdir, f"{index}{suffix}")
            load_before = os.getloadavg()[0]
            summary = B.generate_candidates(
                bundle, args.examples, output,
                B.BatchCandidatesConfig(top_k=args.top_k, index=index,
                                        batch_size=args.batch_size))
            item_ids = B.read_candidates(output)[B.ITEM_IDS]
            outputs.setdefault(index, item_ids)
            rows.append({"index": index, "format": output_format,
                         "users": summary.users_written, "windows_read": summary.windows_read,
                         "k": summary.k, "users_per_second": summary.users_per_second,
                         "selection_seconds": summary.selection_seconds,
                         "scoring_seconds": summary.scoring_seconds,
                         "output_bytes": os.path.getsize(output),
                         "load_average_1min_before": round(load_before, 2),
                         "load_average_1min_after": round(os.getloadavg()[0], 2)})
            print(f"{index:>5} {output_format:>8}: {summary.users_written:,} users, "
                  f"{summary.users_per_second:,.0f} users/s", flush=True)
    for row in rows:
        if row["index"] == B.SCANN and B.EXACT in outputs:
            row["recall_at_k_vs_exact"] = round(recall_against(outputs[B.SCANN],
                                                               outputs[B.EXACT]), 4)
    manifest = bundle.manifest
    result = {"bundle": bundle.directory, "model_version": bundle.model_version,
              "model": manifest.source.get("registry_model") if manifest.source else None,
              "items": bundle.num_items, "embedding_dim": manifest.embedding_dim,
              "history_length": manifest.history_length,
              "scann_index": {k: v for k, v in (manifest.index.get("scann") or {}).items()
                              if k in ("mode", "num_leaves", "num_leaves_to_search",
                                       "reorder_k", "dimensions_per_block")},
              "examples": args.examples, "batch_size": args.batch_size,
              "bundle_load_seconds": round(load_seconds, 2), "runs": rows,
              "machine": describe(), "command": " ".join(["python"] + sys.argv)}
    os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
    with open(args.output, "w") as f:
        json.dump(result, f, indent=2)
        f.write("\n")
    print(f"\n{bundle.num_items:,} items, d = {manifest.embedding_dim}, K = {args.top_k}, "
          f"batch {args.batch_size}; bundle loaded in {load_seconds:.1f} s\n")
    print("| index | output | users | users/s | pass 1 (s) | pass 2 (s) | recall@K vs exact |")
    print("|---|---|---|---|---|---|---|")
    for row in rows:
        recall = row.get("recall_at_k_vs_exact", "1 (reference)" if row["index"] == "exact"
                         else "-")
        print(f"| {row['index']} | {row['format']} | {row['users']:,} | "
              f"{row['users_per_second']:,.0f} | {row['selection_seconds']:.1f} | "
              f"{row['scoring_seconds']:.1f} | {recall} |")
    print(f"\nwrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
