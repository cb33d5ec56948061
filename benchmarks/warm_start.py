"""Continuous training on ML-1M: warm start on the second half of the log, against training from
scratch on both halves.

The ratings are cut at the median timestamp into two halves (the log as it stood "yesterday"
and the new logs since). Three models of the same registry config are trained:

* ``base``: from scratch on the first half (what serves before the new logs arrive);
* ``warm``: the second half only, warm-started from ``base`` (``t2diff_tf.warm_start``: its item
  rows mapped through the raw ids, new items with fresh rows): the continuous-training path;
* ``scratch_both``: from scratch on both halves (the full retrain it replaces);
* ``scratch_second``: from scratch on the second half only (what warm start adds to it).

All are ranked on the same test examples: the full log's leave-one-out test windows whose target
lies in the second half (each user's last item, with the whole history before it), over the full
log's item corpus (a model that does not know an item never retrieves it; see
``components.evaluator.RemappedRetrievalModel``). Epochs are selected on each model's own
validation split. The JSON holds the metrics with 95% intervals, the paired difference
``warm - scratch_both`` and the training times.

    python benchmarks/warm_start.py --data-dir ../shared/data/ml-1m \\
        --output benchmarks/results/warm_start_ml1m.json

``--max-users N`` keeps the first N users (a quick check); the shared ML-1M directory holds the
ratings of users 1-2999 (``ratings_users_0001-2999.dat.gz``), which is what is read.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import sys
import time
from typing import Dict, List, Optional, Sequence, Tuple

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from components.evaluator import RemappedRetrievalModel  # noqa: E402
from components.preprocessing import inmemory, readers  # noqa: E402
from components.preprocessing.config import ProtocolConfig, WindowConfig  # noqa: E402
from t2diff_tf import features as F  # noqa: E402
from t2diff_tf import metrics as M  # noqa: E402
from t2diff_tf import warm_start as W  # noqa: E402
from t2diff_tf.models.registry import build_model  # noqa: E402
from t2diff_tf.training import TrainConfig, arrays_dataset, fit  # noqa: E402

Row = Tuple[str, str, int]


def ratings_file(data_dir: str) -> str:
    for name in ("ratings.dat", "ratings.dat.gz", "ratings_users_0001-2999.dat.gz"):
        if os.path.exists(os.path.join(data_dir, name)):
            return os.path.join(data_dir, name)
    raise SystemExit(f"{data_dir}: no ratings.dat(.gz) or ratings_users_0001-2999.dat.gz")


def read_ratings(path: str, max_users: Optional[int]) -> List[Row]:
    """``UserID::MovieID::Rating::Timestamp`` -> rows in time order per user (ties: file order)."""
    opener = gzip.open if path.endswith(".gz") else open
    rows: List[Tuple[str, str, int, int]] = []
    users = set()
    with opener(path, "rt", encoding="latin-1") as f:
        for line_no, line in enumerate(f, start=1):
            fields = line.rstrip("\n").split("::")
            if len(fields) != 4:
                raise SystemExit(f"{path}:{line_no}: expected 4 '::' fields, got {line!r}")
            user = fields[0]
            if max_users and user not in users and len(users) >= max_users:
                continue
            users.add(user)
            rows.append((user, fields[1], int(fields[3]), line_no))
    rows.sort(key=lambda r: (r[0], r[2], r[3]))
    return [(u, i, t) for u, i, t, _ in rows]


def build(name: str, config: dict, data: inmemory.InMemoryData, spec: F.ExampleSpec):
    return build_model(name, config, num_items=data.num_items,
                       item_features=data.item_features.matrix,
                       item_frequencies=data.vocabulary.frequencies(), example_spec=spec)


def train(name: str, config: dict, data: inmemory.InMemoryData, spec: F.ExampleSpec,
          train_config: TrainConfig, base=None, base_data=None):
    """Trains on ``data`` (warm-started from ``base`` when given); returns the model, the
    training seconds (validation excluded, warm-start transfer included) and the history."""
    transfer = {"seconds": 0.0}

    def make():
        model = build(name, config, data, spec)
        if base is not None:
            started = time.perf_counter()
            W.create_variables(model, spec)
            probe = build_model(name, config, num_items=data.num_items + 1,
                                item_features=np.concatenate(
                                    [data.item_features.matrix,
                                     np.zeros((1, data.item_features.matrix.shape[1]),
                                              np.float32)]),
                                item_frequencies=np.append(data.vocabulary.frequencies(), 0.0),
                                example_spec=spec)
            W.create_variables(probe, spec)
            mapping = W.ItemIdMapping.from_raw_ids(base_data.vocabulary.raw_ids,
                                                   data.vocabulary.raw_ids)
            report = W.transfer_weights(base, model, probe, mapping)
            transfer.update(seconds=time.perf_counter() - started, report=report.as_dict())
            print(f"  warm start: {report.summary()}", flush=True)
        return model

    splits = data.splits
    model, history = fit(make, arrays_dataset(splits["train"], train_config.batch_size,
                                              train_config.shuffle_buffer, train_config.seed),
                         arrays_dataset(splits["validation"], 512), train_config)
    seconds = float(history["train_seconds"][-1]) + transfer["seconds"]
    return model, seconds, history, transfer


def evaluate_on(model, model_data: inmemory.InMemoryData, test: Dict[str, np.ndarray],
                full: inmemory.InMemoryData, spec: F.ExampleSpec, ks: Sequence[int]
                ) -> M.EvaluationResult:
    """Ranks the test windows (full log's ids) over the full log's corpus."""
    if model_data.vocabulary.raw_ids != full.vocabulary.raw_ids:
        mapping = W.ItemIdMapping.from_raw_ids(model_data.vocabulary.raw_ids,
                                               full.vocabulary.raw_ids)
        model = RemappedRetrievalModel(model, mapping, spec, spec)
    return M.evaluate(model, test, ks=ks, num_bootstrap=1000)


def main(argv: Optional[Sequence[str]] = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", default="../shared/data/ml-1m")
    parser.add_argument("--max-users", type=int, default=None, help="first N users only")
    parser.add_argument("--model", default="mean_pool_two_tower")
    parser.add_argument("--model-config", default="{}")
    parser.add_argument("--history-length", type=int, default=50)
    parser.add_argument("--max-train-windows-per-user", type=int, default=20)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--patience", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--learning-rate", type=float, default=1e-3)
    parser.add_argument("--output", default="benchmarks/results/warm_start_ml1m.json")
    args = parser.parse_args(argv)
    started = time.time()
    model_config = json.loads(args.model_config)
    ks = (10, 20)

    path = ratings_file(args.data_dir)
    rows = read_ratings(path, args.max_users)
    split_time = int(np.median([t for _, _, t in rows]))
    genres = readers.read_movielens_genres(os.path.join(args.data_dir, "movies.dat"))
    spec = F.ExampleSpec(history_length=args.history_length)
    window = WindowConfig(spec)
    protocol = ProtocolConfig(max_train_windows_per_user=args.max_train_windows_per_user)
    data = {
        "first": inmemory.from_interactions([r for r in rows if r[2] < split_time], genres,
                                            window, protocol),
        "second": inmemory.from_interactions([r for r in rows if r[2] >= split_time], genres,
                                             window, protocol),
        "both": inmemory.from_interactions(rows, genres, window, protocol),
    }
    full_test = data["both"].splits["test"]
    keep = full_test[F.TARGET_TIMESTAMP] >= split_time
    test = {name: values[keep] for name, values in full_test.items()}
    sizes = {name: {"items": d.num_items, **{s: int(len(a[F.TARGET])) for s, a in d.splits.items()}}
             for name, d in data.items()}
    print(f"{path}: {len(rows):,} ratings, split at {split_time} (median timestamp); "
          f"{len(test[F.TARGET]):,} test users with their last item in the second half; "
          f"sizes {json.dumps(sizes)}", flush=True)

    train_config = TrainConfig(epochs=args.epochs, batch_size=args.batch_size,
                               learning_rate=args.learning_rate,
                               early_stopping_patience=args.patience, verbose=0)
    runs = {}
    models = {}
    for label, data_name, base_label in (("base", "first", None),
                                         ("warm", "second", "base"),
                                         ("scratch_both", "both", None),
                                         ("scratch_second", "second", None)):
        print(f"training {label} on the {data_name} half"
              + (f" from {base_label}" if base_label else "") + " ...", flush=True)
        base = models.get(base_label)
        model, seconds, history, transfer = train(
            args.model, model_config, data[data_name], spec, train_config,
            base=base, base_data=data["first"] if base is not None else None)
        models[label] = model
        result = evaluate_on(model, data[data_name], test, data["both"], spec, ks)
        best = int(np.argmax(history[f"val_{train_config.selection_metric}"])) + 1
        runs[label] = {"data": data_name, "warm_start_from": base_label,
                       "train_seconds": round(seconds, 1), "epochs_run": len(history["loss"]),
                       "best_epoch": best, "train_examples": sizes[data_name]["train"],
                       "metrics": result.metrics,
                       "intervals": {k: list(v) for k, v in result.intervals.items()},
                       "warm_start": transfer.get("report")}
        runs[label]["_result"] = result
        print(f"  {label}: {seconds:.0f} s training, {len(history['loss'])} epochs (best "
              f"{best}); test recall@20 {result.metrics['recall@20']:.4f} "
              f"{tuple(round(x, 4) for x in result.intervals['recall@20'])}, ndcg@10 "
              f"{result.metrics['ndcg@10']:.4f}", flush=True)

    paired = {}
    for other in ("scratch_both", "scratch_second"):
        a, b = runs["warm"]["_result"], runs[other]["_result"]
        paired[f"warm - {other}"] = {}
        for metric in ("recall@20", "ndcg@10", "recall@10"):
            k = int(metric.partition("@")[2])
            va = M.ranking_metrics(a.ranks, (k,))[metric]
            vb = M.ranking_metrics(b.ranks, (k,))[metric]
            paired[f"warm - {other}"][metric] = list(M.paired_difference(va, vb, a.groups))
    for run in runs.values():
        run.pop("_result")
    out = {"command": " ".join(["python", "benchmarks/warm_start.py"] + list(sys.argv[1:]
                                                                            if argv is None
                                                                            else argv)),
           "ratings": path, "ratings_read": len(rows), "split_time": split_time,
           "test_users": int(len(test[F.TARGET])), "sizes": sizes, "model": args.model,
           "model_config": model_config, "train": vars(args), "runs": runs, "paired": paired,
           "wall_seconds": round(time.time() - started, 1),
           "machine": "2 cores shared with other jobs (timings are of a loaded machine)"}
    os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
    with open(args.output, "w") as f:
        json.dump(out, f, indent=2)
    print(json.dumps({"runs": {k: {"train_seconds": v["train_seconds"],
                                   "recall@20": round(v["metrics"]["recall@20"], 4),
                                   "ndcg@10": round(v["metrics"]["ndcg@10"], 4)}
                               for k, v in runs.items()}, "paired": paired}, indent=2))
    print(f"wrote {args.output}")
    return out


if __name__ == "__main__":
    main()
