"""Whether two preprocessing outputs hold the same examples, stats and vocabulary.

    python benchmarks/preprocess_outputs_equal.py OUT_A OUT_B

Compares every split's records as a multiset (sorted, then hashed: runners may shard and order
them differently), ``stats.json`` without its ``elapsed_seconds``, and ``item_vocabulary.tsv``
byte for byte. Prints each output's digests; exits 0 when they are equal, 1 when not. Used to
check that a change to the preprocessing, or another runner or runner mode, writes the same
output (BENCHMARKS.md, "Preprocessing at KuaiRand-27K scale").
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import sys
from typing import Dict


def output_digests(root: str) -> Dict[str, object]:
    """``{split: (records, digest of the sorted records), "stats": ..., "vocabulary": ...}``."""
    import tensorflow as tf  # noqa: PLC0415

    digests: Dict[str, object] = {}
    for split in sorted(glob.glob(os.path.join(root, "Split-*"))):
        files = sorted(glob.glob(os.path.join(split, "*")))
        records = sorted(r.numpy() for r in tf.data.TFRecordDataset(files, compression_type="GZIP"))
        digest = hashlib.sha256()
        for record in records:
            digest.update(record)
        digests[os.path.basename(split)] = (len(records), digest.hexdigest()[:16])
    with open(os.path.join(root, "stats.json")) as f:
        stats = json.load(f)
    stats.pop("elapsed_seconds", None)
    digests["stats"] = hashlib.sha256(json.dumps(stats, sort_keys=True).encode()).hexdigest()[:16]
    with open(os.path.join(root, "item_vocabulary.tsv"), "rb") as f:
        digests["vocabulary"] = hashlib.sha256(f.read()).hexdigest()[:16]
    return digests


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 2:
        print(__doc__.strip().splitlines()[2].strip(), file=sys.stderr)
        return 2
    first, second = (output_digests(root) for root in argv)
    for root, digests in zip(argv, (first, second)):
        print(root, json.dumps(digests))
    print("identical" if first == second else "DIFFERENT")
    return 0 if first == second else 1


if __name__ == "__main__":
    sys.exit(main())
