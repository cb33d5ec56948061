"""Training speed of a next-item model on the sequence layout: losses, bfloat16 and oneDNN.

    TF_USE_LEGACY_KERAS=1 .venv/bin/python benchmarks/sequence_training_speed.py \
        [--model sasrec] [--num-items 3706] [--history-length 200] [--batch-size 128] \
        [--steps 20] [--length-buckets 1] [--output benchmarks/results/sequence_training_speed.json]

Inputs are random chunks of the sequence contract with ML-1M's shape: ``N`` items, chunks of up
to ``L + 1`` items whose lengths are drawn from MovieLens-1M's chunk lengths when the data is at
``--data-dir`` (else uniformly), batched as in training (``--length-buckets``: 1 mixes every
length, more groups similar lengths) and trimmed of shared padding.
Each variant runs in its own process (oneDNN is chosen when TensorFlow starts): after a warm-up
epoch that absorbs tracing, ``--steps`` optimiser steps are timed. Recorded per variant: steps/s
and labelled positions/s (the quantity that decides an epoch's time), with the load average at
start and end, since the machine may be shared.

Variants: loss (full softmax, sampled softmax with 256 shared negatives, gBCE with 256), logits
in float32 or bfloat16, and ``TF_ENABLE_ONEDNN_OPTS`` 0 or 1 (TensorFlow's default on a CPU
with AVX-512 is 1; each result records whether oneDNN was really on).
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import subprocess
import sys
import time
from typing import List, Optional

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)

VARIANTS = [
    {"loss": "full_softmax", "logits_dtype": "float32", "onednn": "0"},
    {"loss": "full_softmax", "logits_dtype": "float32", "onednn": "1"},
    {"loss": "full_softmax", "logits_dtype": "bfloat16", "onednn": "1"},
    {"loss": "sampled_softmax", "logits_dtype": "float32", "onednn": "0"},
    {"loss": "sampled_softmax", "logits_dtype": "float32", "onednn": "1"},
    {"loss": "gbce", "logits_dtype": "float32", "onednn": "1"},
]


def chunk_lengths(data_dir: str, history_length: int, count: int, seed: int):
    """Lengths of ML-1M's leave-one-out training chunks (resampled), or uniform ones."""
    import numpy as np

    from components.preprocessing.sequences import chunk_bounds
    from t2diff_tf.features import SequenceSpec

    rng = np.random.default_rng(seed)
    path = os.path.join(data_dir, "sequences.txt.gz")
    if not os.path.exists(path):
        return rng.integers(2, history_length + 2, size=count)
    spec = SequenceSpec(history_length)
    lengths = []
    with gzip.open(path, "rt") as f:
        for line in f:
            n = len(line.split()) - 1 - 2
            lengths += [len(r) for r in chunk_bounds(n, spec)]
    return rng.choice(np.asarray(lengths), size=count)


