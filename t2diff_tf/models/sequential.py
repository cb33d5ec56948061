"""Next-item sequence baselines: SASRec (causal Transformer) and GRU4Rec (GRU).

Both read the window's ``history`` as a sequence and, in training, predict the next item at
*every* valid position (the history's own next behaviours, then the target) with a full softmax
over the corpus -- the standard way these models are trained, far cheaper per interaction than
one target per window. At inference ``e_u`` is the output at the last position (the most recent
behaviour), scored against the item tower like every model of the registry.
"""

from __future__ import annotations

import dataclasses
from typing import Optional, Protocol, Tuple

import numpy as np
import tensorflow as tf

from t2diff_tf import features as F
from t2diff_tf.layers.causal_transformer import CausalTransformer
from t2diff_tf.models.base import Features, LossConfig, RetrievalModel
from t2diff_tf.models.config import DictConfig


@dataclasses.dataclass(frozen=True)
class SequentialConfig(DictConfig):
    """Hyperparameters of :class:`SASRec` and :class:`GRU4Rec`.

    Attributes:
      embedding_dim: ``d``.
      num_blocks: Transformer blocks (SASRec) or GRU layers (GRU4Rec).
      num_heads: attention heads (SASRec).
      dropout: dropout rate.
      all_positions: train on every position's next item (else only on the window's target).
    """

    embedding_dim: int = 64
    num_blocks: int = 2
    num_heads: int = 1
    dropout: float = 0.2
    all_positions: bool = True


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
                         example_spec=example_spec, name=name)
        self.config = config

    def encode(self, vectors: tf.Tensor, mask: tf.Tensor, training: bool) -> tf.Tensor:
        """``[batch, L, d]`` behaviour vectors -> ``[batch, L, d]`` states (causal)."""
        raise NotImplementedError

    def _states(self, history: tf.Tensor, training: bool) -> tf.Tensor:
        mask = tf.not_equal(history, F.PADDING_ID)
        vectors = self.items(history) * tf.cast(mask, tf.float32)[..., None]
        return self.encode(vectors, mask, training)

    def user_tower(self, features: Features, training: bool = False
                   ) -> Tuple[tf.Tensor, tf.Tensor]:
        states = self._states(features[F.HISTORY], training)
        return states[:, -1, :], tf.constant(0.0)

    def compute_loss(self, features: Features, training: bool = False) -> tf.Tensor:
        if not self.config.all_positions:
            return super().compute_loss(features, training)
        history = tf.cast(features[F.HISTORY], tf.int64)
        target = tf.cast(tf.reshape(features[F.TARGET], [-1, 1]), tf.int64)
        states = self._states(history, training)
        labels = tf.concat([history[:, 1:], target], axis=1)
        valid = tf.logical_and(tf.not_equal(history, F.PADDING_ID),
                               tf.not_equal(labels, F.PADDING_ID))
        queries = tf.boolean_mask(states, valid)
        logits = tf.matmul(queries, self.corpus_embeddings(), transpose_b=True)
        losses = tf.nn.sparse_softmax_cross_entropy_with_logits(
            tf.boolean_mask(labels, valid) - 1, logits)
        loss = tf.reduce_mean(losses)
        return self.total_loss(loss)



class SASRec(NextItemModel):
    """SASRec (Kang & McAuley, 2018): causal self-attention over the behaviour sequence."""

    def __init__(self, config: SequentialConfig = SequentialConfig(), *, name: str = "sasrec",
                 **data):
        super().__init__(config, name=name, **data)
        self.encoder = CausalTransformer(self.example_spec.history_length, config.num_blocks,
                                         config.num_heads, config.dropout, name="encoder")

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
