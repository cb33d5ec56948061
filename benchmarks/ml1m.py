"""MovieLens-1M benchmark: every chosen model, both protocols, seeds, honest selection.

    python benchmarks/ml1m.py --data-dir ../shared/data/ml-1m --preset table2 \\
        --protocol leave_one_out --seeds 0 --epochs 20 --output benchmarks/results/ml1m

For each protocol the log is preprocessed once (Beam, cached under ``--work-dir``). For each run
and seed the model trains on the training windows, the epoch is selected on the validation split
(``val_recall@20``, early stopping), and the test split is ranked once over the whole corpus
twice with bootstrap 95% intervals over users: every item ranked (seen items included), and
with the items the user has already seen removed (their whole history, as SASRec+, gSASRec and
HSTU-Tensorflow evaluate; ``metrics_seen_excluded``), and a third time with only the items of
the model's input window removed (the last ``--history-length``, as generative-recommenders
evaluates HSTU-large; ``metrics_window_seen_excluded``).

``--protocol leave_last_out`` is the HSTU papers' split (generative-recommenders and
HSTU-Tensorflow train on every item but the last): the second to last item is a training label
and there is no validation split, so a run trains exactly ``--epochs`` epochs and keeps the last
weights. Choose that count without the test items, e.g. a leave-one-out run's best epoch::

    python benchmarks/ml1m.py ... --protocol leave_last_out --layout sequences --epochs 57

Recorded per run:
metrics, intervals, parameters, training time, epochs, inference ms/user (user tower at batch 1
and 256), the validation curve against training wall seconds (time to quality). With
``--layout sequences`` the training data are sequence chunks of ``--sequence-length`` inputs
(default ``--history-length``; every training interaction a label once per epoch) instead of
capped windows: next-item models read the chunks, per-target models (T2Diff, its ablations, the
two-towers) one window of ``--history-length`` per chunk position; ``--checkpoint-dir``
makes each run resumable (rerun the same command after a kill). Writes ``<output>.json`` and ``<output>.md`` (a Markdown table shaped like the paper's
Table 2; ``--preset table3`` / ``table4`` give the beta-schedule and diffusion-step ablations).
"""

import argparse
import copy
import dataclasses
import json
import os
import platform
import sys
import time
from typing import Dict, List, Mapping, Optional, Sequence

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from components.preprocessing import readers  # noqa: E402
from components.preprocessing.config import LEAVE_ONE_OUT, PROTOCOLS, TRAIN_SEQUENCES, USER_HOLDOUT, ProtocolConfig, WindowConfig  # noqa: E402
import shutil  # noqa: E402

from components.preprocessing.schema import read_schema  # noqa: E402
from components.preprocessing.transforms import SCHEMA_FILE, STATS_FILE, PreprocessConfig, run_preprocessing, split_dir  # noqa: E402
from components.preprocessing.vocabulary import ItemFeatures, Vocabulary  # noqa: E402
from t2diff_tf import features as F  # noqa: E402
from t2diff_tf import metrics as M  # noqa: E402
from t2diff_tf.features import ExampleSpec  # noqa: E402
from t2diff_tf.models.registry import MODELS, build_model  # noqa: E402
from t2diff_tf.training import TrainConfig, arrays_dataset, fit, read_examples, sequence_arrays_dataset, sequence_windows_dataset  # noqa: E402
from t2diff_tf.learning_rate import KINDS, LearningRateSchedule  # noqa: E402

