"""Training throughput of a per-target model on windows of every chunk position, by batch size.

    TF_USE_LEGACY_KERAS=1 .venv/bin/python benchmarks/window_model_training_speed.py \\
        [--models t2diff mixed_attention] [--batch-sizes 256 512 1024 2048] [--steps 10]

The windows come from random chunks of ML-1M's shape (``N`` = 3,706 items, chunks of 201 items
with random lengths) through the training input pipeline (``sequence_windows_dataset``: window
``--window-length``, last-10 sessions), as ``--layout sequences`` trains T2Diff. For each model
and batch size, after two warm-up steps that absorb tracing, ``--steps`` optimiser steps are
timed (Adam; the model's own loss, the full softmax unless ``--model-config`` sets one).
Recorded: steps/s, windows/s and the time of an epoch of ``--epoch-windows`` windows (default
ML-1M's 982,089 labels), with the load average, since the machine may be shared.
Writes ``benchmarks/results/window_model_training_speed.json``.

At another catalogue size and loss, e.g. KuaiRand-27K's (108,025 items, sampled softmax; its
710,663 training windows at 50 per user):

    ... --models t2diff --batch-sizes 256 --num-items 108025 \
        --model-config '{"loss": {"kind": "sampled_softmax"}}' --epoch-windows 710663 \
        --output benchmarks/results/window_model_training_speed_kuairand.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Optional

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from t2diff_tf import features as F  # noqa: E402
from t2diff_tf.models.registry import build_model  # noqa: E402
from t2diff_tf.sequence_windows import SequenceWindowConfig  # noqa: E402
from t2diff_tf.training import sequence_windows_dataset  # noqa: E402

ML1M_LABELS = 982_089


def random_chunks(num_items: int, chunk_length: int, count: int, seed: int):
    rng = np.random.default_rng(seed)
    lengths = rng.integers(2, chunk_length + 1, size=count)
    items = np.zeros((count, chunk_length), np.int64)
    for row, n in enumerate(lengths):
        items[row, -n:] = rng.integers(1, num_items + 1, size=n)
    steps = np.where(items > 0, np.cumsum(items > 0, axis=1) - 1, 0)
    return {F.SEQUENCE_ITEMS: items, F.SEQUENCE_TIMESTAMPS: steps,
            F.SEQUENCE_SESSIONS: np.where(items > 0, steps, -1)}


def measure(model_name: str, batch_size: int, steps: int, window_length: int,
            num_items: int, model_config: Optional[dict] = None,
            epoch_windows: int = ML1M_LABELS) -> dict:
    chunks = random_chunks(num_items, 201, 600, seed=0)
    config = SequenceWindowConfig(window_length=window_length)
    dataset = sequence_windows_dataset(chunks, config, batch_size, shuffle_buffer=20_000).repeat()
    spec = F.ExampleSpec(history_length=window_length)
    # Zipf-like frequencies (the sampled softmax's logQ correction needs some).
    frequencies = np.concatenate([[0.0], 1.0 / np.arange(1, num_items + 1)])
    model = build_model(model_name, dict(model_config or {}), num_items=num_items,
                        item_frequencies=frequencies, example_spec=spec)
    model.compile(optimizer=tf.keras.optimizers.Adam(1e-3))
    batches = iter(dataset)
    keep = F.QUERY_FEATURES + (F.TARGET,)
    step = tf.function(model.train_step)
    for _ in range(2):
        step({k: v for k, v in next(batches).items() if k in keep})
    load = os.getloadavg()[0]
    start = time.perf_counter()
    windows = 0
    for _ in range(steps):
        batch = next(batches)
        windows += int(batch[F.TARGET].shape[0])
        step({k: v for k, v in batch.items() if k in keep})
    seconds = time.perf_counter() - start
    return {"model": model_name, "batch_size": batch_size, "steps": steps,
            "steps_per_second": round(steps / seconds, 3),
            "windows_per_second": round(windows / seconds, 1),
            "num_items": num_items, "model_config": model_config or {},
            "epoch_windows": epoch_windows,
            "epoch_seconds": round(epoch_windows * seconds / windows, 1),
            "load_average_start": round(load, 2),
            "load_average_end": round(os.getloadavg()[0], 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["t2diff"])
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[256, 512, 1024, 2048])
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--window-length", type=int, default=50)
    parser.add_argument("--num-items", type=int, default=3706)
    parser.add_argument("--model-config", type=json.loads, default={},
                        help="the model's config as JSON, e.g. a loss")
    parser.add_argument("--epoch-windows", type=int, default=ML1M_LABELS,
                        help="windows in an epoch, for the epoch time (ML-1M's 982,089)")
    parser.add_argument("--output", default=os.path.join(
        ROOT, "benchmarks", "results", "window_model_training_speed.json"))
    args = parser.parse_args()
    results = []
    for name in args.models:
        for batch_size in args.batch_sizes:
            r = measure(name, batch_size, args.steps, args.window_length, args.num_items,
                        args.model_config, args.epoch_windows)
            results.append(r)
            print(json.dumps(r), flush=True)
    with open(args.output, "w") as f:
        json.dump({"command": "python " + " ".join(sys.argv), "results": results}, f, indent=2)


if __name__ == "__main__":
    main()
