"""BERT4Rec: a bidirectional Transformer trained on a cloze task (a baseline of T2Diff's Table 2).

Sun et al., "BERT4Rec: Sequential Recommendation with Bidirectional Encoder Representations from
Transformer", CIKM 2019.

What is implemented:

* The sequence of a window keeps the length ``L`` of its history: ``s = concat(history[:, 1:],
  target)`` in training (the oldest behaviour is dropped), ``s = concat(history[:, 1:], [MASK])``
  at inference. Item vectors come from the shared
  :class:`~t2diff_tf.layers.items.ItemRepresentation` (id embedding + side features) and go
  through :class:`~t2diff_tf.layers.bidirectional_transformer.BidirectionalTransformer` (learned
  positions, post-norm blocks, GELU feed-forward, padding masked out of the attention keys).
* A learned ``[MASK]`` vector replaces the *whole* vector of a masked position (side features
  included, so a masked item's genres do not leak).
* Training, cloze task (paper Section 3.6): each valid position of ``s`` is masked with
  probability ``mask_probability`` (``rho``), and the masked items are predicted with a full
  softmax over the corpus (items ``1..N``); the loss is the mean over the batch's masked positions.
  The paper also trains on "samples that only mask the last item" so that training matches
  inference: here a fraction ``next_item_probability`` of the rows mask their last position (the
  target) only, and a row whose draw masked nothing masks its last position, so every row
  contributes. In evaluation mode (``training=False``, e.g. Keras' validation loss) only the last
  position is masked: the loss is then the next-item loss of the inference embedding.
  The masks are drawn with ``tf.random.uniform``, usable inside ``tf.function``/``Model.fit``.
* Output layer (paper Eq. 7): ``e = GELU(h W_P + b_P)`` at a position with final state ``h``,
  scored by dot product against the item tower (a linear map of the shared item representation,
  standing for the paper's shared embedding matrix ``E``). At inference ``e_u`` is ``e`` at the
  appended ``[MASK]`` position.

Simplified: the paper's per-item output bias ``b_O`` is dropped (a dot-product retrieval score
has no per-item term); the ``[MASK]`` token is a separate weight instead of an extra id of the
embedding table; the paper's separate duplicated "last-item-only" samples are drawn as a
per-row choice inside each batch instead.
"""

from __future__ import annotations

import dataclasses
from typing import Optional, Tuple

import numpy as np
import tensorflow as tf

from t2diff_tf import features as F
from t2diff_tf.layers.bidirectional_transformer import BidirectionalTransformer
from t2diff_tf.models.base import Features, LossConfig, RetrievalModel
from t2diff_tf.models.config import DictConfig