PRESETS: Dict[str, List[dict]] = {
    "table2": [
        {"label": "Two-tower (mean pool)", "model": "mean_pool_two_tower"},
        {"label": "GRU4Rec", "model": "gru4rec"},
        {"label": "SASRec", "model": "sasrec"},
        {"label": "Caser", "model": "caser"},
        {"label": "BERT4Rec", "model": "bert4rec"},
        {"label": "DAT+", "model": "dat_plus"},
        {"label": "DiffuRec", "model": "diffurec"},
        {"label": "FIT", "model": "fit"},
        {"label": "Mamba4Rec", "model": "mamba4rec"},
        {"label": "ContrastVAE", "model": "contrast_vae"},
        {"label": "STOSA", "model": "stosa"},
        {"label": "Mixed-attention only", "model": "mixed_attention"},
        {"label": "T2Diff W/O DP", "model": "wo_dp"},
        {"label": "T2Diff", "model": "t2diff"},
    ],
    "table3": [
        {"label": f"T2Diff, {kind} beta", "model": "t2diff",
         "config": {"diffusion": {"schedule": {"kind": kind}}}}
        for kind in ("linear", "logarithmic", "exponential")
    ],
    "table4": [
        {"label": f"T2Diff, T = {t}", "model": "t2diff",
         "config": {"diffusion": {"schedule": {"num_steps": t}}}} for t in (10, 50, 200)
    ] + [{"label": "T2Diff, T = 50, fast sampler (S = 10)", "model": "t2diff",
          "config": {"diffusion": {"sampler": "fast", "sampler_steps": 10}}}],
    "smoke": [
        {"label": "Two-tower (mean pool)", "model": "mean_pool_two_tower"},
        {"label": "T2Diff", "model": "t2diff"},
    ],
}


def onednn_enabled() -> bool:
    """Whether TensorFlow runs its oneDNN kernels in this process."""
    from tensorflow.python.util import _pywrap_util_port

    return bool(_pywrap_util_port.IsMklEnabled())


def deep_update(base: dict, overrides: Mapping) -> dict:
    out = copy.deepcopy(base)
    for key, value in overrides.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), dict):
            out[key] = deep_update(out[key], value)
        else:
            out[key] = value
    return out


def model_config(name: str, overrides: Mapping) -> object:
    config_class = MODELS[name].config_class
    return config_class(**deep_update(dataclasses.asdict(config_class()), overrides))


def preprocess(data_dir: str, protocol: str, work_dir: str, history_length: int,
               max_train_windows: int, seed: int,
               max_user_interactions: Optional[int] = None,
               sequences: Optional[F.SequenceSpec] = None, min_item_interactions: int = 0) -> str:
    name = f"{protocol}_L{history_length}_w{max_train_windows}_s{seed}"
    if max_user_interactions:
        name += f"_u{max_user_interactions}"
    if min_item_interactions:
        name += f"_k{min_item_interactions}"
    if sequences is not None:
        name += f"_seq{sequences.history_length}_c{sequences.max_chunks_per_user or 'all'}"
    out = os.path.join(work_dir, name)
    if os.path.exists(os.path.join(out, STATS_FILE)):
        cached = {f.name for f in read_schema(os.path.join(out, SCHEMA_FILE)).feature}
        if cached == set(ExampleSpec(history_length).feature_spec()):
            return out
        # Written under an older window contract (e.g. before history_timestamps).
        print(f"{out}: cached windows hold {sorted(cached)}, not the current contract's "
              f"features; preprocessing again", flush=True)
        shutil.rmtree(out)
    cap = max_train_windows if max_train_windows > 0 else None
    protocol_config = protocol_settings(protocol, cap, seed)
    config = PreprocessConfig(window=WindowConfig(ExampleSpec(history_length=history_length)),
                              protocol=protocol_config,
                              max_user_interactions=max_user_interactions, sequences=sequences,
                              min_item_interactions=min_item_interactions)
    source = readers.SequenceFile(os.path.join(data_dir, "sequences.txt.gz"),
                                  genres=readers.read_movielens_genres(
                                      os.path.join(data_dir, "movies.dat")))
    run_preprocessing(source, out, config)
    return out


