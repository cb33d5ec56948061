"""ScaNN vs exact brute force on a synthetic clustered corpus: recall@k, queries/s, build time.

    python benchmarks/scann_index.py            # 100K items, d = 64, k = 100, batch 256

Compares, on the same query embeddings (the user tower is not timed):

* numpy brute force -- ``queries @ items^T`` + ``argpartition`` + sort of the top k (the exact
  reference every recall is measured against);
* TF brute force -- the exported top-K SavedModel's index (``BruteForceIndex``: matmul +
  ``tf.math.top_k``), saved, reloaded and called through its ``top_k_from_embedding`` signature;
* ScaNN, TF ops -- the TFRS ScaNN layer (``ScannIndexLayer``) in a SavedModel, reloaded and called
  the same way;
* ScaNN, pybind -- the ``scann_ops_pybind`` searcher (``search_batched``, one thread, and
  ``search_batched_parallel``).

The ScaNN index is ``ScannConfig()`` resolved for the corpus (automatic defaults) unless
overridden. Writes ``benchmarks/results/scann_index.json`` and prints a Markdown table; exits 1
if ScaNN's recall@k is below ``--min-recall`` (0.95).
"""

import argparse
import json
import os
import statistics
import sys
import tempfile
import time

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from t2diff_tf.serving import signatures as S  # noqa: E402
from t2diff_tf.serving.brute_force import BruteForceIndex, numpy_top_k  # noqa: E402
from t2diff_tf.serving.export import (  # noqa: E402
    SAVE_OPTIONS, SCANN_SAVE_OPTIONS, library_versions, save_module)
from t2diff_tf.serving.scann_index import (ScannConfig, build_pybind_index,  # noqa: E402
                                           build_scann_layer, load_pybind_index)
from machine import describe  # noqa: E402  (benchmarks/machine.py)


def clustered_corpus(num_items, dim, clusters, num_queries, noise, seed):
    """Items and queries drawn around shared cluster centres (users like what clusters hold)."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(clusters, dim)).astype(np.float32)
    items = centres[rng.integers(0, clusters, num_items)] + noise * rng.normal(
        size=(num_items, dim))
    queries = centres[rng.integers(0, clusters, num_queries)] + noise * rng.normal(
        size=(num_queries, dim))
    scale = np.float32(1.0 / np.sqrt(dim))
    return (items * scale).astype(np.float32), (queries * scale).astype(np.float32)


def batches(queries, batch_size):
    return [queries[i:i + batch_size] for i in range(0, len(queries), batch_size)]


def time_search(search, query_batches, repeats):
    """Median queries/s over ``repeats`` passes (after one warm-up batch); last pass's ids."""
    search(query_batches[0])
    rates, ids = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        ids = [search(batch) for batch in query_batches]
        rates.append(sum(len(b) for b in query_batches) / (time.perf_counter() - start))
    return statistics.median(rates), np.concatenate(ids)


