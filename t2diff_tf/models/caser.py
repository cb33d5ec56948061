"""Caser: convolutional sequence embedding (a baseline of T2Diff's Table 2).

Tang & Wang, "Personalized Top-N Sequential Recommendation via Convolutional Sequence Embedding",
WSDM 2018.

What is implemented (paper Section 3):

* The ``L`` most recent behaviours (``sequence_length``, the paper's ``L``; the window's history
  left-padded with 0 is cut to its last ``L`` positions) form an "image" ``E`` ``[L, d]`` of item
  vectors from the shared :class:`~t2diff_tf.layers.items.ItemRepresentation`; padded rows are
  zero, as in the paper's zero padding of short sequences.
* Horizontal convolutions (:class:`CaserConvolutions`): for every height ``h = 1..L``,
  ``num_horizontal_filters`` filters ``[h, d]`` slide over the rows,
  ``c_i = phi_c(E[i:i+h] . F + b)``, and each filter is max-pooled over its ``L - h + 1``
  positions: union-level and point-level sequential patterns -> ``o`` ``[L * n_h]``.
* Vertical convolution: ``num_vertical_filters`` filters ``[L, 1]``, each a learned weighted sum
  of the rows, ``o' = [sum_l F~_k[l] E[l] + b_k]_k`` ``[n_v * d]`` (no activation, as in the
  authors' code).
* ``z = phi_a(W Dropout([o, o']) + b)`` ``[d]``: the user embedding ``e_u``, scored by dot product
  against the item tower.

Simplified:

* No user embedding ``P_u``: the paper concatenates ``[z, P_u]`` before its output layer, but our
  users are cold at serving (a retrieval model must embed users it never trained on), so ``e_u`` is
  ``z`` alone, computed from the behaviours only.
* The output layer ``W'`` (a separate item embedding table) is the registry's item tower over the
  shared item representation (id embedding + side features).
* Training: the paper predicts the next ``T`` items with a binary cross-entropy over sampled
  negatives; here, like every model of the registry, the window's target is predicted with the
  tower softmax loss (full corpus by default, or sampled softmax; see
  :class:`~t2diff_tf.models.base.LossConfig`).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Dict, Optional, Tuple

import numpy as np
import tensorflow as tf

from t2diff_tf import features as F
from t2diff_tf.models.base import Features, LossConfig, RetrievalModel
from t2diff_tf.models.config import DictConfig


@tf.keras.utils.register_keras_serializable(package="t2diff")
class CaserConvolutions(tf.keras.layers.Layer):
    """Caser's horizontal and vertical convolutions over an ``[L, d]`` sequence image.

    Call arguments:
      inputs: ``[batch, L, d]`` item vectors (oldest first; padded rows should be zero).

    Returns:
      ``[batch, L * num_horizontal_filters + num_vertical_filters * d]``: ``concat(o, o')``,
      ``o`` the max-pooled horizontal features (heights ``1..L`` in order, ``n_h`` each), ``o'``
      the vertical features (filter-major: ``o'[k * d + j]`` is filter ``k``, dimension ``j``).
    """

    def __init__(self, sequence_length: int, num_horizontal_filters: int = 16,
                 num_vertical_filters: int = 4, activation: str = "relu", **kwargs):
        super().__init__(**kwargs)
        self.sequence_length = int(sequence_length)
        self.num_horizontal_filters = int(num_horizontal_filters)
        self.num_vertical_filters = int(num_vertical_filters)
        self.activation = activation

    def build(self, input_shape):
        # A Conv1D over the L axis with d input channels is exactly a full-width [h, d] filter.
        self.horizontal = [tf.keras.layers.Conv1D(self.num_horizontal_filters, height,
                                                  activation=self.activation,
                                                  name=f"horizontal_{height}")
                           for height in range(1, self.sequence_length + 1)]
        self.vertical_kernel = self.add_weight(
            name="vertical_kernel", shape=[self.sequence_length, self.num_vertical_filters],
            initializer="glorot_uniform")
        self.vertical_bias = self.add_weight(
            name="vertical_bias", shape=[self.num_vertical_filters], initializer="zeros")
        super().build(input_shape)

    def call(self, inputs: tf.Tensor) -> tf.Tensor:
        tf.debugging.assert_equal(tf.shape(inputs)[1], self.sequence_length,
                                  message="CaserConvolutions expects L = sequence_length rows")
        horizontal = [tf.reduce_max(conv(inputs), axis=1) for conv in self.horizontal]
        vertical = tf.einsum("bld,lk->bkd", inputs, self.vertical_kernel) + \
            self.vertical_bias[None, :, None]
        flat = tf.reshape(vertical, [-1, self.num_vertical_filters * int(inputs.shape[-1])])
        return tf.concat(horizontal + [flat], axis=1)

    def compute_mask(self, inputs, mask=None):
        return None

    def get_config(self) -> Dict[str, Any]:
        return {**super().get_config(), "sequence_length": self.sequence_length,
                "num_horizontal_filters": self.num_horizontal_filters,
                "num_vertical_filters": self.num_vertical_filters,
                "activation": self.activation}


@dataclasses.dataclass(frozen=True)
class CaserConfig(DictConfig):
    """Hyperparameters of :class:`Caser`.

    Attributes:
      embedding_dim: ``d`` of item vectors and of ``e_u`` (paper: 50).
      sequence_length: ``L``, the number of most recent behaviours convolved (paper: 5); must not
        exceed the windows' history length.
      num_horizontal_filters: ``n_h``, filters per height ``1..L`` (paper: 16).
      num_vertical_filters: ``n_v`` (paper: 4).
      dropout: dropout on ``concat(o, o')`` (paper: 0.5).
      convolution_activation: ``phi_c`` of the horizontal convolutions.
      dense_activation: ``phi_a`` of the dense layer that gives ``e_u``.
      item_tower_units: hidden widths of the item tower (``()``: linear, close to the paper's
        output embedding table).
      loss: the tower loss.
    """

    embedding_dim: int = 64
    sequence_length: int = 5
    num_horizontal_filters: int = 16
    num_vertical_filters: int = 4
    dropout: float = 0.5
    convolution_activation: str = "relu"
    dense_activation: str = "relu"
    item_tower_units: Tuple[int, ...] = ()
    loss: LossConfig = LossConfig()

    def __post_init__(self):
        if isinstance(self.loss, dict):
            object.__setattr__(self, "loss", LossConfig(**self.loss))
        object.__setattr__(self, "item_tower_units",
                           tuple(int(u) for u in self.item_tower_units))
        for name in ("embedding_dim", "sequence_length", "num_horizontal_filters",
                     "num_vertical_filters"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        for name in ("convolution_activation", "dense_activation"):
            try:
                tf.keras.activations.get(getattr(self, name))
            except ValueError as error:
                raise ValueError(f"unknown {name} {getattr(self, name)!r}") from error


class Caser(RetrievalModel):
    """Caser (see the module docstring).

    Args:
      config: hyperparameters.
      num_items, item_features, item_frequencies, example_spec: see
        :class:`~t2diff_tf.models.base.RetrievalModel`.
    """

    def __init__(self, config: CaserConfig = CaserConfig(), *, num_items: int,
                 item_features: Optional[np.ndarray] = None,
                 item_frequencies: Optional[np.ndarray] = None,
                 example_spec: F.ExampleSpec = F.ExampleSpec(), name: str = "caser"):
        if config.sequence_length > example_spec.history_length:
            raise ValueError(f"sequence_length {config.sequence_length} exceeds the history "
                             f"length {example_spec.history_length}")
        super().__init__(num_items, config.embedding_dim, config.item_tower_units, config.loss,
                         item_features=item_features, item_frequencies=item_frequencies,
                         example_spec=example_spec, name=name)
        self.config = config
        self.convolutions = CaserConvolutions(
            config.sequence_length, config.num_horizontal_filters, config.num_vertical_filters,
            config.convolution_activation, name="convolutions")
        self.dropout = tf.keras.layers.Dropout(config.dropout)
        self.user_dense = tf.keras.layers.Dense(config.embedding_dim,
                                                activation=config.dense_activation,
                                                name="user_dense")

    def sequence_image(self, history: tf.Tensor) -> tf.Tensor:
        """The ``L`` most recent behaviours as ``[batch, L, d]`` item vectors, padding zeroed."""
        recent = tf.cast(history, tf.int64)[:, -self.config.sequence_length:]
        valid = tf.cast(tf.not_equal(recent, F.PADDING_ID), tf.float32)
        return self.items(recent) * valid[..., None]

    def user_tower(self, features: Features, training: bool = False
                   ) -> Tuple[tf.Tensor, tf.Tensor]:
        """``e_u = phi_a(W Dropout(concat(o, o')) + b)`` ``[batch, d]`` from the history only."""
        convolved = self.convolutions(self.sequence_image(features[F.HISTORY]))
        return self.user_dense(self.dropout(convolved, training=training)), tf.constant(0.0)
