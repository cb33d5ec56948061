"""STOSA: sequential recommendation via stochastic self-attention (a baseline).

Fan, Liu, Wang, Wang, Yu & Wu, "Sequential Recommendation via Stochastic Self-Attention",
WWW 2022.

What is implemented (paper Section 4):

* Stochastic item embeddings: every item ``i`` is a diagonal Gaussian ``N(mu_i, diag(Sigma_i))``
  with a mean embedding ``mu_i`` (the base's :class:`~t2diff_tf.layers.items.ItemRepresentation`
  ``items``) and a covariance embedding ``Sigma_i = ELU(c_i) + 1 > 0`` (a second
  ``ItemRepresentation``, ``item_covariances``; both include the genre side features when
  given).
* Stochastic self-attention (:class:`~t2diff_tf.layers.wasserstein_attention.StochasticTransformer`
  and :class:`~t2diff_tf.layers.wasserstein_attention.WassersteinAttention`): mean and covariance
  streams with their own positional embeddings, query/key/value projections per stream,
  attention scores ``-W2^2`` between the query's and the key's Gaussians (divided by
  ``sqrt(d_head)``), causal and padding masks, the mean context ``sum a V^mu`` and the
  covariance context ``sum a^2 V^Sigma``, post-norm residual blocks with a feed-forward network
  per stream (the covariance one through ``ELU + 1``). Position ``t``'s output is a Gaussian
  ``N(mu_t, Sigma_t)`` that summarises behaviours ``<= t``.
* Scores: an item's score is ``-W2^2`` between the user's Gaussian (the output at the last
  position) and the item's Gaussian, with ``W2^2 = ||mu_u - mu_i||^2 + ||r_u - r_i||^2`` and
  ``r = Sigma^(1/2)`` (diagonal covariances).
* The paper's positive-vs-negative regulariser ``l_pvn = max(0, W2^2(s, i+) - W2^2(i+, i-))``
  (:meth:`STOSA.pvn_loss`): for every predicted position ``s`` with positive item ``i+`` and a
  uniformly sampled negative ``i- != i+``, the positive must be closer to the sequence's
  distribution than to the negative; weighted by ``pvn_weight`` (the authors' default 0.005)
  and reported as the ``auxiliary_loss``.

Scores as inner products. The registry ranks by ``query_embeddings @ corpus_embeddings().T``, so
``-W2^2`` is written as an inner product of augmented ``2d + 1`` vectors:
``-W2^2 = 2<mu_u, mu_i> + 2<r_u, r_i> - (||mu_u||^2 + ||r_u||^2) - (||mu_i||^2 + ||r_i||^2)``;
the user-only term is constant per user (changes neither a ranking nor a softmax over items), so
with ``e_u = [2 mu_u, 2 r_u, -1]`` and ``e_i = [mu_i, r_i, ||mu_i||^2 + ||r_i||^2]``,
``<e_u, e_i> = -W2^2(u, i) + ||mu_u||^2 + ||r_u||^2``. :meth:`STOSA.query_embeddings` and
:meth:`STOSA.corpus_embeddings` return these ``[*, 2d + 1]`` vectors, so evaluation, the
brute-force and ScaNN indexes and serving work unchanged (ScaNN's quantisation sees the large
last coordinate of the items; its recall should be checked against brute force).

Simplified / changed:

* Training loss: the paper trains with a BPR loss over one sampled negative per position;
  here, like the registry's SASRec, the next item at every valid position is predicted with a
  full softmax over ``-W2^2`` to every item of the corpus (``all_positions=False``: the window's
  target only), plus ``pvn_weight * l_pvn``.
* Squared distance: as in the authors' code, ``W2^2`` (not ``W2``) is used in the attention, the
  scores and the regulariser (the ranking by ``W2`` and by ``W2^2`` is the same).
* The encoder follows the authors' code (post-norm blocks, LayerNorm on the inputs) with
  separate LayerNorms per stream; the feed-forward activation is configurable (default GELU);
  no user-margin embedding (users are cold at serving).
* No item tower: an item's score vector is computed from its two embeddings directly (the base's
  ``item_tower`` is the identity on the ``2d + 1`` vectors); only the full softmax is offered
  (no sampled-softmax :class:`~t2diff_tf.models.base.LossConfig`).
"""

from __future__ import annotations

import dataclasses
from typing import Dict, Optional, Tuple

import numpy as np
import tensorflow as tf

from t2diff_tf import features as F
from t2diff_tf.layers.items import ItemRepresentation
from t2diff_tf.layers.wasserstein_attention import (StochasticTransformer, covariance_sqrt,
                                                    positive_covariance, squared_wasserstein)
from t2diff_tf.models.base import Features
from t2diff_tf.models.config import DictConfig
from t2diff_tf.models.sequential import NextItemModel


