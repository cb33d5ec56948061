"""DAT+: the Dual Augmented Two-tower model with a sequence-aware user tower.

Yu, Wang, Feng & Xue, "A Dual Augmented Two-tower Model for Online Large-scale
Recommendation", DLP-KDD 2021 (DAT); "DAT+" is the T2Diff paper's Table 2 variant whose user
tower reads the behaviour sequence.

Implemented:

* **Adaptive-Mimic Mechanism (AMM).** Each tower's input is concatenated with an augmented
  vector: ``a_v = A_v[i]`` for item ``i`` (a per-item table, as in the paper), and ``a_u`` for the
  user (below). The towers are

  - user: ``p_u = FFN_u(concat([mean_j v(h_j), a_u]))`` over the valid behaviours ``h_j``
    (the mean-pooled history of :mod:`~t2diff_tf.models.two_tower`, DAT+'s sequence input);
  - item: ``p_v = FFN_v(concat([v(i), a_v]))``, used everywhere the corpus is scored
    (:meth:`DAT.candidate_embeddings` is overridden, so ``corpus_embeddings`` and the tower loss
    see the augmented item tower);

  both L2-normalised when ``l2_normalize`` (the paper's cosine score; divide the logits by
  ``loss.temperature``). On the positive pairs ``(u, target)`` of a batch the mimic losses are

  ``L_u = mean_b ||a_u(b) - sg(p_v(target_b))||^2``,
  ``L_v = mean_b ||a_v(target_b) - sg(p_u(b))||^2``

  with ``sg`` the stop-gradient: they train only the augmented vectors, never the towers, the
  item embeddings or the other tower's augmented vectors (the paper's "the gradients of p_u and
  p_v are stopped"). Every row of a batch is a positive pair, and the tower loss
  (:class:`~t2diff_tf.models.base.RetrievalModel`: full or sampled softmax) stands for the
  paper's ``L_p``.
* **Category Alignment Loss (CAL).** With the item side features (genres, multi-hot ``[N + 1,
  G]``), the batch's positive items are grouped by genre, the covariance ``C(S^g)`` ``[d, d]`` of
  their item-tower outputs ``p_v`` is taken per genre, and
  ``L_CA = sum_{g != major} ||C(S^major) - C(S^g)||_F^2``, ``major`` the genre with the most items
  in the batch (ties: the lowest index). CAL does train the item tower.

The auxiliary loss is ``user_mimic_weight * L_u + item_mimic_weight * L_v +
category_alignment_weight * L_CA``, computed in :meth:`DAT.user_tower` whenever the features hold
the ``target`` (training and validation), and 0 without it (inference).

Adaptations and simplifications:

* **The user augmented vector.** The paper looks ``a_u`` up by user id; our windows serve users
  by their history only (``user_id`` is not a query feature and unseen users must be served), so
  ``a_u = mean_j A_u[h_j]``: a second, user-side table indexed by item id and mean-pooled over
  the valid behaviours -- the user is "identified" by the bag of items they consumed, as in
  YouTube-DNN. It stays an embedding lookup whose only parameters are the augmented vectors, so
  the mimic loss still reaches nothing else. ``A_u`` rows are trained to predict the item tower
  output of what follows their item, i.e. an item-to-next-item signal the towers cannot
  exchange otherwise.
* **Multi-genre items.** The paper's items have one category; ours may have several, and an item
  counts in every genre it has. Genres with fewer than two items in the batch have no (unbiased)
  covariance and are left out of the sum; items without side features give ``L_CA = 0``.
* Covariances are unbiased (``1 / (n_g - 1)``); the batch rows are counted as they come (an item
  that is the target of two rows counts twice).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Dict, Optional, Tuple

import numpy as np
import tensorflow as tf

from t2diff_tf import features as F
from t2diff_tf.layers.attention import masked_mean
from t2diff_tf.models.base import Features, LossConfig, RetrievalModel, feed_forward
from t2diff_tf.models.config import DictConfig

USER_MIMIC = "user_mimic_loss"
ITEM_MIMIC = "item_mimic_loss"
CATEGORY_ALIGNMENT = "category_alignment_loss"


@dataclasses.dataclass(frozen=True)
class DATConfig(DictConfig):
    """Hyperparameters of :class:`DAT`.

    Attributes:
      embedding_dim: ``d`` of item vectors, augmented vectors and tower outputs.
      user_tower_units: hidden widths of the user FFN.
      item_tower_units: hidden widths of the item FFN.
      l2_normalize: L2-normalise both towers' outputs (the paper's cosine score); then set a
        ``loss.temperature`` (default 0.05).
      user_mimic_weight: ``lambda_u`` of the user mimic loss ``L_u``.
      item_mimic_weight: ``lambda_v`` of the item mimic loss ``L_v``.
      category_alignment_weight: ``lambda_CA`` of the category alignment loss; 0 disables it.
      loss: the tower loss.
    """

    embedding_dim: int = 64
    user_tower_units: Tuple[int, ...] = (128,)
    item_tower_units: Tuple[int, ...] = (128,)
    l2_normalize: bool = True
    user_mimic_weight: float = 0.5
    item_mimic_weight: float = 0.5
    category_alignment_weight: float = 1.0
    loss: LossConfig = LossConfig(temperature=0.05)

    def __post_init__(self):
        if isinstance(self.loss, dict):
            object.__setattr__(self, "loss", LossConfig(**self.loss))
        for name in ("user_tower_units", "item_tower_units"):
            object.__setattr__(self, name, tuple(int(u) for u in getattr(self, name)))
        if self.embedding_dim < 1:
            raise ValueError(f"embedding_dim must be >= 1, got {self.embedding_dim}")
        for name in ("user_mimic_weight", "item_mimic_weight", "category_alignment_weight"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")


@tf.keras.utils.register_keras_serializable(package="t2diff")
class AugmentedVectors(tf.keras.layers.Layer):
    """DAT's augmented vectors: a table ``[num_items + 1, dim]`` indexed by item id.

    Row 0 (padding) exists only so that ids index rows directly; pooling masks it out.

    Call arguments:
      inputs: int item ids ``[batch]`` or ``[batch, L]``.
      mask: ``None`` for a plain lookup (``[batch]`` -> ``[batch, dim]``), or ``[batch, L]``
        (``True`` at valid positions) to mean-pool the rows of the valid ids
        (``[batch, L]`` -> ``[batch, dim]``; 0 for a row without any).

    Returns:
      ``[..., dim]`` (lookup) or ``[batch, dim]`` (pooled).
    """

    def __init__(self, num_items: int, dim: int, stddev: float = 0.1, **kwargs):
        super().__init__(**kwargs)
        self.num_items = int(num_items)
        self.dim = int(dim)
        self.stddev = float(stddev)

    def build(self, input_shape):
        self.table = self.add_weight(
            name="table", shape=[self.num_items + 1, self.dim],
            initializer=tf.keras.initializers.RandomNormal(stddev=self.stddev))
        super().build(input_shape)

    def call(self, inputs: tf.Tensor, mask: Optional[tf.Tensor] = None) -> tf.Tensor:
        vectors = tf.gather(self.table, tf.cast(inputs, tf.int32))
        if mask is None:
            return vectors
        return masked_mean(vectors, mask)

    def compute_mask(self, inputs, mask=None):
        return None

    def get_config(self) -> Dict[str, Any]:
        config = super().get_config()
        config.update(num_items=self.num_items, dim=self.dim, stddev=self.stddev)
        return config


def category_alignment_loss(embeddings: tf.Tensor, categories: tf.Tensor) -> tf.Tensor:
    """``sum_{g != major} ||C(S^major) - C(S^g)||_F^2`` over the genres of a batch.

    Args:
      embeddings: ``[batch, d]`` item-tower outputs of the batch's items.
      categories: ``[batch, G]`` multi-hot genres of those items (> 0 = member).

    Returns:
      A scalar: 0 when fewer than two genres have at least two items. ``C(S^g)`` is the
      unbiased covariance ``[d, d]`` of the members of genre ``g``; ``major`` has the most members
      (the lowest index among ties); genres with fewer than two members are skipped.
    """
    x = tf.cast(embeddings, tf.float32)
    member = tf.cast(tf.cast(categories, tf.float32) > 0, tf.float32)       # [B, G]
    counts = tf.reduce_sum(member, axis=0)                                    # [G]
    means = tf.math.divide_no_nan(tf.matmul(member, x, transpose_a=True),
                                  counts[:, None])                            # [G, d]
    centred = (x[None, :, :] - means[:, None, :]) * tf.transpose(member)[:, :, None]  # [G, B, d]
    covariances = tf.einsum("gbi,gbj->gij", centred, centred) / tf.maximum(
        counts - 1.0, 1.0)[:, None, None]                                     # [G, d, d]
    major = tf.argmax(counts, output_type=tf.int32)
    gaps = tf.reduce_sum(tf.square(covariances - covariances[major]), axis=[1, 2])  # [G]
    keep = tf.logical_and(counts >= 2.0,
                          tf.not_equal(tf.range(tf.shape(counts)[0]), major))
    keep = tf.logical_and(keep, counts[major] >= 2.0)
    return tf.reduce_sum(tf.where(keep, gaps, tf.zeros_like(gaps)))


class DAT(RetrievalModel):
    """DAT+ (see the module docstring).

    Args:
      config: hyperparameters.
      num_items: ``N``.
      item_features: optional multi-hot side features ``[N + 1, G]`` (genres; they also define
        the categories of the category alignment loss).
      item_frequencies: ``[N + 1]`` target frequencies (sampled softmax only).
      example_spec: window shapes.
    """

    def __init__(self, config: DATConfig = DATConfig(), *, num_items: int,
                 item_features: Optional[np.ndarray] = None,
                 item_frequencies: Optional[np.ndarray] = None,
                 example_spec: F.ExampleSpec = F.ExampleSpec(), name: str = "dat"):
        super().__init__(num_items, config.embedding_dim, config.item_tower_units, config.loss,
                         item_features=item_features, item_frequencies=item_frequencies,
                         example_spec=example_spec, name=name)
        self.config = config
        d = config.embedding_dim
        self.user_augmentation = AugmentedVectors(num_items, d, name="user_augmentation")
        self.item_augmentation = AugmentedVectors(num_items, d, name="item_augmentation")
        self.user_head = feed_forward(config.user_tower_units, d, name="user_head")
        self.user_mimic_tracker = tf.keras.metrics.Mean(name=USER_MIMIC)
        self.item_mimic_tracker = tf.keras.metrics.Mean(name=ITEM_MIMIC)
        self.category_alignment_tracker = tf.keras.metrics.Mean(name=CATEGORY_ALIGNMENT)

    # -- towers ---------------------------------------------------------------------------------

    def _output(self, vectors: tf.Tensor) -> tf.Tensor:
        return tf.math.l2_normalize(vectors, axis=-1) if self.config.l2_normalize else vectors

    def user_augmented_vectors(self, history: tf.Tensor) -> tf.Tensor:
        """``a_u`` ``[batch, d]``: ``A_u`` mean-pooled over the valid ids of ``history``
        ``[batch, L]``."""
        return self.user_augmentation(history, mask=tf.not_equal(history, F.PADDING_ID))

    def _user(self, history: tf.Tensor) -> Tuple[tf.Tensor, tf.Tensor]:
        """``(p_u, a_u)``, both ``[batch, d]``."""
        history = tf.cast(history, tf.int64)
        pooled = masked_mean(self.items(history), tf.not_equal(history, F.PADDING_ID))
        augmented = self.user_augmented_vectors(history)
        return self._output(self.user_head(tf.concat([pooled, augmented], axis=-1))), augmented

    def candidate_embeddings(self, item_ids: tf.Tensor) -> tf.Tensor:
        """Augmented item tower ``p_v = FFN_v(concat([v(i), a_v(i)]))``: ids ``[n]`` -> ``[n, d]``.
        """
        item_ids = tf.cast(item_ids, tf.int64)
        inputs = tf.concat([self.items(item_ids), self.item_augmentation(item_ids)], axis=-1)
        return self._output(self.item_tower(inputs))

    def auxiliary_losses(self, features: Features, training: bool = False
                         ) -> Dict[str, tf.Tensor]:
        """The unweighted auxiliary losses of a batch with its ``target``.

        Returns:
          ``{"user_mimic_loss": L_u, "item_mimic_loss": L_v, "category_alignment_loss": L_CA}``,
          scalars (see the module docstring).
        """
        return self._forward(features, training)[1]

    def _forward(self, features: Features, training: bool
                 ) -> Tuple[tf.Tensor, Optional[Dict[str, tf.Tensor]]]:
        """``(p_u [batch, d], unweighted auxiliary losses or None without a target)``."""
        p_u, a_u = self._user(features[F.HISTORY])
        target = features.get(F.TARGET)
        if target is None:
            return p_u, None
        target = tf.cast(tf.reshape(target, [-1]), tf.int64)
        p_v = self.candidate_embeddings(target)
        a_v = self.item_augmentation(target)
        losses = {
            USER_MIMIC: tf.reduce_mean(tf.reduce_sum(
                tf.square(a_u - tf.stop_gradient(p_v)), axis=-1)),
            ITEM_MIMIC: tf.reduce_mean(tf.reduce_sum(
                tf.square(a_v - tf.stop_gradient(p_u)), axis=-1)),
            CATEGORY_ALIGNMENT: tf.constant(0.0),
        }
        if self.items.num_features and self.config.category_alignment_weight > 0:
            losses[CATEGORY_ALIGNMENT] = category_alignment_loss(
                p_v, tf.gather(self.items.feature_matrix, target))
        return p_u, losses

    def _weighted(self, losses: Optional[Dict[str, tf.Tensor]]) -> tf.Tensor:
        if losses is None:
            return tf.constant(0.0)
        return (self.config.user_mimic_weight * losses[USER_MIMIC]
                + self.config.item_mimic_weight * losses[ITEM_MIMIC]
                + self.config.category_alignment_weight * losses[CATEGORY_ALIGNMENT])

    def user_tower(self, features: Features, training: bool = False
                   ) -> Tuple[tf.Tensor, tf.Tensor]:
        """``(p_u [batch, d], weighted auxiliary loss)``; the target, when present, feeds only the
        auxiliary loss (without it the loss is 0)."""
        p_u, losses = self._forward(features, training)
        return p_u, self._weighted(losses)

    # -- losses ---------------------------------------------------------------------------------

    def compute_loss(self, features: Features, training: bool = False) -> tf.Tensor:
        """``L_tower + lambda_u L_u + lambda_v L_v + lambda_CA L_CA`` (each tracked)."""
        query, losses = self._forward(features, training)
        auxiliary = self._weighted(losses)
        tower = self.tower_loss(query, features[F.TARGET])
        self.user_mimic_tracker.update_state(losses[USER_MIMIC])
        self.item_mimic_tracker.update_state(losses[ITEM_MIMIC])
        self.category_alignment_tracker.update_state(losses[CATEGORY_ALIGNMENT])
        return self.total_loss(tower, auxiliary)
