"""Retrieval models behind one registry (:func:`build_model`)."""

from t2diff_tf.models.base import LossConfig, RetrievalModel
from t2diff_tf.models.bert4rec import BERT4Rec, BERT4RecConfig
from t2diff_tf.models.caser import Caser, CaserConfig
from t2diff_tf.models.contrast_vae import ContrastVAE, ContrastVAEConfig
from t2diff_tf.models.dat import DAT, DATConfig
from t2diff_tf.models.diffurec import DiffuRec, DiffuRecConfig
from t2diff_tf.models.fit import FIT, FITConfig
from t2diff_tf.models.mamba4rec import Mamba4Rec, Mamba4RecConfig
from t2diff_tf.models.registry import MODELS, available_models, build_model
from t2diff_tf.models.t2diff import T2Diff, T2DiffConfig
from t2diff_tf.models.sequential import GRU4Rec, SASRec, SequentialConfig
from t2diff_tf.models.stosa import STOSA, STOSAConfig
from t2diff_tf.models.two_tower import MeanPoolTwoTower, TwoTowerConfig

__all__ = [
    "BERT4Rec", "BERT4RecConfig", "Caser", "CaserConfig", "ContrastVAE", "ContrastVAEConfig",
    "DAT", "DATConfig", "DiffuRec", "DiffuRecConfig", "FIT", "FITConfig", "GRU4Rec",
    "LossConfig", "MODELS", "Mamba4Rec", "Mamba4RecConfig", "MeanPoolTwoTower", "RetrievalModel",
    "SASRec", "STOSA", "STOSAConfig", "SequentialConfig", "T2Diff", "T2DiffConfig",
    "TwoTowerConfig", "available_models", "build_model",
]
