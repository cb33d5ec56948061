"""What every retrieval model of the registry shares: items, the item tower and the tower loss.

A model is a :class:`tensorflow_recommenders.Model` with

* an item side: :class:`~t2diff_tf.layers.items.ItemRepresentation` (id embedding + side
  features, also used for the user's behaviours) followed by a feed-forward item tower;
* a user side that subclasses define in :meth:`RetrievalModel.user_tower`;
* a :class:`tensorflow_recommenders.tasks.Retrieval` task for the tower loss, either a full
  softmax over the whole corpus (items ``1..N``) or a sampled softmax with in-batch negatives,
  logQ correction and accidental-hit removal.

``compute_loss`` returns ``L_tower + auxiliary`` (T2Diff: ``lambda * L_KL``), both per example
(averaged over the batch; divided by the number of replicas under a distribution strategy, whose
gradients are summed), and tracks them as the metrics ``tower_loss`` and ``auxiliary_loss``.
"""

from __future__ import annotations

import abc
import dataclasses
from typing import Dict, Mapping, Optional, Sequence, Tuple

import numpy as np
import tensorflow as tf
import tensorflow_recommenders as tfrs

from t2diff_tf import features as F
from t2diff_tf.layers.items import ItemRepresentation

FULL_SOFTMAX = "full_softmax"
SAMPLED_SOFTMAX = "sampled_softmax"
LOSS_KINDS = (FULL_SOFTMAX, SAMPLED_SOFTMAX)

Features = Mapping[str, tf.Tensor]


@dataclasses.dataclass(frozen=True)
class LossConfig:
    """The tower loss.

    Attributes:
      kind: ``"full_softmax"`` (every item ``1..N`` is a negative; default) or
        ``"sampled_softmax"`` (the batch's targets are the candidates, logits corrected by
        ``log Q(item)`` from the item frequencies, accidental hits removed).
      temperature: divides the logits; ``None`` = 1.
    """

    kind: str = FULL_SOFTMAX
    temperature: Optional[float] = None

    def __post_init__(self):
        if self.kind not in LOSS_KINDS:
            raise ValueError(f"loss kind must be one of {LOSS_KINDS}, got {self.kind!r}")
        if self.temperature is not None and self.temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")


def feed_forward(units: Sequence[int], output_dim: int, activation: str = "swish",
                 name: Optional[str] = None) -> tf.keras.Sequential:
    """``Dense(u, activation)`` for ``u`` in ``units``, then a linear ``Dense(output_dim)``."""
    return tf.keras.Sequential(
        [tf.keras.layers.Dense(u, activation=activation) for u in units]
        + [tf.keras.layers.Dense(output_dim)], name=name)


