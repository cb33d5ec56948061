"""T2Diff: a two-tower model whose user tower generates the next behaviour by drift diffusion.

User tower (paper Section 4), for a window ``history`` ``[batch, L]`` with ``session_length``:

1. Behaviours ``X = v(history)`` (item vectors shared with the item tower), zero on padding.
   The session ``X_session`` ``[batch, K, d]`` is the last ``session_length`` behaviours (at most
   ``K``); the long-term history is the valid behaviours before it
   (:mod:`t2diff_tf.models.behaviours`).
2. Drift diffusion over ``X_session`` generates ``x_hat`` ``[batch, d]``
   (:class:`~t2diff_tf.layers.diffusion.DriftDiffusion`; training: ``L_KL`` from the target).
3. ``h_s = SessionEncoder(concat([X_session, x_hat]))`` ``[batch, d]``.
4. ``h_l = TargetAttention(X_long, h_s, time lags)`` ``[batch, d]``.
5. ``e_u = FFN(concat([h_l, h_s]))`` ``[batch, d]``; with ``direct_x_hat`` (ours, not the
   paper's) ``e_u = FFN(concat([h_l, h_s, x_hat]))``, a route from the generated next behaviour to
   ``e_u`` that the session encoder's mean pooling does not dilute.

Item tower: ``e_i = FFN(v(i))``. Loss: ``L_tower + lambda * L_KL``.

Ablations: ``diffusion=None`` is the paper's "Mixed-attention only" (no ``x_hat``);
``DiffusionConfig(drift=False)`` is "W/O DP"; the schedule, ``T``, ``lambda`` and the sampler are
fields of :class:`~t2diff_tf.layers.diffusion.DiffusionConfig`.
"""

from __future__ import annotations

import dataclasses
from typing import Dict, Optional, Tuple

import numpy as np
import tensorflow as tf

from t2diff_tf import features as F
from t2diff_tf.layers.attention import SessionEncoder, TargetAttention
from t2diff_tf.layers.diffusion import INFERENCE_SAMPLER, DiffusionConfig, DriftDiffusion
from t2diff_tf.models.base import Features, LossConfig, RetrievalModel, feed_forward
from t2diff_tf.models.behaviours import BehaviourMasks, behaviour_masks
from t2diff_tf.models.config import DictConfig


@dataclasses.dataclass(frozen=True)
class T2DiffConfig(DictConfig):
    """Hyperparameters of :class:`T2Diff`.

    Attributes:
      embedding_dim: ``d`` of item vectors and tower outputs.
      session_size: ``K``, the most behaviours a session holds (paper: ``k = 10``).
      diffusion: the drift diffusion; ``None`` = Mixed-attention only (no ``x_hat``).
      encoder_layers: Transformer layers of the session encoder.
      encoder_heads: attention heads of the session encoder.
      dropout: dropout of the session encoder.
      attention_units: hidden widths of the DIN scorer.
      time_lag_dim: width of the time-lag embedding in the DIN scorer; 0 disables it.
      user_tower_units: hidden widths of the final user FFN.
      item_tower_units: hidden widths of the item tower.
      loss: the tower loss.
      direct_x_hat: also feed ``x_hat`` to the user FFN (not in the paper). Needs
        ``diffusion.training_x_hat = "inference_sampler"``: the authors' one-step denoise of the
        noised target would hand the target itself to ``e_u`` in training.
    """

    embedding_dim: int = 64
    session_size: int = 10
    diffusion: Optional[DiffusionConfig] = DiffusionConfig()
    encoder_layers: int = 1
    encoder_heads: int = 2
    dropout: float = 0.1
    attention_units: Tuple[int, ...] = (64, 32)
    time_lag_dim: int = 8
    user_tower_units: Tuple[int, ...] = (128,)
    item_tower_units: Tuple[int, ...] = (128,)
    loss: LossConfig = LossConfig()
    direct_x_hat: bool = False

    def __post_init__(self):
        if isinstance(self.diffusion, dict):
            object.__setattr__(self, "diffusion", DiffusionConfig(**self.diffusion))
        if isinstance(self.loss, dict):
            object.__setattr__(self, "loss", LossConfig(**self.loss))
        for name in ("attention_units", "user_tower_units", "item_tower_units"):
            object.__setattr__(self, name, tuple(int(u) for u in getattr(self, name)))
        if self.embedding_dim < 1 or self.session_size < 1:
            raise ValueError("embedding_dim and session_size must be >= 1")
        if self.encoder_layers < 1 or self.encoder_heads < 1:
            raise ValueError("encoder_layers and encoder_heads must be >= 1")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        if self.direct_x_hat and (self.diffusion is None
                                  or self.diffusion.training_x_hat != INFERENCE_SAMPLER):
            raise ValueError("direct_x_hat needs a diffusion with training_x_hat="
                             f"{INFERENCE_SAMPLER!r} (the one-step denoise leaks the target)")


