"""``RetrievalPusher``: exports a blessed model for serving, with its retrieval index.

Only a model whose blessing says ``blessed`` is pushed. Each push is one self-contained bundle
``<push_destination>/<version>/`` (written by ``t2diff_tf.serving.export_for_serving``): the user-tower SavedModel (TF Serving signature), a
top-K SavedModel with a brute-force index in plain TF ops, the ScaNN index (TFRS ScaNN SavedModel
and a serialized ``scann_ops_pybind`` searcher), TF Serving's ``models.config`` and warm-up
requests, and a manifest tying model version, vocabulary hash and index parameters together.
The export is written beside the destination and renamed into place, so a failed push leaves no
half-written model.
"""

import json
import os
import time

import tensorflow as tf
from tfx import v1 as tfx

from components.evaluator import SavedRetrievalModel, example_spec, serving_dir
from components.preprocessing.vocabulary import VOCABULARY_FILE

Parameter = tfx.dsl.components.Parameter
InputArtifact = tfx.dsl.components.InputArtifact
OutputArtifact = tfx.dsl.components.OutputArtifact


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
    version = int(time.time())
    while tf.io.gfile.exists(os.path.join(push_destination, str(version))):
        version += 1
    result = export_for_serving(
        SavedRetrievalModel(serving_dir(model.uri)), example_spec(examples.uri),
        os.path.join(push_destination, str(version)),
        os.path.join(examples.uri, VOCABULARY_FILE), version=version, k=top_k)
    pushed_model.set_int_custom_property("pushed", 1)
    pushed_model.set_string_custom_property("pushed_destination", push_destination)
    pushed_model.set_int_custom_property("pushed_version", version)
    pushed_model.set_string_custom_property("manifest", result.manifest_path)
    tf.io.gfile.makedirs(pushed_model.uri)
    with tf.io.gfile.GFile(os.path.join(pushed_model.uri, "push.json"), "w") as f:
        json.dump({"destination": result.destination, "version": version,
                   "manifest": result.manifest_path,
                   "models_config": result.models_config_path}, f, indent=2)
