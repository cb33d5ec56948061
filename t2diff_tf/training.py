"""Training any registry model: tf.data input, validation-based early stopping, strategies.

    model, history = fit(lambda: build_model("t2diff", config, num_items=N), train, validation,
                         TrainConfig(epochs=20))

``fit`` builds the model inside the distribution strategy's scope (default, ``mirrored``, or
``multi_worker_mirrored`` from ``TF_CONFIG``), trains with Adam, computes the full-corpus
validation metric after every epoch (``val_recall@20`` by default), stops when it has not improved
for ``early_stopping_patience`` epochs and restores the best weights: model selection on the
validation split only.

Training data comes in two layouts: windows (``read_examples`` / ``arrays_dataset``) and
sequence chunks (``read_sequences`` / ``sequence_arrays_dataset``), batched with every length
mixed (the default) or within length buckets, optionally sized by positions
(``TrainConfig.length_buckets``, ``positions_per_batch``), and trimmed of the left padding every
row of a batch shares. A per-target model reads the same chunks as one window
per labelled position (``read_sequence_windows`` / ``sequence_windows_dataset``), so it learns
from every training interaction too.

With ``TrainConfig.checkpoint_dir`` training is resumable: the model and optimizer are
checkpointed after every epoch (Keras ``BackupAndRestore``), and so are every epoch's logs, the
selection state and the best weights; running the same command again continues after the last
finished epoch, and a run that had finished only restores its selected weights. The returned
history covers every epoch of the run, including those of a killed process, with the training
seconds so far (``train_seconds``) after each.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from typing import Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import tensorflow as tf

from t2diff_tf import features as F
from t2diff_tf import metrics as M
from t2diff_tf.learning_rate import EpochLearningRate, LearningRateSchedule
from t2diff_tf.sequence_windows import SequenceWindowConfig, chunk_windows

STRATEGIES = ("default", "mirrored", "multi_worker_mirrored")

Arrays = Mapping[str, np.ndarray]


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """How to train.

    Attributes:
      epochs: maximum passes over the training windows.
      batch_size: global batch size (split across replicas).
      learning_rate: Adam's (base) learning rate.
      adam_beta_2: Adam's second-moment decay (0.999, Keras's; both HSTU references use 0.98,
        which forgets old gradient scales faster).
      learning_rate_schedule: how the rate moves over epochs (``learning_rate.py``; default
        constant).
      shuffle_buffer: examples in the shuffle buffer.
      early_stopping_patience: epochs without a better validation metric before stopping
        (0 disables early stopping; the best epoch is restored either way).
      selection_metric: the validation metric that selects the epoch, e.g. ``"recall@20"``.
      steps_per_epoch: cap on steps per epoch (``None``: one pass).
      strategy: ``"default"``, ``"mirrored"`` (all local devices) or ``"multi_worker_mirrored"``
        (workers from ``TF_CONFIG``).
      seed: seeds weights and shuffling.
      verbose: Keras progress output (0, 1 or 2).
      exclude_seen: validation ranks without the items the user has seen (``seen_items`` when
        the validation examples carry it, else the history window).
      checkpoint_dir: makes training resumable (see the module docstring); ``None``: off.
      time_budget_seconds: stop after the epoch in which the training wall time (validation
        excluded) reaches this budget; the best validation epoch so far is restored, so the
        model is the one a user would have after that much training. ``None``: no budget.
      length_buckets: sequence layout only: chunks are batched within this many length ranges
        (:func:`batch_sequences`). 1 (the default) batches chunks of every length together:
        every label weighs alike in expectation, as in SASRec's reference training, at the
        cost of padding to the longest chunk of each batch. More buckets trim padding but give
        a batch of short chunks (few labels) the same step as a batch of long ones, so each
        label of a short history weighs more; on ML-1M at L = 200, 8 buckets weigh it about
        12x and cost SASRec about 0.01 Recall@10 on test (BENCHMARKS.md, "Width"), unless
        ``positions_per_batch`` sizes the batches.
      positions_per_batch: sequence layout only: instead of ``batch_size`` chunks, each batch
        holds ``positions_per_batch // longest`` chunks, ``longest`` the upper length of its
        bucket (token batching, as in machine translation). With several length buckets a
        batch of short chunks then holds many more of them, so every batch carries about as
        many labels, each label weighs about alike, and padding stays small. ``None``:
        ``batch_size`` chunks per batch.
    """

    epochs: int = 10
    batch_size: int = 256
    learning_rate: float = 1e-3
    adam_beta_2: float = 0.999
    learning_rate_schedule: LearningRateSchedule = LearningRateSchedule()
    shuffle_buffer: int = 100_000
    early_stopping_patience: int = 2
    selection_metric: str = "recall@20"
    steps_per_epoch: Optional[int] = None
    strategy: str = "default"
    seed: int = 0
    verbose: int = 2
    exclude_seen: bool = False
    checkpoint_dir: Optional[str] = None
    time_budget_seconds: Optional[float] = None
    length_buckets: int = 1
    positions_per_batch: Optional[int] = None

    def __post_init__(self):
        if self.epochs < 1 or self.batch_size < 1 or self.learning_rate <= 0:
            raise ValueError("epochs and batch_size must be >= 1 and learning_rate > 0")
        if not 0.0 < self.adam_beta_2 < 1.0:
            raise ValueError(f"adam_beta_2 must be in (0, 1), got {self.adam_beta_2}")
        if self.length_buckets < 1:
            raise ValueError(f"length_buckets must be >= 1, got {self.length_buckets}")
        if self.positions_per_batch is not None and self.positions_per_batch < 1:
            raise ValueError(f"positions_per_batch must be >= 1 or None, got "
                             f"{self.positions_per_batch}")
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
        values = dict(values)
        if "learning_rate_schedule" in values:
            values["learning_rate_schedule"] = LearningRateSchedule.from_dict(
                values["learning_rate_schedule"])
        return cls(**values)


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


def _serialized_records(file_patterns: Union[str, Sequence[str]], shuffle_buffer: int,
                        seed: int) -> tf.data.Dataset:
    """The serialized records of gzipped TFRecord files (globs allowed), optionally shuffled."""
    patterns = [file_patterns] if isinstance(file_patterns, str) else list(file_patterns)
    files = sorted(f for pattern in patterns for f in tf.io.gfile.glob(pattern))
    if not files:
        raise ValueError(f"no TFRecord file matches {patterns}")
    dataset = tf.data.TFRecordDataset(files, compression_type="GZIP",
                                      num_parallel_reads=tf.data.AUTOTUNE)
    if shuffle_buffer:
        dataset = dataset.shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=True)
    return dataset


def read_examples(file_patterns: Union[str, Sequence[str]], spec: F.ExampleSpec,
                  batch_size: int, shuffle_buffer: int = 0, seed: int = 0,
                  with_user_id: bool = True) -> tf.data.Dataset:
    """Gzipped tf.Example TFRecords (the preprocessing's ``Split-*`` files) -> batched dicts.

    Sequence features come out ``[batch, L]`` int64, scalars ``[batch]``.
    """
    dataset = _serialized_records(file_patterns, shuffle_buffer, seed)
    dataset = dataset.batch(batch_size).map(
        lambda s: spec.parse(s, with_user_id=with_user_id), num_parallel_calls=tf.data.AUTOTUNE)
    return dataset.prefetch(tf.data.AUTOTUNE)


def arrays_dataset(arrays: Arrays, batch_size: int, shuffle_buffer: int = 0,
                   seed: int = 0) -> tf.data.Dataset:
    """In-memory window arrays (``components.preprocessing.inmemory``) -> batched dicts
    (with ``seen_items`` when the arrays have it, for evaluation)."""
    names = F.QUERY_FEATURES + (F.TARGET,) + tuple(n for n in (F.SEEN_ITEMS,) if n in arrays)
    dataset = tf.data.Dataset.from_tensor_slices({n: arrays[n] for n in names})
    if shuffle_buffer:
        dataset = dataset.shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=True)
    return dataset.batch(batch_size).prefetch(tf.data.AUTOTUNE)


def _trim_left_padding(batch: Dict[str, tf.Tensor]) -> Dict[str, tf.Tensor]:
    """Drops the leading columns that are padding in every row of a batch of chunks:
    ``sequence_*`` ``[batch, L + 1]`` -> ``[batch, l + 1]``, ``l + 1`` the longest chunk."""
    width = tf.shape(batch[F.SEQUENCE_ITEMS])[1]
    keep = tf.maximum(tf.cast(tf.reduce_max(batch[F.SEQUENCE_LENGTH]), tf.int32), 2)
    start = width - tf.minimum(keep, width)
    return {name: value[:, start:] if name in F.CHUNK_FEATURES else value
            for name, value in batch.items()}


def batch_sequences(dataset: tf.data.Dataset, batch_size: int, num_buckets: int = 1,
                    max_length: Optional[int] = None,
                    positions_per_batch: Optional[int] = None,
                    num_time_lag_buckets: int = F.ExampleSpec.num_time_lag_buckets
                    ) -> tf.data.Dataset:
    """Unbatched chunk dicts -> batches of chunks (of similar lengths with several buckets),
    left padding trimmed, as next-item features (``history`` ``[batch, l]``, ``target``
    ``[batch]``; see :func:`t2diff_tf.features.sequence_as_window`).

    Chunks are grouped into ``num_buckets`` length ranges of equal width; a bucket emits a batch
    when it holds ``batch_size`` chunks (the rest at the end of the pass). With one bucket (the
    default) a batch mixes every length, so each label weighs alike; see
    ``TrainConfig.length_buckets`` for what more buckets cost.

    With ``positions_per_batch`` a bucket whose chunks have at most ``u`` items emits batches of
    ``max(1, positions_per_batch // u)`` chunks instead (``batch_size`` is then unused): every
    padded batch ``[chunks, u]`` holds at most ``positions_per_batch`` positions, and batches
    of short chunks hold more chunks, so labels per batch, and so each label's weight in the
    batch-mean loss, stay about equal across buckets.
    """
    max_length = int(max_length or 1)
    width = max(1, -(-max_length // num_buckets))

    def bucket(chunk):
        # Clamped: a chunk of exactly ``max_length`` items belongs to the last bucket.
        return tf.minimum(tf.cast(chunk[F.SEQUENCE_LENGTH], tf.int64) // width,
                          num_buckets - 1)

    def chunks_per_batch(key):
        if positions_per_batch is None:
            return tf.constant(batch_size, tf.int64)
        longest = tf.minimum((key + 1) * width, max_length)
        return tf.maximum(tf.constant(1, tf.int64), positions_per_batch // longest)

    dataset = dataset.group_by_window(
        bucket, lambda key, chunks: chunks.batch(chunks_per_batch(key)),
        window_size_func=chunks_per_batch)
    return dataset.map(lambda b: F.sequence_as_window(_trim_left_padding(b),
                                                      num_time_lag_buckets),
                       num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE)


def read_sequences(file_patterns: Union[str, Sequence[str]], spec: F.SequenceSpec,
                   batch_size: int, shuffle_buffer: int = 0, seed: int = 0,
                   num_buckets: int = 1,
                   positions_per_batch: Optional[int] = None,
                   num_time_lag_buckets: int = F.ExampleSpec.num_time_lag_buckets
                   ) -> tf.data.Dataset:
    """Gzipped sequence-chunk TFRecords (``Split-train_sequences``) -> batches
    of next-item features (see :func:`batch_sequences`; ``num_time_lag_buckets``: the
    windows' ``ExampleSpec``'s)."""
    dataset = _serialized_records(file_patterns, shuffle_buffer, seed)
    dataset = dataset.map(lambda s: spec.parse(s[None], with_user_id=False),
                          num_parallel_calls=tf.data.AUTOTUNE).unbatch()
    return batch_sequences(dataset, batch_size, num_buckets, spec.chunk_length,
                           positions_per_batch, num_time_lag_buckets)


def sequence_arrays_dataset(arrays: Arrays, batch_size: int, shuffle_buffer: int = 0,
                            seed: int = 0, num_buckets: int = 1,
                            positions_per_batch: Optional[int] = None,
                            num_time_lag_buckets: int = F.ExampleSpec.num_time_lag_buckets
                            ) -> tf.data.Dataset:
    """In-memory chunk arrays (``inmemory.chunks_to_arrays``) -> batches of
    next-item features (see :func:`batch_sequences`)."""
    names = tuple(n for n in (F.SEQUENCE_ITEMS, F.SEQUENCE_TIMESTAMPS, F.SEQUENCE_LENGTH)
                  if n in arrays)
    dataset = tf.data.Dataset.from_tensor_slices({n: arrays[n] for n in names})
    if shuffle_buffer:
        dataset = dataset.shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=True)
    return batch_sequences(dataset, batch_size, num_buckets,
                           int(arrays[F.SEQUENCE_ITEMS].shape[1]), positions_per_batch,
                           num_time_lag_buckets)


def windows_from_chunks(chunks: tf.data.Dataset, config: SequenceWindowConfig,
                        batch_size: int, shuffle_buffer: int = 0, seed: int = 0,
                        chunks_per_step: int = 16) -> tf.data.Dataset:
    """Unbatched chunk dicts -> batches of ``batch_size`` windows, one per labelled position
    (:func:`t2diff_tf.sequence_windows.chunk_windows`): a per-target model then learns from
    every training interaction once per pass. Windows are shuffled across chunks through a
    ``shuffle_buffer`` of windows (0: chunk order)."""
    dataset = chunks.map(lambda c: {n: c[n] for n in F.CHUNK_FEATURES}).batch(chunks_per_step)
    dataset = dataset.map(lambda c: chunk_windows(c, config),
                          num_parallel_calls=tf.data.AUTOTUNE).unbatch()
    if shuffle_buffer:
        dataset = dataset.shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=True)
    return dataset.batch(batch_size).prefetch(tf.data.AUTOTUNE)


def read_sequence_windows(file_patterns: Union[str, Sequence[str]], spec: F.SequenceSpec,
                          config: SequenceWindowConfig, batch_size: int,
                          shuffle_buffer: int = 0, seed: int = 0) -> tf.data.Dataset:
    """Gzipped sequence-chunk TFRecords -> batches of windows of every labelled position
    (see :func:`windows_from_chunks`); chunks are shuffled too."""
    dataset = _serialized_records(file_patterns, min(shuffle_buffer, 10_000), seed)
    dataset = dataset.map(lambda s: spec.parse(s[None], with_user_id=False),
                          num_parallel_calls=tf.data.AUTOTUNE).unbatch()
    return windows_from_chunks(dataset, config, batch_size, shuffle_buffer, seed)


def sequence_windows_dataset(arrays: Arrays, config: SequenceWindowConfig, batch_size: int,
                             shuffle_buffer: int = 0, seed: int = 0) -> tf.data.Dataset:
    """In-memory chunk arrays -> batches of windows of every labelled position (see
    :func:`windows_from_chunks`); chunks are shuffled too."""
    dataset = tf.data.Dataset.from_tensor_slices({n: arrays[n] for n in F.CHUNK_FEATURES})
    if shuffle_buffer:
        dataset = dataset.shuffle(len(arrays[F.SEQUENCE_ITEMS]), seed=seed,
                                  reshuffle_each_iteration=True)
    return windows_from_chunks(dataset, config, batch_size, shuffle_buffer, seed)


def _training_features(dataset: tf.data.Dataset) -> tf.data.Dataset:
    """Drops ``user_id`` (a string a replica cannot split) and the timestamp; runs without
    tf.data's autotuner (see :func:`without_autotune`)."""
    keep = F.QUERY_FEATURES + (F.TARGET,)
    dataset = dataset.map(lambda b: {n: b[n] for n in keep if n in b})
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return without_autotune(dataset.with_options(options))


def without_autotune(dataset: tf.data.Dataset) -> tf.data.Dataset:
    """``dataset`` with tf.data's autotuner off.

    Keras makes a new iterator every epoch, and destroying the previous one waits for its
    autotuner thread (``Model::OptimizeLoop``) to wake from a timed sleep whose period grows as
    the iterator lives: on ML-1M at L = 200 that stalled training for 0-53 s between epochs of
    about 85 s (BENCHMARKS.md, "Idle time between epochs"). The input pipelines here are cheap
    beside a training step, and the in-memory ones measured no slower without it (the TFRecord
    readers were not re-timed); ``AUTOTUNE`` parallelism and buffers then take tf.data's fixed
    defaults.
    """
    options = tf.data.Options()
    options.autotune.enabled = False
    return dataset.with_options(options)


# ------------------------------------------------------------------------------------------------
# Validation-based selection


class TrainingClock(tf.keras.callbacks.Callback):
    """Logs ``train_seconds`` after each epoch: the training wall time so far, with the
    validation passes of later callbacks excluded (it must come before them), resumed epochs
    included when started from the last record's ``train_seconds``. With a run's validation
    metrics it is the time-to-quality curve. Stops training once ``train_seconds`` reaches
    ``time_budget_seconds``."""

    def __init__(self, time_budget_seconds: Optional[float] = None, train_seconds: float = 0.0):
        super().__init__()
        self.time_budget_seconds = time_budget_seconds
        self.train_seconds = float(train_seconds)
        self._epoch_start = None

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch_start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        if self._epoch_start is not None:
            self.train_seconds += time.perf_counter() - self._epoch_start
        if logs is not None:
            logs["train_seconds"] = round(self.train_seconds, 2)
        if self.time_budget_seconds is not None and self.train_seconds >= self.time_budget_seconds:
            self.model.stop_training = True


class ValidationRanking(tf.keras.callbacks.Callback):
    """After each epoch, ranks the validation targets over the whole corpus and logs
    ``val_<metric>`` (e.g. ``val_recall@20``) for selection and TensorBoard."""

    def __init__(self, dataset, ks: Sequence[int], exclude_seen: bool = False):
        super().__init__()
        self._dataset = dataset
        self._ks = tuple(ks)
        self._exclude_seen = exclude_seen
        self._ranker = None

    def on_epoch_end(self, epoch, logs=None):
        if self._ranker is None:  # one trace for the whole training, not one per epoch
            self._ranker = M.make_ranker(self.model, self._exclude_seen)
        result = M.evaluate(self.model, self._dataset, ks=self._ks, num_bootstrap=0,
                            exclude_history=self._exclude_seen, ranker=self._ranker)
        if logs is not None:
            logs.update({f"val_{k}": v for k, v in result.metrics.items()})


class EpochStepCount(tf.keras.callbacks.Callback):
    """Counts Keras's training steps from 0 at every epoch.

    Keras takes the length of an epoch of unknown cardinality from the model's step counter at
    the end of the first epoch, for its progress line (``steps/steps``) and time per step. The
    counter is a tracked variable, so ``BackupAndRestore`` restores it: after a resume the line
    showed every step since the run began as one epoch's (``1705/1705 ... 52ms/step`` for an
    epoch of 68 steps of 1.3 s). Restarting it each epoch keeps the line an epoch's. Nothing
    else reads it here: the optimizer keeps its own iteration count, and TensorBoard logs by
    epoch."""

    def on_epoch_begin(self, epoch, logs=None):
        self.model._train_counter.assign(0)


EPOCH_HISTORY_STATE = "epochs.json"
SELECTION_STATE = "selection.json"
BEST_WEIGHTS = "best"


class EpochHistory(tf.keras.callbacks.Callback):
    """Every epoch's logs, kept across a kill: with a ``directory`` they are written after each
    epoch and read back when training starts again, so that a resumed run reports all its
    epochs (Keras's own history holds those of the current process only). A run without
    validation keeps its last weights; :class:`ValidationSelection` adds the selection.

    Args:
      directory: where the state lives; ``None`` keeps it in memory only.
    """

    STATE_FILE = EPOCH_HISTORY_STATE

    def __init__(self, directory: Optional[str] = None):
        super().__init__()
        self.directory = directory
        self.state = self.initial_state()
        if directory and tf.io.gfile.exists(os.path.join(directory, self.STATE_FILE)):
            with tf.io.gfile.GFile(os.path.join(directory, self.STATE_FILE)) as f:
                self.state = json.load(f)

    def initial_state(self) -> dict:
        return {"epochs": [], "finished": False}

    def on_epoch_end(self, epoch, logs=None):
        self.record(epoch, logs)
        self._save()

    def record(self, epoch: int, logs: Optional[dict]) -> dict:
        """Appends epoch ``epoch``'s (0-based) scalar logs to the state and returns them."""
        record = {k: float(v) for k, v in dict(logs or {}).items() if np.isscalar(v)}
        record["epoch"] = epoch + 1
        # An epoch trained again after a kill (its backup had not been written) replaces its
        # earlier record.
        self.state["epochs"] = [r for r in self.state["epochs"] if r["epoch"] <= epoch]
        self.state["epochs"].append(record)
        return record

    def on_train_end(self, logs=None):
        self.state["finished"] = True
        self._save()

    def last_train_seconds(self) -> float:
        """The training wall time recorded by the last epoch so far (0 before any)."""
        return self.state["epochs"][-1].get("train_seconds", 0.0) if self.state["epochs"] else 0.0

    def history(self) -> Dict[str, List[float]]:
        """Keras-style ``{name: [value per epoch]}`` over every epoch, resumed ones included."""
        out: Dict[str, List[float]] = {}
        for record in self.state["epochs"]:
            for name, value in record.items():
                if name != "epoch":
                    out.setdefault(name, []).append(value)
        return out

    def _save(self):
        if self.directory:
            tf.io.gfile.makedirs(self.directory)
            path = os.path.join(self.directory, self.STATE_FILE)
            with tf.io.gfile.GFile(path + ".tmp", "w") as f:
                json.dump(self.state, f)
            tf.io.gfile.rename(path + ".tmp", path, overwrite=True)


class ValidationSelection(EpochHistory):
    """Early stopping on a validation metric that keeps the best weights, and that survives a
    kill: with a ``directory`` its state (per-epoch logs, best epoch, patience left) and the
    best weights are written after every epoch and read back when training starts again.

    Args:
      monitor: the logged metric to maximise (e.g. ``"val_recall@20"``).
      patience: epochs without improvement before stopping (0: never stop early).
      directory: where the state lives; ``None`` keeps it in memory only.
    """

    STATE_FILE = SELECTION_STATE

    def __init__(self, monitor: str, patience: int, directory: Optional[str] = None):
        self.monitor = monitor
        self.patience = int(patience)
        super().__init__(directory)
        self._best_weights = None

    def initial_state(self) -> dict:
        return {"epochs": [], "best": None, "best_epoch": None, "wait": 0, "finished": False}

    @property
    def best_weights_path(self) -> Optional[str]:
        return os.path.join(self.directory, BEST_WEIGHTS) if self.directory else None

    def on_epoch_end(self, epoch, logs=None):
        value = self.record(epoch, logs).get(self.monitor)
        if value is not None and (self.state["best"] is None or value > self.state["best"]):
            self.state.update(best=value, best_epoch=epoch + 1, wait=0)
            self._best_weights = self.model.get_weights()
            if self.directory:
                self.model.save_weights(self.best_weights_path)
        else:
            self.state["wait"] += 1
            if self.patience and self.state["wait"] >= self.patience:
                self.model.stop_training = True
                self.state["stopped_early"] = True
        self._save()

    def on_train_end(self, logs=None):
        super().on_train_end(logs)
        self.restore_best(self.model)

    def restore_best(self, model) -> None:
        """Loads the best weights into ``model`` (no-op before any epoch)."""
        if self._best_weights is not None:
            model.set_weights(self._best_weights)
        elif self.directory and self.state["best_epoch"] is not None:
            model.load_weights(self.best_weights_path)


def fit(build: Callable[[], tf.keras.Model], train: tf.data.Dataset,
        validation: Optional[tf.data.Dataset], config: TrainConfig = TrainConfig(),
        callbacks: Sequence[tf.keras.callbacks.Callback] = (),
        log_dir: Optional[str] = None, strategy: Optional[tf.distribute.Strategy] = None
        ) -> Tuple[tf.keras.Model, Dict[str, List[float]]]:
    """Builds (in the strategy's scope) and trains a model; returns it with the history.

    Args:
      build: makes the model (e.g. ``lambda: build_model(name, cfg, num_items=N)``).
      train: batched training dicts (``read_examples`` / ``arrays_dataset`` for windows,
        ``read_sequences`` / ``sequence_arrays_dataset`` for sequence chunks).
      validation: batched validation dicts, a dict of validation arrays (ranked by
        :func:`t2diff_tf.metrics.evaluate` in batches of 256, sorted by history length for a
        sequence model), or ``None`` to train ``epochs`` without selection.
      config: optimisation, selection and checkpoint settings.
      callbacks: extra Keras callbacks (called after the validation ranking: their epoch-end
        logs hold the ``val_*`` metrics; e.g. ``t2diff_tf.progress.TrainingProgress``).
      log_dir: TensorBoard log directory.
      strategy: an existing strategy (default: ``make_strategy(config.strategy)``; pass one made
        at program start for ``multi_worker_mirrored``).

    Returns:
      The model (best validation epoch restored) and ``{name: [value per epoch]}`` (losses,
      ``val_*`` metrics and ``train_seconds``), resumed epochs included.
    """
    strategy = strategy or make_strategy(config.strategy)
    tf.keras.utils.set_random_seed(config.seed)
    with strategy.scope():
        model = build()
        model.compile(optimizer=tf.keras.optimizers.Adam(config.learning_rate,
                                                         beta_2=config.adam_beta_2))
    # First, so that the epoch's logs (and the selection state) record the rate it used.
    all_callbacks = [EpochLearningRate(config.learning_rate_schedule, config.learning_rate,
                                       config.epochs)]
    directory = config.checkpoint_dir
    # Each epoch's logs, kept across a kill: with validation, with the selection that reads them.
    if validation is not None:
        epochs = ValidationSelection(f"val_{config.selection_metric}",
                                     config.early_stopping_patience,
                                     os.path.join(directory, "selection") if directory else None)
    else:
        epochs = EpochHistory(os.path.join(directory, "epochs") if directory else None)
    # Before validation, whose passes it leaves out; a resumed run's clock goes on from its
    # last recorded epoch.
    all_callbacks.append(TrainingClock(config.time_budget_seconds, epochs.last_train_seconds()))
    if validation is not None:
        if isinstance(validation, tf.data.Dataset):
            validation = without_autotune(validation)
        all_callbacks.append(ValidationRanking(validation, sorted({config.selection_k, 10, 20}),
                                               exclude_seen=config.exclude_seen))
    all_callbacks.append(epochs)
    # The caller's callbacks come after validation, so that their epoch-end logs hold val_*.
    all_callbacks += list(callbacks)
    if directory:
        # Last, so that an epoch's selection state is on disk before its backup.
        all_callbacks.append(tf.keras.callbacks.BackupAndRestore(
            os.path.join(directory, "backup"), delete_checkpoint=False))
        all_callbacks.append(EpochStepCount())
    if log_dir:
        all_callbacks.append(tf.keras.callbacks.TensorBoard(log_dir=log_dir, update_freq="epoch"))
    if directory:
        # Checkpoints restore into existing variables: create them all (towers, loss) first.
        # Through the towers, not ``model(batch)``: calling the model records an input
        # signature, and SavedModel export then traces ``call`` with ``training=True`` and no
        # target, which T2Diff's one-step-denoise training refuses.
        with strategy.scope():
            for batch in _training_features(train).take(1):
                model.query_embeddings(batch)
                model.compute_loss(batch)
    if isinstance(epochs, ValidationSelection) and epochs.state["finished"] and (
            epochs.state.get("stopped_early") or len(epochs.state["epochs"]) >= config.epochs):
        # A finished run: nothing to train; restore the selected weights.
        epochs.restore_best(model)
        return model, epochs.history()
    model.fit(_training_features(train), epochs=config.epochs,
              steps_per_epoch=config.steps_per_epoch, callbacks=all_callbacks,
              verbose=config.verbose)
    return model, epochs.history()
