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

from components.evaluator import SavedRetrievalModel, example_spec, serving_dir
from components.preprocessing.vocabulary import VOCABULARY_FILE

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
) -> None:
    """Pushes a blessed model to ``push_destination/<version>/`` with its indexes.

    Args:
      model, model_blessing: the Trainer's model and the Evaluator's verdict.
      examples: for the item vocabulary (hashed into the manifest) and the example shapes.
      push_destination: a directory (local or any ``tf.io.gfile`` filesystem).
      top_k: K of the top-K SavedModels.
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
    source = {"model_uri": model.uri, "model_fingerprint": fingerprint,
              "examples_uri": examples.uri, "blessing_uri": model_blessing.uri}
    result = export_for_serving(
        SavedRetrievalModel(serving_dir(model.uri)), example_spec(examples.uri),
        os.path.join(push_destination, str(version)),
        os.path.join(examples.uri, VOCABULARY_FILE), version=version, k=top_k, source=source)
    pushed_model.set_int_custom_property("pushed", 1)
    pushed_model.set_string_custom_property("pushed_destination", push_destination)
    pushed_model.set_int_custom_property("pushed_version", version)
    pushed_model.set_string_custom_property("manifest", result.manifest_path)
    tf.io.gfile.makedirs(pushed_model.uri)
    with tf.io.gfile.GFile(os.path.join(pushed_model.uri, "push.json"), "w") as f:
        json.dump({"destination": result.destination, "version": version,
                   "manifest": result.manifest_path,
                   "models_config": result.models_config_path}, f, indent=2)
