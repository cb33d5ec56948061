"""Re-orders equal-timestamp ratings in ML-1M's sequence file the way published SASRec data does.

    python benchmarks/ml1m_tie_order.py --data-dir ../shared/data/ml-1m \
        --output /work/derived/ml-1m-stable-ties

The shared ``sequences.txt.gz`` orders each user's ratings by time, but its order among ratings
made in the same second matches no simple rule. The ``ml-1m.txt`` that SASRec+ and gSASRec train
on sorts by timestamp and keeps ``ratings.dat``'s line order within a second (a stable sort).
ML-1M users rate in bursts, so ties decide many users' validation and test targets.

Only users 1-2999 have timestamps here (``ratings_users_0001-2999.dat.gz``, in ``ratings.dat``'s
line order): their rows are rebuilt by a stable sort on the timestamp; every other user's row is
copied unchanged. The output directory gets the new ``sequences.txt.gz`` and links to the other
files, so ``benchmarks/ml1m.py --data-dir OUTPUT`` reads it as ML-1M (use a separate
``--work-dir``: the harness caches preprocessing by protocol and length, not by data).
Prints how many of the rebuilt users' test and validation targets changed. Writes nothing into
the data directory and nothing into the repository.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import sys
from typing import Dict, List, Tuple

RATINGS = "ratings_users_0001-2999.dat.gz"
SEQUENCES = "sequences.txt.gz"


def stable_time_order(path: str) -> Dict[str, List[str]]:
    """``{user: [item, ...]}`` sorted by timestamp, ties kept in the file's line order."""
    rows: Dict[str, List[Tuple[int, int, str]]] = {}
    with gzip.open(path, "rt", encoding="utf-8") as f:
        for line_number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            fields = line.rstrip("\n").split("::")
            if len(fields) != 4:
                raise SystemExit(f"{path}:{line_number}: expected user::item::rating::timestamp,"
                                 f" got {line.strip()!r}")
            user, item, _, timestamp = fields
            rows.setdefault(user, []).append((int(timestamp), line_number, item))
    return {user: [item for _, _, item in sorted(r)] for user, r in rows.items()}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--output", required=True)
    args = parser.parse_args(argv)
    data_dir, out = os.path.abspath(args.data_dir), os.path.abspath(args.output)
    if out == data_dir:
        raise SystemExit("--output must differ from --data-dir")
    ordered = stable_time_order(os.path.join(data_dir, RATINGS))
    os.makedirs(out, exist_ok=True)
    counts = {"users": 0, "rebuilt": 0, "test_target_changed": 0,
              "validation_target_changed": 0, "sequence_changed": 0}
    tmp = os.path.join(out, SEQUENCES + ".tmp")
    with gzip.open(os.path.join(data_dir, SEQUENCES), "rt", encoding="utf-8") as src, \
            gzip.open(tmp, "wt", encoding="utf-8") as dst:
        for line_number, line in enumerate(src, start=1):
            fields = line.split()
            if not fields:
                continue
            counts["users"] += 1
            user, items = fields[0], fields[1:]
            if user in ordered:
                new = ordered[user]
                if sorted(new) != sorted(items):
                    raise SystemExit(f"{SEQUENCES}:{line_number}: user {user}'s items differ "
                                     f"from {RATINGS}'s")
                counts["rebuilt"] += 1
                counts["sequence_changed"] += new != items
                counts["test_target_changed"] += new[-1] != items[-1]
                counts["validation_target_changed"] += new[-2] != items[-2]
                items = new
            dst.write(" ".join([user] + items) + "\n")
    os.replace(tmp, os.path.join(out, SEQUENCES))
    for name in os.listdir(data_dir):
        link = os.path.join(out, name)
        if name != SEQUENCES and not os.path.lexists(link):
            os.symlink(os.path.join(data_dir, name), link)
    print(json.dumps(counts, indent=1))
    return counts


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