@dataclasses.dataclass(frozen=True)
class STOSAConfig(DictConfig):
    """Hyperparameters of :class:`STOSA`.

    Attributes:
      embedding_dim: ``d`` of the mean and covariance embeddings (scores live in ``2d + 1``).
      num_blocks: stochastic self-attention blocks.
      num_heads: attention heads (must divide ``embedding_dim``).
      dropout: dropout on the inputs, the residual branches and inside the feed-forward
        networks.
      attention_dropout: dropout on the attention weights.
      activation: hidden activation of the feed-forward networks.
      all_positions: train on every position's next item (else only on the window's target).
      pvn_weight: weight of the positive-vs-negative regulariser ``l_pvn`` (0 disables it).
    """

    embedding_dim: int = 64
    num_blocks: int = 2
    num_heads: int = 1
    dropout: float = 0.2
    attention_dropout: float = 0.0
    activation: str = "gelu"
    all_positions: bool = True
    pvn_weight: float = 0.005

    def __post_init__(self):
        for name in ("embedding_dim", "num_blocks", "num_heads"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.embedding_dim % self.num_heads:
            raise ValueError(f"embedding_dim {self.embedding_dim} is not a multiple of "
                             f"num_heads {self.num_heads}")
        for name in ("dropout", "attention_dropout"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"{name} must be in [0, 1), got {getattr(self, name)}")
        if self.pvn_weight < 0:
            raise ValueError(f"pvn_weight must be >= 0, got {self.pvn_weight}")
        try:
            tf.keras.activations.get(self.activation)
        except ValueError as error:
            raise ValueError(f"unknown activation {self.activation!r}") from error


def user_score_vectors(mean: tf.Tensor, covariance: tf.Tensor) -> tf.Tensor:
    """``[..., d]`` user Gaussians -> ``[..., 2d + 1]`` vectors ``[2 mu, 2 Sigma^(1/2), -1]``."""
    ones = tf.ones_like(mean[..., :1])
    return tf.concat([2.0 * mean, 2.0 * covariance_sqrt(covariance), -ones], axis=-1)


def item_score_vectors(mean: tf.Tensor, covariance: tf.Tensor) -> tf.Tensor:
    """``[..., d]`` item Gaussians -> ``[..., 2d + 1]`` vectors
    ``[mu, Sigma^(1/2), ||mu||^2 + ||Sigma^(1/2)||^2]``; the inner product with
    :func:`user_score_vectors` is ``-W2^2`` plus a per-user constant."""
    root = covariance_sqrt(covariance)
    squares = tf.reduce_sum(tf.square(mean) + tf.square(root), axis=-1, keepdims=True)
    return tf.concat([mean, root, squares], axis=-1)


class STOSA(NextItemModel):
    """STOSA (see the module docstring).

    Args:
      config: hyperparameters.
      num_items, item_features, item_frequencies, example_spec: see
        :class:`~t2diff_tf.models.base.RetrievalModel`.
    """

    def __init__(self, config: STOSAConfig = STOSAConfig(), *, num_items: int,
                 item_features: Optional[np.ndarray] = None,
                 item_frequencies: Optional[np.ndarray] = None,
                 example_spec: F.ExampleSpec = F.ExampleSpec(), name: str = "stosa"):
        if config.pvn_weight > 0 and num_items < 2:
            raise ValueError("the pvn regulariser samples a negative other than the positive: "
                             "it needs num_items >= 2 (or pvn_weight=0)")
        super().__init__(config, num_items=num_items, item_features=item_features,
                         item_frequencies=item_frequencies, example_spec=example_spec,
                         name=name)
        # ``self.items`` (from the base) holds the mean embeddings. An item's score vector comes
        # from its Gaussian directly: the base's (linear) item tower is replaced by the identity,
        # so that no unused, unbuilt layer is left among the variables and checkpoints.
        self.item_tower = tf.keras.layers.Identity(name="item_tower")
        self.item_tower.build(tf.TensorShape([None, 2 * config.embedding_dim + 1]))
        self.covariances = ItemRepresentation(num_items, config.embedding_dim, item_features,
                                              name="item_covariances")
        self.encoder = StochasticTransformer(
            example_spec.positions, config.num_blocks, config.num_heads, config.dropout,
            config.attention_dropout, config.activation, name="encoder")

    # -- Gaussians ------------------------------------------------------------------------------

    def item_gaussians(self, item_ids: tf.Tensor) -> Tuple[tf.Tensor, tf.Tensor]:
        """Ids ``[...]`` -> ``(mean [..., d], covariance [..., d] > 0)``."""
        return self.items(item_ids), positive_covariance(self.covariances(item_ids))

    def sequence_gaussians(self, history: tf.Tensor, training: bool = False
                           ) -> Tuple[tf.Tensor, tf.Tensor]:
        """History ``[batch, L]`` -> ``(mean, covariance)`` ``[batch, L, d]``: position ``t``'s
        Gaussian from behaviours ``<= t`` (standard normal at padded positions)."""
        history = tf.cast(history, tf.int64)
        mask = tf.not_equal(history, F.PADDING_ID)
        return self.encoder(self.items(history), self.covariances(history), mask=mask,
                            training=training)

    def user_gaussian(self, features: Features, training: bool = False
                      ) -> Tuple[tf.Tensor, tf.Tensor]:
        """``(mean [batch, d], covariance [batch, d])`` of the user (last position)."""
        mean, covariance = self.sequence_gaussians(features[F.HISTORY], training)
        return mean[:, -1], covariance[:, -1]

    # -- towers ---------------------------------------------------------------------------------

    def _states(self, history: tf.Tensor, training: bool) -> tf.Tensor:
        """``[batch, L, 2d + 1]`` user score vectors at every position."""
        return user_score_vectors(*self.sequence_gaussians(history, training))

    def candidate_embeddings(self, item_ids: tf.Tensor) -> tf.Tensor:
        """Ids ``[n]`` -> ``[n, 2d + 1]`` item score vectors (see the module docstring)."""
        return self.item_tower(item_score_vectors(*self.item_gaussians(item_ids)))

    # -- losses ---------------------------------------------------------------------------------

    def sample_negatives(self, positives: tf.Tensor) -> tf.Tensor:
        """A uniform item ``!= positive`` for every positive id (any shape, ids ``1..N``)."""
        positives = tf.cast(positives, tf.int64)
        offsets = tf.random.uniform(tf.shape(positives), 1, self.num_items, dtype=tf.int64)
        return (positives - 1 + offsets) % self.num_items + 1

    def pvn_loss(self, mean: tf.Tensor, covariance: tf.Tensor, positives: tf.Tensor,
                 negatives: tf.Tensor) -> tf.Tensor:
        """``mean_n max(0, W2^2(s_n, i+_n) - W2^2(i+_n, i-_n))`` (unweighted).

        Args:
          mean, covariance: ``[n, d]`` sequence Gaussians ``s``.
          positives, negatives: ``[n]`` item ids.
        """
        positive_mean, positive_cov = self.item_gaussians(positives)
        negative_mean, negative_cov = self.item_gaussians(negatives)
        to_sequence = squared_wasserstein(mean, covariance, positive_mean, positive_cov)
        to_negative = squared_wasserstein(positive_mean, positive_cov, negative_mean,
                                          negative_cov)
        hinge = tf.nn.relu(to_sequence - to_negative)
        return tf.math.divide_no_nan(tf.reduce_sum(hinge), tf.cast(tf.size(hinge), hinge.dtype))

    def compute_loss(self, features: Features, training: bool = False) -> tf.Tensor:
        """Mean softmax cross-entropy over ``-W2^2`` to every item at the predicted positions,
        plus ``pvn_weight * l_pvn`` (the auxiliary loss)."""
        history = tf.cast(features[F.HISTORY], tf.int64)
        target = tf.cast(tf.reshape(features[F.TARGET], [-1, 1]), tf.int64)
        mean, covariance = self.sequence_gaussians(history, training)
        labels = tf.concat([history[:, 1:], target], axis=1)
        if self.config.all_positions:
            valid = tf.logical_and(tf.not_equal(history, F.PADDING_ID),
                                   tf.not_equal(labels, F.PADDING_ID))
        else:
            length = tf.shape(history)[1]
            last = tf.equal(tf.range(length), length - 1)[None, :]
            valid = tf.logical_and(last, tf.not_equal(labels, F.PADDING_ID))
        mean = tf.boolean_mask(mean, valid)
        covariance = tf.boolean_mask(covariance, valid)
        positives = tf.boolean_mask(labels, valid)
        # <e_u, e_i> = -W2^2(u, i) + a per-row constant: the same softmax as over -W2^2.
        logits = tf.matmul(user_score_vectors(mean, covariance), self.corpus_embeddings(),
                           transpose_b=True)
        losses = tf.nn.sparse_softmax_cross_entropy_with_logits(positives - 1, logits)
        count = tf.cast(tf.size(losses), losses.dtype)
        tower = tf.math.divide_no_nan(tf.reduce_sum(losses), count)
        if self.config.pvn_weight > 0:
            auxiliary = self.config.pvn_weight * self.pvn_loss(
                mean, covariance, positives, self.sample_negatives(positives))
        else:
            auxiliary = tf.constant(0.0)
        return self.total_loss(tower, auxiliary)

    def model_config(self) -> Dict[str, object]:
        description = super().model_config()
        description["score_dim"] = 2 * self.embedding_dim + 1
        return description
