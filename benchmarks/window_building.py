"""CPU cost of building the preprocessing's windows, per user, reference loop against numpy.

    python benchmarks/window_building.py --data-dir ../shared/data/ml-1m --cap 50

Reads the ML-1M sequences, then times, in this one process (``time.process_time``: CPU seconds,
steadier than wall time on a shared machine), building every user's windows under
leave-one-out with ``--cap`` training windows per user, then serializing them as the Beam step
does: once with the reference (``make_window`` per target, a Python loop per history position)
and once with ``user_windows`` (all of a user's targets at once with numpy). Prints rows per CPU
second of each and writes ``benchmarks/results/window_building.json``.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from components.preprocessing.config import ProtocolConfig, WindowConfig  # noqa: E402
from components.preprocessing.windows import (make_window, target_positions,  # noqa: E402
                                              to_example, user_windows)
from t2diff_tf.features import ExampleSpec  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default="../shared/data/ml-1m")
    parser.add_argument("--cap", type=int, default=50)
    parser.add_argument("--history-length", type=int, default=50)
    parser.add_argument("--output", default=os.path.join(ROOT, "benchmarks", "results",
                                                         "window_building.json"))
    args = parser.parse_args()
    users, vocabulary = [], {}
    with gzip.open(os.path.join(args.data_dir, "sequences.txt.gz"), "rt") as f:
        for line in f:
            fields = line.split()
            users.append((fields[0], [vocabulary.setdefault(i, len(vocabulary) + 1)
                                      for i in fields[1:]]))
    rows = sum(len(items) for _, items in users)
    window = WindowConfig(ExampleSpec(history_length=args.history_length))
    protocol = ProtocolConfig(max_train_windows_per_user=args.cap)

    def reference(user, items):
        for split, pos in target_positions(user, len(items), protocol):
            yield split, make_window(user, items, None, pos, window)

    result = {"command": "python " + " ".join(sys.argv), "rows": rows, "users": len(users),
              "cap": args.cap, "history_length": args.history_length}
    for name, build in (("reference loop", reference),
                        ("numpy", lambda u, i: user_windows(u, i, None, window, protocol))):
        for serialize in (False, True):
            start, count = time.process_time(), 0
            for user, items in users:
                for _, w in build(user, items):
                    if serialize:
                        to_example(w).SerializeToString(deterministic=True)
                    count += 1
            seconds = time.process_time() - start
            key = f"{name}{', serialized' if serialize else ''}"
            result[key] = {"cpu_seconds": round(seconds, 2), "windows": count,
                           "rows_per_cpu_second": round(rows / seconds)}
            print(f"{key:28s} {seconds:7.2f} CPU s  {count:,} windows  "
                  f"{rows / seconds:,.0f} rows/CPU s", flush=True)
    os.makedirs(os.path.dirname(args.output), exist_ok=True)
    with open(args.output, "w") as f:
        json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
