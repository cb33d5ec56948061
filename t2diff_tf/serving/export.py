"""One call from a trained model to everything TF Serving (and a ScaNN service) reads.

:func:`export_for_serving` writes, all-or-nothing (a temporary sibling directory renamed into
place at the end, :mod:`t2diff_tf.serving.atomic`)::

    <destination>/
      manifest.json                      what was exported, from what (manifest.py)
      models.config                      stock TF Serving: user_tower + top_k
      models_scann.config                a TF Serving build with ScaNN ops: all three models
      user_tower/<version>/              SavedModel: features -> user_embedding [None, d]
        assets.extra/tf_serving_warmup_requests
      top_k/<version>/                   SavedModel: features -> item_ids, scores [None, K]
        assets.extra/tf_serving_warmup_requests      (exact, plain TF ops)
      scann_top_k/<version>/             SavedModel with the TFRS ScaNN layer (ScaNN custom ops)
        assets.extra/tf_serving_warmup_requests
      scann_searcher/                    scann_ops_pybind searcher + item_ids.npy

Signatures are described in :mod:`t2diff_tf.serving.signatures`. Point
``tensorflow_model_server --model_config_file=<destination>/models.config`` at the export; the
config's base paths are absolute paths under the final ``destination``.

Every top-K model returns item ids ``1..N`` (the model's ``corpus_ids()``); the padding id 0 is
never a candidate. Embeddings of the corpus are a snapshot of the item tower taken at export.
"""

from __future__ import annotations

import dataclasses
import datetime
import importlib.metadata
import logging
import os
import shutil
import time
from typing import Any, Dict, Mapping, Optional, Tuple

import numpy as np
import tensorflow as tf

from t2diff_tf import features as F
from t2diff_tf.serving import signatures as S
from t2diff_tf.serving.atomic import atomic_directory, check_destination
from t2diff_tf.serving.brute_force import BruteForceIndex
from t2diff_tf.serving.manifest import (BUNDLED_VOCABULARY, MANIFEST_FILE, ServingManifest,
                                        file_sha256, query_features_description,
                                        write_manifest)
from t2diff_tf.serving.model_server_config import ServedModel, write_model_server_config
from t2diff_tf.serving.scann_index import (ScannConfig, build_pybind_index,
                                           build_scann_layer, recall_at_k)
from t2diff_tf.serving.warmup import (query_warmup_requests, synthetic_query_features,
                                      take_rows, write_warmup_requests)

MODELS_CONFIG = "models.config"
RECALL_PROBE_QUERIES = 64
RECALL_WARNING = 0.9
# How many times a ScaNN index below ``min_scann_recall`` is widened before the export stops.
SCANN_RETUNES = 3


class ScannRecallError(ValueError):
    """The ScaNN index stays below the required recall even after re-tuning."""
SCANN_MODELS_CONFIG = "models_scann.config"
# Serving never differentiates: skipping the custom-gradient traces roughly halves save time.
SAVE_OPTIONS = tf.saved_model.SaveOptions(experimental_custom_gradients=False)
# ScaNN's custom ops live in the "Scann" namespace, which SavedModels refuse unless allowed.
SCANN_SAVE_OPTIONS = tf.saved_model.SaveOptions(namespace_whitelist=["Scann"],
                                                experimental_custom_gradients=False)


@dataclasses.dataclass(frozen=True)
class ServingNames:
    """TF Serving model names (also the directory names under the export).

    Attributes:
      user_tower: the user-tower model.
      top_k: the exact top-K model (plain TF ops).
      scann: the ScaNN top-K model (needs the ScaNN ops).
      scann_searcher: directory of the serialized ``scann_ops_pybind`` searcher.
    """

    user_tower: str = "user_tower"
    top_k: str = "top_k"
    scann: str = "scann_top_k"
    scann_searcher: str = "scann_searcher"

    def __post_init__(self):
        values = dataclasses.astuple(self)
        if len(set(values)) != len(values) or not all(values):
            raise ValueError(f"serving names must be distinct and non-empty, got {values}")
        for value in values:
            if os.sep in value or value.startswith("."):
                raise ValueError(f"serving names are directory names, got {value!r}")


