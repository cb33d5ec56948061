"""Paired comparison of two runs of ``benchmarks/ml1m.py`` on the same test users.

    python benchmarks/compare.py RESULTS_A.json "LABEL A" RESULTS_B.json "LABEL B" \
        [--seed 0] [--seed-b 1] [--seen-filter none|history|window]

Aligns the two runs' per-user test ranks by ``user_id`` and prints, for each metric, the
difference ``A - B`` with a paired percentile bootstrap interval over users (one draw of users
serves both runs), beside each side's own value and interval. Two runs whose own intervals
overlap can still differ beyond noise; an interval of the difference above 0 says A beats B at
that level. Runs written before the harness
recorded ``test_ranks`` cannot be compared: run them again. The interval covers the test users'
sampling only, not training noise: compare runs of several seeds (``--seed``, ``--seed-b``) to
see that. ``--seen-filter history`` (or ``--seen-excluded``) compares the ranks with each user's
whole seen history dropped from the ranking (``test_ranks_seen_excluded``, recorded by runs on
the sequence layout); ``--seen-filter window`` drops only the items of the test window's input
(``test_ranks_window_seen_excluded``), which is generative-recommenders' filter.
``--users 1-2999`` compares on the users whose numeric id lies in that range only.

Several seeds a side: ``RESULTS_A`` (and ``RESULTS_B``) may list files separated by commas and
``--seed`` (``--seed-b``) seeds separated by commas, paired in order (a single file or seed
serves every run of its side). Each user's metric is then the mean over that side's runs, and the
interval is the paired bootstrap over users of the seed-averaged difference: the comparison of
two configurations over their training seeds, each run on the same test users (each side's own
interval is then that of its seed average)::

    python benchmarks/compare.py T2DIFF.json "T2Diff" \
        SASREC_SEED0.json,SASREC_SEED1.json,SASREC_SEED2.json "SASRec" --seed 0 --seed-b 0,1,2
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Dict, List, Optional, Tuple

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from t2diff_tf.metrics import bootstrap_interval, paired_difference, ranking_metrics  # noqa: E402

METRICS = ("recall@10", "recall@20", "mrr@20", "ndcg@10")

# Which seen items each run's ranking dropped: the results field holding those ranks, and how
# the printed table names the evaluation.
SEEN_FILTERS = {
    "none": ("test_ranks", "seen items ranked"),
    "history": ("test_ranks_seen_excluded", "the whole seen history excluded"),
    "window": ("test_ranks_window_seen_excluded", "the test window's seen items excluded"),
}


def find_run(path: str, label: str, protocol: Optional[str] = None, seed: int = 0,
             ranks: str = "test_ranks") -> dict:
    """The run called ``label`` (and ``seed``) in a results file, with its protocol; its
    ``ranks`` field (one of ``SEEN_FILTERS``' fields) becomes ``test_ranks``."""
    with open(path) as f:
        report = json.load(f)
    found = [dict(r, protocol=name) for name, block in report["protocols"].items()
             if protocol in (None, name) for r in block["results"]
             if r["label"] == label and r["seed"] == seed]
    if len(found) != 1:
        labels = sorted({r["label"] for block in report["protocols"].values()
                         for r in block["results"]})
        raise SystemExit(f"{path}: {len(found)} runs labelled {label!r} (seed {seed}); "
                         f"labels: {labels}")
    run = found[0]
    if not run.get(ranks) or not run.get("test_users"):
        raise SystemExit(f"{path}: run {label!r} has no per-user {ranks} (written before "
                         f"the harness recorded them); run it again")
    return dict(run, test_ranks=run[ranks])


def seed_aligned_ranks(runs_a: List[dict], runs_b: List[dict]
                       ) -> Tuple[List[np.ndarray], np.ndarray]:
    """Every run's ranks on the users all of them share, in one order: ``([ranks of each run
    of A, then of B], users)``. A user's several test examples are taken in the order each run
    listed them, and must be as many in every run."""
    def by_user(run) -> Dict[str, List[int]]:
        out: Dict[str, List[int]] = {}
        for user, rank in zip(run["test_users"], run["test_ranks"]):
            out.setdefault(user, []).append(rank)
        return out

    runs = [by_user(run) for run in runs_a + runs_b]
    shared = sorted(set.intersection(*(set(r) for r in runs)))
    if not shared:
        raise SystemExit("the runs share no test users: different splits")
    rows: List[List[int]] = [[] for _ in runs]
    users: List[str] = []
    for user in shared:
        counts = {len(r[user]) for r in runs}
        if len(counts) != 1:
            raise SystemExit(f"user {user} has {' vs '.join(str(len(r[user])) for r in runs)} "
                             "test examples: different splits")
        for row, r in zip(rows, runs):
            row += r[user]
        users += [user] * len(runs[0][user])
    return [np.array(row) for row in rows], np.array(users)


def user_range(text: str) -> Tuple[int, int]:
    """``"1-2999"`` -> ``(1, 2999)``."""
    low, sep, high = text.partition("-")
    try:
        bounds = int(low), int(high)
    except ValueError:
        bounds = None
    if not sep or bounds is None or bounds[0] > bounds[1]:
        raise argparse.ArgumentTypeError(f"expected LOW-HIGH user ids, got {text!r}")
    return bounds


def compare(a, b, num_resamples: int = 1000, seed: int = 0,
            users_in: Optional[Tuple[int, int]] = None) -> Dict[str, dict]:
    """``A - B`` per metric with its paired interval; ``a`` and ``b`` are a run or a list of
    runs (seeds), whose per-user metrics are averaged."""
    runs_a = a if isinstance(a, list) else [a]
    runs_b = b if isinstance(b, list) else [b]
    ranks, users = seed_aligned_ranks(runs_a, runs_b)
    if users_in is not None:
        keep = np.array([u.isdigit() and users_in[0] <= int(u) <= users_in[1] for u in users],
                        bool)
        if not keep.any():
            raise SystemExit(f"no shared test user has an id in {users_in[0]}-{users_in[1]}")
        ranks, users = [r[keep] for r in ranks], users[keep]
    per_run = [ranking_metrics(r, (10, 20)) for r in ranks]
    per_a = {name: np.mean([m[name] for m in per_run[:len(runs_a)]], axis=0) for name in METRICS}
    per_b = {name: np.mean([m[name] for m in per_run[len(runs_a):]], axis=0) for name in METRICS}
    out = {}
    for name in METRICS:
        difference, low, high = paired_difference(per_a[name], per_b[name], users,
                                                  num_resamples, seed=seed)
        out[name] = {"a": float(per_a[name].mean()), "b": float(per_b[name].mean()),
                     "a_interval": list(bootstrap_interval(per_a[name], users, num_resamples,
                                                           seed=seed)),
                     "b_interval": list(bootstrap_interval(per_b[name], users, num_resamples,
                                                           seed=seed)),
                     "difference": difference, "interval": [low, high],
                     "a_per_seed": [float(m[name].mean()) for m in per_run[:len(runs_a)]],
                     "b_per_seed": [float(m[name].mean()) for m in per_run[len(runs_a):]]}
    out["num_examples"] = int(len(users))
    out["num_runs"] = [len(runs_a), len(runs_b)]
    return out


def _runs(paths: str, label: str, protocol: Optional[str], seeds: str, ranks: str) -> List[dict]:
    """The runs of one side: comma-separated files and seeds, paired in order (one serves all)."""
    files = paths.split(",")
    numbers = [int(s) for s in seeds.split(",")]
    if len(files) > 1 and len(numbers) > 1 and len(files) != len(numbers):
        raise SystemExit(f"{len(files)} files but {len(numbers)} seeds: pair them one to one")
    count = max(len(files), len(numbers))
    files, numbers = files * (count // len(files)), numbers * (count // len(numbers))
    return [find_run(f, label, protocol, n, ranks) for f, n in zip(files, numbers)]


def main(argv: Optional[List[str]] = None) -> Dict[str, dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results_a")
    parser.add_argument("label_a")
    parser.add_argument("results_b")
    parser.add_argument("label_b")
    parser.add_argument("--protocol", default=None)
    parser.add_argument("--seed", default="0",
                        help="the runs' training seed (comma-separated: several, averaged)")
    parser.add_argument("--seed-b", default=None,
                        help="run B's training seed(s), when they differ from A's (--seed)")
    parser.add_argument("--num-resamples", type=int, default=1000)
    parser.add_argument("--seen-filter", choices=sorted(SEEN_FILTERS), default=None,
                        help="which seen items the compared rankings dropped: none (the "
                             "default), the user's whole history, or the test window's input")
    parser.add_argument("--seen-excluded", action="store_true",
                        help="the same as --seen-filter history")
    parser.add_argument("--users", type=user_range, default=None, metavar="LOW-HIGH",
                        help="only the users whose numeric id is in this range")
    args = parser.parse_args(argv)
    if args.seen_excluded and args.seen_filter not in (None, "history"):
        parser.error(f"--seen-excluded is --seen-filter history, not {args.seen_filter}")
    seen_filter = "history" if args.seen_excluded else (args.seen_filter or "none")
    ranks, evaluation = SEEN_FILTERS[seen_filter]
    a = _runs(args.results_a, args.label_a, args.protocol, args.seed, ranks)
    b = _runs(args.results_b, args.label_b, args.protocol,
              args.seed if args.seed_b is None else args.seed_b, ranks)
    result = compare(a, b, args.num_resamples, users_in=args.users)
    seeds = ("" if result["num_runs"] == [1, 1] else
             f"; per-user metrics averaged over {result['num_runs'][0]} and "
             f"{result['num_runs'][1]} runs")
    print(f"A = {args.label_a} ({args.results_a}), B = {args.label_b} ({args.results_b}), "
          f"{result['num_examples']} shared test examples; paired 95% bootstrap over users"
          + seeds
          + f"; {evaluation}"
          + (f"; users {args.users[0]}-{args.users[1]}" if args.users else ""))
    print("| metric | A | B | A - B [95% CI] | A per run | B per run |\n|---|---|---|---|---|---|")
    for name in METRICS:
        r = result[name]
        low, high = r["interval"]
        a = f"{r['a']:.4f} [{r['a_interval'][0]:.4f}, {r['a_interval'][1]:.4f}]"
        b = f"{r['b']:.4f} [{r['b_interval'][0]:.4f}, {r['b_interval'][1]:.4f}]"
        print(f"| {name} | {a} | {b} | {r['difference']:+.4f} "
              f"[{low:+.4f}, {high:+.4f}] | {', '.join(f'{v:.4f}' for v in r['a_per_seed'])} | "
              f"{', '.join(f'{v:.4f}' for v in r['b_per_seed'])} |")
    return result


if __name__ == "__main__":
    main()
