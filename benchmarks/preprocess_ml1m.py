"""Times the Beam preprocessing of all of MovieLens-1M (DirectRunner) and records the result.

    python benchmarks/preprocess_ml1m.py --data-dir ../shared/data/ml-1m

Writes benchmarks/results/preprocess_ml1m.json and prints a Markdown table.
"""

import argparse
import json
import os
import platform
import sys
import tempfile
import time

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from components.preprocessing import readers  # noqa: E402
from components.preprocessing.config import ProtocolConfig  # noqa: E402
from components.preprocessing.transforms import PreprocessConfig, run_preprocessing  # noqa: E402


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default="../shared/data/ml-1m")
    parser.add_argument("--max-train-windows-per-user", type=int, default=10)
    parser.add_argument("--results", default=os.path.join(os.path.dirname(__file__), "results",
                                                          "preprocess_ml1m.json"))
    args = parser.parse_args(argv)
    config = PreprocessConfig(protocol=ProtocolConfig(
        max_train_windows_per_user=args.max_train_windows_per_user))
    cases = {
        "sequences.txt.gz (all 6,040 users)": readers.SequenceFile(
            os.path.join(args.data_dir, "sequences.txt.gz"),
            genres=readers.read_movielens_genres(os.path.join(args.data_dir, "movies.dat"))),
        "ratings_users_0001-2999.dat.gz": readers.MovieLensRatings(
            os.path.join(args.data_dir, "ratings_users_0001-2999.dat.gz"),
            os.path.join(args.data_dir, "movies.dat")),
    }
    rows = []
    for name, source in cases.items():
        with tempfile.TemporaryDirectory() as out:
            start = time.perf_counter()
            stats = run_preprocessing(source, out, config)
            seconds = time.perf_counter() - start
        rows.append({"input": name, "seconds": round(seconds, 1),
                     "interactions_read": stats["interactions_read"], "kept": stats["kept"],
                     "rejected": stats["rejected"], "users": stats["users_kept"],
                     "items": stats["items"], "examples": stats["examples"]})
    result = {"command": "python " + " ".join([sys.argv[0]] + (argv or sys.argv[1:])),
              "machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.python_version()}",
              "runner": "DirectRunner", "protocol": "leave_one_out, <= 10 train windows per user",
              "rows": rows}
    os.makedirs(os.path.dirname(args.results), exist_ok=True)
    with open(args.results, "w") as f:
        json.dump(result, f, indent=2)
    print("| input | seconds | interactions read | kept | users | items | train / val / test |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        ex = r["examples"]
        print(f"| {r['input']} | {r['seconds']} | {r['interactions_read']:,} | {r['kept']:,} | "
              f"{r['users']:,} | {r['items']:,} | {ex['train']:,} / {ex['validation']:,} / "
              f"{ex['test']:,} |")


if __name__ == "__main__":
    main()
