"""The approximator of T2Diff: a 1-D U-Net over the time axis, conditioned on the diffusion step.

The authors use a U-Net with filters ``[4, 8, 16, 32]`` and kernel 3 over the (short) behaviour
sequence. Halving the time axis of a 10-step session four times leaves nothing to convolve and
makes odd lengths awkward, so this U-Net keeps the length fixed and grows the *dilation* instead of
pooling: level ``i`` convolves with dilation ``dilation_base ** i``, which widens the receptive
field as pooling would. Encoder levels widen the channels, the decoder mirrors them and
concatenates the encoder's output of the same level (the U-Net skip connections). Output length
equals input length for every ``n``.

Padding: every block multiplies its input by the mask before convolving, so values at padded
positions never reach a valid position (they look like the zero padding at a sequence edge).
Normalisation is per position (layer norm over channels), never over time.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Dict, Optional, Tuple

import tensorflow as tf


@dataclasses.dataclass(frozen=True)
class UNetConfig:
    """Architecture of :class:`UNet1D`.

    Attributes:
      filters: channels per level, encoder order (authors: ``(4, 8, 16, 32)`` with 2-d items;
        the default suits item embeddings of 32..64 dimensions).
      kernel_size: width of every convolution (odd).
      dilation_base: level ``i`` uses dilation ``dilation_base ** i``; 1 disables dilation.
      step_embedding_dim: width of the sinusoidal step embedding and of its MLP.
      activation: Keras activation name.
    """

    filters: Tuple[int, ...] = (32, 64)
    kernel_size: int = 3
    dilation_base: int = 2
    step_embedding_dim: int = 32
    activation: str = "swish"

    def __post_init__(self):
        object.__setattr__(self, "filters", tuple(int(f) for f in self.filters))
        if not self.filters or min(self.filters) < 1:
            raise ValueError(f"filters must be a non-empty tuple of positive ints, "
                             f"got {self.filters}")
        if self.kernel_size < 1 or self.kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be a positive odd int, got {self.kernel_size}")
        if self.dilation_base < 1:
            raise ValueError(f"dilation_base must be >= 1, got {self.dilation_base}")
        if self.step_embedding_dim < 2 or self.step_embedding_dim % 2:
            raise ValueError("step_embedding_dim must be an even int >= 2")


def sinusoidal_step_embedding(steps: tf.Tensor, dim: int, max_period: float = 10000.0
                              ) -> tf.Tensor:
    """Transformer-style embedding of diffusion steps: ``[batch]`` -> ``[batch, dim]``."""
    half = dim // 2
    frequencies = tf.exp(-math.log(max_period) * tf.range(half, dtype=tf.float32) / half)
    angles = tf.cast(steps, tf.float32)[:, None] * frequencies[None, :]
    return tf.concat([tf.sin(angles), tf.cos(angles)], axis=-1)


def _masked(x: tf.Tensor, mask: Optional[tf.Tensor]) -> tf.Tensor:
    if mask is None:
        return x
    return tf.where(tf.cast(mask, tf.bool)[:, :, None], x, tf.zeros_like(x))


@tf.keras.utils.register_keras_serializable(package="t2diff")
class StepConditionedBlock(tf.keras.layers.Layer):
    """Two masked convolutions with the step embedding added between them, plus a residual.

    ``h = act(LN(conv_in(x) + W e)); out = act(conv_out(h)) + residual(x)`` with ``x`` and ``h``
    zeroed at padded positions before each convolution.

    ``[batch, n, c_in]``, step embedding ``[batch, e]``, mask ``[batch, n]`` ->
    ``[batch, n, filters]``.
    """

    def __init__(self, filters: int, kernel_size: int = 3, dilation_rate: int = 1,
                 activation: str = "swish", **kwargs):
        super().__init__(**kwargs)
        self.filters = filters
        self.kernel_size = kernel_size
        self.dilation_rate = dilation_rate
        self.activation = activation

    def build(self, input_shape):
        conv = dict(kernel_size=self.kernel_size, dilation_rate=self.dilation_rate,
                    padding="same")
        self._conv_in = tf.keras.layers.Conv1D(self.filters, name="conv_in", **conv)
        self._conv_out = tf.keras.layers.Conv1D(self.filters, name="conv_out", **conv)
        self._step_projection = tf.keras.layers.Dense(self.filters, name="step_projection")
        self._norm = tf.keras.layers.LayerNormalization(name="norm")
        self._act = tf.keras.activations.get(self.activation)
        if int(input_shape[-1]) != self.filters:
            self._residual = tf.keras.layers.Conv1D(self.filters, 1, name="residual")
        else:
            self._residual = None
        super().build(input_shape)

    def call(self, inputs: tf.Tensor, step_embedding: tf.Tensor,
             mask: Optional[tf.Tensor] = None) -> tf.Tensor:
        x = _masked(inputs, mask)
        h = self._conv_in(x)
        h = h + self._step_projection(step_embedding)[:, None, :]
        h = self._act(self._norm(h))
        h = self._act(self._conv_out(_masked(h, mask)))
        residual = x if self._residual is None else self._residual(x)
        return h + residual

    def get_config(self) -> Dict[str, Any]:
        config = super().get_config()
        config.update(filters=self.filters, kernel_size=self.kernel_size,
                      dilation_rate=self.dilation_rate, activation=self.activation)
        return config


@tf.keras.utils.register_keras_serializable(package="t2diff")
class UNet1D(tf.keras.layers.Layer):
    """1-D U-Net approximator ``(concat([z_r, X], -1), r, mask) -> z0_hat``.

    Call arguments:
      inputs: ``[batch, n, c]`` (T2Diff: ``c = 2d``, noised drift and behaviours on channels).
      steps: ``[batch]`` int diffusion steps ``r`` in ``1..T``.
      mask: ``[batch, n]`` bool or 0/1, ``True`` at valid positions; ``None``: all valid.

    Returns:
      ``[batch, n, output_dim]``, zero at padded positions.
    """

    def __init__(self, output_dim: int, config: UNetConfig = UNetConfig(), **kwargs):
        super().__init__(**kwargs)
        if isinstance(config, dict):
            config = UNetConfig(**config)
        self.output_dim = int(output_dim)
        self.config = config

    def build(self, input_shape):
        c = self.config
        self._step_mlp = tf.keras.Sequential([
            tf.keras.layers.Dense(c.step_embedding_dim, activation=c.activation),
            tf.keras.layers.Dense(c.step_embedding_dim),
        ], name="step_mlp")
        self._input_projection = tf.keras.layers.Conv1D(c.filters[0], 1, name="input_projection")
        depth = len(c.filters)
        self._down = [StepConditionedBlock(f, c.kernel_size, c.dilation_base ** i, c.activation,
                                           name=f"down_{i}")
                      for i, f in enumerate(c.filters)]
        self._middle = StepConditionedBlock(c.filters[-1], c.kernel_size,
                                            c.dilation_base ** depth, c.activation, name="middle")
        self._up = [StepConditionedBlock(f, c.kernel_size, c.dilation_base ** i, c.activation,
                                         name=f"up_{i}")
                    for i, f in reversed(list(enumerate(c.filters)))]
        self._output_projection = tf.keras.layers.Conv1D(self.output_dim, 1,
                                                         name="output_projection")
        super().build(input_shape)

    def call(self, inputs: tf.Tensor, steps: tf.Tensor,
             mask: Optional[tf.Tensor] = None) -> tf.Tensor:
        if mask is not None:
            mask = tf.cast(mask, inputs.dtype)
        step_embedding = self._step_mlp(
            sinusoidal_step_embedding(steps, self.config.step_embedding_dim))
        h = self._input_projection(_masked(inputs, mask))
        skips = []
        for block in self._down:
            h = block(h, step_embedding, mask=mask)
            skips.append(h)
        h = self._middle(h, step_embedding, mask=mask)
        for block, skip in zip(self._up, reversed(skips)):
            h = block(tf.concat([h, skip], axis=-1), step_embedding, mask=mask)
        return _masked(self._output_projection(_masked(h, mask)), mask)

    def compute_mask(self, inputs, mask=None):
        return None

    def get_config(self) -> Dict[str, Any]:
        config = super().get_config()
        config.update(output_dim=self.output_dim, config=dataclasses.asdict(self.config))
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["config"] = UNetConfig(**config["config"])
        return cls(**config)
