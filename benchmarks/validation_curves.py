"""Validation curves of training runs, side by side per epoch, as a Markdown table.

Reads a running (or finished) run's ``selection/selection.json`` under its checkpoint folder,
or a finished harness results JSON (``benchmarks/ml1m.py --output``: its ``time_to_quality``).
Each column gives validation Recall@K / NDCG@K per epoch; the first run's training minutes are
shown too.

    python benchmarks/validation_curves.py \
        T2Diff=outputs/checkpoints/t2diff_every_interaction/leave_one_out/T2Diff_seed0 \
        SASRec=benchmarks/results/ml1m_loo_seq_sasrec.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Dict, List


def read_curve(path: str, label: str = "") -> Dict[str, List[float]]:
    """``{metric: [value per epoch]}`` (``val_recall@10``, ..., ``train_seconds``) of a run.

    ``path``: a checkpoint folder of one run (holding ``selection/selection.json``), that
    ``selection.json`` itself, or a harness results JSON (then ``label`` picks the result; a
    file with one result needs no matching label).
    """
    if os.path.isdir(path):
        path = os.path.join(path, "selection", "selection.json")
    with open(path) as f:
        data = json.load(f)
    if "epochs" in data:  # selection.json
        curve: Dict[str, List[float]] = {}
        for record in data["epochs"]:
            for name, value in record.items():
                curve.setdefault(name, []).append(value)
        return curve
    results = [r for protocol in data["protocols"].values() for r in protocol["results"]]
    for result in results:
        if result.get("label") == label:
            return result["time_to_quality"]
    if len(results) == 1 or not label:
        return results[0]["time_to_quality"]
    raise ValueError(f"{path}: no result labelled {label!r} among "
                     f"{[r.get('label') for r in results]}")


def table(curves: Dict[str, Dict[str, List[float]]], k: int = 10) -> str:
    names = list(curves)
    head = f"| epoch | {names[0]} training min | " + " | ".join(
        f"{n} R@{k} / NDCG@{k}" for n in names) + " |"
    lines = [head, "|" + "---|" * (len(names) + 2)]
    longest = max(len(c[f"val_recall@{k}"]) for c in curves.values())
    first = curves[names[0]]
    for i in range(longest):
        minutes = (f"{first['train_seconds'][i] / 60:.0f}"
                   if i < len(first.get("train_seconds", [])) else "")
        cells = []
        for c in curves.values():
            r, n = c[f"val_recall@{k}"], c[f"val_ndcg@{k}"]
            cells.append(f"{r[i]:.4f} / {n[i]:.4f}" if i < len(r) else "")
        lines.append(f"| {i + 1} | {minutes} | " + " | ".join(cells) + " |")
    best = []
    for c in curves.values():
        n = c[f"val_ndcg@{k}"]
        at = max(range(len(n)), key=n.__getitem__)
        best.append(f"{c[f'val_recall@{k}'][at]:.4f} / {n[at]:.4f} (epoch {at + 1})")
    lines.append("| best NDCG@%d so far | | " % k + " | ".join(best) + " |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", help="LABEL=PATH (a run's checkpoint folder, its "
                        "selection.json, or a results JSON; LABEL also picks the result there)")
    parser.add_argument("--k", type=int, default=10)
    args = parser.parse_args(argv)
    curves = {}
    for run in args.runs:
        label, _, path = run.partition("=")
        if not path:
            parser.error(f"expected LABEL=PATH, got {run!r}")
        curves[label] = read_curve(path, label)
    print(table(curves, args.k))
    return 0


if __name__ == "__main__":
    sys.exit(main())
