"""Training throughput and user-tower latency of the registry's models on this machine.

    TF_USE_LEGACY_KERAS=1 .venv/bin/python benchmarks/model_speed.py \
        [--num-items 3706] [--history-length 50] [--embedding-dim 64] [--batch-size 256] \
        [--train-steps 30] [--repeats 20] [--output benchmarks/results/model_speed.json]

Inputs are random windows of the feature contract (speed does not depend on the data): ``L``
behaviours, a session of ``k = 10``, ``N`` items (ML-1M has 3,706). Measured:

* training throughput (examples/s) of ``model.fit`` with the default full softmax, after a
  warm-up epoch that absorbs tracing;
* user-tower inference latency (``serving_user_tower()``, the exported signature) at batch 1
  and batch 256, as milliseconds per call and per user (median of ``--repeats`` calls), for T2Diff
  with the full reverse chain (``T = 50`` steps) and with the fast DDIM sampler (``S`` steps),
  and for the baselines; each both as a plain graph and compiled with XLA
  (``serving_user_tower(jit_compile=True)``);
* for T2Diff, the reverse process's FLOPs per user (approximator FLOPs from TensorFlow's profiler
  times the number of steps) and the FLOP rate its latency implies: a latency target below
  ``FLOPs / peak rate`` cannot be met on the machine, whatever the implementation.

Prints a table and writes the figures, the command and the machine to ``--output``. The machine
may be shared with other jobs: the load average at start and end is recorded with the figures.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import sys
import time
from typing import Dict, List

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from t2diff_tf import features as F  # noqa: E402
from t2diff_tf.layers.diffusion import DiffusionConfig  # noqa: E402
from t2diff_tf.layers.schedules import ScheduleConfig  # noqa: E402
from t2diff_tf.models import T2DiffConfig, TwoTowerConfig, build_model  # noqa: E402
from machine import describe  # noqa: E402  (benchmarks/machine.py)


def random_windows(num: int, spec: F.ExampleSpec, num_items: int, session_size: int,
                   seed: int) -> Dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    L = spec.history_length
    lengths = rng.integers(session_size, L + 1, size=num)
    history = rng.integers(1, num_items + 1, size=(num, L))
    history[np.arange(L)[None, :] < (L - lengths)[:, None]] = 0
    valid = history > 0
    return {
        F.HISTORY: history,
        F.HISTORY_TIME_LAG: np.where(valid, rng.integers(1, spec.num_time_lag_buckets,
                                                         size=(num, L)), 0),
        F.HISTORY_SESSION: np.where(valid, 0, -1),
        F.HISTORY_TIMESTAMPS: np.where(valid, np.cumsum(valid, axis=1), 0),
        F.SESSION_LENGTH: np.minimum(lengths, session_size),
        F.TARGET: rng.integers(1, num_items + 1, size=num),
    }


def model_variants(args) -> List[tuple]:
    """``(label, registry name, config)`` of every measured variant."""
    d = args.embedding_dim
    schedule = ScheduleConfig(num_steps=args.diffusion_steps)
    # sampler_steps is set on both so that any T >= S is a valid configuration.
    full = DiffusionConfig(schedule=schedule, sampler="full", sampler_steps=args.fast_steps)
    fast = dataclasses.replace(full, sampler="fast")
    t2diff = T2DiffConfig(embedding_dim=d, diffusion=full)
    return [
        ("mean_pool_two_tower", "mean_pool_two_tower", TwoTowerConfig(embedding_dim=d)),
        ("mixed_attention", "mixed_attention", t2diff),
        (f"t2diff (full chain T={args.diffusion_steps})", "t2diff", t2diff),
        (f"t2diff (fast S={args.fast_steps})", "t2diff",
         dataclasses.replace(t2diff, diffusion=fast)),
    ]


def training_throughput(model, windows, batch_size: int, steps: int) -> float:
    data = tf.data.Dataset.from_tensor_slices(windows).repeat().batch(batch_size)
    data = data.prefetch(tf.data.AUTOTUNE)
    model.compile(tf.keras.optimizers.Adam(1e-3))
    model.fit(data, epochs=1, steps_per_epoch=3, verbose=0)  # tracing and warm-up
    start = time.perf_counter()
    model.fit(data, epochs=1, steps_per_epoch=steps, verbose=0)
    return steps * batch_size / (time.perf_counter() - start)


def latency_ms(model, windows, batch: int, repeats: int, jit_compile: bool = False) -> float:
    """Median ms per call of the serving user tower (optionally XLA-compiled) at ``batch``."""
    features = {name: tf.constant(windows[name][:batch]) for name in F.QUERY_FEATURES}
    query = model.serving_user_tower(jit_compile=jit_compile)
    query(features)["user_embedding"].numpy()  # tracing (and XLA compilation)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        query(features)["user_embedding"].numpy()
        times.append(time.perf_counter() - start)
    return 1000.0 * float(np.median(times))


def approximator_flops_per_user(model, batch: int = 256) -> float:
    """Floating-point operations of one approximator (U-Net) call per user, counted on its
    graph by TensorFlow's profiler at ``[batch, K, 2d]``: a reverse process costs this times
    its number of steps, which bounds its latency by the CPU's peak FLOP rate."""
    diffusion = model.diffusion
    spec = (tf.TensorSpec([batch, model.session_size, 2 * diffusion.embedding_dim]),
            tf.TensorSpec([batch], tf.int32))
    graph = tf.function(lambda x, steps: diffusion.approximator(x, steps)
                        ).get_concrete_function(*spec).graph
    options = tf.compat.v1.profiler.ProfileOptionBuilder.float_operation()
    options["output"] = "none"
    return tf.compat.v1.profiler.profile(graph, options=options).total_float_ops / batch


