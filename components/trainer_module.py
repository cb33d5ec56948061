"""TFX Trainer module: ``run_fn(fn_args)`` trains any registry model from ``custom_config``.

``custom_config``:

* ``model`` -- registry name (``t2diff``, ``mean_pool_two_tower``, ...);
* ``model_config`` -- JSON of the model's config fields (``{}``: defaults);
* ``train`` -- JSON of ``t2diff_tf.training.TrainConfig`` fields (epochs, batch size, learning
  rate, early stopping on the validation split, ``strategy``: ``default`` / ``mirrored`` /
  ``multi_worker_mirrored`` from ``TF_CONFIG``).

The examples artifact of ``PreprocessLogs`` provides the windows (``fn_args.train_files`` /
``eval_files``), the item vocabulary, item features and the example shapes (``stats.json``).

Writes to ``fn_args.serving_model_dir`` the user-tower SavedModel (``serving_default`` over the
query features -> ``user_embedding``, plus ``serve_tf_examples``) with
``assets.extra/corpus_embeddings.npy`` (``[N, d]``, row ``i`` = item ``i + 1``) and
``assets.extra/training.json`` (model, configs, per-epoch history). TensorBoard logs go to
``fn_args.model_run_dir``.
"""

import json
import os

import numpy as np
import tensorflow as tf

from components.evaluator import CORPUS_EMBEDDINGS, example_spec
from components.preprocessing.vocabulary import ItemFeatures, Vocabulary
from t2diff_tf.models.registry import build_model
from t2diff_tf.serving.signatures import UserTowerModule
from t2diff_tf.training import TrainConfig, fit, make_strategy, read_examples


def examples_root(file_pattern: str) -> str:
    """``<examples uri>/Split-train/*`` -> ``<examples uri>``."""
    return os.path.dirname(os.path.dirname(file_pattern))


def run_fn(fn_args) -> None:
    config = fn_args.custom_config or {}
    name = config.get("model", "t2diff")
    model_config = json.loads(config.get("model_config", "{}"))
    train_config = TrainConfig.from_dict(json.loads(config.get("train", "{}")))
    strategy = make_strategy(train_config.strategy)  # before any TF op (multi-worker needs it)

    root = examples_root(fn_args.train_files[0])
    spec = example_spec(root)
    vocabulary = Vocabulary.read(root)
    item_features = ItemFeatures.read(root)
    train = read_examples(fn_args.train_files, spec, train_config.batch_size,
                          train_config.shuffle_buffer, train_config.seed)
    validation = read_examples(fn_args.eval_files, spec, 512)

    def build():
        return build_model(name, model_config, num_items=vocabulary.size,
                           item_features=item_features.matrix if item_features.names else None,
                           item_frequencies=vocabulary.frequencies(), example_spec=spec)

    model, history = fit(build, train, validation, train_config,
                         log_dir=fn_args.model_run_dir, strategy=strategy)

    module = UserTowerModule(model, spec)
    tf.saved_model.save(module, fn_args.serving_model_dir, signatures=module.signatures())
    extra = os.path.join(fn_args.serving_model_dir, "assets.extra")
    tf.io.gfile.makedirs(extra)
    with tf.io.gfile.GFile(os.path.join(fn_args.serving_model_dir, CORPUS_EMBEDDINGS), "wb") as f:
        np.save(f, np.asarray(model.corpus_embeddings(), dtype=np.float32))
    with tf.io.gfile.GFile(os.path.join(extra, "training.json"), "w") as f:
        json.dump({"model": name, "model_config": model_config,
                   "train": json.loads(config.get("train", "{}")),
                   "history": {k: [float(v) for v in vs] for k, vs in history.items()}}, f,
                  indent=2)