def protocol_settings(protocol: str, max_train_windows: Optional[int], seed: int
                      ) -> ProtocolConfig:
    """The harness's settings of each protocol (the user hold-out keeps the paper's 10
    training windows per user unless capped otherwise)."""
    if protocol == USER_HOLDOUT:
        return ProtocolConfig(name=USER_HOLDOUT, max_train_windows_per_user=max_train_windows or 10,
                              seed=seed)
    return ProtocolConfig(name=protocol, max_train_windows_per_user=max_train_windows)


def load_split(root: str, split: str, spec: ExampleSpec) -> Dict[str, np.ndarray]:
    parts: Dict[str, List[np.ndarray]] = {}
    for batch in read_examples(os.path.join(split_dir(root, split), "*"), spec, 8192):
        for name, value in batch.items():
            parts.setdefault(name, []).append(value.numpy())
    return {name: np.concatenate(values) for name, values in parts.items()}


def load_sequences(root: str, spec: F.SequenceSpec) -> Dict[str, np.ndarray]:
    """The ``Split-train_sequences`` chunks as arrays."""
    parts: Dict[str, List[np.ndarray]] = {}
    files = tf.io.gfile.glob(os.path.join(split_dir(root, TRAIN_SEQUENCES), "*"))
    dataset = tf.data.TFRecordDataset(files, compression_type="GZIP").batch(8192)
    for serialized in dataset:
        for name, value in spec.parse(serialized).items():
            parts.setdefault(name, []).append(value.numpy())
    return {name: np.concatenate(values) for name, values in parts.items()}


def attach_seen_items(data_dir: str, root: str, data: Dict[str, Dict[str, np.ndarray]],
                      protocol: str, max_user_interactions: Optional[int]) -> None:
    """Adds ``seen_items`` (``[n, S]``, 0-padded int ids) to the validation and test windows:
    every item of the user before the example's target, read from the sequence file (the
    window's ``history`` holds only the last ``L``)."""
    lookup = Vocabulary.read(root).lookup()
    full: Dict[str, List[int]] = {}
    with readers.open_binary(os.path.join(data_dir, "sequences.txt.gz")) as f:
        for line in f:
            fields = line.decode().split()
            if len(fields) > 1:
                # Items the preprocessing dropped (a k-core) are not in the user's sequence;
                # the cap applies to what is left, as in the preprocessing.
                items = [lookup[i] for i in fields[1:] if i in lookup]
                if max_user_interactions:
                    items = items[-max_user_interactions:]
                full[fields[0]] = items
    for split in [s for s in ("validation", "test") if s in data]:
        arrays = data[split]
        rows = []
        for user, target in zip(arrays[F.USER_ID], arrays[F.TARGET]):
            items = full[user.decode() if isinstance(user, bytes) else str(user)]
            # Leave-one-out: the target is the last (test) or second to last (validation) item;
            # user hold-out: the last item of a held-out user.
            cut = len(items) - (2 if protocol == LEAVE_ONE_OUT and split == "validation" else 1)
            if items[cut] != target:
                raise ValueError(f"user {user!r}: the {split} target {target} is not item "
                                 f"{cut} of the sequence file ({items[cut]})")
            rows.append(items[:cut])
        width = max(len(r) for r in rows)
        seen = np.zeros([len(rows), width], np.int64)
        for i, r in enumerate(rows):
            seen[i, :len(r)] = r
        arrays[F.SEEN_ITEMS] = seen


def latency_ms_per_user(model, arrays: Mapping[str, np.ndarray], batch: int,
                        repeats: int = 5) -> float:
    features = {n: tf.constant(arrays[n][:batch]) for n in F.QUERY_FEATURES}
    query = tf.function(lambda f: model.query_embeddings(f, training=False))
    query(features)  # trace and warm up
    start = time.perf_counter()
    for _ in range(repeats):
        query(features).numpy()
    return (time.perf_counter() - start) / repeats / batch * 1000.0