class RetrievalModel(tfrs.Model, abc.ABC):
    """Base of the registry's models (see the module docstring).

    Args:
      num_items: ``N``; item ids are ``1..N``, 0 is padding.
      embedding_dim: ``d`` of item vectors and of both towers' outputs.
      item_tower_units: hidden widths of the item tower.
      loss: the tower loss.
      item_features: optional multi-hot side features ``[N + 1, G]``.
      item_frequencies: ``[N + 1]`` probabilities of each item as a target (needed by the sampled
        softmax's logQ correction; e.g. the vocabulary's frequencies).
      example_spec: shapes of the input windows.
      item_embedding_stddev: the item embeddings start from ``N(0, item_embedding_stddev)``.
    """

    def __init__(self, num_items: int, embedding_dim: int, item_tower_units: Sequence[int],
                 loss: LossConfig = LossConfig(), item_features: Optional[np.ndarray] = None,
                 item_frequencies: Optional[np.ndarray] = None,
                 example_spec: F.ExampleSpec = F.ExampleSpec(), name: Optional[str] = None,
                 item_embedding_stddev: float = 0.1):
        super().__init__(name=name)
        if num_items < 1:
            raise ValueError(f"num_items must be >= 1, got {num_items}")
        self.num_items = int(num_items)
        self.embedding_dim = int(embedding_dim)
        self.example_spec = example_spec
        self.loss_config = loss
        self.items = ItemRepresentation(num_items, embedding_dim, item_features,
                                        initial_stddev=item_embedding_stddev, name="items")
        self.item_tower = feed_forward(item_tower_units, embedding_dim, name="item_tower")
        self._sampling_probability = None
        if loss.kind == SAMPLED_SOFTMAX:
            if item_frequencies is None:
                raise ValueError("the sampled softmax needs item_frequencies ([num_items + 1]) "
                                 "for its logQ correction")
            frequencies = np.asarray(item_frequencies, dtype=np.float32)
            if frequencies.shape != (self.num_items + 1,):
                raise ValueError(f"item_frequencies must have shape [{self.num_items + 1}], "
                                 f"got {frequencies.shape}")
            self._sampling_probability = tf.constant(frequencies / max(frequencies.sum(), 1e-12))
        self.task = tfrs.tasks.Retrieval(
            loss=tf.keras.losses.CategoricalCrossentropy(
                from_logits=True, reduction=tf.keras.losses.Reduction.SUM),
            temperature=loss.temperature,
            remove_accidental_hits=loss.kind == SAMPLED_SOFTMAX,
            name="retrieval")
        self.tower_loss_tracker = tf.keras.metrics.Mean(name="tower_loss")
        self.auxiliary_loss_tracker = tf.keras.metrics.Mean(name="auxiliary_loss")

    # Whether ``compute_loss`` learns from every position of a sequence chunk
    # (``t2diff_tf.features.sequence_as_window``): next-item models do; per-target models
    # (T2Diff, the two-towers, ...) train on windows.
    trains_on_sequences = False

    # -- towers ---------------------------------------------------------------------------------

    @abc.abstractmethod
    def user_tower(self, features: Features, training: bool = False
                   ) -> Tuple[tf.Tensor, tf.Tensor]:
        """``(e_u [batch, d], auxiliary loss scalar)`` from the query features (and, when the
        model needs it in training, the target)."""

    def query_embeddings(self, features: Features, training: bool = False) -> tf.Tensor:
        """User embeddings ``e_u`` ``[batch, d]`` from the ``QUERY_FEATURES`` of a batch."""
        query = {name: features[name] for name in F.QUERY_FEATURES if name in features}
        return self.user_tower(query, training=training)[0]

    def candidate_embeddings(self, item_ids: tf.Tensor) -> tf.Tensor:
        """Item tower: ids ``[n]`` -> ``[n, d]``."""
        return self.item_tower(self.items(item_ids))

    def corpus_ids(self) -> tf.Tensor:
        """Every item id ``1..N`` as ``[N]`` int64 (padding 0 excluded)."""
        return tf.range(1, self.num_items + 1, dtype=tf.int64)

    def corpus_embeddings(self) -> tf.Tensor:
        """``[N, d]`` embeddings of items ``1..N`` (row ``i`` is item ``i + 1``)."""
        return self.candidate_embeddings(self.corpus_ids())

    def call(self, features: Features, training: bool = False) -> tf.Tensor:
        return self.query_embeddings(features, training=training)

    # -- losses ---------------------------------------------------------------------------------

    def tower_loss(self, query: tf.Tensor, target: tf.Tensor) -> tf.Tensor:
        """Softmax loss of ``query`` ``[batch, d]`` against the ``target`` ids ``[batch]``."""
        target = tf.cast(target, tf.int64)
        batch = tf.shape(query)[0]
        positives = self.candidate_embeddings(target)
        if self.loss_config.kind == FULL_SOFTMAX:
            # Row i's positive is candidate i (the task's convention); every corpus item but the
            # target follows as a negative, and the other rows' positives are masked out, so the
            # softmax runs over exactly the N items.
            corpus = self.corpus_ids()
            candidates = tf.concat([positives, self.candidate_embeddings(corpus)], axis=0)
            score_mask = tf.concat([
                tf.cast(tf.eye(batch), tf.bool),
                tf.not_equal(corpus[None, :], target[:, None]),
            ], axis=1)
            loss = self.task(query, candidates, score_mask=score_mask,
                             compute_metrics=False, compute_batch_metrics=False)
        else:
            loss = self.task(query, positives,
                             candidate_sampling_probability=tf.gather(
                                 self._sampling_probability, target),
                             candidate_ids=target,
                             compute_metrics=False, compute_batch_metrics=False)
        return loss / tf.cast(batch, loss.dtype)

    def compute_loss(self, features: Features, training: bool = False) -> tf.Tensor:
        query, auxiliary = self.user_tower(features, training=training)
        return self.total_loss(self.tower_loss(query, features[F.TARGET]), auxiliary)

    def total_loss(self, tower: tf.Tensor, auxiliary=0.0) -> tf.Tensor:
        """``tower + auxiliary``, tracked as ``tower_loss`` / ``auxiliary_loss``, scaled for the
        distribution strategy. Every ``compute_loss`` ends here.

        Under a strategy the replicas' gradients are summed, so the loss is divided by the
        number of replicas: the update is that of the mean over the global batch.
        """
        self.tower_loss_tracker.update_state(tower)
        self.auxiliary_loss_tracker.update_state(auxiliary)
        replicas = tf.distribute.get_strategy().num_replicas_in_sync
        return (tower + auxiliary) / float(replicas)

    # -- serving --------------------------------------------------------------------------------

    def query_input_signature(self) -> Dict[str, tf.TensorSpec]:
        """``{name: TensorSpec}`` of the ``QUERY_FEATURES`` with a batch dimension."""
        return F.query_input_specs(self.example_spec)

    def serving_user_tower(self, jit_compile: bool = False
                           ) -> tf.types.experimental.GenericFunction:
        """``tf.function``: query features -> ``{"user_embedding": [batch, d]}`` (inference).

        Its input signature is :meth:`query_input_signature`, so it can be exported as a
        SavedModel signature (see ``t2diff_tf.serving`` for the full TF Serving export).

        Args:
          jit_compile: compile the tower with XLA. For in-process inference (batch scoring,
            benchmarks): it fuses the reverse chain's many small ops and halves T2Diff's
            latency on CPU (see BENCHMARKS.md). Each new batch size compiles once. Leave it off
            for a SavedModel meant for TF Serving, whose XLA-on-CPU support is experimental.
        """
        return tf.function(
            lambda features: {"user_embedding": self.query_embeddings(features, training=False)},
            input_signature=[self.query_input_signature()], jit_compile=jit_compile)

    def brute_force_index(self, k: int = 100) -> tfrs.layers.factorized_top_k.BruteForce:
        """A TFRS ``BruteForce`` top-K index of the corpus (ids ``1..N``) behind the user tower.

        ``index(features, k)`` -> ``(scores [batch, k], item ids [batch, k])``. The corpus
        embeddings are a snapshot: rebuild the index after training further.
        """
        index = tfrs.layers.factorized_top_k.BruteForce(QueryTower(self), k=min(k, self.num_items))
        index.index(self.corpus_embeddings(), self.corpus_ids())
        return index

    # -- helpers --------------------------------------------------------------------------------

    def model_config(self) -> Dict[str, object]:
        """A JSON-friendly description (configuration and data shapes) for manifests; the
        model's own configuration (``self.config``, when it has one) under ``"config"``."""
        description = {
            "class": type(self).__name__,
            "num_items": self.num_items,
            "embedding_dim": self.embedding_dim,
            "num_item_features": self.items.num_features,
            "example_spec": dataclasses.asdict(self.example_spec),
            "loss": dataclasses.asdict(self.loss_config),
        }
        config = getattr(self, "config", None)
        if dataclasses.is_dataclass(config):
            description["config"] = dataclasses.asdict(config)
        return description


class QueryTower(tf.keras.Model):
    """A model's user tower as a Keras model: query features -> ``e_u`` (inference mode).

    The ``query_model`` of TFRS top-K layers (they call it with the feature dict only).
    """

    def __init__(self, model: RetrievalModel, **kwargs):
        super().__init__(**kwargs)
        self.retrieval_model = model

    def call(self, features: Features) -> tf.Tensor:
        return self.retrieval_model.query_embeddings(features, training=False)
