"""ScaNN approximate top-K indices: configuration, the TFRS layer, and the standalone searcher.

Two artefacts come from one :class:`ScannConfig`:

* a ``tfrs.layers.factorized_top_k.ScaNN`` layer (:class:`ScannIndexLayer`) that a SavedModel
  carries; it runs ScaNN's TensorFlow custom ops, so it must be saved with
  ``tf.saved_model.SaveOptions(namespace_whitelist=["Scann"])``, loaded in a process that has run
  ``import scann`` (which registers the ops), and served by a TF Serving build with the ScaNN ops
  (e.g. the ``google/tf-serving-scann`` image) -- stock ``tensorflow_model_server`` cannot load it;
* a ``scann_ops_pybind`` searcher serialized to a directory (``searcher.serialize(dir)``) for
  Python services, reloaded with ``scann_ops_pybind.load_searcher(dir)``
  (:func:`load_pybind_index`).

Index kinds (:attr:`ResolvedScannConfig.mode`):

* ``"tree_ah"`` -- a k-means tree of ``num_leaves`` partitions, ``num_leaves_to_search`` of them
  scored per query with anisotropic (score-aware) asymmetric hashing of ``dimensions_per_block``
  dimensions per 4-bit code, then the best ``reorder_k`` rescored exactly.
* ``"brute_force"`` -- ScaNN's exact float32 scoring of every item. Chosen automatically when the
  corpus has fewer than ``brute_force_below`` items: a tree needs ``num_leaves`` well below the
  corpus size (each leaf must hold enough points for k-means and for the hashing codebooks, 16
  centres per block), and for a few thousand items exact scoring is both correct and cheap.

Automatic defaults for a corpus of ``N`` items and ``k`` results (fields left ``None``):
``num_leaves = clip(round(2 sqrt(N)), 2, N // 32)`` (so leaves average >= 32 items),
``num_leaves_to_search = ceil(leaves_to_search_fraction * num_leaves)``,
``reorder_k = min(N, max(4 k, 100))``, ``training_sample_size = min(N, 100_000)``.
On the 100K-item clustered benchmark (``benchmarks/scann_index.py``: 1,000 clusters, d = 64)
they give recall@100 0.993 (632 leaves, 64 searched, reorder 400). Recall depends on the
embeddings, not only on ``N``: on 20K items of the same 1,000 clusters, where the top 100 spread
over many small clusters, the same rule gives about 0.75 (0.87 searching 20 % of the leaves).
So :func:`~t2diff_tf.serving.export.export_for_serving` measures recall@k against exact search on
probe queries and records it in the manifest (``index.scann.recall_at_k_estimate``); raise
``num_leaves_to_search`` (or ``leaves_to_search_fraction``) when it is low.

Scores are inner products (``distance_measure="dot_product"``), as in the towers' softmax; rows of
the candidate matrix map to ids through ``identifiers`` (items ``1..N``: row ``i`` is item ``i+1``).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import uuid
from typing import Any, Dict, Optional, Tuple

import numpy as np
import tensorflow as tf
import tensorflow_recommenders as tfrs

TREE_AH = "tree_ah"
BRUTE_FORCE = "brute_force"
MODES = (TREE_AH, BRUTE_FORCE)

DISTANCE = "dot_product"
IDENTIFIERS_FILE = "item_ids.npy"
INDEX_CONFIG_FILE = "t2diff_index.json"
_MIN_POINTS_PER_LEAF = 32


@dataclasses.dataclass(frozen=True)
class ScannConfig:
    """What ScaNN index to build; ``None`` fields take automatic values (module docstring).

    Attributes:
      num_leaves: partitions of the k-means tree.
      num_leaves_to_search: partitions scored per query (recall/speed knob; can be overridden per
        query by the pybind searcher's ``leaves_to_search``).
      dimensions_per_block: dimensions per asymmetric-hashing code (2 = ScaNN's usual choice;
        higher compresses more, faster but less accurate).
      anisotropic_quantization_threshold: the score-aware quantization threshold ``T`` (ScaNN
        recommends 0.2 for inner products); ``None`` = plain (isotropic) quantization.
      reorder_k: candidates rescored exactly after hashing (>= ``k``); 0 disables reordering.
      training_sample_size: items sampled to train the tree and the codebooks.
      training_iterations: k-means iterations of the tree.
      brute_force_below: corpora smaller than this get the exact ``"brute_force"`` index unless
        ``num_leaves`` is given explicitly.
      leaves_to_search_fraction: automatic ``num_leaves_to_search`` as a fraction of the leaves.
      parallelize_batch_searches: batched queries search on several threads (TFRS layer).
    """

    num_leaves: Optional[int] = None
    num_leaves_to_search: Optional[int] = None
    dimensions_per_block: int = 2
    anisotropic_quantization_threshold: Optional[float] = 0.2
    reorder_k: Optional[int] = None
    training_sample_size: Optional[int] = None
    training_iterations: int = 12
    brute_force_below: int = 4096
    leaves_to_search_fraction: float = 0.1
    parallelize_batch_searches: bool = True

    def __post_init__(self):
        for name in ("num_leaves", "num_leaves_to_search", "training_sample_size"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        if self.num_leaves is not None and self.num_leaves < 2:
            raise ValueError(f"num_leaves must be >= 2 (a tree), got {self.num_leaves}")
        if (self.num_leaves is not None and self.num_leaves_to_search is not None
                and self.num_leaves_to_search > self.num_leaves):
            raise ValueError("num_leaves_to_search must be <= num_leaves")
        if self.dimensions_per_block < 1:
            raise ValueError(f"dimensions_per_block must be >= 1, got {self.dimensions_per_block}")
        if self.reorder_k is not None and self.reorder_k < 0:
            raise ValueError(f"reorder_k must be >= 0, got {self.reorder_k}")
        if self.training_iterations < 1:
            raise ValueError("training_iterations must be >= 1")
        if self.brute_force_below < 0:
            raise ValueError("brute_force_below must be >= 0")
        if not 0.0 < self.leaves_to_search_fraction <= 1.0:
            raise ValueError("leaves_to_search_fraction must be in (0, 1]")

    def resolve(self, corpus_size: int, k: int) -> "ResolvedScannConfig":
        """Concrete parameters for ``corpus_size`` items and ``k`` results (``k`` capped at N).

        Raises:
          ValueError: an explicit ``num_leaves`` that is not well below the corpus size
            (more than ``corpus_size // 2``).
        """
        n = int(corpus_size)
        if n < 1:
            raise ValueError(f"corpus_size must be >= 1, got {corpus_size}")
        k = max(1, min(int(k), n))
        if self.num_leaves is None and n < self.brute_force_below:
            return ResolvedScannConfig(mode=BRUTE_FORCE, corpus_size=n, k=k)
        if self.num_leaves is not None:
            leaves = self.num_leaves
            if leaves > n // 2:
                raise ValueError(f"num_leaves={leaves} is too many for {n} items; a tree needs "
                                 f"num_leaves <= corpus_size // 2 (ideally ~sqrt(N))")
        else:
            leaves = int(np.clip(round(2 * math.sqrt(n)), 2, max(2, n // _MIN_POINTS_PER_LEAF)))
        to_search = self.num_leaves_to_search or max(
            1, math.ceil(self.leaves_to_search_fraction * leaves))
        to_search = min(to_search, leaves)
        reorder = self.reorder_k if self.reorder_k is not None else max(4 * k, 100)
        if reorder:
            reorder = max(min(reorder, n), k)
        sample = min(self.training_sample_size or 100_000, n)
        return ResolvedScannConfig(
            mode=TREE_AH, corpus_size=n, k=k, num_leaves=leaves,
            num_leaves_to_search=to_search, dimensions_per_block=self.dimensions_per_block,
            anisotropic_quantization_threshold=self.anisotropic_quantization_threshold,
            reorder_k=reorder, training_sample_size=sample,
            training_iterations=self.training_iterations,
            min_partition_size=max(1, min(50, n // (2 * leaves))),
            parallelize_batch_searches=self.parallelize_batch_searches)


@dataclasses.dataclass(frozen=True)
class ResolvedScannConfig:
    """The concrete index :meth:`ScannConfig.resolve` chose (fields unused by a mode are None)."""

    mode: str
    corpus_size: int
    k: int
    num_leaves: Optional[int] = None
    num_leaves_to_search: Optional[int] = None
    dimensions_per_block: Optional[int] = None
    anisotropic_quantization_threshold: Optional[float] = None
    reorder_k: Optional[int] = None
    training_sample_size: Optional[int] = None
    training_iterations: Optional[int] = None
    min_partition_size: Optional[int] = None
    parallelize_batch_searches: bool = True

    def __post_init__(self):
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {self.mode!r}")

    def widened(self) -> Optional["ResolvedScannConfig"]:
        """The same tree searching twice the leaves and rescoring twice the candidates (capped
        at all of them), or ``None`` when it already searches everything it can."""
        if self.mode != TREE_AH:
            return None
        leaves = min(2 * self.num_leaves_to_search, self.num_leaves)
        reorder = min(2 * self.reorder_k, self.corpus_size) if self.reorder_k else self.reorder_k
        if leaves == self.num_leaves_to_search and reorder == self.reorder_k:
            return None
        return dataclasses.replace(self, num_leaves_to_search=leaves, reorder_k=reorder)

    @property
    def is_exact(self) -> bool:
        return self.mode == BRUTE_FORCE

    def to_dict(self) -> Dict[str, Any]:
        values = dataclasses.asdict(self)
        values["distance_measure"] = DISTANCE
        return values

    def scann_config_text(self, dimension: int) -> str:
        """The ScaNN ``ScannConfig`` text proto of this index for ``dimension``-d vectors."""
        from scann.scann_ops.py import scann_builder  # noqa: PLC0415 (optional, heavy)

        builder = scann_builder.ScannBuilder(np.zeros([1, int(dimension)], np.float32),
                                             self.k, DISTANCE)
        if self.mode == BRUTE_FORCE:
            return builder.score_brute_force().create_config()
        threshold = self.anisotropic_quantization_threshold
        builder = builder.tree(
            num_leaves=self.num_leaves, num_leaves_to_search=self.num_leaves_to_search,
            training_sample_size=self.training_sample_size,
            min_partition_size=self.min_partition_size,
            training_iterations=self.training_iterations)
        builder = builder.score_ah(
            self.dimensions_per_block,
            anisotropic_quantization_threshold=float("nan") if threshold is None else threshold,
            training_sample_size=self.training_sample_size)
        if self.reorder_k:
            builder = builder.reorder(self.reorder_k)
        return builder.create_config()


def _candidates_array(candidates: Any) -> np.ndarray:
    array = np.ascontiguousarray(np.asarray(candidates, dtype=np.float32))
    if array.ndim != 2:
        raise ValueError(f"candidates must be [N, d], got shape {array.shape}")
    return array


class ScannIndexLayer(tfrs.layers.factorized_top_k.ScaNN):
    """``tfrs.layers.factorized_top_k.ScaNN`` built from a :class:`ResolvedScannConfig`.

    The stock layer exposes the tree and hashing sizes but not the anisotropic threshold, the
    training sample size or exact brute-force scoring; this subclass keeps TFRS's indexing,
    saving and ``call(queries, k) -> (scores, ids)`` and only replaces how the searcher is built
    (the layer's ``_build_searcher`` hook) with the config's full ScaNN text proto.

    Args:
      config: the resolved index.
      name: layer name.
    """

    def __init__(self, config: ResolvedScannConfig, name: Optional[str] = None):
        super().__init__(
            k=config.k, distance_measure=DISTANCE, num_leaves=config.num_leaves or 2,
            num_leaves_to_search=config.num_leaves_to_search or 1,
            training_iterations=config.training_iterations or 12,
            dimensions_per_block=config.dimensions_per_block or 2,
            num_reordering_candidates=config.reorder_k or None,
            parallelize_batch_searches=config.parallelize_batch_searches, name=name)
        self.resolved_config = config
        from scann.scann_ops.py import scann_ops  # noqa: PLC0415 (registers the ops)

        def build_searcher(candidates):
            text = config.scann_config_text(int(candidates.shape[-1]))
            return scann_ops.create_searcher(candidates, text,
                                             shared_name=f"{self.name}/{uuid.uuid4()}")

        self._build_searcher = build_searcher


def build_scann_layer(candidates: Any, identifiers: Any, config: ResolvedScannConfig,
                      name: str = "scann") -> ScannIndexLayer:
    """Builds and indexes a :class:`ScannIndexLayer` over ``candidates`` ``[N, d]``.

    ``identifiers`` ``[N]`` int64 are returned in place of rows. The layer is called once so
    that Keras has traced it before a SavedModel is written.
    """
    array = _candidates_array(candidates)
    layer = ScannIndexLayer(config, name=name)
    layer.index(tf.constant(array), tf.constant(np.asarray(identifiers, dtype=np.int64)))
    layer(tf.constant(array[:1]))
    return layer


class PybindIndex:
    """A ``scann_ops_pybind`` searcher plus the ids of its rows.

    Args:
      searcher: a ``scann_ops_pybind.ScannSearcher``.
      identifiers: ``[N]`` int64 id of each database row.
    """

    def __init__(self, searcher: Any, identifiers: np.ndarray):
        self.searcher = searcher
        self.identifiers = np.asarray(identifiers, dtype=np.int64)

    def search(self, queries: np.ndarray, k: Optional[int] = None, parallel: bool = False,
               leaves_to_search: Optional[int] = None) -> Tuple[np.ndarray, np.ndarray]:
        """``queries`` ``[b, d]`` -> ``(scores [b, k] float32, ids [b, k] int64)``, best first."""
        queries = _candidates_array(queries)
        search = self.searcher.search_batched_parallel if parallel else \
            self.searcher.search_batched
        rows, scores = search(queries, final_num_neighbors=k, leaves_to_search=leaves_to_search)
        return np.asarray(scores, np.float32), self.identifiers[np.asarray(rows, np.int64)]

    def serialize(self, directory: str, config: Optional[ResolvedScannConfig] = None) -> str:
        """Writes the searcher (relative asset paths, so the directory can move), the row ids
        (``item_ids.npy``) and, if given, the resolved config (``t2diff_index.json``)."""
        os.makedirs(directory, exist_ok=True)
        self.searcher.serialize(directory, relative_path=True)
        np.save(os.path.join(directory, IDENTIFIERS_FILE), self.identifiers)
        if config is not None:
            with open(os.path.join(directory, INDEX_CONFIG_FILE), "w") as f:
                json.dump(config.to_dict(), f, indent=2, sort_keys=True)
        return directory


def recall_at_k(index: PybindIndex, queries: np.ndarray, candidates: np.ndarray,
                identifiers: np.ndarray, k: int) -> float:
    """Mean recall@k of ``index`` against exact inner-product search for ``queries`` ``[b, d]``."""
    from t2diff_tf.serving.brute_force import numpy_top_k  # noqa: PLC0415

    _, rows = numpy_top_k(queries, candidates, k)
    exact = np.asarray(identifiers, np.int64)[rows]
    _, found = index.search(queries, k=exact.shape[1])
    return float(np.mean([len(set(f) & set(e)) / len(e) for f, e in zip(found, exact)]))


def build_pybind_index(candidates: Any, identifiers: Any, config: ResolvedScannConfig,
                       training_threads: int = 0) -> PybindIndex:
    """Builds a ``scann_ops_pybind`` searcher over ``candidates`` ``[N, d]`` (0 threads = all)."""
    from scann.scann_ops.py import scann_ops_pybind  # noqa: PLC0415 (optional, heavy)

    array = _candidates_array(candidates)
    searcher = scann_ops_pybind.create_searcher(
        array, config.scann_config_text(array.shape[1]), training_threads)
    return PybindIndex(searcher, np.asarray(identifiers, dtype=np.int64))


def load_pybind_index(directory: str) -> PybindIndex:
    """Reloads what :meth:`PybindIndex.serialize` wrote (``scann_ops_pybind.load_searcher``)."""
    from scann.scann_ops.py import scann_ops_pybind  # noqa: PLC0415 (optional, heavy)

    searcher = scann_ops_pybind.load_searcher(directory)
    identifiers = np.load(os.path.join(directory, IDENTIFIERS_FILE))
    return PybindIndex(searcher, identifiers)
