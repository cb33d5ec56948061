"""Next-item sequence baselines: SASRec (causal Transformer) and GRU4Rec (GRU).

Both read the window's ``history`` as a sequence and, in training, predict the next item at
*every* valid position (the history's own next behaviours, then the target) -- the standard way
these models are trained, far cheaper per interaction than one target per window. Fed the
sequence layout (``t2diff_tf.features.SequenceSpec`` chunks through
``t2diff_tf.training.read_sequences``), one pass teaches a whole chunk of a user's history. The
loss (``config.loss``) is the full softmax over the corpus, a sampled softmax with logQ
correction over negatives shared by the batch, or gBCE (:mod:`t2diff_tf.layers.next_item_loss`). At
inference ``e_u`` is the output at the last position (the most recent behaviour), scored against
the item tower like every model of the registry.
"""

from __future__ import annotations

import dataclasses
from typing import Optional, Protocol, Tuple

import numpy as np
import tensorflow as tf

from t2diff_tf import features as F
from t2diff_tf.layers.causal_transformer import (BLOCK_STYLES, POSITION_ORIGINS,
                                                 POSITIONS_FROM_LAST, PRE_NORM,
                                                 CausalTransformer)
from t2diff_tf.models.base import Features, LossConfig, RetrievalModel
from t2diff_tf.models.config import DictConfig
from t2diff_tf.layers.next_item_loss import NextItemLoss, NextItemLossConfig


def check_next_item_settings(config) -> None:
    """For a frozen config's ``__post_init__``: turns a dict ``loss`` (from JSON) into its
    :class:`NextItemLossConfig` and checks ``temperature`` and ``embedding_stddev``."""
    if isinstance(config.loss, dict):
        object.__setattr__(config, "loss", NextItemLossConfig(**config.loss))
    if config.temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {config.temperature}")
    if config.embedding_stddev <= 0:
        raise ValueError(f"embedding_stddev must be > 0, got {config.embedding_stddev}")


@dataclasses.dataclass(frozen=True)
class SequentialConfig(DictConfig):
    """Hyperparameters of :class:`SASRec` and :class:`GRU4Rec`.

    Attributes:
      embedding_dim: ``d``.
      num_blocks: Transformer blocks (SASRec) or GRU layers (GRU4Rec).
      num_heads: attention heads (SASRec).
      dropout: dropout rate.
      all_positions: train on every position's next item (else only on the window's target).
      loss: the per-position loss (full softmax, sampled softmax or gBCE).
      tied_item_embeddings: score against the input item vectors themselves (SASRec's shared
        embedding table) instead of a linear item tower on top of them.
      scale_embeddings: multiply the input item vectors by ``sqrt(d)`` before the encoder (as
        SASRec's reference code does).
      normalize: score with L2-normalised user and item vectors (cosine similarity), as HSTU
        and its TensorFlow reimplementation do; served embeddings are normalised too.
      temperature: training logits are divided by it (with ``normalize``, 0.05 is HSTU's
        setting); rankings do not depend on it.
      block: SASRec's Transformer block style, ``"pre_norm"`` or ``"sasrec"`` (the reference
        code's block; see :class:`~t2diff_tf.layers.causal_transformer.CausalTransformer`).
      embedding_stddev: the item embeddings start from ``N(0, embedding_stddev)`` (SASRec's
        reference code: 0.02).
      position_origin: SASRec's positional embeddings counted from the most recent behaviour
        (``"last"``) or from the oldest one in the sequence (``"first"``, SASRec's reference
        code); see :class:`~t2diff_tf.layers.causal_transformer.CausalTransformer`.
    """

    embedding_dim: int = 64
    num_blocks: int = 2
    num_heads: int = 1
    dropout: float = 0.2
    all_positions: bool = True
    loss: NextItemLossConfig = NextItemLossConfig()
    tied_item_embeddings: bool = False
    scale_embeddings: bool = False
    normalize: bool = False
    temperature: float = 1.0
    block: str = PRE_NORM
    embedding_stddev: float = 0.1
    position_origin: str = POSITIONS_FROM_LAST

    def __post_init__(self):
        check_next_item_settings(self)
        if self.block not in BLOCK_STYLES:
            raise ValueError(f"block must be one of {BLOCK_STYLES}, got {self.block!r}")
        if self.position_origin not in POSITION_ORIGINS:
            raise ValueError(f"position_origin must be one of {POSITION_ORIGINS}, "
                             f"got {self.position_origin!r}")


class NextItemConfig(Protocol):
    """What :class:`NextItemModel` reads of its subclass's config (:class:`SequentialConfig`,
    ``Mamba4RecConfig``, ``STOSAConfig``, ...)."""

    embedding_dim: int
    all_positions: bool


