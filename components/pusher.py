"""``RetrievalPusher``: exports a blessed model for serving, with its retrieval index.

Only a model whose blessing says ``blessed`` is pushed. Each push is one self-contained bundle
``<push_destination>/<version>/`` (written by ``t2diff_tf.serving.export_for_serving``): the user-tower SavedModel (TF Serving signature), a
top-K SavedModel with a brute-force index in plain TF ops, the ScaNN index (TFRS ScaNN SavedModel
and a serialized ``scann_ops_pybind`` searcher), TF Serving's ``models.config`` and warm-up
requests, and a manifest tying model version, vocabulary hash and index parameters together.
The export is written beside the destination and renamed into place, so a failed push leaves no
half-written model.

Pushes are idempotent: the manifest's ``source`` records the model's content fingerprint
(:func:`model_fingerprint`), and a model some bundle under the destination already holds is not
pushed again (the artifact then names that bundle's version). Temporary folders a killed push
left behind (``.tmp-*``, ``.old-*``) are removed, and said, before a push starts. Do not point
two concurrent pushes at one destination.
"""

import hashlib
import json
import os
import time
from typing import List, Optional

import tensorflow as tf
from tfx import v1 as tfx

from components.evaluator import SavedRetrievalModel, preprocess_config, serving_dir
from components.preprocessing.config import LAST_K
from components.preprocessing.vocabulary import ITEM_FEATURES_FILE, VOCABULARY_FILE

Parameter = tfx.dsl.components.Parameter
InputArtifact = tfx.dsl.components.InputArtifact
OutputArtifact = tfx.dsl.components.OutputArtifact


def model_fingerprint(saved_model_dir: str) -> str:
    """sha256 of a SavedModel's graph and variable index (the index holds every variable's
    checksum): the same trained model gives the same fingerprint wherever it is copied."""
    digest = hashlib.sha256()
    for name in ("saved_model.pb", os.path.join("variables", "variables.index")):
        path = os.path.join(saved_model_dir, name)
        if tf.io.gfile.exists(path):
            with tf.io.gfile.GFile(path, "rb") as f:
                digest.update(f.read())
    return digest.hexdigest()


def pushed_version(push_destination: str, fingerprint: str) -> Optional[int]:
    """The version of a bundle under ``push_destination`` that holds the model with
    ``fingerprint``, or ``None``."""
    if not tf.io.gfile.isdir(push_destination):
        return None
    for name in sorted(tf.io.gfile.listdir(push_destination)):
        name = name.rstrip("/")
        manifest = os.path.join(push_destination, name, "manifest.json")
        if not name.isdigit() or not tf.io.gfile.exists(manifest):
            continue
        with tf.io.gfile.GFile(manifest) as f:
            source = json.load(f).get("source") or {}
        if source.get("model_fingerprint") == fingerprint:
            return int(name)
    return None


def remove_stale_temporaries(push_destination: str) -> List[str]:
    """Deletes the ``.tmp-*`` / ``.old-*`` folders an interrupted push left; returns them."""
    from t2diff_tf.serving.atomic import PREVIOUS_PREFIX, TEMPORARY_PREFIX

    if not tf.io.gfile.isdir(push_destination):
        return []
    removed = []
    for name in tf.io.gfile.listdir(push_destination):
        name = name.rstrip("/")
        if name.startswith((TEMPORARY_PREFIX, PREVIOUS_PREFIX)):
            tf.io.gfile.rmtree(os.path.join(push_destination, name))
            removed.append(name)
    return sorted(removed)


MODELS_CONFIG_FILES = ("models.config", "models_scann.config")


def rebase_models_config(bundle_dir: str, base: Optional[str] = None) -> List[str]:
    """Rewrites the TF Serving model configs of a bundle that was moved or copied, so that each
    model's ``base_path`` is ``<base or bundle_dir>/<model folder>``; returns the files rewritten.

    A push writes absolute ``base_path``s under its destination (TF Serving resolves a relative
    one against its own working directory, not the config file). After copying a bundle to
    another directory or bucket, run this on the copy (``base`` names where the server will see
    the bundle when that differs, e.g. a mount point or ``gs://bucket/serving/<version>``).

    Raises:
      ValueError: a config names a model folder the bundle does not hold.
    """
    from google.protobuf import text_format
    from tensorflow_serving.config import model_server_config_pb2

    base = base or bundle_dir
    if "://" not in base:
        base = os.path.abspath(base)
    rewritten = []
    for name in MODELS_CONFIG_FILES:
        path = os.path.join(bundle_dir, name)
        if not tf.io.gfile.exists(path):
            continue
        with tf.io.gfile.GFile(path) as f:
            text = f.read()
        config = text_format.Parse(text, model_server_config_pb2.ModelServerConfig())
        for entry in config.model_config_list.config:
            folder = os.path.basename(entry.base_path.rstrip("/"))
            if not tf.io.gfile.isdir(os.path.join(bundle_dir, folder)):
                raise ValueError(f"{path}: model {entry.name!r} lives in {folder!r}, which "
                                 f"{bundle_dir} does not hold")
            entry.base_path = base.rstrip("/") + "/" + folder
        comments = "".join(line + "\n" for line in text.splitlines() if line.startswith("#"))
        with tf.io.gfile.GFile(path, "w") as f:
            f.write(comments + text_format.MessageToString(config))
        rewritten.append(path)
    return rewritten


def _read_json(path: str) -> Optional[dict]:
    if not tf.io.gfile.exists(path):
        return None
    with tf.io.gfile.GFile(path) as f:
        return json.load(f)