def recall(found, exact):
    k = exact.shape[1]
    return float(np.mean([len(set(f) & set(e)) / k for f, e in zip(found, exact)]))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num-items", type=int, default=100_000)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--k", type=int, default=100)
    parser.add_argument("--clusters", type=int, default=1000)
    parser.add_argument("--noise", type=float, default=0.5)
    parser.add_argument("--num-queries", type=int, default=2048)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--num-leaves", type=int, default=None)
    parser.add_argument("--num-leaves-to-search", type=int, default=None)
    parser.add_argument("--reorder-k", type=int, default=None)
    parser.add_argument("--min-recall", type=float, default=0.95)
    parser.add_argument("--results", default=os.path.join(os.path.dirname(__file__), "results",
                                                          "scann_index.json"))
    args = parser.parse_args(argv)
    load_before = os.getloadavg()

    items, queries = clustered_corpus(args.num_items, args.dim, args.clusters, args.num_queries,
                                      args.noise, args.seed)
    ids = np.arange(1, args.num_items + 1, dtype=np.int64)  # row i is item i + 1
    query_batches = batches(queries, args.batch_size)
    config = ScannConfig(num_leaves=args.num_leaves,
                         num_leaves_to_search=args.num_leaves_to_search,
                         reorder_k=args.reorder_k).resolve(args.num_items, args.k)
    rows = {}

    # Exact reference (numpy brute force).
    qps, exact_rows = time_search(lambda q: numpy_top_k(q, items, args.k)[1], query_batches,
                                  args.repeats)
    exact = exact_rows + 1
    rows["numpy brute force"] = {"qps": qps, "recall": 1.0, "build_seconds": 0.0}

    with tempfile.TemporaryDirectory() as workdir:
        # TF brute force: the top-K SavedModel's index, through a reloaded SavedModel.
        start = time.perf_counter()
        module = S.TopKModule(None, BruteForceIndex(items, ids), args.k, args.dim)
        path = save_module(module, os.path.join(workdir, "top_k"), SAVE_OPTIONS)
        build = time.perf_counter() - start
        signature = tf.saved_model.load(path).signatures[S.TOP_K_FROM_EMBEDDING]
        qps, found = time_search(
            lambda q: signature(user_embedding=tf.constant(q))[S.ITEM_IDS].numpy(),
            query_batches, args.repeats)
        rows["TF brute force (top-K SavedModel)"] = {
            "qps": qps, "recall": recall(found, exact), "build_seconds": build}

        # ScaNN through TF ops: TFRS layer in a SavedModel.
        start = time.perf_counter()
        layer = build_scann_layer(items, ids, config)
        index_seconds = time.perf_counter() - start
        module = S.TopKModule(None, layer, args.k, args.dim)
        path = save_module(module, os.path.join(workdir, "scann"), SCANN_SAVE_OPTIONS)
        build = time.perf_counter() - start
        signature = tf.saved_model.load(path).signatures[S.TOP_K_FROM_EMBEDDING]
        qps, found = time_search(
            lambda q: signature(user_embedding=tf.constant(q))[S.ITEM_IDS].numpy(),
            query_batches, args.repeats)
        rows["ScaNN, TF ops (TFRS layer SavedModel)"] = {
            "qps": qps, "recall": recall(found, exact), "build_seconds": build,
            "index_seconds": index_seconds}

        # ScaNN pybind: build, serialize, reload, search.
        start = time.perf_counter()
        index = build_pybind_index(items, ids, config)
        index_seconds = time.perf_counter() - start
        index.serialize(os.path.join(workdir, "searcher"), config)
        build = time.perf_counter() - start
        index = load_pybind_index(os.path.join(workdir, "searcher"))
        for name, parallel in (("ScaNN, pybind search_batched", False),
                               ("ScaNN, pybind search_batched_parallel", True)):
            qps, found = time_search(lambda q: index.search(q, args.k, parallel=parallel)[1],
                                     query_batches, args.repeats)
            rows[name] = {"qps": qps, "recall": recall(found, exact), "build_seconds": build,
                          "index_seconds": index_seconds}

    scann_recall = min(r["recall"] for n, r in rows.items() if n.startswith("ScaNN"))
    load_after = os.getloadavg()
    result = {
        "command": " ".join(["TF_USE_LEGACY_KERAS=1", ".venv/bin/python",
                             "benchmarks/scann_index.py"] + list(sys.argv[1:] if argv is None
                                                                  else argv)),
        "machine": describe(),
        "load_average_1min": {"before": round(load_before[0], 2),
                              "after": round(load_after[0], 2)},
        "note": ("The 2 cores are shared with other engineers' processes; the 1-minute load "
                 "average before/after is recorded above. Throughputs are medians of "
                 f"{args.repeats} passes and can be several times lower under load than on an "
                 "idle machine; compare rows of one run, not runs. The user tower is not timed."),
        "corpus": {"num_items": args.num_items, "dim": args.dim, "clusters": args.clusters,
                   "noise": args.noise, "num_queries": args.num_queries, "seed": args.seed,
                   "kind": "items and queries = cluster centre + noise, scaled by 1/sqrt(d)"},
        "k": args.k, "batch_size": args.batch_size,
        "scann_config": config.to_dict(),
        "min_recall": args.min_recall, "scann_recall_ok": scann_recall >= args.min_recall,
        "library_versions": library_versions(),
        "rows": [{"method": name, "queries_per_second": round(r["qps"], 1),
                  f"recall_at_{args.k}": round(r["recall"], 4),
                  "build_seconds": round(r["build_seconds"], 2),
                  **({"index_seconds": round(r["index_seconds"], 2)}
                     if "index_seconds" in r else {})}
                 for name, r in rows.items()],
    }
    os.makedirs(os.path.dirname(args.results), exist_ok=True)
    with open(args.results, "w") as f:
        json.dump(result, f, indent=2)
        f.write("\n")

    print(f"{args.num_items:,} clustered items, d = {args.dim}, k = {args.k}, batch "
          f"{args.batch_size}, {args.num_queries} queries; ScaNN: {config.mode}, "
          f"{config.num_leaves} leaves, search {config.num_leaves_to_search}, AH "
          f"{config.dimensions_per_block} dims/block (T = "
          f"{config.anisotropic_quantization_threshold}), reorder {config.reorder_k}")
    print(f"load average (1 min) before/after: {load_before[0]:.2f} / {load_after[0]:.2f} "
          f"on {os.cpu_count()} cores\n")
    print(f"| method | queries/s | recall@{args.k} | build (s) |")
    print("|---|---|---|---|")
    for name, r in rows.items():
        print(f"| {name} | {r['qps']:,.0f} | {r['recall']:.4f} | {r['build_seconds']:.1f} |")
    if scann_recall < args.min_recall:
        print(f"\nScaNN recall@{args.k} {scann_recall:.4f} < {args.min_recall}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
