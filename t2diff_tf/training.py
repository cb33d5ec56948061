"""Training any registry model: tf.data input, validation-based early stopping, strategies.

    model, history = fit(lambda: build_model("t2diff", config, num_items=N), train, validation,
                         TrainConfig(epochs=20))

``fit`` builds the model inside the distribution strategy's scope (default, ``mirrored``, or
``multi_worker_mirrored`` from ``TF_CONFIG``), trains with Adam, computes the full-corpus
validation metric after every epoch (``val_recall@20`` by default), stops when it has not improved
for ``early_stopping_patience`` epochs and restores the best weights: model selection on the
validation split only.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import tensorflow as tf

from t2diff_tf import features as F
from t2diff_tf import metrics as M

STRATEGIES = ("default", "mirrored", "multi_worker_mirrored")

Arrays = Mapping[str, np.ndarray]


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """How to train.

    Attributes:
      epochs: maximum passes over the training windows.
      batch_size: global batch size (split across replicas).
      learning_rate: Adam's learning rate.
      shuffle_buffer: examples in the shuffle buffer.
      early_stopping_patience: epochs without a better validation metric before stopping
        (0 disables early stopping; the best epoch is restored either way).
      selection_metric: the validation metric that selects the epoch, e.g. ``"recall@20"``.
      steps_per_epoch: cap on steps per epoch (``None``: one pass).
      strategy: ``"default"``, ``"mirrored"`` (all local devices) or ``"multi_worker_mirrored"``
        (workers from ``TF_CONFIG``).
      seed: seeds weights and shuffling.
      verbose: Keras progress output (0, 1 or 2).
    """

    epochs: int = 10
    batch_size: int = 256
    learning_rate: float = 1e-3
    shuffle_buffer: int = 100_000
    early_stopping_patience: int = 2
    selection_metric: str = "recall@20"
    steps_per_epoch: Optional[int] = None
    strategy: str = "default"
    seed: int = 0
    verbose: int = 2

    def __post_init__(self):
        if self.epochs < 1 or self.batch_size < 1 or self.learning_rate <= 0:
            raise ValueError("epochs and batch_size must be >= 1 and learning_rate > 0")
        if self.strategy not in STRATEGIES:
            raise ValueError(f"strategy must be one of {STRATEGIES}, got {self.strategy!r}")
        name, _, k = self.selection_metric.partition("@")
        if name not in ("recall", "mrr", "ndcg") or not k.isdigit():
            raise ValueError(f"selection_metric must look like 'recall@20', got "
                             f"{self.selection_metric!r}")

    @property
    def selection_k(self) -> int:
        return int(self.selection_metric.partition("@")[2])

    @classmethod
    def from_dict(cls, values: Mapping[str, object]) -> "TrainConfig":
        return cls(**dict(values))


def make_strategy(name: str) -> tf.distribute.Strategy:
    """The named strategy. Create ``multi_worker_mirrored`` at program start, before any
    TensorFlow op runs (input pipelines included): TF configures collectives only then."""
    if name == "mirrored":
        return tf.distribute.MirroredStrategy()
    if name == "multi_worker_mirrored":
        return tf.distribute.MultiWorkerMirroredStrategy()
    return tf.distribute.get_strategy()


# ------------------------------------------------------------------------------------------------
# Input


def read_examples(file_patterns: Union[str, Sequence[str]], spec: F.ExampleSpec,
                  batch_size: int, shuffle_buffer: int = 0, seed: int = 0,
                  with_user_id: bool = True) -> tf.data.Dataset:
    """Gzipped tf.Example TFRecords (the preprocessing's ``Split-*`` files) -> batched dicts.

    Sequence features come out ``[batch, L]`` int64, scalars ``[batch]``.
    """
    patterns = [file_patterns] if isinstance(file_patterns, str) else list(file_patterns)
    files = sorted(f for pattern in patterns for f in tf.io.gfile.glob(pattern))
    if not files:
        raise ValueError(f"no TFRecord file matches {patterns}")
    dataset = tf.data.TFRecordDataset(files, compression_type="GZIP",
                                      num_parallel_reads=tf.data.AUTOTUNE)
    if shuffle_buffer:
        dataset = dataset.shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=True)
    dataset = dataset.batch(batch_size).map(
        lambda s: spec.parse(s, with_user_id=with_user_id), num_parallel_calls=tf.data.AUTOTUNE)
    return dataset.prefetch(tf.data.AUTOTUNE)


def arrays_dataset(arrays: Arrays, batch_size: int, shuffle_buffer: int = 0,
                   seed: int = 0) -> tf.data.Dataset:
    """In-memory window arrays (``components.preprocessing.inmemory``) -> batched dicts."""
    names = F.QUERY_FEATURES + (F.TARGET,)
    dataset = tf.data.Dataset.from_tensor_slices({n: arrays[n] for n in names})
    if shuffle_buffer:
        dataset = dataset.shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=True)
    return dataset.batch(batch_size).prefetch(tf.data.AUTOTUNE)


def _training_features(dataset: tf.data.Dataset) -> tf.data.Dataset:
    """Drops ``user_id`` (a string a replica cannot split) and the timestamp."""
    keep = F.QUERY_FEATURES + (F.TARGET,)
    dataset = dataset.map(lambda b: {n: b[n] for n in keep})
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return dataset.with_options(options)


# ------------------------------------------------------------------------------------------------
# Validation-based selection


class ValidationRanking(tf.keras.callbacks.Callback):
    """After each epoch, ranks the validation targets over the whole corpus and logs
    ``val_<metric>`` (e.g. ``val_recall@20``) for early stopping and TensorBoard."""

    def __init__(self, dataset, ks: Sequence[int]):
        super().__init__()
        self._dataset = dataset
        self._ks = tuple(ks)
        self.history: List[Dict[str, float]] = []

    def on_epoch_end(self, epoch, logs=None):
        result = M.evaluate(self.model, self._dataset, ks=self._ks, num_bootstrap=0)
        values = {f"val_{k}": v for k, v in result.metrics.items()}
        self.history.append(values)
        if logs is not None:
            logs.update(values)


def fit(build: Callable[[], tf.keras.Model], train: tf.data.Dataset,
        validation: Optional[tf.data.Dataset], config: TrainConfig = TrainConfig(),
        callbacks: Sequence[tf.keras.callbacks.Callback] = (),
        log_dir: Optional[str] = None, strategy: Optional[tf.distribute.Strategy] = None
        ) -> Tuple[tf.keras.Model, Dict[str, List[float]]]:
    """Builds (in the strategy's scope) and trains a model; returns it with the Keras history.

    Args:
      build: makes the model (e.g. ``lambda: build_model(name, cfg, num_items=N)``).
      train: batched training dicts (``read_examples`` / ``arrays_dataset``).
      validation: batched validation dicts, or ``None`` to train ``epochs`` without selection.
      config: optimisation and selection settings.
      callbacks: extra Keras callbacks.
      log_dir: TensorBoard log directory.
      strategy: an existing strategy (default: ``make_strategy(config.strategy)``; pass one made
        at program start for ``multi_worker_mirrored``).
    """
    strategy = strategy or make_strategy(config.strategy)
    tf.keras.utils.set_random_seed(config.seed)
    with strategy.scope():
        model = build()
        model.compile(optimizer=tf.keras.optimizers.Adam(config.learning_rate))
    all_callbacks = list(callbacks)
    if validation is not None:
        monitor = f"val_{config.selection_metric}"
        all_callbacks.append(ValidationRanking(validation, sorted({config.selection_k, 20})))
        all_callbacks.append(tf.keras.callbacks.EarlyStopping(
            monitor=monitor, mode="max", restore_best_weights=True, verbose=0,
            patience=config.early_stopping_patience or config.epochs))
    if log_dir:
        all_callbacks.append(tf.keras.callbacks.TensorBoard(log_dir=log_dir, update_freq="epoch"))
    history = model.fit(_training_features(train), epochs=config.epochs,
                        steps_per_epoch=config.steps_per_epoch, callbacks=all_callbacks,
                        verbose=config.verbose)
    return model, history.history
