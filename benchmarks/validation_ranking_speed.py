"""Time of one validation pass (every user's window ranked over the corpus), with and without
trimming the left padding that a batch's windows share.

    TF_USE_LEGACY_KERAS=1 .venv/bin/python benchmarks/validation_ranking_speed.py \
        [--data-dir ../shared/data/ml-1m] [--model sasrec] \
        [--model-config '{"embedding_dim": 128}'] [--history-length 200] [--repeats 3] \
        [--output benchmarks/results/validation_ranking_speed.json]

The windows are random item ids with the history lengths of ML-1M's leave-one-out validation
windows (each user's items but the last two, capped at ``L``) when the data is at
``--data-dir``, else uniform lengths; 6,040 users over 3,706 items, as ML-1M. The model is
untrained: the cost of a pass does not depend on the weights. ``metrics.evaluate`` ranks the
windows in input order, untrimmed (``trim_padding=False``, what validation did before), and
sorted by history length with each batch's shared padding trimmed (the default for a model
that trains on sequence chunks). Each is timed ``--repeats`` times after a warm-up pass that
absorbs tracing; the best time is kept, with the load average, since the machine may be shared.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import sys
import time

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from t2diff_tf import features as F  # noqa: E402
from t2diff_tf import metrics as M  # noqa: E402
from t2diff_tf.models.registry import build_model  # noqa: E402


def history_lengths(data_dir: str, history_length: int, users: int, seed: int) -> np.ndarray:
    """Each ML-1M user's validation history length (items but the last two, at most ``L``),
    or uniform lengths when the data is not there."""
    path = os.path.join(data_dir, "sequences.txt.gz")
    if not os.path.exists(path):
        return np.random.default_rng(seed).integers(1, history_length + 1, size=users)
    with gzip.open(path, "rt") as f:
        lengths = [len(line.split()) - 3 for line in f if line.strip()]
    return np.clip(np.asarray(lengths), 1, history_length)


def windows(lengths: np.ndarray, history_length: int, num_items: int, seed: int):
    """Left-padded windows ``[users, L]`` of random items with the given history lengths."""
    rng = np.random.default_rng(seed)
    n = len(lengths)
    history = np.zeros([n, history_length], np.int64)
    for row, length in enumerate(lengths):
        history[row, history_length - length:] = rng.integers(1, num_items + 1, length)
    valid = history != F.PADDING_ID
    return {F.USER_ID: np.array([str(i).encode() for i in range(n)]),
            F.HISTORY: history,
            F.HISTORY_TIME_LAG: np.where(valid, 1, 0).astype(np.int64),
            F.HISTORY_SESSION: np.where(valid, 0, F.PADDING_SESSION).astype(np.int64),
            F.HISTORY_TIMESTAMPS: np.where(valid, np.cumsum(valid, axis=1), 0),
            F.SESSION_LENGTH: np.minimum(lengths, 10).astype(np.int64),
            F.TARGET: rng.integers(1, num_items + 1, n).astype(np.int64)}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data-dir", default=os.path.join(HERE, "..", "..", "shared", "data",
                                                           "ml-1m"))
    parser.add_argument("--model", default="sasrec")
    parser.add_argument("--model-config", default='{"embedding_dim": 128, "num_blocks": 3, '
                        '"block": "sasrec", "position_origin": "first"}')
    parser.add_argument("--history-length", type=int, default=200)
    parser.add_argument("--num-items", type=int, default=3706)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", default=None)
    args = parser.parse_args(argv)

    lengths = history_lengths(args.data_dir, args.history_length, 6040, args.seed)
    arrays = windows(lengths, args.history_length, args.num_items, args.seed)
    spec = F.ExampleSpec(history_length=args.history_length)
    tf.keras.utils.set_random_seed(args.seed)
    model = build_model(args.model, json.loads(args.model_config), num_items=args.num_items,
                        example_spec=spec)
    results = {"model": args.model, "model_config": json.loads(args.model_config),
               "history_length": args.history_length, "users": len(lengths),
               "mean_history_length": float(lengths.mean()), "batch_size": args.batch_size,
               "load_average_start": os.getloadavg()[0], "passes": {}}
    ranks = {}
    for name, trim in (("untrimmed", False), ("sorted_and_trimmed", True)):
        ranker = M.make_ranker(model)
        M.evaluate(model, arrays, ks=(10,), num_bootstrap=0, batch_size=args.batch_size,
                   ranker=ranker, trim_padding=trim)  # warm-up: tracing
        seconds = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            result = M.evaluate(model, arrays, ks=(10,), num_bootstrap=0,
                                batch_size=args.batch_size, ranker=ranker, trim_padding=trim)
            seconds.append(time.perf_counter() - start)
        ranks[name] = result.ranks
        results["passes"][name] = {"seconds": [round(s, 3) for s in seconds],
                                   "best_seconds": round(min(seconds), 3)}
        print(f"{name}: best {min(seconds):.2f} s of {args.repeats} "
              f"({', '.join(f'{s:.2f}' for s in seconds)})", flush=True)
    results["same_ranks"] = bool(np.array_equal(ranks["untrimmed"], ranks["sorted_and_trimmed"]))
    results["speedup"] = round(results["passes"]["untrimmed"]["best_seconds"]
                               / results["passes"]["sorted_and_trimmed"]["best_seconds"], 2)
    results["load_average_end"] = os.getloadavg()[0]
    print(f"speed-up {results['speedup']}x; same ranks: {results['same_ranks']}")
    if args.output:
        os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
        with open(args.output, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