def main(argv=None) -> Dict[str, object]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--num-items", type=int, default=3706)
    parser.add_argument("--history-length", type=int, default=50)
    parser.add_argument("--session-size", type=int, default=10)
    parser.add_argument("--embedding-dim", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--train-steps", type=int, default=30)
    parser.add_argument("--diffusion-steps", type=int, default=50)
    parser.add_argument("--fast-steps", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--latency-batches", default="1,256")
    parser.add_argument("--output", default=os.path.join(
        os.path.dirname(os.path.abspath(__file__)), "results", "model_speed.json"))
    args = parser.parse_args(argv)

    tf.keras.utils.set_random_seed(0)
    spec = F.ExampleSpec(history_length=args.history_length)
    batches = [int(b) for b in args.latency_batches.split(",")]
    windows = random_windows(max(4096, max(batches)), spec, args.num_items, args.session_size,
                             seed=0)
    load_before = os.getloadavg()
    rows = []
    for label, name, config in model_variants(args):
        model = build_model(name, config, num_items=args.num_items, example_spec=spec)
        row = {"model": label, "registry_name": name,
               "train_examples_per_s": training_throughput(model, windows, args.batch_size,
                                                           args.train_steps)}
        for batch in batches:
            for suffix, jit in (("", False), ("_xla", True)):
                ms = latency_ms(model, windows, batch, args.repeats, jit_compile=jit)
                row[f"latency_ms_per_call_batch{batch}{suffix}"] = ms
                row[f"latency_ms_per_user_batch{batch}{suffix}"] = ms / batch
        if getattr(model, "diffusion", None) is not None:
            diffusion = config.diffusion
            steps = (diffusion.sampler_steps if diffusion.sampler == "fast"
                     else diffusion.schedule.num_steps)
            flops = approximator_flops_per_user(model) * steps
            row["reverse_process_mflop_per_user"] = flops / 1e6
            for batch in batches:
                for suffix in ("", "_xla"):
                    seconds = row[f"latency_ms_per_user_batch{batch}{suffix}"] / 1000.0
                    row[f"approximator_gflop_per_s_batch{batch}{suffix}"] = flops / seconds / 1e9
        rows.append(row)
        print(f"done: {label}", file=sys.stderr, flush=True)

    columns = [(b, suffix) for b in batches for suffix in ("", "_xla")]
    header = f"{'model':32s} {'train ex/s':>11s}" + "".join(
        f" {'ms/user @' + str(b) + (' XLA' if suffix else ''):>17s}" for b, suffix in columns)
    print(header)
    for row in rows:
        print(f"{row['model']:32s} {row['train_examples_per_s']:11.0f}" + "".join(
            f" {row[f'latency_ms_per_user_batch{b}{suffix}']:17.3f}" for b, suffix in columns))
    result = {
        "command": " ".join(["benchmarks/model_speed.py"] + list(argv if argv is not None
                                                                  else sys.argv[1:])),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": describe(),
        "load_average_1_5_15": {"start": list(load_before), "end": list(os.getloadavg())},
        "settings": {k: v for k, v in vars(args).items() if k != "output"},
        "notes": ("random windows; full softmax over num_items; training figure after a "
                  "3-step warm-up; latency = median of repeats of a tf.function call incl. "
                  "host transfer; *_xla: the same tower compiled with XLA; the machine may be "
                  "shared (see load_average)."),
        "results": rows,
    }
    os.makedirs(os.path.dirname(args.output), exist_ok=True)
    with open(args.output, "w") as f:
        json.dump(result, f, indent=2)
        f.write("\n")
    return result


if __name__ == "__main__":
    main()