def sampler_comparison(model, arrays: Mapping[str, np.ndarray],
                       fast_steps: Sequence[int] = (5, 10), seed: int = 0) -> Optional[dict]:
    """The same trained weights ranked with the full reverse chain (Algorithm 2) and with the
    deterministic fast sampler at each ``S`` in ``fast_steps``: test Recall@20 / MRR@20 and
    ms/user at batch 256 of each, so the fast sampler's speed-up and its cost in quality are
    measured on one model. ``None`` for models without diffusion."""
    diffusion = getattr(model, "diffusion", None)
    if diffusion is None:
        return None
    original = diffusion.config
    samplers = [("full", "full", original.sampler_steps)] + [
        (f"fast_S{s}", "fast", s) for s in sorted(set(fast_steps))
        if s <= original.schedule.num_steps]
    out = {}
    try:
        for label, sampler, steps in samplers:
            diffusion.config = dataclasses.replace(original, sampler=sampler,
                                                   sampler_steps=steps)
            result = M.evaluate(model, arrays, ks=(20,), num_bootstrap=0, seed=seed)
            out[label] = {"recall@20": result["recall@20"], "mrr@20": result["mrr@20"],
                          "ms_per_user_batch_256": round(
                              latency_ms_per_user(model, arrays, 256), 4)}
    finally:
        diffusion.config = original
    return out