@dataclasses.dataclass(frozen=True)
class BERT4RecConfig(DictConfig):
    """Hyperparameters of :class:`BERT4Rec`.

    Attributes:
      embedding_dim: ``d`` (paper: 64).
      num_blocks: Transformer layers (paper: 2).
      num_heads: attention heads (paper: 2).
      dropout: dropout rate (paper: 0.1).
      mask_probability: ``rho``, the probability that the cloze task masks a valid position
        (paper: 0.2 on MovieLens-1M).
      next_item_probability: fraction of the training rows that mask only their last position
        (the window's target), as at inference.
    """

    embedding_dim: int = 64
    num_blocks: int = 2
    num_heads: int = 2
    dropout: float = 0.1
    mask_probability: float = 0.2
    next_item_probability: float = 0.2

    def __post_init__(self):
        for name in ("embedding_dim", "num_blocks", "num_heads"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        if not 0.0 < self.mask_probability <= 1.0:
            raise ValueError(f"mask_probability must be in (0, 1], got {self.mask_probability}")
        if not 0.0 <= self.next_item_probability <= 1.0:
            raise ValueError(
                f"next_item_probability must be in [0, 1], got {self.next_item_probability}")


class BERT4Rec(RetrievalModel):
    """BERT4Rec (see the module docstring).

    Args:
      config: hyperparameters.
      num_items, item_features, item_frequencies, example_spec: see
        :class:`~t2diff_tf.models.base.RetrievalModel`. ``item_frequencies`` is unused (the cloze
        loss is a full softmax).
    """


    # Learns every position of a chunk in one pass (cloze / next item at every position).
    trains_on_sequences = True

    def __init__(self, config: BERT4RecConfig = BERT4RecConfig(), *, num_items: int,
                 item_features: Optional[np.ndarray] = None,
                 item_frequencies: Optional[np.ndarray] = None,
                 example_spec: F.ExampleSpec = F.ExampleSpec(), name: str = "bert4rec"):
        # A linear item tower: the output side stays the shared item embeddings, as in the paper.
        super().__init__(num_items, config.embedding_dim, (), LossConfig(),
                         item_features=item_features, item_frequencies=item_frequencies,
                         example_spec=example_spec, name=name)
        self.config = config
        self.mask_embedding = self.add_weight(
            name="mask_embedding", shape=[config.embedding_dim],
            initializer=tf.keras.initializers.RandomNormal(stddev=0.1))
        self.encoder = BidirectionalTransformer(
            example_spec.positions, config.num_blocks, config.num_heads, config.dropout,
            name="encoder")
        self.output_projection = tf.keras.layers.Dense(config.embedding_dim, activation="gelu",
                                                       name="output_projection")

    # -- sequences ------------------------------------------------------------------------------

    @staticmethod
    def cloze_sequence(features: Features) -> tf.Tensor:
        """``concat(history[:, 1:], target)``: ``[batch, L]`` int64 (training sequences)."""
        history = tf.cast(features[F.HISTORY], tf.int64)
        target = tf.cast(tf.reshape(features[F.TARGET], [-1, 1]), tf.int64)
        return tf.concat([history[:, 1:], target], axis=1)

    @staticmethod
    def _last_position(tokens: tf.Tensor) -> tf.Tensor:
        """``[batch, L]`` bool, ``True`` at the last position only."""
        length = tf.shape(tokens)[1]
        last = tf.equal(tf.range(length), length - 1)
        return tf.broadcast_to(last[None, :], tf.shape(tokens))

    def sample_cloze_mask(self, tokens: tf.Tensor) -> tf.Tensor:
        """Draws the training mask of ``tokens`` ``[batch, L]``: ``[batch, L]`` bool.

        Valid positions are masked with probability ``mask_probability``; a fraction
        ``next_item_probability`` of the rows mask their last position only; a row left without
        a masked position masks its last one. Padding is never masked.
        """
        valid = tf.not_equal(tokens, F.PADDING_ID)
        last = self._last_position(tokens)
        cloze = tf.logical_and(
            tf.random.uniform(tf.shape(tokens)) < self.config.mask_probability, valid)
        next_item_only = tf.random.uniform([tf.shape(tokens)[0], 1]) < \
            self.config.next_item_probability
        masked = tf.where(next_item_only, last, cloze)
        empty = tf.logical_not(tf.reduce_any(masked, axis=1, keepdims=True))
        return tf.logical_or(masked, tf.logical_and(empty, last))

    def encode(self, tokens: tf.Tensor, masked: tf.Tensor, training: bool = False) -> tf.Tensor:
        """Final states ``[batch, L, d]`` of ``tokens`` ``[batch, L]`` with the positions of
        ``masked`` ``[batch, L]`` (bool) replaced by ``[MASK]``.

        A masked position counts as valid even where its id is 0 (the inference placeholder);
        other id-0 positions are padding."""
        masked = tf.cast(masked, tf.bool)
        present = tf.logical_and(tf.not_equal(tokens, F.PADDING_ID), tf.logical_not(masked))
        vectors = self.items(tokens) * tf.cast(present, tf.float32)[..., None]
        mask_vectors = tf.broadcast_to(self.mask_embedding, tf.shape(vectors))
        vectors = tf.where(masked[..., None], mask_vectors, vectors)
        return self.encoder(vectors, mask=tf.logical_or(present, masked), training=training)

    # -- towers and loss ------------------------------------------------------------------------

    def user_tower(self, features: Features, training: bool = False
                   ) -> Tuple[tf.Tensor, tf.Tensor]:
        """``e_u`` ``[batch, d]``: the output at a ``[MASK]`` appended after the most recent
        behaviour (``concat(history[:, 1:], [MASK])``). Never reads the target."""
        history = tf.cast(features[F.HISTORY], tf.int64)
        tokens = tf.concat([history[:, 1:], tf.zeros_like(history[:, :1])], axis=1)
        states = self.encode(tokens, self._last_position(tokens), training=training)
        return self.output_projection(states[:, -1, :]), tf.constant(0.0)

    def masked_item_loss(self, features: Features, masked: Optional[tf.Tensor] = None,
                         training: bool = False) -> tf.Tensor:
        """Mean full-softmax cross-entropy of the masked items of the cloze sequence.

        Args:
          features: a batch with ``history`` and ``target``.
          masked: ``[batch, L]`` bool positions of :meth:`cloze_sequence` to mask and predict;
            ``None``: drawn by :meth:`sample_cloze_mask` when ``training``, else the last
            position (the target) only. Padded positions are never predicted.
          training: enables dropout (and the random mask).
        """
        tokens = self.cloze_sequence(features)
        if masked is None:
            masked = self.sample_cloze_mask(tokens) if training else self._last_position(tokens)
        masked = tf.logical_and(tf.cast(masked, tf.bool), tf.not_equal(tokens, F.PADDING_ID))
        states = self.encode(tokens, masked, training=training)
        queries = self.output_projection(tf.boolean_mask(states, masked))
        logits = tf.matmul(queries, self.corpus_embeddings(), transpose_b=True)
        losses = tf.nn.sparse_softmax_cross_entropy_with_logits(
            tf.boolean_mask(tokens, masked) - 1, logits)
        return tf.reduce_mean(losses)

    def compute_loss(self, features: Features, training: bool = False) -> tf.Tensor:
        loss = self.masked_item_loss(features, training=training)
        return self.total_loss(loss)
