"""The mean-pooled two-tower baseline (YouTube-DNN style).

``e_u = FFN(mean_j v(history_j))`` over the valid behaviours, ``e_i = FFN(v(i))``: a bag of past
items, blind to their order -- the baseline T2Diff's cross-interaction is measured against.
"""

from __future__ import annotations

import dataclasses
from typing import Optional, Tuple

import numpy as np
import tensorflow as tf

from t2diff_tf import features as F
from t2diff_tf.layers.attention import masked_mean
from t2diff_tf.models.base import Features, LossConfig, RetrievalModel, feed_forward
from t2diff_tf.models.config import DictConfig


@dataclasses.dataclass(frozen=True)
class TwoTowerConfig(DictConfig):
    """Hyperparameters of :class:`MeanPoolTwoTower`.

    Attributes:
      embedding_dim: ``d`` of item vectors and tower outputs.
      user_tower_units: hidden widths of the user FFN.
      item_tower_units: hidden widths of the item tower.
      loss: the tower loss.
    """

    embedding_dim: int = 64
    user_tower_units: Tuple[int, ...] = (128,)
    item_tower_units: Tuple[int, ...] = (128,)
    loss: LossConfig = LossConfig()

    def __post_init__(self):
        if isinstance(self.loss, dict):
            object.__setattr__(self, "loss", LossConfig(**self.loss))
        for name in ("user_tower_units", "item_tower_units"):
            object.__setattr__(self, name, tuple(int(u) for u in getattr(self, name)))
        if self.embedding_dim < 1:
            raise ValueError("embedding_dim must be >= 1")


class MeanPoolTwoTower(RetrievalModel):
    """Mean-pooled two-tower model (see the module docstring)."""

    def __init__(self, config: TwoTowerConfig = TwoTowerConfig(), *, num_items: int,
                 item_features: Optional[np.ndarray] = None,
                 item_frequencies: Optional[np.ndarray] = None,
                 example_spec: F.ExampleSpec = F.ExampleSpec(),
                 name: str = "mean_pool_two_tower"):
        super().__init__(num_items, config.embedding_dim, config.item_tower_units, config.loss,
                         item_features=item_features, item_frequencies=item_frequencies,
                         example_spec=example_spec, name=name)
        self.config = config
        self.user_head = feed_forward(config.user_tower_units, config.embedding_dim,
                                      name="user_head")

    def user_tower(self, features: Features, training: bool = False
                   ) -> Tuple[tf.Tensor, tf.Tensor]:
        history = features[F.HISTORY]
        pooled = masked_mean(self.items(history), tf.not_equal(history, F.PADDING_ID))
        return self.user_head(pooled), tf.constant(0.0)