class T2Diff(RetrievalModel):
    """T2Diff (see the module docstring).

    Args:
      config: hyperparameters.
      num_items: ``N``.
      item_features: optional multi-hot side features ``[N + 1, G]``.
      item_frequencies: ``[N + 1]`` target frequencies (sampled softmax only).
      example_spec: window shapes (``num_time_lag_buckets`` sizes the time-lag embedding).
    """

    def __init__(self, config: T2DiffConfig = T2DiffConfig(), *, num_items: int,
                 item_features: Optional[np.ndarray] = None,
                 item_frequencies: Optional[np.ndarray] = None,
                 example_spec: F.ExampleSpec = F.ExampleSpec(), name: str = "t2diff"):
        super().__init__(num_items, config.embedding_dim, config.item_tower_units, config.loss,
                         item_features=item_features, item_frequencies=item_frequencies,
                         example_spec=example_spec, name=name)
        self.config = config
        self.session_size = min(config.session_size, example_spec.history_length)
        d = config.embedding_dim
        self.diffusion = (DriftDiffusion(d, config.diffusion, name="drift_diffusion")
                          if config.diffusion is not None else None)
        self.session_encoder = SessionEncoder(
            num_layers=config.encoder_layers, num_heads=config.encoder_heads,
            dropout=config.dropout, max_positions=self.session_size + 1, name="session_encoder")
        self.target_attention = TargetAttention(
            hidden_units=config.attention_units,
            num_time_lag_buckets=example_spec.num_time_lag_buckets if config.time_lag_dim else 0,
            time_lag_dim=max(1, config.time_lag_dim), name="target_attention")
        self.user_head = feed_forward(config.user_tower_units, d, name="user_head")

    def _behaviours(self, features: Features) -> Tuple[tf.Tensor, BehaviourMasks]:
        history = features[F.HISTORY]
        masks = behaviour_masks(history, features[F.SESSION_LENGTH], self.session_size)
        vectors = self.items(history)
        vectors = tf.where(masks.valid[:, :, None], vectors, tf.zeros_like(vectors))
        return vectors, masks

    def user_tower(self, features: Features, training: bool = False
                   ) -> Tuple[tf.Tensor, tf.Tensor]:
        vectors, masks = self._behaviours(features)
        session = vectors[:, -self.session_size:]
        sequence, sequence_mask = session, masks.session
        auxiliary = tf.constant(0.0)
        x_hat = None
        if self.diffusion is not None:
            target = features.get(F.TARGET)
            target_vectors = self.items(target) if target is not None else None
            x_hat, diffusion_loss = self.diffusion(session, mask=masks.session,
                                                   target=target_vectors, training=training)
            sequence = tf.concat([session, x_hat[:, None, :]], axis=1)
            sequence_mask = tf.concat(
                [masks.session, tf.ones_like(masks.session[:, :1])], axis=1)
            auxiliary = self.config.diffusion.loss_weight * diffusion_loss
        h_s = self.session_encoder(sequence, mask=sequence_mask, training=training)
        h_l = self.target_attention(vectors, h_s, mask=masks.long_term,
                                    time_lag=features.get(F.HISTORY_TIME_LAG))
        parts = [h_l, h_s] + ([x_hat] if self.config.direct_x_hat else [])
        return self.user_head(tf.concat(parts, axis=-1)), auxiliary

    def drift_trajectory(self, features: Features, sampler: Optional[str] = None,
                         seed: Optional[tf.Tensor] = None) -> Dict[str, tf.Tensor]:
        """The reverse process of a batch next to its true drift (paper Figure 4).

        Returns:
          ``{"z0": [batch, K, d], "z0_hat": [steps, batch, K, d], "mask": [batch, K]}``;
          ``z0`` from the true target, ``z0_hat`` per reverse step, noisiest first.
        """
        if self.diffusion is None:
            raise ValueError("this T2Diff has no diffusion (Mixed-attention only)")
        vectors, masks = self._behaviours(features)
        session = vectors[:, -self.session_size:]
        z0 = self.diffusion.prepare(session, self.items(features[F.TARGET]), masks.session)
        trajectory = self.diffusion.predicted_start_trajectory(session, masks.session,
                                                               sampler=sampler, seed=seed)
        return {"z0": z0, "z0_hat": trajectory, "mask": masks.session}