def reverse_step_cosine(model, arrays: Mapping[str, np.ndarray], n: int = 512,
                        seed: int = 0) -> Optional[dict]:
    """Cosine similarity between the predicted and true target drift (the session's last
    position) at every reverse step, on ``n`` test windows (the paper's Figure 4)."""
    if getattr(model, "diffusion", None) is None:
        return None
    features = {name: tf.constant(arrays[name][:n]) for name in F.QUERY_FEATURES + (F.TARGET,)}
    out = model.drift_trajectory(features, seed=tf.constant([seed, 0]))
    z0 = out["z0"][:, -1, :].numpy()
    z0_hat = out["z0_hat"][:, :, -1, :].numpy()
    cos = (z0_hat * z0[None]).sum(-1) / (
        np.linalg.norm(z0_hat, axis=-1) * np.linalg.norm(z0, axis=-1)[None] + 1e-12)
    steps = cos.shape[0]
    picks = sorted({0, steps // 4, steps // 2, (3 * steps) // 4, steps - 1})
    return {"steps": steps, "mean": cos.mean(axis=1).round(4).tolist(),
            "samples": {str(i + 1): cos[i].round(4).tolist() for i in picks}}


def run_one(spec: dict, seed: int, root: str, data: Dict[str, Dict[str, np.ndarray]],
            train_config: TrainConfig, example_spec: ExampleSpec,
            checkpoint_root: Optional[str] = None, use_item_features: bool = True,
            window: Optional[WindowConfig] = None) -> dict:
    vocabulary, item_features = Vocabulary.read(root), ItemFeatures.read(root)
    config = model_config(spec["model"], spec.get("config", {}))
    checkpoint_dir = None
    if checkpoint_root:
        slug = "".join(c if c.isalnum() else "_" for c in spec["label"])
        checkpoint_dir = os.path.join(checkpoint_root, f"{slug}_seed{seed}")
    # A run spec may override training settings: {"train": {"learning_rate": 0.003,
    # "learning_rate_schedule": {"kind": "cosine"}}}.
    train_config = TrainConfig.from_dict({**dataclasses.asdict(train_config), "seed": seed,
                                          "checkpoint_dir": checkpoint_dir,
                                          **spec.get("train", {})})

    # Chunks may be longer than the windows (the paper protocol's windows of 50, chunks of
    # 200): a model that trains on them needs a positional embedding for every chunk position.
    model_spec = example_spec
    if TRAIN_SEQUENCES in data:
        chunk_inputs = data[TRAIN_SEQUENCES][F.SEQUENCE_ITEMS].shape[1] - 1
        model_spec = F.model_example_spec(example_spec, F.SequenceSpec(chunk_inputs))

    def build():
        return build_model(spec["model"], config, num_items=vocabulary.size,
                           item_features=item_features.matrix if use_item_features else None,
                           item_frequencies=vocabulary.frequencies(), example_spec=model_spec)

    layout = "windows"
    if TRAIN_SEQUENCES in data and build().trains_on_sequences:
        layout = "sequences"
        train = sequence_arrays_dataset(data[TRAIN_SEQUENCES], train_config.batch_size,
                                        train_config.shuffle_buffer, seed,
                                        num_buckets=train_config.length_buckets,
                                        positions_per_batch=train_config.positions_per_batch,
                                        num_time_lag_buckets=example_spec.num_time_lag_buckets)
    elif TRAIN_SEQUENCES in data:
        # A per-target model: one window per chunk position, built as the preprocessing
        # built its windows (shape and session rule).
        layout = "sequence_windows"
        train = sequence_windows_dataset(data[TRAIN_SEQUENCES],
                                         (window or WindowConfig(example_spec)).sequence_windows(),
                                         train_config.batch_size, train_config.shuffle_buffer,
                                         seed)
    else:
        train = arrays_dataset(data["train"], train_config.batch_size,
                               train_config.shuffle_buffer, seed)
    start = time.perf_counter()
    # Arrays, not a dataset: a sequence model ranks them in order of history length, its
    # batches trimmed of shared left padding (``M.evaluate``).
    if "validation" not in data:
        print(f"{spec['label']} seed {seed}: no validation split; training "
              f"{train_config.epochs} epochs and keeping the last weights (choose the count "
              f"on a leave_one_out run)", flush=True)
    model, history = fit(build, train, data.get("validation"), train_config)
    train_seconds = time.perf_counter() - start
    start = time.perf_counter()
    result = M.evaluate(model, data["test"], ks=(2, 10, 20, 100), num_bootstrap=1000, seed=seed)
    excluded = M.evaluate(model, data["test"], ks=(2, 10, 20, 100), num_bootstrap=1000,
                          seed=seed, exclude_history=True)
    # generative-recommenders (HSTU-large) drops only the items of the model's input window,
    # the last L; without ``seen_items`` the ranking drops the window's history.
    window_only = {k: v for k, v in data["test"].items() if k != F.SEEN_ITEMS}
    window_excluded = M.evaluate(model, window_only, ks=(2, 10, 20, 100), num_bootstrap=1000,
                                 seed=seed, exclude_history=True)
    eval_seconds = time.perf_counter() - start
    validation = history.get(f"val_{train_config.selection_metric}", [])
    # ``fit``'s history holds every epoch of the run, those of killed processes included.
    epochs_run = len(history.get("loss", []))
    return {
        "label": spec["label"], "model": spec["model"], "seed": seed, "layout": layout,
        "config": dataclasses.asdict(config), "train": dataclasses.asdict(train_config),
        "metrics": result.metrics,
        "intervals": {k: list(v) for k, v in result.intervals.items()},
        "metrics_seen_excluded": excluded.metrics,
        "intervals_seen_excluded": {k: list(v) for k, v in excluded.intervals.items()},
        "metrics_window_seen_excluded": window_excluded.metrics,
        "intervals_window_seen_excluded": {k: list(v)
                                           for k, v in window_excluded.intervals.items()},
        "selection": {"metric": train_config.selection_metric,
                      "seen_excluded": train_config.exclude_seen}
        if "validation" in data else None,
        # Time to quality: the validation metrics after each epoch against the training wall
        # seconds so far (validation passes excluded); a run without validation records the
        # seconds alone.
        "time_to_quality": {
            "train_seconds": history.get("train_seconds", []),
            **{name: history[name] for name in ("val_recall@10", "val_ndcg@10",
                                                 "val_recall@20") if name in history}},
        "num_test_examples": result.num_examples, "num_items": result.num_items,
        "parameters": int(sum(np.prod(v.shape) for v in model.trainable_variables)), "epochs_run": epochs_run,
        "best_epoch": int(np.argmax(validation)) + 1 if validation else None,
        "validation_curve": [float(v) for v in validation],
        "train_seconds": round(train_seconds, 1), "eval_seconds": round(eval_seconds, 1),
        "ms_per_user_batch_1": round(latency_ms_per_user(model, data["test"], 1), 3),
        "ms_per_user_batch_256": round(latency_ms_per_user(model, data["test"], 256), 4),
        "reverse_step_cosine": reverse_step_cosine(model, data["test"], seed=seed),
        "sampler_comparison": sampler_comparison(model, data["test"], seed=seed),
        # Per-user test ranks, for paired comparisons between runs (benchmarks/compare.py).
        "test_ranks": result.ranks.astype(int).tolist(),
        "test_ranks_seen_excluded": excluded.ranks.astype(int).tolist(),
        "test_ranks_window_seen_excluded": window_excluded.ranks.astype(int).tolist(),
        "test_users": None if result.groups is None else [
            u.decode() if isinstance(u, bytes) else str(u) for u in result.groups],
    }


def training_seconds(result: dict) -> float:
    """A run's training wall seconds over every epoch, validation passes excluded.

    ``time_to_quality`` counts the epochs of killed processes too (``fit``'s history), so a run
    resumed from its checkpoint reports its whole training; ``train_seconds`` is the wall time
    of ``fit`` in the process that wrote the record (validation included, earlier processes'
    epochs not). Records written before the clock existed have only the latter.
    """
    curve = (result.get("time_to_quality") or {}).get("train_seconds") or []
    return float(curve[-1]) if curve else float(result["train_seconds"])


def markdown(results: List[dict], protocol: str) -> str:
    lines = [f"### ML-1M, {protocol}, full-corpus ranking, test split",
             "", "Seen items included, then (last two columns) seen items excluded.", "",
             "| model | Recall@2 | Recall@10 | Recall@20 | MRR@2 | MRR@20 | NDCG@10 | "
             "params | training s | epochs (best) | ms/user @256 | Recall@10 excl. | "
             "NDCG@10 excl. |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    by_label: Dict[str, List[dict]] = {}
    for r in results:
        by_label.setdefault(r["label"], []).append(r)
    for label, runs in by_label.items():
        def cell(name, key="metrics"):
            if any(key not in r for r in runs):
                return "—"
            values = [r[key][name] for r in runs]
            if len(runs) == 1:
                low, high = runs[0][key.replace("metrics", "intervals")][name]
                return f"{values[0]:.4f} [{low:.4f}, {high:.4f}]"
            return f"{np.mean(values):.4f} ± {np.std(values):.4f} (n={len(runs)})"
        first = runs[0]
        lines.append(
            f"| {label} | {cell('recall@2')} | {cell('recall@10')} | {cell('recall@20')} | "
            f"{cell('mrr@2')} | {cell('mrr@20')} | {cell('ndcg@10')} | {first['parameters']:,} | "
            f"{np.mean([training_seconds(r) for r in runs]):.0f} | {first['epochs_run']} "
            f"({first['best_epoch']}) | {np.mean([r['ms_per_user_batch_256'] for r in runs]):.3f} | "
            f"{cell('recall@10', 'metrics_seen_excluded')} | "
            f"{cell('ndcg@10', 'metrics_seen_excluded')} |")
    compared = [r for r in results if r.get("sampler_comparison")]
    if compared:
        lines += ["", "Samplers on the same trained weights (test split, no intervals):", "",
                  "| model | seed | sampler | Recall@20 | MRR@20 | ms/user @256 |",
                  "|---|---|---|---|---|---|"]
        for r in compared:
            for sampler, values in r["sampler_comparison"].items():
                lines.append(f"| {r['label']} | {r['seed']} | {sampler} | "
                             f"{values['recall@20']:.4f} | {values['mrr@20']:.4f} | "
                             f"{values['ms_per_user_batch_256']:.3f} |")
    return "\n".join(lines)


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--data-dir", default="../shared/data/ml-1m")
    parser.add_argument("--work-dir", default="outputs/benchmarks")
    parser.add_argument("--protocol", nargs="+", default=[LEAVE_ONE_OUT, USER_HOLDOUT],
                        choices=PROTOCOLS)
    parser.add_argument("--preset", default="table2", choices=sorted(PRESETS))
    parser.add_argument("--only", nargs="*", default=None, help="labels of the preset to run")
    parser.add_argument("--runs", default=None, help="JSON file with a list of run specs "
                        "({label, model, config, train}) instead of a preset; train overrides "
                        "TrainConfig fields for that run")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--patience", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--learning-rate", type=float, default=1e-3)
    parser.add_argument("--lr-schedule", default="constant", choices=KINDS,
                        help="cosine/linear decay after --warmup-epochs (learning_rate.py)")
    parser.add_argument("--warmup-epochs", type=int, default=0)
    parser.add_argument("--final-lr-fraction", type=float, default=0.0)
    parser.add_argument("--history-length", type=int, default=50)
    parser.add_argument("--max-train-windows-per-user", type=int, default=10)
    parser.add_argument("--min-item-interactions", type=int, default=0,
                        help="k-core: drop items with fewer interactions, and users who fall "
                             "below 5, to a fixed point (5: the 5-core of BERT4Rec's ML-1M, "
                             "3,416 items)")
    parser.add_argument("--max-user-interactions", type=int, default=None,
                        help="keep each user's latest N items (200: the paper's statistics)")
    parser.add_argument("--layout", default="windows", choices=["windows", "sequences"],
                        help="training data: one window per target, or sequence chunks of "
                             "--history-length inputs (every training interaction a label once)")
    parser.add_argument("--sequence-length", type=int, default=None,
                        help="sequences: inputs per chunk (default --history-length); "
                             "--history-length stays the window of per-target models")
    parser.add_argument("--max-chunks-per-user", type=int, default=None,
                        help="sequences: keep each user's latest chunks (1: SASRec's layout)")
    parser.add_argument("--selection-metric", default="recall@20",
                        help="validation metric that selects the epoch")
    parser.add_argument("--select-seen-excluded", action="store_true",
                        help="rank validation targets without the user's seen items")
    parser.add_argument("--time-budget-seconds", type=float, default=None,
                        help="stop after the epoch in which training wall time reaches this; "
                             "the best validation epoch so far is tested (time to quality)")
    parser.add_argument("--length-buckets", type=int, default=TrainConfig.length_buckets,
                        help="sequences: batch chunks within this many length ranges (1: mix "
                             "every length; runs recorded before 2026-12-04 used 8)")
    parser.add_argument("--positions-per-batch", type=int, default=None,
                        help="sequences: size each length bucket's batches to about this many "
                             "positions instead of --batch-size chunks (token batching)")
    parser.add_argument("--no-item-features", action="store_true",
                        help="item ids only (no genres), as SASRec's reference code")
    parser.add_argument("--checkpoint-dir", default=None,
                        help="checkpoint every epoch under this folder; rerunning the same "
                             "command resumes each run where it stopped")
    parser.add_argument("--output", default="benchmarks/results/ml1m")
    parser.add_argument("--verbose", type=int, default=2, choices=[0, 1, 2],
                        help="Keras output: 2 prints a line per epoch (losses, val_recall@20)")
    args = parser.parse_args(argv)

    specs = json.load(open(args.runs)) if args.runs else PRESETS[args.preset]
    if args.only:
        specs = [s for s in specs if s["label"] in args.only]
    train_config = TrainConfig(epochs=args.epochs, batch_size=args.batch_size,
                               learning_rate=args.learning_rate,
                               learning_rate_schedule=LearningRateSchedule(
                                   args.lr_schedule, args.warmup_epochs, args.final_lr_fraction),
                               early_stopping_patience=args.patience, verbose=args.verbose,
                               selection_metric=args.selection_metric,
                               exclude_seen=args.select_seen_excluded,
                               time_budget_seconds=args.time_budget_seconds,
                               length_buckets=args.length_buckets,
                               positions_per_batch=args.positions_per_batch)
    example_spec = ExampleSpec(history_length=args.history_length)
    sequences = (F.SequenceSpec(args.sequence_length or args.history_length,
                                args.max_chunks_per_user)
                 if args.layout == "sequences" else None)
    report = {"command": "python " + " ".join(sys.argv), "machine":
              f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, "
              f"TF {tf.__version__}", "train": dataclasses.asdict(train_config),
              "history_length": args.history_length,
              "max_train_windows_per_user": args.max_train_windows_per_user,
              "max_user_interactions": args.max_user_interactions, "layout": args.layout,
              "min_item_interactions": args.min_item_interactions,
              "sequence_length": sequences.history_length if sequences else None,
              "max_chunks_per_user": args.max_chunks_per_user,
              "item_features": not args.no_item_features,
              # oneDNN is chosen when TensorFlow starts (TF_ENABLE_ONEDNN_OPTS; on by default on
              # this AVX-512 CPU): turning it off makes SASRec's training about 3.5x slower
              # (benchmarks/sequence_training_speed.py).
              "onednn": onednn_enabled(),
              "protocols": {}}
    os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
    tables = []
    for protocol in args.protocol:
        # The sequence layout trains on chunks; its window split keeps one window per user.
        root = preprocess(args.data_dir, protocol, args.work_dir, args.history_length,
                          1 if sequences else args.max_train_windows_per_user, args.seeds[0],
                          args.max_user_interactions, sequences, args.min_item_interactions)
        splits = ["validation", "test"] if sequences else ["train", "validation", "test"]
        if not protocol_settings(protocol, None, args.seeds[0]).has_validation:
            splits.remove("validation")
        data = {split: load_split(root, split, example_spec) for split in splits}
        if sequences is not None:
            data[TRAIN_SEQUENCES] = load_sequences(root, sequences)
        attach_seen_items(args.data_dir, root, data, protocol, args.max_user_interactions)
        results = []
        for spec in specs:
            for seed in args.seeds:
                r = run_one(spec, seed, root, data, train_config, example_spec,
                            os.path.join(args.checkpoint_dir, protocol)
                            if args.checkpoint_dir else None,
                            use_item_features=not args.no_item_features,
                            window=WindowConfig(example_spec))
                results.append(r)
                print(f"[{protocol}] {r['label']} seed {seed}: recall@20 "
                      f"{r['metrics']['recall@20']:.4f} mrr@20 {r['metrics']['mrr@20']:.4f} "
                      f"recall@10 {r['metrics']['recall@10']:.4f} ndcg@10 "
                      f"{r['metrics']['ndcg@10']:.4f}; seen excluded: recall@10 "
                      f"{r['metrics_seen_excluded']['recall@10']:.4f} ndcg@10 "
                      f"{r['metrics_seen_excluded']['ndcg@10']:.4f} ({training_seconds(r):.1f} s "
                      f"training, "
                      f"{r['epochs_run']} epochs, best {r['best_epoch']})", flush=True)
                report["protocols"][protocol] = {"data": root, "results": results}
                with open(args.output + ".json", "w") as f:
                    json.dump(report, f, indent=2)
        tables.append(markdown(results, protocol))
    text = "\n\n".join(tables)
    with open(args.output + ".md", "w") as f:
        f.write(f"Command: `{report['command']}`  \nMachine: {report['machine']}\n\n{text}\n")
    print(text)


if __name__ == "__main__":
    main()