@dataclasses.dataclass(frozen=True)
class ExportResult:
    """Paths written by :func:`export_for_serving` (absolute, under the final destination).

    Attributes:
      destination: the export directory.
      version: the TF Serving version number of every model.
      manifest_path: ``manifest.json``.
      models_config_path: ``models.config`` (stock TF Serving models).
      user_tower_path: ``user_tower/<version>``.
      top_k_path: ``top_k/<version>``.
      scann_path: ``scann_top_k/<version>``, or ``None`` without ScaNN.
      scann_searcher_path: the pybind searcher directory, or ``None``.
      scann_models_config_path: ``models_scann.config``, or ``None``.
      warmup_paths: ``{model name: warmup file}``.
      manifest: the manifest written.
    """

    destination: str
    version: int
    manifest_path: str
    models_config_path: str
    user_tower_path: str
    top_k_path: str
    scann_path: Optional[str]
    scann_searcher_path: Optional[str]
    scann_models_config_path: Optional[str]
    warmup_paths: Dict[str, str]
    manifest: ServingManifest


def _corpus(model: Any, item_embeddings: Optional[Any], item_ids: Optional[Any]
            ) -> Tuple[np.ndarray, np.ndarray]:
    """``(candidates [N, d] float32, ids [N] int64)`` from the arguments or the model."""
    if item_embeddings is None:
        if not hasattr(model, "corpus_embeddings"):
            raise ValueError("pass item_embeddings=[N, d] for a model without corpus_embeddings()")
        item_embeddings = model.corpus_embeddings()
        if item_ids is None and hasattr(model, "corpus_ids"):
            item_ids = model.corpus_ids()
    candidates = np.asarray(item_embeddings, dtype=np.float32)
    if candidates.ndim != 2 or candidates.shape[0] < 1:
        raise ValueError(f"item embeddings must be [N >= 1, d], got {candidates.shape}")
    if item_ids is None:
        item_ids = np.arange(1, candidates.shape[0] + 1)
    ids = np.asarray(item_ids, dtype=np.int64).reshape([-1])
    if ids.shape[0] != candidates.shape[0]:
        raise ValueError(f"{ids.shape[0]} item ids for {candidates.shape[0]} embeddings")
    if np.any(ids == F.PADDING_ID):
        raise ValueError("the padding id 0 must not be part of the corpus")
    if len(np.unique(ids)) != len(ids):
        raise ValueError("item ids must be unique")
    return candidates, ids


def library_versions() -> Dict[str, str]:
    versions = {}
    for package in ("tensorflow", "tf-keras", "tensorflow-recommenders", "scann",
                    "tensorflow-serving-api"):
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            versions[package] = "not installed"
    return versions


def save_module(module: tf.Module, path: str,
                options: tf.saved_model.SaveOptions = SAVE_OPTIONS) -> str:
    """Saves a serving module (``UserTowerModule``/``TopKModule``) with its signatures.

    Pass ``SCANN_SAVE_OPTIONS`` for a module holding a ScaNN layer.
    """
    tf.saved_model.save(module, path, signatures=module.signatures(), options=options)
    return path


