"""Retrieval models behind one registry (:func:`build_model`)."""

from t2diff_tf.models.base import LossConfig, RetrievalModel
from t2diff_tf.models.registry import MODELS, available_models, build_model
from t2diff_tf.models.t2diff import T2Diff, T2DiffConfig
from t2diff_tf.models.two_tower import MeanPoolTwoTower, TwoTowerConfig

__all__ = [
    "LossConfig", "MODELS", "MeanPoolTwoTower", "RetrievalModel", "T2Diff", "T2DiffConfig",
    "TwoTowerConfig", "available_models", "build_model",
]
