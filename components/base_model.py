"""A Trainer's earlier model as the base of this run: what it was trained on, and warm start.

The Trainer writes beside its user-tower SavedModel (``<model>/Format-Serving``), in
``assets.extra/``, what a later run needs to use that model again on other data:

* ``item_vocabulary.tsv`` and ``item_features.tsv`` -- the item ids it knows (raw id <-> int id)
  and their side features;
* ``training.json`` -- the registry model, its config and ``example_spec`` (``L``, time-lag
  buckets).

With them a later run can rank its own examples with the old model (their ids mapped through
the raw ids: ``components.evaluator``) and start training from the old weights
(:func:`warm_start_from`, ``t2diff_tf.warm_start``).
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Optional

import numpy as np
import tensorflow as tf

from components.preprocessing.vocabulary import (ITEM_FEATURES_FILE, VOCABULARY_FILE,
                                                 ItemFeatures, Vocabulary)
from t2diff_tf import features as F
from t2diff_tf import warm_start as W
from t2diff_tf.models.registry import build_model

ASSETS_EXTRA = "assets.extra"
TRAINING_FILE = "training.json"


def write_model_assets(serving_dir: str, examples_uri: str) -> None:
    """Copies the examples' vocabulary and item features into ``<serving_dir>/assets.extra``."""
    extra = os.path.join(serving_dir, ASSETS_EXTRA)
    tf.io.gfile.makedirs(extra)
    for name in (VOCABULARY_FILE, ITEM_FEATURES_FILE):
        source = os.path.join(examples_uri, name)
        if tf.io.gfile.exists(source):
            tf.io.gfile.copy(source, os.path.join(extra, name), overwrite=True)


@dataclasses.dataclass(frozen=True)
class BaseModel:
    """A Trainer's model read back: its SavedModel and what it was trained on.

    Attributes:
      serving_dir: the user-tower SavedModel.
      name, model_config: the registry model and its config.
      spec: the example shapes it was trained with.
      vocabulary: its items (int id ``i`` = ``vocabulary.raw_ids[i - 1]``).
      item_features: their side features.
    """

    serving_dir: str
    name: str
    model_config: dict
    spec: F.ExampleSpec
    vocabulary: Vocabulary
    item_features: ItemFeatures

    @classmethod
    def read(cls, serving_dir: str) -> "BaseModel":
        """Raises ``ValueError`` naming the missing file when the model lacks what a later run
        needs (a model written before the Trainer kept its vocabulary)."""
        extra = os.path.join(serving_dir, ASSETS_EXTRA)
        needed = [os.path.join(extra, name) for name in (TRAINING_FILE, VOCABULARY_FILE)]
        missing = [path for path in needed if not tf.io.gfile.exists(path)]
        if missing:
            raise ValueError(f"{missing[0]}: missing; the model at {serving_dir} does not say "
                             f"which items it knows (written by an earlier t2diff?), so it cannot "
                             f"be used on other data")
        with tf.io.gfile.GFile(needed[0]) as f:
            training = json.load(f)
        spec = training.get("example_spec")
        if spec is None:
            raise ValueError(f"{needed[0]}: no example_spec (written by an earlier t2diff?)")
        features = (ItemFeatures.read(extra)
                    if tf.io.gfile.exists(os.path.join(extra, ITEM_FEATURES_FILE))
                    else ItemFeatures((), np.zeros((0, 0), np.float32)))
        return cls(serving_dir, training["model"], training.get("model_config") or {},
                   F.ExampleSpec(**spec), Vocabulary.read(extra), features)

    def build(self) -> tf.keras.Model:
        """The model's architecture with its variables created (weights not yet restored)."""
        model = build_model(self.name, self.model_config, num_items=self.vocabulary.size,
                            item_features=self.item_features.matrix if self.item_features.names
                            else None,
                            item_frequencies=self.vocabulary.frequencies(), example_spec=self.spec)
        W.create_variables(model, self.spec)
        return model


def _with_one_more_item(matrix: Optional[np.ndarray]) -> Optional[np.ndarray]:
    if matrix is None:
        return None
    return np.concatenate([matrix, np.zeros((1,) + matrix.shape[1:], matrix.dtype)])


def warm_start_from(base_serving_dir: str, model: tf.keras.Model, name: str,
                    model_config: dict, spec: F.ExampleSpec, vocabulary: Vocabulary,
                    item_features: Optional[np.ndarray]) -> dict:
    """Starts ``model`` (just built, ``vocabulary.size`` items) from the weights of the model at
    ``base_serving_dir``, its item rows mapped through the raw ids (``t2diff_tf.warm_start``).

    A base model of another registry model or architecture, or one that does not say which
    items it knows (written by an earlier t2diff), is not used: the model keeps its initial
    weights and the record says why (the Trainer prints it).

    Returns:
      What happened, for ``training.json``: ``{"base_model", "used", "reason" | "report"}``.
    """
    record = {"base_model": base_serving_dir, "used": False}
    try:
        base = BaseModel.read(base_serving_dir)
    except ValueError as e:  # a model from before the Trainer kept its vocabulary
        record["reason"] = str(e)
        return record
    if base.name != name:
        record["reason"] = f"the base model is {base.name!r}, this run trains {name!r}"
        return record
    old = base.build()
    W.restore_saved_model_weights(old, base_serving_dir)
    frequencies = vocabulary.frequencies()
    probe = build_model(name, model_config, num_items=vocabulary.size + 1,
                        item_features=_with_one_more_item(item_features),
                        item_frequencies=np.append(frequencies, frequencies[1:].min(initial=1.0)),
                        example_spec=spec)
    W.create_variables(probe, spec)
    W.create_variables(model, spec)
    mapping = W.ItemIdMapping.from_raw_ids(base.vocabulary.raw_ids, vocabulary.raw_ids)
    try:
        report = W.transfer_weights(old, model, probe, mapping)
    except ValueError as e:
        record["reason"] = str(e)
        return record
    record.update(used=True, report=report.as_dict(), summary=report.summary())
    return record