def export_for_serving(model: Any, spec: F.ExampleSpec, destination: str,
                       vocabulary_path: str, *, version: Optional[int] = None, k: int = 100,
                       scann: Optional[ScannConfig] = ScannConfig(),
                       item_embeddings: Optional[Any] = None, item_ids: Optional[Any] = None,
                       names: ServingNames = ServingNames(),
                       warmup_features: Optional[Mapping[str, Any]] = None,
                       warmup_batch_sizes: Tuple[int, ...] = (1, 8),
                       overwrite: bool = False,
                       source: Optional[Mapping[str, Any]] = None,
                       extra_files: Tuple[str, ...] = (),
                       probe_features: Optional[Mapping[str, Any]] = None,
                       min_scann_recall: Optional[float] = None,
                       session_rule: Optional[Mapping[str, Any]] = None) -> ExportResult:
    """Exports the user tower, an exact top-K model and a ScaNN index for serving.

    Args:
      model: a trained :class:`~t2diff_tf.models.base.RetrievalModel`, or any Keras model /
        callable mapping the ``QUERY_FEATURES`` dict to ``e_u`` ``[batch, d]`` (then pass
        ``item_embeddings``).
      spec: the example shapes (``history_length`` = ``L`` of the inputs).
      destination: the export directory; must not exist (or be empty) unless ``overwrite``.
      vocabulary_path: the item vocabulary file; its sha256 goes into the manifest.
      version: TF Serving version number (> 0); default: the export time in Unix seconds.
      k: items each top-K signature returns (capped at the corpus size).
      scann: the ScaNN index (:class:`ScannConfig`); ``None`` skips the ScaNN model and searcher.
      item_embeddings: ``[N, d]`` corpus embeddings; default ``model.corpus_embeddings()``.
      item_ids: ``[N]`` ids of those rows; default ``model.corpus_ids()`` or ``1..N``.
      names: TF Serving model names / directory names.
      warmup_features: query windows ``{name: [batch, ...]}`` for the warmup records (e.g. a few
        real validation windows); default: synthetic windows
        (:func:`~t2diff_tf.serving.warmup.synthetic_query_features`).
      warmup_batch_sizes: batch sizes of the ``serving_default`` warmup requests.
      overwrite: replace an existing ``destination``.
      source: what the export is pushed from (written to the manifest's ``source``, inside the
        atomic write, so a bundle that exists records it).
      extra_files: files copied into the bundle beside the vocabulary (e.g. the item features),
        so that the bundle is self-contained.
      probe_features: real held-out query windows (e.g. the validation users') on which the
        ScaNN index's recall@k against exact search is measured; default: synthetic windows.
        The warmup windows are always added.
      min_scann_recall: the least recall@k the ScaNN index may ship with: below it the index is
        widened (twice the leaves searched and candidates rescored, up to
        ``SCANN_RETUNES`` times) and, still below, the export stops with
        :class:`ScannRecallError` and leaves nothing behind. ``None``: only a warning below 0.9.
      session_rule: how the training windows cut sessions (e.g. ``{"mode": "last_k", "k":
        10}``), recorded in the manifest's ``query_features`` for serving clients.

    The vocabulary is copied into the bundle as ``item_vocabulary.tsv`` and the manifest's
    ``vocabulary_path`` is relative to the bundle: a bundle moved to another directory or bucket
    still maps item ids back to raw ids.

    Returns:
      The :class:`ExportResult` (paths under the final ``destination``).

    Raises:
      FileExistsError: ``destination`` exists and ``overwrite`` is off.
      ValueError: bad arguments, or a user tower whose output dimension differs from the
        items'.
    """
    version = int(time.time()) if version is None else int(version)
    if version < 1:
        raise ValueError(f"version must be a positive integer, got {version}")
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if not os.path.isfile(vocabulary_path):
        raise FileNotFoundError(f"vocabulary file not found: {vocabulary_path}")
    destination = os.path.abspath(destination)
    check_destination(destination, overwrite)

    candidates, ids = _corpus(model, item_embeddings, item_ids)
    corpus_size, embedding_dim = candidates.shape
    k = min(int(k), corpus_size)

    user_tower = S.UserTowerModule(model, spec, name=names.user_tower)
    output_dim = user_tower.serve.get_concrete_function().structured_outputs[
        S.USER_EMBEDDING].shape[-1]
    if output_dim is not None and output_dim != embedding_dim:
        raise ValueError(f"the user tower returns d={output_dim}, the items d={embedding_dim}")

    batch = max(warmup_batch_sizes) if warmup_batch_sizes else 1
    if warmup_features is None:
        warmup_features = synthetic_query_features(spec, int(ids.max()), batch)
    warmup_features = take_rows(warmup_features, batch)
    warmup_examples = S.serialize_query_examples(warmup_features)
    warmup_embeddings = user_tower.serve(**{
        n: tf.constant(warmup_features[n], tf.int64) for n in F.QUERY_FEATURES})[S.USER_EMBEDDING]
    warmup_embeddings = warmup_embeddings.numpy()

    def final(*parts: str) -> str:
        return os.path.join(destination, *parts)

    relative = {"manifest": MANIFEST_FILE, "models_config": MODELS_CONFIG,
                names.user_tower: os.path.join(names.user_tower, str(version)),
                names.top_k: os.path.join(names.top_k, str(version))}
    served = {names.user_tower: names.user_tower, names.top_k: names.top_k}
    warmups: Dict[str, str] = {}
    index_description: Dict[str, Any] = {
        "brute_force": {"kind": "exact", "scores": "dot_product", "k": k,
                        "candidates": "non-trainable variable [N, d]"}}
    signature_names = {names.user_tower: [S.SERVING_DEFAULT, S.SERVE_TF_EXAMPLES],
                       names.top_k: [S.SERVING_DEFAULT, S.SERVE_TF_EXAMPLES,
                                     S.TOP_K_FROM_EMBEDDING]}
    resolved = scann.resolve(corpus_size, k) if scann is not None else None

    with atomic_directory(destination, overwrite) as workdir:
        # (a) the user tower.
        path = save_module(user_tower, os.path.join(workdir, relative[names.user_tower]))
        write_warmup_requests(path, query_warmup_requests(
            names.user_tower, warmup_features, warmup_batch_sizes, warmup_examples))
        warmups[names.user_tower] = relative[names.user_tower]

        # (b) exact top-K in plain TF ops.
        top_k = S.TopKModule(user_tower, BruteForceIndex(candidates, ids, name="brute_force"),
                             k, embedding_dim, name=names.top_k)
        path = save_module(top_k, os.path.join(workdir, relative[names.top_k]))
        write_warmup_requests(path, query_warmup_requests(
            names.top_k, warmup_features, warmup_batch_sizes, warmup_examples,
            warmup_embeddings))
        warmups[names.top_k] = relative[names.top_k]

        # (c) ScaNN: a TFRS layer inside a SavedModel, and a standalone pybind searcher.
        if resolved is not None:
            relative[names.scann] = os.path.join(names.scann, str(version))
            relative[names.scann_searcher] = names.scann_searcher
            relative["scann_models_config"] = SCANN_MODELS_CONFIG
            served[names.scann] = names.scann
            signature_names[names.scann] = signature_names[names.top_k]
            # Recall on held-out queries first: a low index is widened or refused before any
            # ScaNN artefact is written.
            if probe_features is not None:
                probe = {n: np.asarray(probe_features[n]) for n in F.QUERY_FEATURES}
                queries_from = "user tower on held-out query windows and the warmup windows"
            else:
                probe = synthetic_query_features(spec, int(ids.max()), RECALL_PROBE_QUERIES,
                                                 seed=1)
                queries_from = "user tower on the warmup and synthetic windows"
            probe = user_tower.serve(**{n: tf.constant(probe[n], tf.int64)
                                        for n in F.QUERY_FEATURES})[S.USER_EMBEDDING].numpy()
            probe = np.concatenate([warmup_embeddings, probe])
            searcher = build_pybind_index(candidates, ids, resolved)
            estimate = recall_at_k(searcher, probe, candidates, ids, k)
            tried = [{"num_leaves_to_search": resolved.num_leaves_to_search,
                      "reorder_k": resolved.reorder_k, "recall": round(estimate, 4)}]
            for _ in range(SCANN_RETUNES):
                wider = resolved.widened()
                if min_scann_recall is None or estimate >= min_scann_recall or wider is None:
                    break
                resolved = wider
                searcher = build_pybind_index(candidates, ids, resolved)
                estimate = recall_at_k(searcher, probe, candidates, ids, k)
                tried.append({"num_leaves_to_search": resolved.num_leaves_to_search,
                              "reorder_k": resolved.reorder_k, "recall": round(estimate, 4)})
            if min_scann_recall is not None and estimate < min_scann_recall:
                raise ScannRecallError(
                    f"the ScaNN index reaches recall@{k} {estimate:.3f} on {len(probe)} held-out "
                    f"queries, below the required {min_scann_recall}, even after re-tuning "
                    f"({tried}); nothing was pushed. Give the index more leaves to search "
                    f"(ScannConfig.num_leaves_to_search), a larger reorder_k, or lower the "
                    f"threshold")
            layer = build_scann_layer(candidates, ids, resolved, name="scann")
            scann_model = S.TopKModule(user_tower, layer, k, embedding_dim, name=names.scann)
            path = save_module(scann_model, os.path.join(workdir, relative[names.scann]),
                               SCANN_SAVE_OPTIONS)
            write_warmup_requests(path, query_warmup_requests(
                names.scann, warmup_features, warmup_batch_sizes, warmup_examples,
                warmup_embeddings))
            warmups[names.scann] = relative[names.scann]
            searcher.serialize(os.path.join(workdir, relative[names.scann_searcher]), resolved)
            index_description["scann"] = resolved.to_dict()
            index_description["scann"]["recall_at_k_estimate"] = {
                "recall": round(estimate, 4), "queries": int(len(probe)),
                "queries_from": queries_from, "against": "exact inner-product top-k",
                "tuning": tried, "required": min_scann_recall}
            if estimate < RECALL_WARNING:
                logging.warning("ScaNN recall@%d is %.3f on %d probe queries; consider more "
                                "num_leaves_to_search or reorder_k", k, estimate, len(probe))
            index_description["scann"]["requires"] = (
                "ScaNN TF ops: `import scann` before tf.saved_model.load; a TF Serving build "
                "with ScaNN (e.g. google/tf-serving-scann) to serve")

        # (e) what TF Serving reads beside the models.
        stock = [ServedModel(names.user_tower, final(names.user_tower)),
                 ServedModel(names.top_k, final(names.top_k))]
        write_model_server_config(
            os.path.join(workdir, MODELS_CONFIG), stock,
            header=f"t2diff export, version {version}: models a stock tensorflow_model_server "
                   f"can load.")
        if resolved is not None:
            write_model_server_config(
                os.path.join(workdir, SCANN_MODELS_CONFIG),
                stock + [ServedModel(names.scann, final(names.scann))],
                header=f"t2diff export, version {version}: needs a TF Serving build with the "
                       f"ScaNN ops (e.g. google/tf-serving-scann) for {names.scann!r}.")

        # The vocabulary (and side files) travel inside the bundle.
        shutil.copyfile(vocabulary_path, os.path.join(workdir, BUNDLED_VOCABULARY))
        relative["vocabulary"] = BUNDLED_VOCABULARY
        for path in extra_files:
            shutil.copyfile(path, os.path.join(workdir, os.path.basename(path)))
            relative[os.path.splitext(os.path.basename(path))[0]] = os.path.basename(path)

        # (d) the manifest, last.
        now = datetime.datetime.now(datetime.timezone.utc)
        manifest = ServingManifest(
            model_version=version,
            model_name=getattr(model, "name", None) or type(model).__name__,
            model_config=model.model_config() if hasattr(model, "model_config") else None,
            vocabulary_path=BUNDLED_VOCABULARY,
            vocabulary_sha256=file_sha256(vocabulary_path),
            embedding_dim=int(embedding_dim), corpus_size=int(corpus_size),
            history_length=spec.history_length, k=k, index=index_description,
            exported_at=now.isoformat(timespec="seconds"),
            paths=dict(relative), served_models=served,
            signatures=signature_names, library_versions=library_versions(),
            source=dict(source) if source is not None else None,
            query_features=query_features_description(
                spec.history_length, spec.num_time_lag_buckets,
                dict(session_rule) if session_rule is not None else None)).normalized()
        write_manifest(os.path.join(workdir, MANIFEST_FILE), manifest)

    return ExportResult(
        destination=destination, version=version, manifest_path=final(MANIFEST_FILE),
        models_config_path=final(MODELS_CONFIG),
        user_tower_path=final(relative[names.user_tower]),
        top_k_path=final(relative[names.top_k]),
        scann_path=final(relative[names.scann]) if resolved is not None else None,
        scann_searcher_path=(final(relative[names.scann_searcher])
                             if resolved is not None else None),
        scann_models_config_path=final(SCANN_MODELS_CONFIG) if resolved is not None else None,
        warmup_paths={name: final(rel, "assets.extra", "tf_serving_warmup_requests")
                      for name, rel in warmups.items()},
        manifest=manifest)
