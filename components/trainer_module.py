"""TFX Trainer module: ``run_fn(fn_args)`` trains any registry model from ``custom_config``.

``custom_config``:

* ``model`` -- registry name (``t2diff``, ``mean_pool_two_tower``, ...);
* ``model_config`` -- JSON of the model's config fields (``{}``: defaults);
* ``train`` -- JSON of ``t2diff_tf.training.TrainConfig`` fields (epochs, batch size, learning
  rate, early stopping on the validation split, ``strategy``: ``default`` / ``mirrored`` /
  ``multi_worker_mirrored`` from ``TF_CONFIG``).

The examples artifact of ``PreprocessLogs`` provides the windows (``fn_args.train_files`` /
``eval_files``), the item vocabulary, item features and the example shapes (``stats.json``).
When it also holds sequence chunks (``Split-train_sequences``, ``t2diff run --sequence-length
L``), a model that learns from every position (``model.trains_on_sequences``: SASRec, GRU4Rec,
Mamba4Rec, STOSA, ...) trains on them instead of the training windows; the others keep the
windows. ``training.json`` records which layout was used.

* ``checkpoint_root`` -- where training checkpoints every epoch (``<pipeline root>/
  checkpoints``), in a folder named by a fingerprint of the examples, the model and the training
  configuration: a Trainer killed mid-run and run again on the same inputs resumes after its last
  finished epoch. The folder is removed once the model is exported.

Writes to ``fn_args.serving_model_dir`` the user-tower SavedModel (``serving_default`` over the
query features -> ``user_embedding``, plus ``serve_tf_examples``) with
``assets.extra/corpus_embeddings.npy`` (``[N, d]``, row ``i`` = item ``i + 1``) and
``assets.extra/training.json`` (model, configs, per-epoch history). TensorBoard logs go to
``fn_args.model_run_dir``.
"""

import hashlib
import json
import os

import dataclasses

import numpy as np
import tensorflow as tf

from components.evaluator import CORPUS_EMBEDDINGS, preprocess_config
from components.preprocessing.config import TRAIN_SEQUENCES
from components.preprocessing.transforms import split_dir
from components.preprocessing.vocabulary import ItemFeatures, Vocabulary
from t2diff_tf.models.registry import build_model
from t2diff_tf.serving.signatures import UserTowerModule
from t2diff_tf.training import TrainConfig, fit, make_strategy, read_examples, read_sequences


def examples_root(file_pattern: str) -> str:
    """``<examples uri>/Split-train/*`` -> ``<examples uri>``."""
    return os.path.dirname(os.path.dirname(file_pattern))


def checkpoint_dir(checkpoint_root: str, examples_uri: str, name: str, model_config: dict,
                   train: dict) -> str:
    """The checkpoint folder of one training job: the same inputs give the same folder."""
    key = json.dumps({"examples": examples_uri, "model": name, "model_config": model_config,
                      "train": train}, sort_keys=True)
    return os.path.join(checkpoint_root, f"{name}-{hashlib.sha256(key.encode()).hexdigest()[:16]}")


def run_fn(fn_args) -> None:
    config = fn_args.custom_config or {}
    name = config.get("model", "t2diff")
    model_config = json.loads(config.get("model_config", "{}"))
    train_config = TrainConfig.from_dict(json.loads(config.get("train", "{}")))
    strategy = make_strategy(train_config.strategy)  # before any TF op (multi-worker needs it)

    root = examples_root(fn_args.train_files[0])
    checkpoints = None
    if config.get("checkpoint_root") and not train_config.checkpoint_dir:
        checkpoints = checkpoint_dir(config["checkpoint_root"], root, name, model_config,
                                     json.loads(config.get("train", "{}")))
        train_config = dataclasses.replace(train_config, checkpoint_dir=checkpoints)
    written = preprocess_config(root)
    spec = written.window.example
    vocabulary = Vocabulary.read(root)
    item_features = ItemFeatures.read(root)

    def build():
        return build_model(name, model_config, num_items=vocabulary.size,
                           item_features=item_features.matrix if item_features.names else None,
                           item_frequencies=vocabulary.frequencies(), example_spec=spec)

    layout = "windows"
    if written.sequences is not None and build().trains_on_sequences:
        layout = "sequences"
        train = read_sequences(os.path.join(split_dir(root, TRAIN_SEQUENCES), "*"),
                               written.sequences, train_config.batch_size,
                               train_config.shuffle_buffer, train_config.seed)
    else:
        train = read_examples(fn_args.train_files, spec, train_config.batch_size,
                              train_config.shuffle_buffer, train_config.seed)
    validation = read_examples(fn_args.eval_files, spec, 512)

    model, history = fit(build, train, validation, train_config,
                         log_dir=fn_args.model_run_dir, strategy=strategy)

    module = UserTowerModule(model, spec)
    tf.saved_model.save(module, fn_args.serving_model_dir, signatures=module.signatures())
    extra = os.path.join(fn_args.serving_model_dir, "assets.extra")
    tf.io.gfile.makedirs(extra)
    with tf.io.gfile.GFile(os.path.join(fn_args.serving_model_dir, CORPUS_EMBEDDINGS), "wb") as f:
        np.save(f, np.asarray(model.corpus_embeddings(), dtype=np.float32))
    with tf.io.gfile.GFile(os.path.join(extra, "training.json"), "w") as f:
        json.dump({"model": name, "model_config": model_config, "layout": layout,
                   "train": json.loads(config.get("train", "{}")),
                   "history": {k: [float(v) for v in vs] for k, vs in history.items()}}, f,
                  indent=2)
    if checkpoints and tf.io.gfile.exists(checkpoints):
        tf.io.gfile.rmtree(checkpoints)  # exported: a later run on the same inputs retrains
