"""Keras layers of T2Diff and the baselines."""

from t2diff_tf.layers.attention import SessionEncoder, TargetAttention
from t2diff_tf.layers.bidirectional_transformer import BidirectionalTransformer
from t2diff_tf.layers.diffusion import DiffusionConfig, DriftDiffusion
from t2diff_tf.layers.items import ItemRepresentation
from t2diff_tf.layers.mamba import MambaBlock, MambaEncoder
from t2diff_tf.layers.schedules import NoiseSchedule, ScheduleConfig
from t2diff_tf.layers.unet import UNet1D, UNetConfig
from t2diff_tf.layers.wasserstein_attention import StochasticTransformer, WassersteinAttention

__all__ = [
    "BidirectionalTransformer", "DiffusionConfig", "DriftDiffusion", "ItemRepresentation",
    "MambaBlock", "MambaEncoder", "NoiseSchedule", "ScheduleConfig", "SessionEncoder",
    "StochasticTransformer", "TargetAttention", "UNet1D", "UNetConfig", "WassersteinAttention",
]
