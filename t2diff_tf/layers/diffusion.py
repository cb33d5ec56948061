"""Drift diffusion: the generative half of T2Diff (paper Section 4.2, Algorithms 1 and 2).

Given the session behaviours ``X_1:n`` (item embeddings, ``[batch, n, d]``) and, in training, the
next item ``x_{n+1}`` (``[batch, d]``):

* **Drift preparation** -- ``z0 = X_2:n+1 - X_1:n`` (adjacent differences, target appended).
  With ``drift=False`` (the paper's W/O-DP ablation) the layer diffuses ``X_2:n+1`` itself.
* **Forward process** -- ``z_r = sqrt(abar_r) z0 + sqrt(1 - abar_r) eps`` (:meth:`q_sample`).
* **Approximator** -- a :class:`~t2diff_tf.layers.unet.UNet1D` predicts ``z0_hat`` from
  ``concat([z_r, X_1:n], -1)`` and ``r`` (x0-prediction); ``L_KL = mean (z0 - z0_hat)^2`` over the
  valid positions and the embedding dimensions.
* **Drift utilisation** -- ``x_hat_{n+1} = (z0_hat + X_1:n)[-1]`` (``z0_hat[-1]`` without DP).
* **Reverse process** -- Algorithm 2 (:meth:`reverse_chain`: ``T`` stochastic steps from
  ``N(0, I)`` with the DDPM posterior mean and variance) or a deterministic DDIM sampler with
  ``S < T`` steps (:meth:`fast_sample`; our addition, Song et al. 2021, ``eta = 0``).

Gradient isolation (the paper's stop-gradient): the layer applies ``tf.stop_gradient`` to the
behaviours and the target it receives, so ``L_KL`` moves only the approximator, and to the
``x_hat`` it returns, so a loss computed from ``x_hat`` never reaches the approximator.

Which ``x_hat`` the towers see during training is a choice:

* ``"one_step_denoise"`` (the authors' code): ``x_hat`` from the same one-step denoise of the
  noised *true* drift that the loss uses. The noised drift contains the target, so at small ``r``
  the towers are shown an almost exact copy of the label in training but a sampled one at test.
* ``"inference_sampler"``: ``x_hat`` from the sampler used at inference (no target leakage; costs
  ``T`` or ``S`` approximator passes per training step, without gradients).

Sequences are left-padded: the mask marks a suffix of the ``n`` positions and position ``n`` (the
last) is the most recent behaviour.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Dict, Optional, Tuple

import numpy as np
import tensorflow as tf

from t2diff_tf.layers.schedules import NoiseSchedule, ScheduleConfig
from t2diff_tf.layers.unet import UNet1D, UNetConfig

FULL_CHAIN = "full"
FAST = "fast"
SAMPLERS = (FULL_CHAIN, FAST)

ONE_STEP_DENOISE = "one_step_denoise"
INFERENCE_SAMPLER = "inference_sampler"
TRAINING_X_HAT = (ONE_STEP_DENOISE, INFERENCE_SAMPLER)


@dataclasses.dataclass(frozen=True)
class DiffusionConfig:
    """Configuration of :class:`DriftDiffusion`.

    Attributes:
      schedule: the noise schedule (kind and ``T``).
      approximator: the U-Net.
      drift: ``True``: diffuse adjacent differences (DP); ``False``: diffuse ``X_2:n+1``.
      sampler: inference sampler, ``"full"`` (Algorithm 2, ``T`` steps) or ``"fast"`` (DDIM).
      sampler_steps: ``S``, steps of the fast sampler (``1 <= S <= T``).
      training_x_hat: ``"one_step_denoise"`` (authors) or ``"inference_sampler"``.
      loss_weight: ``lambda`` of ``L_total = L_tower + lambda * L_KL``. With the stop-gradients
        ``L_KL`` is the only loss of the approximator and reaches nothing else, so under a
        scale-invariant optimiser (Adam) ``lambda`` changes almost nothing (only through Adam's
        epsilon); it matters with SGD-like optimisers and for the reported total loss.
    """

    schedule: ScheduleConfig = ScheduleConfig()
    approximator: UNetConfig = UNetConfig()
    drift: bool = True
    sampler: str = FULL_CHAIN
    sampler_steps: int = 10
    training_x_hat: str = ONE_STEP_DENOISE
    loss_weight: float = 1.0

    def __post_init__(self):
        if isinstance(self.schedule, dict):
            object.__setattr__(self, "schedule", ScheduleConfig(**self.schedule))
        if isinstance(self.approximator, dict):
            object.__setattr__(self, "approximator", UNetConfig(**self.approximator))
        if self.sampler not in SAMPLERS:
            raise ValueError(f"sampler must be one of {SAMPLERS}, got {self.sampler!r}")
        if not 1 <= self.sampler_steps <= self.schedule.num_steps:
            raise ValueError(f"sampler_steps must be in [1, T={self.schedule.num_steps}], "
                             f"got {self.sampler_steps}")
        if self.training_x_hat not in TRAINING_X_HAT:
            raise ValueError(f"training_x_hat must be one of {TRAINING_X_HAT}, "
                             f"got {self.training_x_hat!r}")
        if self.loss_weight < 0:
            raise ValueError(f"loss_weight must be >= 0, got {self.loss_weight}")


def fast_sampler_steps(num_steps: int, sampler_steps: int) -> np.ndarray:
    """The ``S`` steps the DDIM sampler visits, descending from ``T`` to 1 (evenly spaced)."""
    steps = np.round(np.linspace(num_steps, 1, sampler_steps)).astype(np.int32)
    return np.unique(steps)[::-1].copy()


def _float_mask(mask: Optional[tf.Tensor], like: tf.Tensor) -> tf.Tensor:
    if mask is None:
        return tf.ones(tf.shape(like)[:2], like.dtype)
    return tf.cast(mask, like.dtype)


def seeded_normal(shape, seed: Optional[tf.Tensor], offset) -> tf.Tensor:
    """``N(0, 1)`` noise; stateless (reproducible) when ``seed`` (``[2]`` int) is given."""
    if seed is None:
        return tf.random.normal(shape)
    seed = tf.cast(seed, tf.int32) + tf.stack([0, tf.cast(offset, tf.int32)])
    return tf.random.stateless_normal(shape, seed=seed)


@tf.keras.utils.register_keras_serializable(package="t2diff")
class DriftDiffusion(tf.keras.layers.Layer):
    """Drift diffusion with a U-Net approximator.

    Call arguments:
      inputs: behaviours ``X_1:n``, ``[batch, n, d]``.
      mask: ``[batch, n]``, ``True`` at valid positions (a suffix); ``None``: all valid.
      target: ``[batch, d]`` embedding of the next item; needed in training, optional otherwise
        (when given, ``L_KL`` is computed too).
      training: training mode (``x_hat`` by ``training_x_hat``) or inference (by the sampler).

    Returns:
      ``(x_hat, diffusion_loss)``: ``[batch, d]`` (stop-gradient) and a scalar (0 without target).
    """

    def __init__(self, embedding_dim: int, config: DiffusionConfig = DiffusionConfig(),
                 **kwargs):
        super().__init__(**kwargs)
        if isinstance(config, dict):
            config = DiffusionConfig(**config)
        self.embedding_dim = int(embedding_dim)
        self.config = config
        self.schedule = NoiseSchedule(config.schedule)
        self.approximator = UNet1D(self.embedding_dim, config.approximator, name="approximator")

    @property
    def num_steps(self) -> int:
        return self.schedule.num_steps

    # -- pieces of Algorithm 1 ------------------------------------------------------------------

    def prepare(self, behaviours: tf.Tensor, target: tf.Tensor,
                mask: Optional[tf.Tensor] = None) -> tf.Tensor:
        """Drift preparation: ``[batch, n, d]``, ``[batch, d]`` -> ``z0`` ``[batch, n, d]``.

        Zero at padded positions.
        """
        following = tf.concat([behaviours[:, 1:], target[:, None, :]], axis=1)
        z0 = following - behaviours if self.config.drift else following
        return z0 * _float_mask(mask, behaviours)[:, :, None]

    def utilise(self, z0_hat: tf.Tensor, behaviours: tf.Tensor) -> tf.Tensor:
        """Drift utilisation: ``x_hat = (z0_hat + X_1:n)[-1]`` -> ``[batch, d]``."""
        if self.config.drift:
            return z0_hat[:, -1] + behaviours[:, -1]
        return z0_hat[:, -1]

    def q_sample(self, z0: tf.Tensor, steps: tf.Tensor,
                 noise: Optional[tf.Tensor] = None) -> tf.Tensor:
        """Forward process ``q(z_r | z0)``: ``[batch, n, d]``, steps ``[batch]`` -> ``z_r``."""
        if noise is None:
            noise = tf.random.normal(tf.shape(z0), dtype=z0.dtype)
        a = self.schedule.gather("sqrt_alphas_cumprod", steps, z0.dtype)[:, None, None]
        s = self.schedule.gather("sqrt_one_minus_alphas_cumprod", steps, z0.dtype)[:, None, None]
        return a * z0 + s * noise

    def predict_start(self, noised: tf.Tensor, behaviours: tf.Tensor, steps: tf.Tensor,
                      mask: Optional[tf.Tensor] = None) -> tf.Tensor:
        """Approximator ``z0_hat = UNet(concat([z_r, X]), r)``: ``[batch, n, d]``."""
        return self.approximator(tf.concat([noised, behaviours], axis=-1), steps, mask=mask)

    def posterior(self, z0_hat: tf.Tensor, noised: tf.Tensor, steps: tf.Tensor
                  ) -> Tuple[tf.Tensor, tf.Tensor]:
        """Mean ``[batch, n, d]`` and log variance ``[batch, 1, 1]`` of
        ``q(z_{r-1} | z_r, z0_hat)``."""
        c0 = self.schedule.gather("posterior_mean_coef1", steps, noised.dtype)[:, None, None]
        c1 = self.schedule.gather("posterior_mean_coef2", steps, noised.dtype)[:, None, None]
        log_var = self.schedule.gather("posterior_log_variance_clipped", steps,
                                       noised.dtype)[:, None, None]
        return c0 * z0_hat + c1 * noised, log_var

    def diffusion_loss(self, z0: tf.Tensor, z0_hat: tf.Tensor,
                       mask: Optional[tf.Tensor] = None) -> tf.Tensor:
        """``L_KL``: mean squared error over valid positions and dimensions (scalar)."""
        m = _float_mask(mask, z0)[:, :, None]
        count = tf.reduce_sum(m) * tf.cast(tf.shape(z0)[-1], z0.dtype)
        return tf.reduce_sum(tf.square(z0 - z0_hat) * m) / tf.maximum(count, 1.0)

    def one_step_denoise(self, behaviours: tf.Tensor, target: tf.Tensor,
                         mask: Optional[tf.Tensor] = None, steps: Optional[tf.Tensor] = None
                         ) -> Tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
        """Algorithm 1 on one batch: ``(z0, z0_hat, steps)`` with ``r ~ U{1..T}`` unless given."""
        if steps is None:
            steps = tf.random.uniform(tf.shape(behaviours)[:1], 1, self.num_steps + 1, tf.int32)
        z0 = self.prepare(behaviours, target, mask)
        z0_hat = self.predict_start(self.q_sample(z0, steps), behaviours, steps, mask)
        return z0, z0_hat, steps

    # -- reverse processes ----------------------------------------------------------------------

    def reverse_chain(self, behaviours: tf.Tensor, mask: Optional[tf.Tensor] = None,
                      seed: Optional[tf.Tensor] = None, return_trajectory: bool = False):
        """Algorithm 2: ``z_T ~ N(0, I)``, ``z_{t-1} ~ N(mu~(z_t, z0_hat_t), beta~_t)``, t = T..1.

        Args:
          behaviours: ``[batch, n, d]``.
          mask: ``[batch, n]``.
          seed: optional ``[2]`` int seed for reproducible (stateless) noise.
          return_trajectory: also return ``z0_hat`` of every step.

        Returns:
          ``z0_hat`` of the last step (``= z_0``) ``[batch, n, d]``; with ``return_trajectory``
          also ``[T, batch, n, d]``, entry ``i`` predicted at step ``t = T - i``.
        """
        shape = tf.shape(behaviours)
        batch = shape[0]
        z = seeded_normal(shape, seed, 0)
        trajectory = tf.TensorArray(behaviours.dtype, size=self.num_steps)
        z0_hat = tf.zeros_like(behaviours)

        def body(i, z, z0_hat, trajectory):
            t = self.num_steps - i
            steps = tf.fill([batch], t)
            z0_hat = self.predict_start(z, behaviours, steps, mask)
            mean, log_var = self.posterior(z0_hat, z, steps)
            noise = seeded_normal(shape, seed, t)
            keep = tf.cast(t > 1, z.dtype)  # no noise on the last step
            z = mean + keep * tf.exp(0.5 * log_var) * noise
            # Keep the loop variables' static shapes (a static batch must stay static).
            z = tf.ensure_shape(z, behaviours.shape)
            z0_hat = tf.ensure_shape(z0_hat, behaviours.shape)
            return i + 1, z, z0_hat, trajectory.write(i, z0_hat)

        _, z, z0_hat, trajectory = tf.while_loop(
            lambda i, *_: i < self.num_steps, body,
            (tf.constant(0), z, z0_hat, trajectory))
        z = z * _float_mask(mask, behaviours)[:, :, None]
        if return_trajectory:
            return z, trajectory.stack()
        return z

    def fast_sample(self, behaviours: tf.Tensor, mask: Optional[tf.Tensor] = None,
                    num_steps: Optional[int] = None, seed: Optional[tf.Tensor] = None,
                    return_trajectory: bool = False):
        """Deterministic DDIM (``eta = 0``) with ``S`` evenly spaced steps.

        Starts from ``z_T = 0`` (the prior's mean) unless ``seed`` is given (then from seeded
        noise), so equal inputs give equal outputs. Each step predicts ``z0_hat`` at ``t``, the
        implied noise ``eps_hat = (z_t - sqrt(abar_t) z0_hat) / sqrt(1 - abar_t)`` and moves to
        ``z_t' = sqrt(abar_t') z0_hat + sqrt(1 - abar_t') eps_hat`` for the next step ``t'``
        (``abar_0 = 1``, so the last step returns ``z0_hat``).

        Returns:
          ``[batch, n, d]``; with ``return_trajectory`` also ``[S, batch, n, d]``.
        """
        num_steps = num_steps or self.config.sampler_steps
        visits = fast_sampler_steps(self.num_steps, num_steps)
        abar = np.concatenate([[1.0], self.schedule.alphas_cumprod])  # abar[t], abar[0] = 1
        shape = tf.shape(behaviours)
        batch = shape[0]
        if seed is None:
            z = tf.zeros_like(behaviours)
        else:
            z = seeded_normal(shape, seed, 0)
        trajectory = []
        for index, t in enumerate(visits):  # S is small: a static loop
            t_next = int(visits[index + 1]) if index + 1 < len(visits) else 0
            z0_hat = self.predict_start(z, behaviours, tf.fill([batch], int(t)), mask)
            trajectory.append(z0_hat)
            eps_hat = (z - np.sqrt(abar[t]) * z0_hat) / np.sqrt(1.0 - abar[t])
            z = np.sqrt(abar[t_next]) * z0_hat + np.sqrt(1.0 - abar[t_next]) * eps_hat
        z = z * _float_mask(mask, behaviours)[:, :, None]
        if return_trajectory:
            return z, tf.stack(trajectory)
        return z

    def predicted_start_trajectory(self, behaviours: tf.Tensor, mask: Optional[tf.Tensor] = None,
                                   sampler: Optional[str] = None,
                                   seed: Optional[tf.Tensor] = None) -> tf.Tensor:
        """``z0_hat`` at every reverse step: ``[steps, batch, n, d]``, first = noisiest step.

        For the paper's Figure 4 (cosine similarity of ``z0_hat`` to the true ``z0`` along the
        reverse process).
        """
        behaviours = tf.stop_gradient(behaviours)
        self._ensure_built(behaviours)
        if (sampler or self.config.sampler) == FAST:
            return self.fast_sample(behaviours, mask, seed=seed, return_trajectory=True)[1]
        return self.reverse_chain(behaviours, mask, seed=seed, return_trajectory=True)[1]

    def sample(self, behaviours: tf.Tensor, mask: Optional[tf.Tensor] = None,
               sampler: Optional[str] = None, seed: Optional[tf.Tensor] = None) -> tf.Tensor:
        """``x_hat`` ``[batch, d]`` by the reverse process and drift utilisation (stop-gradient)."""
        behaviours = tf.stop_gradient(behaviours)
        self._ensure_built(behaviours)
        sampler = sampler or self.config.sampler
        if sampler not in SAMPLERS:
            raise ValueError(f"sampler must be one of {SAMPLERS}, got {sampler!r}")
        if sampler == FAST:
            z0 = self.fast_sample(behaviours, mask, seed=seed)
        else:
            z0 = self.reverse_chain(behaviours, mask, seed=seed)
        return tf.stop_gradient(self.utilise(z0, behaviours))

    # -- Keras ----------------------------------------------------------------------------------

    def build(self, input_shape):
        # Create every approximator variable now, outside the reverse-process loops (variables
        # cannot be created inside a ``tf.while_loop``).
        self.approximator(tf.zeros([1, 1, 2 * self.embedding_dim]), tf.ones([1], tf.int32))
        super().build(input_shape)

    def _ensure_built(self, behaviours: tf.Tensor) -> None:
        if not self.built:
            self.build(behaviours.shape)

    def call(self, inputs: tf.Tensor, mask: Optional[tf.Tensor] = None,
             target: Optional[tf.Tensor] = None, training: Optional[bool] = None
             ) -> Tuple[tf.Tensor, tf.Tensor]:
        behaviours = tf.stop_gradient(inputs)
        loss = tf.constant(0.0, behaviours.dtype)
        x_hat = None
        if target is not None:
            target = tf.stop_gradient(target)
            z0, z0_hat, _ = self.one_step_denoise(behaviours, target, mask)
            loss = self.diffusion_loss(z0, z0_hat, mask)
            if training and self.config.training_x_hat == ONE_STEP_DENOISE:
                x_hat = self.utilise(z0_hat, behaviours)
        elif training and self.config.training_x_hat == ONE_STEP_DENOISE:
            raise ValueError("training_x_hat='one_step_denoise' needs the target in training")
        if x_hat is None:
            x_hat = self.sample(behaviours, mask)
        return tf.stop_gradient(x_hat), loss

    def compute_mask(self, inputs, mask=None):
        return None

    def get_config(self) -> Dict[str, Any]:
        config = super().get_config()
        config.update(embedding_dim=self.embedding_dim, config=dataclasses.asdict(self.config))
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["config"] = DiffusionConfig(**config["config"])
        return cls(**config)