class NextItemModel(RetrievalModel):
    """Base of the sequence baselines: subclasses define :meth:`encode`."""

    def __init__(self, config: NextItemConfig, *, num_items: int,
                 item_features: Optional[np.ndarray] = None,
                 item_frequencies: Optional[np.ndarray] = None,
                 example_spec: F.ExampleSpec = F.ExampleSpec(), name: Optional[str] = None):
        # A linear item tower (no hidden layer): the output side stays close to the input
        # embeddings, as in SASRec's shared embedding table.
        super().__init__(num_items, config.embedding_dim, (), LossConfig(),
                         item_features=item_features, item_frequencies=item_frequencies,
                         example_spec=example_spec, name=name,
                         item_embedding_stddev=getattr(config, "embedding_stddev", 0.1))
        self.config = config
        if getattr(config, "tied_item_embeddings", False):
            del self.item_tower  # scores use the input item vectors themselves
        # STOSA keeps its own Wasserstein softmax and has no ``loss`` field.
        self.next_item_loss = NextItemLoss(getattr(config, "loss", NextItemLossConfig()),
                                           num_items, item_frequencies, name="next_item_loss")

    @property
    def trains_on_sequences(self) -> bool:
        return bool(self.config.all_positions)

    def encode(self, vectors: tf.Tensor, mask: tf.Tensor, training: bool) -> tf.Tensor:
        """``[batch, L, d]`` behaviour vectors -> ``[batch, L, d]`` states (causal)."""
        raise NotImplementedError

    def window_states(self, features: Features, training: bool) -> tf.Tensor:
        """``[batch, L, d]`` states of a batch of windows, from ``history`` alone by default.
        A model whose encoder also reads the window's other per-behaviour features (HSTU's time
        bias reads ``history_timestamps``) overrides it."""
        return self._states(features[F.HISTORY], training)

    def candidate_embeddings(self, item_ids: tf.Tensor) -> tf.Tensor:
        """Item tower: ids ``[n]`` -> ``[n, d]``; the input vectors themselves when
        ``config.tied_item_embeddings``."""
        if getattr(self.config, "tied_item_embeddings", False):
            vectors = self.items(item_ids)
        else:
            vectors = super().candidate_embeddings(item_ids)
        return self._normalized(vectors)

    def _normalized(self, vectors: tf.Tensor) -> tf.Tensor:
        if getattr(self.config, "normalize", False):
            return tf.math.l2_normalize(vectors, axis=-1)
        return vectors

    def _behaviour_vectors(self, history: tf.Tensor) -> Tuple[tf.Tensor, tf.Tensor]:
        """``history`` ``[batch, L]`` -> its item vectors ``[batch, L, d]`` (0 on padding) and
        the valid mask ``[batch, L]``."""
        history = tf.cast(history, tf.int64)
        mask = tf.not_equal(history, F.PADDING_ID)
        vectors = self.items(history) * tf.cast(mask, tf.float32)[..., None]
        if getattr(self.config, "scale_embeddings", False):
            vectors *= float(self.embedding_dim) ** 0.5
        return vectors, mask

    def _states(self, history: tf.Tensor, training: bool) -> tf.Tensor:
        vectors, mask = self._behaviour_vectors(history)
        return self.encode(vectors, mask, training)

    def user_tower(self, features: Features, training: bool = False
                   ) -> Tuple[tf.Tensor, tf.Tensor]:
        states = self.window_states(features, training)
        return self._normalized(states[:, -1, :]), tf.constant(0.0)

    def compute_loss(self, features: Features, training: bool = False) -> tf.Tensor:
        """Mean ``config.loss`` over the labelled positions: every valid position with
        ``all_positions`` (labels ``concat(history[:, 1:], target)``), else the last one.
        ``history`` may be shorter than ``L`` (batches trimmed of left padding)."""
        history = tf.cast(features[F.HISTORY], tf.int64)
        target = tf.cast(tf.reshape(features[F.TARGET], [-1, 1]), tf.int64)
        if self.config.all_positions:
            states = self.window_states(features, training)
            labels = tf.concat([history[:, 1:], target], axis=1)
            valid = tf.logical_and(tf.not_equal(history, F.PADDING_ID),
                                   tf.not_equal(labels, F.PADDING_ID))
            queries = self._normalized(tf.boolean_mask(states, valid))
            labels = tf.boolean_mask(labels, valid)
        else:
            queries, labels = self.user_tower(features, training)[0], target[:, 0]
        queries /= getattr(self.config, "temperature", 1.0)
        loss = self.next_item_loss(queries, labels, self.candidate_embeddings)
        return self.total_loss(loss)


class SASRec(NextItemModel):
    """SASRec (Kang & McAuley, 2018): causal self-attention over the behaviour sequence."""

    def __init__(self, config: SequentialConfig = SequentialConfig(), *, name: str = "sasrec",
                 **data):
        super().__init__(config, name=name, **data)
        self.encoder = CausalTransformer(self.example_spec.positions, config.num_blocks,
                                         config.num_heads, config.dropout, block=config.block,
                                         position_origin=config.position_origin,
                                         name="encoder")

    def encode(self, vectors, mask, training):
        return self.encoder(vectors, mask=mask, training=training)


class GRU4Rec(NextItemModel):
    """GRU4Rec (Hidasi et al., 2016): a recurrent encoder over the behaviour sequence.

    Left padding is skipped by the GRU's mask, so the last state summarises the valid items.
    """

    def __init__(self, config: SequentialConfig = SequentialConfig(), *, name: str = "gru4rec",
                 **data):
        super().__init__(config, name=name, **data)
        self.grus = [tf.keras.layers.GRU(config.embedding_dim, return_sequences=True,
                                         dropout=config.dropout, name=f"gru_{i}")
                     for i in range(config.num_blocks)]

    def encode(self, vectors, mask, training):
        x = vectors
        for gru in self.grus:
            x = gru(x, mask=mask, training=training)
        return x * tf.cast(mask, x.dtype)[..., None]
