"""Item representations shared by the behaviour sequences and the item tower."""

from __future__ import annotations

from typing import Any, Dict, Optional

import numpy as np
import tensorflow as tf


@tf.keras.utils.register_keras_serializable(package="t2diff")
class ItemRepresentation(tf.keras.layers.Layer):
    """Item ids -> vectors: an id embedding plus, optionally, embedded side features.

    ``v(i) = E[i] + mean_{g in features(i)} G[g]``: the side features are a constant multi-hot
    matrix ``[num_items + 1, num_features]`` (row ``i`` for item id ``i``, row 0 = padding), e.g.
    genres; each active feature contributes its embedding ``G[g]``, averaged over the active ones.
    The matrix is stored as a non-trainable weight, so it travels with checkpoints and SavedModels.

    ``initial_stddev`` is the standard deviation of the normal distribution both embedding tables
    start from (SASRec's reference code uses 0.02).

    Call arguments:
      inputs: int item ids, any shape ``[...]`` (0 = padding).

    Returns:
      ``[..., embedding_dim]``.
    """

    def __init__(self, num_items: int, embedding_dim: int,
                 item_features: Optional[np.ndarray] = None, num_features: Optional[int] = None,
                 initial_stddev: float = 0.1, **kwargs):
        super().__init__(**kwargs)
        if initial_stddev <= 0:
            raise ValueError(f"initial_stddev must be > 0, got {initial_stddev}")
        self.initial_stddev = float(initial_stddev)
        self.num_items = int(num_items)
        self.embedding_dim = int(embedding_dim)
        if item_features is not None:
            item_features = np.asarray(item_features, dtype=np.float32)
            if item_features.ndim != 2 or item_features.shape[0] != self.num_items + 1:
                raise ValueError(f"item_features must be [num_items + 1, num_features] = "
                                 f"[{self.num_items + 1}, G], got {item_features.shape}")
            num_features = item_features.shape[1]
        self.num_features = int(num_features or 0)
        self._initial_features = item_features

    def build(self, input_shape):
        self.id_embeddings = self.add_weight(
            name="id_embeddings", shape=[self.num_items + 1, self.embedding_dim],
            initializer=tf.keras.initializers.RandomNormal(stddev=self.initial_stddev))
        if self.num_features:
            initial = self._initial_features
            self.feature_matrix = self.add_weight(
                name="feature_matrix", shape=[self.num_items + 1, self.num_features],
                initializer=(tf.keras.initializers.Constant(initial) if initial is not None
                             else "zeros"),
                trainable=False)
            self.feature_embeddings = self.add_weight(
                name="feature_embeddings", shape=[self.num_features, self.embedding_dim],
                initializer=tf.keras.initializers.RandomNormal(stddev=self.initial_stddev))
        super().build(input_shape)

    def call(self, inputs: tf.Tensor) -> tf.Tensor:
        ids = tf.cast(inputs, tf.int32)
        vectors = tf.gather(self.id_embeddings, ids)
        if self.num_features:
            multi_hot = tf.gather(self.feature_matrix, ids)
            counts = tf.reduce_sum(multi_hot, axis=-1, keepdims=True)
            vectors += tf.tensordot(tf.math.divide_no_nan(multi_hot, counts),
                                    self.feature_embeddings, axes=1)
        return vectors

    def compute_mask(self, inputs, mask=None):
        return None

    def get_config(self) -> Dict[str, Any]:
        config = super().get_config()
        config.update(num_items=self.num_items, embedding_dim=self.embedding_dim,
                      num_features=self.num_features, initial_stddev=self.initial_stddev)
        return config
