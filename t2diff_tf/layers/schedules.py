"""Variance schedules of the forward diffusion and the DDPM coefficients derived from them.

Steps are numbered ``r = 1..T`` as in the paper; every array below has ``T`` entries and entry
``r - 1`` belongs to step ``r``.

Three schedule shapes share the same endpoints ``beta_1`` and ``beta_T`` by default, so that an
ablation over shapes (paper Table 3) changes nothing but the shape:

* ``exponential`` -- ``beta_r = a * exp(b * r / T)``: the authors' code (``a = 1e-2``,
  ``b = 4.5``; ``beta`` runs from about 0.011 to 0.90 for any ``T``). With
  ``exponent_per_step=True`` the exponent is ``b * r`` instead, the formula as printed in the paper
  (then choose ``b`` of order ``1 / T``).
* ``linear`` -- ``beta_r`` linear in ``r`` from ``beta_1`` to ``beta_T``.
* ``logarithmic`` -- ``beta_r = beta_1 + (beta_T - beta_1) * ln(r) / ln(T)``: concave, most of the
  noise arrives in the first steps. (The paper names the schedule but gives no formula; this is
  our definition.)

``beta_1`` and ``beta_T`` of the linear and logarithmic shapes are those of the exponential shape
unless ``beta_start`` / ``beta_end`` are given. Betas are clipped to ``[1e-8, max_beta]``.

The derived quantities follow Ho et al. (2020), "Denoising Diffusion Probabilistic Models":

* ``alphas = 1 - betas``, ``alphas_cumprod[r-1] = prod_{s<=r} alpha_s`` (``abar_r``),
  ``alphas_cumprod_prev[r-1] = abar_{r-1}`` with ``abar_0 = 1``;
* ``q(z_r | z_0) = N(sqrt(abar_r) z_0, (1 - abar_r) I)``;
* posterior ``q(z_{r-1} | z_r, z_0) = N(c0_r z_0 + c1_r z_r, beta~_r I)`` with
  ``c0_r = beta_r sqrt(abar_{r-1}) / (1 - abar_r)``,
  ``c1_r = (1 - abar_{r-1}) sqrt(alpha_r) / (1 - abar_r)``,
  ``beta~_r = beta_r (1 - abar_{r-1}) / (1 - abar_r)`` (0 at ``r = 1``; its log is clipped to the
  value at ``r = 2`` as in the DDPM code).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Optional

import numpy as np
import tensorflow as tf

LINEAR = "linear"
LOGARITHMIC = "logarithmic"
EXPONENTIAL = "exponential"
SCHEDULE_KINDS = (LINEAR, LOGARITHMIC, EXPONENTIAL)

_MIN_BETA = 1e-8


@dataclasses.dataclass(frozen=True)
class ScheduleConfig:
    """Shape and length of the noise schedule.

    Attributes:
      kind: ``"exponential"`` (default, the authors'), ``"linear"`` or ``"logarithmic"``.
      num_steps: ``T``, the number of diffusion steps (paper: 10 / 50 / 200, default 50).
      scale: ``a`` of the exponential shape.
      rate: ``b`` of the exponential shape.
      exponent_per_step: ``False``: exponent ``b * r / T`` (authors' code); ``True``: ``b * r``
        (the paper's formula).
      beta_start: ``beta_1`` of the linear / logarithmic shapes; ``None``: the exponential one's.
      beta_end: ``beta_T`` of the linear / logarithmic shapes; ``None``: the exponential one's.
      max_beta: upper clip of every beta (keeps ``alpha_r > 0``).
    """

    kind: str = EXPONENTIAL
    num_steps: int = 50
    scale: float = 1e-2
    rate: float = 4.5
    exponent_per_step: bool = False
    beta_start: Optional[float] = None
    beta_end: Optional[float] = None
    max_beta: float = 0.999

    def __post_init__(self):
        if self.kind not in SCHEDULE_KINDS:
            raise ValueError(f"kind must be one of {SCHEDULE_KINDS}, got {self.kind!r}")
        if self.num_steps < 1:
            raise ValueError(f"num_steps must be >= 1, got {self.num_steps}")
        if self.scale <= 0:
            raise ValueError(f"scale must be > 0, got {self.scale}")
        if not 0.0 < self.max_beta < 1.0:
            raise ValueError(f"max_beta must be in (0, 1), got {self.max_beta}")
        for name in ("beta_start", "beta_end"):
            value = getattr(self, name)
            if value is not None and not 0.0 < value < 1.0:
                raise ValueError(f"{name} must be in (0, 1), got {value}")


def exponential_betas(num_steps: int, scale: float, rate: float,
                      exponent_per_step: bool = False) -> np.ndarray:
    """``[T]`` unclipped betas ``a * exp(b * r / T)`` (or ``a * exp(b * r)``), ``r = 1..T``."""
    r = np.arange(1, num_steps + 1, dtype=np.float64)
    exponent = rate * r if exponent_per_step else rate * r / num_steps
    return scale * np.exp(exponent)


def make_betas(config: ScheduleConfig) -> np.ndarray:
    """``[T]`` float64 betas of ``config``, clipped to ``[1e-8, max_beta]``."""
    T = config.num_steps
    exp_betas = exponential_betas(T, config.scale, config.rate, config.exponent_per_step)
    if config.kind == EXPONENTIAL:
        betas = exp_betas
    else:
        first = config.beta_start if config.beta_start is not None else float(exp_betas[0])
        last = config.beta_end if config.beta_end is not None else float(exp_betas[-1])
        r = np.arange(1, T + 1, dtype=np.float64)
        if T == 1:
            fraction = np.ones([1])
        elif config.kind == LINEAR:
            fraction = (r - 1.0) / (T - 1.0)
        else:  # LOGARITHMIC
            fraction = np.log(r) / math.log(T)
        betas = first + (last - first) * fraction
    return np.clip(betas, _MIN_BETA, config.max_beta)


class NoiseSchedule:
    """Precomputed forward and posterior coefficients of one schedule (float64 numpy, ``[T]``).

    Plain Python (no variables): layers build it from a :class:`ScheduleConfig` and look the
    coefficients of a batch of steps up with :meth:`gather`.

    Attributes:
      config: the schedule's configuration.
      num_steps: ``T``.
      betas, alphas, alphas_cumprod, alphas_cumprod_prev, sqrt_alphas_cumprod,
      sqrt_one_minus_alphas_cumprod, posterior_variance, posterior_log_variance_clipped,
      posterior_mean_coef1 (multiplies ``z_0``), posterior_mean_coef2 (multiplies ``z_r``):
        ``[T]`` arrays, entry ``r - 1`` for step ``r``.
    """

    def __init__(self, config: ScheduleConfig = ScheduleConfig()):
        self.config = config
        self.num_steps = config.num_steps
        betas = make_betas(config)
        alphas = 1.0 - betas
        alphas_cumprod = np.cumprod(alphas)
        alphas_cumprod_prev = np.concatenate([[1.0], alphas_cumprod[:-1]])
        self.betas = betas
        self.alphas = alphas
        self.alphas_cumprod = alphas_cumprod
        self.alphas_cumprod_prev = alphas_cumprod_prev
        self.sqrt_alphas_cumprod = np.sqrt(alphas_cumprod)
        self.sqrt_one_minus_alphas_cumprod = np.sqrt(1.0 - alphas_cumprod)
        one_minus = 1.0 - alphas_cumprod
        self.posterior_variance = betas * (1.0 - alphas_cumprod_prev) / one_minus
        floor = self.posterior_variance[1] if self.num_steps > 1 else betas[0]
        self.posterior_log_variance_clipped = np.log(
            np.concatenate([[floor], self.posterior_variance[1:]]))
        self.posterior_mean_coef1 = betas * np.sqrt(alphas_cumprod_prev) / one_minus
        self.posterior_mean_coef2 = (1.0 - alphas_cumprod_prev) * np.sqrt(alphas) / one_minus

    def gather(self, name: str, steps: tf.Tensor, dtype: tf.DType = tf.float32) -> tf.Tensor:
        """Coefficient ``name`` at steps ``steps`` (int, ``1..T``, any shape) -> same shape."""
        table = tf.constant(getattr(self, name), dtype=dtype)
        return tf.gather(table, tf.cast(steps, tf.int32) - 1)

    def __repr__(self) -> str:
        return (f"NoiseSchedule({self.config.kind}, T={self.num_steps}, "
                f"beta={self.betas[0]:.4g}..{self.betas[-1]:.4g}, "
                f"abar_T={self.alphas_cumprod[-1]:.3g})")