def measure(args: argparse.Namespace, variant: dict) -> dict:
    """One variant, in this process."""
    import numpy as np
    import tensorflow as tf

    from t2diff_tf import features as F
    from t2diff_tf.models.registry import build_model
    from t2diff_tf.training import sequence_arrays_dataset

    L, N, batch = args.history_length, args.num_items, args.batch_size
    # Token batching puts more short chunks in a batch: draw enough chunks for the timed steps.
    count = batch * (args.steps + 10) * (4 if args.positions_per_batch else 1)
    lengths = chunk_lengths(args.data_dir, L, count, seed=0)
    rng = np.random.default_rng(1)
    items = rng.integers(1, N + 1, size=(count, L + 1))
    items[np.arange(L + 1)[None, :] < (L + 1 - lengths)[:, None]] = 0
    arrays = {F.SEQUENCE_ITEMS: items, F.SEQUENCE_LENGTH: lengths.astype(np.int64)}
    dataset = sequence_arrays_dataset(arrays, batch, count, seed=0,
                                      num_buckets=args.length_buckets,
                                      positions_per_batch=args.positions_per_batch)
    batches = list(dataset)
    labels = [int(tf.reduce_sum(tf.cast(b[F.HISTORY] != 0, tf.int32))) for b in batches]

    config = {"dropout": 0.1, "tied_item_embeddings": True, "scale_embeddings": True,
              "loss": {"kind": variant["loss"], "logits_dtype": variant["logits_dtype"]}}
    model = build_model(args.model, config, num_items=N, item_frequencies=np.ones(N + 1),
                        example_spec=F.ExampleSpec(history_length=L))
    model.compile(optimizer=tf.keras.optimizers.Adam(1e-3))
    train_step = tf.function(model.train_step, reduce_retracing=True)
    for b in batches[:5]:  # warm-up: traces the shapes
        train_step(b)
    timed = batches[5:5 + args.steps]
    load_start = os.getloadavg()[0]
    start = time.perf_counter()
    for b in timed:
        train_step(b)
    float(model.optimizer.iterations.numpy())
    seconds = time.perf_counter() - start
    positions = sum(labels[5:5 + args.steps])
    from tensorflow.python.util import _pywrap_util_port

    return {**variant, "length_buckets": args.length_buckets,
            "positions_per_batch": args.positions_per_batch,
            "onednn_on": bool(_pywrap_util_port.IsMklEnabled()),
            "steps": len(timed), "seconds": round(seconds, 3),
            "steps_per_second": round(len(timed) / seconds, 3),
            "labels_per_second": round(positions / seconds, 1),
            "load_average": [round(load_start, 2), round(os.getloadavg()[0], 2)]}


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--model", default="sasrec")
    parser.add_argument("--num-items", type=int, default=3706)
    parser.add_argument("--history-length", type=int, default=200)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--length-buckets", type=int, default=1,
                        help="batch chunks within this many length ranges (training's "
                             "TrainConfig.length_buckets; 1 mixes every length)")
    parser.add_argument("--positions-per-batch", type=int, default=None,
                        help="size each bucket's batches to about this many positions "
                             "(TrainConfig.positions_per_batch) instead of --batch-size chunks")
    parser.add_argument("--data-dir", default=os.path.join(ROOT, "..", "shared", "data", "ml-1m"))
    parser.add_argument("--losses", default=None,
                        help="comma-separated losses to measure (default: every variant); "
                             "e.g. sampled_softmax,gbce at a catalogue too large for the full "
                             "softmax's logits")
    parser.add_argument("--variant", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--output", default="benchmarks/results/sequence_training_speed.json")
    args = parser.parse_args(argv)

    if args.variant is not None:  # child process: one variant
        sys.path.insert(0, ROOT)
        print("RESULT " + json.dumps(measure(args, VARIANTS[args.variant])), flush=True)
        return

    sys.path.insert(0, HERE)
    from machine import describe  # benchmarks/machine.py

    results = []
    losses = None if args.losses is None else set(args.losses.split(","))
    for index, variant in enumerate(VARIANTS):
        if losses is not None and variant["loss"] not in losses:
            continue
        env = dict(os.environ, TF_ENABLE_ONEDNN_OPTS=variant["onednn"],
                   PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
        child = subprocess.run(
            [sys.executable, os.path.abspath(__file__), "--variant", str(index),
             "--model", args.model, "--num-items", str(args.num_items),
             "--history-length", str(args.history_length), "--batch-size", str(args.batch_size),
             "--steps", str(args.steps), "--data-dir", args.data_dir,
             "--length-buckets", str(args.length_buckets)]
            + (["--positions-per-batch", str(args.positions_per_batch)]
               if args.positions_per_batch else []),
            env=env, capture_output=True, text=True)
        lines = [l for l in child.stdout.splitlines() if l.startswith("RESULT ")]
        if child.returncode or not lines:
            raise SystemExit(f"variant {variant} failed:\n{child.stderr[-3000:]}")
        result = json.loads(lines[-1][len("RESULT "):])
        results.append(result)
        print(f"{result['loss']:>16} logits {result['logits_dtype']:>8} oneDNN "
              f"{result['onednn']}: {result['steps_per_second']:6.2f} steps/s, "
              f"{result['labels_per_second']:9.0f} labels/s (load {result['load_average']})",
              flush=True)
    report = {"command": "python " + " ".join(sys.argv), "machine": describe(),
              "model": args.model, "num_items": args.num_items,
              "history_length": args.history_length, "batch_size": args.batch_size,
              "length_buckets": args.length_buckets,
              "positions_per_batch": args.positions_per_batch, "results": results}
    os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
    with open(args.output, "w") as f:
        json.dump(report, f, indent=2)


if __name__ == "__main__":
    main()
