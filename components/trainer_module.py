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
L``), every model learns from every training interaction: a model that reads whole sequences
(``model.trains_on_sequences``: SASRec, GRU4Rec, Mamba4Rec, STOSA, ...) trains on the chunks;
a per-target model (T2Diff, its ablations, the two-towers) trains on one window per labelled
chunk position, built in the input pipeline (``t2diff_tf.sequence_windows``) with the window
shape and session rule the preprocessing used. Without chunks every model trains on the
training windows (capped per user by ``--max-train-windows-per-user``: the paper's protocol).
``training.json`` records which layout was used.

* Warm start: when the Trainer has a ``base_model`` (the pipeline's ``--warm-start`` wires the
  latest blessed model of the pipeline into it), training starts from that model's weights, item
  rows mapped through the raw ids (``components.base_model.warm_start_from``); new items get
  fresh rows. ``training.json`` records what was copied, mapped and kept.

* ``checkpoint_root`` -- where training checkpoints every epoch (``<pipeline root>/
  checkpoints``), in a folder named by a fingerprint of the examples, the model and the training
  configuration: a Trainer killed mid-run and run again on the same inputs resumes after its last
  finished epoch. The folder is removed once the model is exported.

Writes to ``fn_args.serving_model_dir`` the user-tower SavedModel (``serving_default`` over the
query features -> ``user_embedding``, plus ``serve_tf_examples``) with
``assets.extra/corpus_embeddings.npy`` (``[N, d]``, row ``i`` = item ``i + 1``) and
``assets.extra/training.json`` (model, configs, example spec, per-epoch history, warm start),
and the vocabulary and item features (``assets.extra/item_vocabulary.tsv``,
``item_features.tsv``): what a later run needs to rank its data with this model or warm-start
from it. TensorBoard logs go to
``fn_args.model_run_dir``.
"""

import hashlib
import json
import os

import dataclasses

import numpy as np
import tensorflow as tf

from components.base_model import warm_start_from, write_model_assets
from components.evaluator import CORPUS_EMBEDDINGS, preprocess_config
from components.preprocessing.config import TRAIN_SEQUENCES
from components.preprocessing.transforms import STATS_FILE, split_dir
from components.preprocessing.vocabulary import ItemFeatures, Vocabulary
from t2diff_tf import features as F
from t2diff_tf.models.registry import build_model
from t2diff_tf.progress import TrainingProgress, verbose_requested
from t2diff_tf.serving.signatures import UserTowerModule
from t2diff_tf.training import (TrainConfig, fit, make_strategy, read_examples,
                                read_sequence_windows, read_sequences)

# Training layouts (``training.json``): the capped windows, whole chunks, a window per chunk
# position.
WINDOWS, SEQUENCES, SEQUENCE_WINDOWS = "windows", "sequences", "sequence_windows"


def examples_root(file_pattern: str) -> str:
    """``<examples uri>/Split-train/*`` -> ``<examples uri>``."""
    return os.path.dirname(os.path.dirname(file_pattern))


def steps_per_epoch(examples_uri: str, layout: str, train_config: TrainConfig):
    """Training steps in one epoch, from the example counts in ``stats.json`` (``None`` when
    they are not there); for the progress lines and the time estimate."""
    stats_path = os.path.join(examples_uri, STATS_FILE)
    if not tf.io.gfile.exists(stats_path):
        return None
    with tf.io.gfile.GFile(stats_path) as f:
        stats = json.load(f)
    examples = stats.get("examples", {})
    count = {SEQUENCES: examples.get(TRAIN_SEQUENCES), WINDOWS: examples.get("train"),
             SEQUENCE_WINDOWS: stats.get("sequence_labels")}[layout]
    if not count:
        return None
    steps = -(-int(count) // train_config.batch_size)
    return min(steps, train_config.steps_per_epoch) if train_config.steps_per_epoch else steps


def checkpoint_dir(checkpoint_root: str, examples_uri: str, name: str, model_config: dict,
                   train: dict, base_model: str = None) -> str:
    """The checkpoint folder of one training job: the same inputs (warm-start base included)
    give the same folder."""
    inputs = {"examples": examples_uri, "model": name, "model_config": model_config,
              "train": train}
    if base_model:
        inputs["base_model"] = base_model
    key = json.dumps(inputs, sort_keys=True)
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
                                     json.loads(config.get("train", "{}")),
                                     getattr(fn_args, "base_model", None))
        train_config = dataclasses.replace(train_config, checkpoint_dir=checkpoints)
    written = preprocess_config(root)
    spec = written.window.example
    vocabulary = Vocabulary.read(root)
    item_features = ItemFeatures.read(root)

    # Positional embeddings for every chunk position when the chunks are longer than the windows.
    model_spec = F.model_example_spec(spec, written.sequences)

    def build():
        return build_model(name, model_config, num_items=vocabulary.size,
                           item_features=item_features.matrix if item_features.names else None,
                           item_frequencies=vocabulary.frequencies(), example_spec=model_spec)

    layout = WINDOWS
    chunks = os.path.join(split_dir(root, TRAIN_SEQUENCES), "*")
    if written.sequences is not None and build().trains_on_sequences:
        layout = SEQUENCES
        train = read_sequences(chunks, written.sequences, train_config.batch_size,
                               train_config.shuffle_buffer, train_config.seed,
                               num_buckets=train_config.length_buckets,
                               positions_per_batch=train_config.positions_per_batch,
                               num_time_lag_buckets=spec.num_time_lag_buckets)
    elif written.sequences is not None:
        layout = SEQUENCE_WINDOWS
        train = read_sequence_windows(chunks, written.sequences, written.window.sequence_windows(),
                                      train_config.batch_size, train_config.shuffle_buffer,
                                      train_config.seed)
    else:
        train = read_examples(fn_args.train_files, spec, train_config.batch_size,
                              train_config.shuffle_buffer, train_config.seed)
    validation = read_examples(fn_args.eval_files, spec, 512)

    # One line per update instead of Keras's output (kept with --verbose): an estimate of the
    # whole training, a line at least every 30 s within an epoch, one per finished epoch.
    progress = TrainingProgress(name, train_config.epochs,
                                steps_per_epoch=steps_per_epoch(root, layout, train_config),
                                batch_size=train_config.batch_size,
                                epoch_metrics=(f"val_{train_config.selection_metric}",))
    if not verbose_requested():
        train_config = dataclasses.replace(train_config, verbose=0)
    base_model = getattr(fn_args, "base_model", None)
    warm_start = {"base_model": None, "used": False, "reason": "no base model"}

    def build_for_training():
        model = build()
        if base_model:
            warm_start.update(warm_start_from(
                base_model, model, name, model_config, model_spec, vocabulary,
                item_features.matrix if item_features.names else None))
            print(f"Trainer: warm start from {base_model}: "
                  + (warm_start["summary"] if warm_start["used"]
                     else f"not used ({warm_start['reason']}); training from scratch"))
        return model

    model, history = fit(build_for_training, train, validation, train_config, callbacks=[progress],
                         log_dir=fn_args.model_run_dir, strategy=strategy)

    module = UserTowerModule(model, spec)
    tf.saved_model.save(module, fn_args.serving_model_dir, signatures=module.signatures())
    extra = os.path.join(fn_args.serving_model_dir, "assets.extra")
    tf.io.gfile.makedirs(extra)
    with tf.io.gfile.GFile(os.path.join(fn_args.serving_model_dir, CORPUS_EMBEDDINGS), "wb") as f:
        np.save(f, np.asarray(model.corpus_embeddings(), dtype=np.float32))
    write_model_assets(fn_args.serving_model_dir, root)
    with tf.io.gfile.GFile(os.path.join(extra, "training.json"), "w") as f:
        json.dump({"model": name, "model_config": model_config, "layout": layout,
                   "example_spec": dataclasses.asdict(model_spec), "num_items": vocabulary.size,
                   "warm_start": warm_start,
                   "train": json.loads(config.get("train", "{}")),
                   "history": {k: [float(v) for v in vs] for k, vs in history.items()}}, f,
                  indent=2)
    if checkpoints and tf.io.gfile.exists(checkpoints):
        tf.io.gfile.rmtree(checkpoints)  # exported: a later run on the same inputs retrains