def push_source(model_uri: str, fingerprint: str, examples_uri: str, blessing_uri: str) -> dict:
    """What a bundle records of where it came from (its manifest's ``source``): the registry
    model and its configuration (the Trainer's ``training.json``), the model's fingerprint, the
    training data's (the examples' ``stats.json``: counts and preprocessing configuration, and
    its sha256) and the Evaluator's blessing decision with the metric it compared."""
    training = _read_json(os.path.join(serving_dir(model_uri), "assets.extra",
                                       "training.json")) or {}
    stats_path = os.path.join(examples_uri, "stats.json")
    stats_sha256 = None
    if tf.io.gfile.exists(stats_path):
        with tf.io.gfile.GFile(stats_path, "rb") as f:
            stats_sha256 = hashlib.sha256(f.read()).hexdigest()
    decision = None
    for marker in ("BLESSED", "NOT_BLESSED"):
        decision = decision or _read_json(os.path.join(blessing_uri, marker))
    return {"model_uri": model_uri, "model_fingerprint": fingerprint,
            "registry_model": training.get("model"), "model_config": training.get("model_config"),
            "training_layout": training.get("layout"), "examples_uri": examples_uri,
            "examples_stats_sha256": stats_sha256, "blessing": decision}


PROBE_WINDOWS = 2000


def held_out_windows(examples_uri: str, spec, limit: int = PROBE_WINDOWS) -> Optional[dict]:
    """Up to ``limit`` validation windows' query features (real queries for ScaNN's recall)."""
    from components.preprocessing.transforms import split_dir
    from t2diff_tf import features as F
    from t2diff_tf.training import read_examples

    pattern = os.path.join(split_dir(examples_uri, "validation"), "*")
    if not tf.io.gfile.glob(pattern):
        return None
    batch = next(iter(read_examples(pattern, spec, limit, with_user_id=False)))
    return {name: batch[name].numpy() for name in F.QUERY_FEATURES}


def is_blessed(blessing_uri: str, blessed_property: int) -> bool:
    return bool(blessed_property) and tf.io.gfile.exists(os.path.join(blessing_uri, "BLESSED"))


@tfx.dsl.components.component
def RetrievalPusher(
    model: InputArtifact[tfx.types.standard_artifacts.Model],
    model_blessing: InputArtifact[tfx.types.standard_artifacts.ModelBlessing],
    examples: InputArtifact[tfx.types.standard_artifacts.Examples],
    pushed_model: OutputArtifact[tfx.types.standard_artifacts.PushedModel],
    push_destination: Parameter[str],
    top_k: Parameter[int] = 100,
    min_scann_recall: Parameter[float] = 0.95,
) -> None:
    """Pushes a blessed model to ``push_destination/<version>/`` with its indexes.

    Args:
      model, model_blessing: the Trainer's model and the Evaluator's verdict.
      examples: for the item vocabulary (hashed into the manifest) and the example shapes.
      push_destination: a directory (local or any ``tf.io.gfile`` filesystem).
      top_k: K of the top-K SavedModels.
      min_scann_recall: the least recall@K against exact search the ScaNN index may ship with,
        measured on the validation users' windows (up to ``PROBE_WINDOWS``); below it the index
        is widened, and still below, the push stops with a clear message (0 disables).
    """
    from t2diff_tf.serving import export_for_serving

    blessed = is_blessed(model_blessing.uri,
                         model_blessing.get_int_custom_property("blessed"))
    pushed_model.set_int_custom_property("pushed", 0)
    if not blessed:
        print(f"RetrievalPusher: model {model.uri} is not blessed; nothing pushed.")
        return
    stale = remove_stale_temporaries(push_destination)
    if stale:
        print(f"RetrievalPusher: removed {len(stale)} folder(s) an interrupted push left in "
              f"{push_destination}: {', '.join(stale)}")
    fingerprint = model_fingerprint(serving_dir(model.uri))
    existing = pushed_version(push_destination, fingerprint)
    if existing is not None:
        print(f"RetrievalPusher: this model is already pushed as version {existing} in "
              f"{push_destination}; nothing pushed again.")
        pushed_model.set_int_custom_property("pushed", 1)
        pushed_model.set_int_custom_property("already_pushed", 1)
        pushed_model.set_string_custom_property("pushed_destination", push_destination)
        pushed_model.set_int_custom_property("pushed_version", existing)
        return
    version = int(time.time())
    while tf.io.gfile.exists(os.path.join(push_destination, str(version))):
        version += 1
    source = push_source(model.uri, fingerprint, examples.uri, model_blessing.uri)
    features = os.path.join(examples.uri, ITEM_FEATURES_FILE)
    window = preprocess_config(examples.uri).window
    spec = window.example
    result = export_for_serving(
        SavedRetrievalModel(serving_dir(model.uri)), spec,
        os.path.join(push_destination, str(version)),
        os.path.join(examples.uri, VOCABULARY_FILE), version=version, k=top_k, source=source,
        extra_files=(features,) if tf.io.gfile.exists(features) else (),
        probe_features=held_out_windows(examples.uri, spec),
        min_scann_recall=min_scann_recall or None,
        session_rule=({"mode": window.session_mode, "k": window.session_k}
                      if window.session_mode == LAST_K else
                      {"mode": window.session_mode, "gap_seconds": window.session_gap_seconds}))
    pushed_model.set_int_custom_property("pushed", 1)
    pushed_model.set_string_custom_property("pushed_destination", push_destination)
    pushed_model.set_int_custom_property("pushed_version", version)
    pushed_model.set_string_custom_property("manifest", result.manifest_path)
    tf.io.gfile.makedirs(pushed_model.uri)
    with tf.io.gfile.GFile(os.path.join(pushed_model.uri, "push.json"), "w") as f:
        json.dump({"destination": result.destination, "version": version,
                   "manifest": result.manifest_path,
                   "models_config": result.models_config_path}, f, indent=2)
