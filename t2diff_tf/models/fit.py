"""FIT: a learnable Fully Interacted Two-tower model (Xiong et al., SIGIR 2025, arXiv 2509.12948).

FIT keeps the two towers decoupled (item vectors can be computed offline) but adds an *early*
interaction, the Meta Query Module (MQM), and a *late* one, the Lightweight Similarity Scorer
(LSS). We could read secondary summaries of the paper only (not its full text); what they state
and what this module does:

**Meta Query Module.** A learnable *item meta matrix* ``Q`` ``[m, d]`` (``m`` item clusters) is
turned by parameter-free self-attention into the *hard queries*
``Q* = softmax(Q Q^T / sqrt(d)) Q`` ``[m, d]`` (the summaries write ``(Q Q^T) Q``; the softmax
bounds the scale and keeps the module parameter-free). Each hard query attends over the user's
behaviours (item vectors plus right-aligned learned positions, padding masked out) and a shared
FFN maps the result to one interest vector: ``U`` ``[batch, m, d]``. An item ``i`` is routed to
the meta queries by ``a_i = softmax(v(i) Q^T / tau)`` ``[m]`` from its own representation ``v(i)``
(id + side features) only, with a temperature ``tau`` decaying from ``initial_temperature`` to
``final_temperature`` over training, so routing starts soft and ends near-hard, as in the paper.

*Simplified:* in the paper the training-time user tower attends with the target's *soft query*
``a_target Q*`` and inference uses the item's hard query. A full softmax over all ``N`` items
cannot run the user tower once per candidate, and the target must never reach the user tower, so
here every candidate (target and negatives alike) mixes the ``m`` interest vectors computed from
the hard queries with its own weights ``a_i``: identical to the paper's inference when the routing
is hard (``tau -> 0``), a mixture of outputs rather than of queries while it is soft.

The user tower reads ``history`` only (``history_time_lag``, ``history_session`` and
``session_length`` are not used); the target is a label and never reaches it.

**Lightweight Similarity Scorer.** The item tower ``e_i = FFN(v(i))`` is projected to ``m'``
heads ``V_i`` ``[m', d]``. Per (user, item) pair the similarity matrix
``S[j, j'] = a_ij <U_j, V_ij'>`` ``[m, m']`` (the routed interests against every item head) is
flattened and scored by ``LSS(S) = <w, S> + MLP(S)``: a learned weighted sum plus a tiny MLP
(hidden ``scorer_units``) whose output layer starts at zero, so training starts from the linear
late interaction. *Simplified:* the paper's exact LSS layout is not in the summaries we read; this
is the similarity-matrix-plus-small-network form the paper names.

**Training.** A full softmax over exactly the ``N`` items ``1..N`` with the LSS scores
(:meth:`FIT.score_corpus`), divided by ``loss.temperature``. The sampled softmax is not supported.

**Serving.** :meth:`FIT.score_items` re-scores a shortlist exactly and :meth:`FIT.score_corpus`
scores every item (what :func:`t2diff_tf.metrics.evaluate` ranks by). For an ANN index the model
also has one vector per side whose inner product is *exactly the linear part* ``<w, S>`` of the
LSS: ``query_embeddings`` = ``flatten(U)`` ``[batch, m d]`` and ``corpus_embeddings`` =
``flatten_j(a_ij sum_j' w_jj' V_ij')`` ``[N, m d]``; the MLP residual (and the constant bias) is
what the shortlist misses and :meth:`FIT.retrieve` restores by exact re-scoring.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Dict, Optional, Sequence, Tuple

import numpy as np
import tensorflow as tf

from t2diff_tf import features as F
from t2diff_tf.layers.attention import masked_softmax
from t2diff_tf.models.base import FULL_SOFTMAX, Features, LossConfig, RetrievalModel, feed_forward
from t2diff_tf.models.config import DictConfig


@dataclasses.dataclass(frozen=True)
class FITConfig(DictConfig):
    """Hyperparameters of :class:`FIT`.

    Attributes:
      embedding_dim: ``d`` of item vectors, interest vectors and item heads.
      num_meta_queries: ``m``, rows of the item meta matrix (item clusters / user interests).
      num_item_heads: ``m'``, vectors per item fed to the similarity matrix.
      user_tower_units: hidden widths of the FFN applied to each attended interest.
      item_tower_units: hidden widths of the item tower.
      scorer_units: hidden widths of the LSS's MLP (``()``: the LSS is the weighted sum only).
      scorer_activation: activation of the LSS's MLP.
      use_positions: add right-aligned learned position embeddings to the behaviours (order-aware
        interests); ``False`` makes the user tower a function of the bag of behaviours.
      routing: route items to the meta queries (``S[j, :] *= a_ij``); ``False`` scores the full
        ``m x m'`` similarity matrix without item-side weights.
      initial_temperature: routing temperature ``tau`` at step 0 (paper: 1.0).
      final_temperature: the floor ``tau`` decays to (paper: "close to 0").
      temperature_decay_steps: training steps for ``tau`` to decay geometrically from the initial
        to the final value; 0 keeps ``initial_temperature``.
      loss: the tower loss (full softmax only).
    """

    embedding_dim: int = 64
    num_meta_queries: int = 4
    num_item_heads: int = 4
    user_tower_units: Tuple[int, ...] = (128,)
    item_tower_units: Tuple[int, ...] = (128,)
    scorer_units: Tuple[int, ...] = (16,)
    scorer_activation: str = "swish"
    use_positions: bool = True
    routing: bool = True
    initial_temperature: float = 1.0
    final_temperature: float = 0.05
    temperature_decay_steps: int = 10_000
    loss: LossConfig = LossConfig()

    def __post_init__(self):
        if isinstance(self.loss, dict):
            object.__setattr__(self, "loss", LossConfig(**self.loss))
        for name in ("user_tower_units", "item_tower_units", "scorer_units"):
            object.__setattr__(self, name, tuple(int(u) for u in getattr(self, name)))
        if self.embedding_dim < 1:
            raise ValueError(f"embedding_dim must be >= 1, got {self.embedding_dim}")
        if self.num_meta_queries < 1 or self.num_item_heads < 1:
            raise ValueError("num_meta_queries and num_item_heads must be >= 1")
        if not 0.0 < self.final_temperature <= self.initial_temperature:
            raise ValueError("temperatures must satisfy 0 < final_temperature <= "
                             f"initial_temperature, got {self.final_temperature}, "
                             f"{self.initial_temperature}")
        if self.temperature_decay_steps < 0:
            raise ValueError("temperature_decay_steps must be >= 0")
        if self.loss.kind != FULL_SOFTMAX:
            raise ValueError(f"FIT trains with the full softmax only, got {self.loss.kind!r}")


@tf.keras.utils.register_keras_serializable(package="t2diff")
class MetaQueryModule(tf.keras.layers.Layer):
    """FIT's Meta Query Module: ``m`` hard queries attending over a behaviour sequence.

    Weights: the item meta matrix ``Q`` ``[m, d]``, key/value projections ``[d, d]`` and, with
    ``max_positions > 0``, right-aligned position embeddings ``[max_positions, d]`` (the most
    recent behaviour is position 0, so left padding does not shift them).

    ``hard_queries() = softmax(Q Q^T / sqrt(d)) Q``; for behaviours ``X`` ``[batch, L, d]``,
    ``K = (X + P) W_k``, ``V = (X + P) W_v``, and the output row ``j`` is
    ``sum_l softmax_l(<q*_j, K_l> / sqrt(d)) V_l`` over the valid positions (padding gets exactly
    zero weight and its values are zeroed).

    Call arguments:
      inputs: behaviours ``[batch, L, d]``.
      mask: ``[batch, L]``, ``True`` at valid positions; ``None``: all valid.
      return_weights: also return the attention weights ``[batch, m, L]``.

    Returns:
      ``[batch, m, d]`` (zero rows for a sequence without valid positions).
    """

    def __init__(self, num_queries: int, max_positions: int = 0, **kwargs):
        super().__init__(**kwargs)
        self.num_queries = int(num_queries)
        self.max_positions = int(max_positions)

    def build(self, input_shape):
        d = int(input_shape[-1])
        self._dim = d
        # Unit-variance rows: Q Q^T / sqrt(d) has a diagonal of about sqrt(d), so the hard
        # queries start close to distinct rows of Q rather than to their common mean.
        self.meta_matrix = self.add_weight(
            name="meta_matrix", shape=[self.num_queries, d],
            initializer=tf.keras.initializers.RandomNormal(stddev=1.0))
        self.key_kernel = self.add_weight(name="key_kernel", shape=[d, d],
                                          initializer="glorot_uniform")
        self.value_kernel = self.add_weight(name="value_kernel", shape=[d, d],
                                            initializer="glorot_uniform")
        self.positions = None
        if self.max_positions > 0:
            self.positions = self.add_weight(
                name="position_embeddings", shape=[self.max_positions, d],
                initializer=tf.keras.initializers.TruncatedNormal(stddev=0.02))
        super().build(input_shape)

    def hard_queries(self) -> tf.Tensor:
        """``Q* = softmax(Q Q^T / sqrt(d)) Q`` ``[m, d]`` (parameter-free self-attention)."""
        q = self.meta_matrix
        weights = tf.nn.softmax(tf.matmul(q, q, transpose_b=True) / math.sqrt(self._dim), axis=-1)
        return tf.matmul(weights, q)

    def routing(self, item_vectors: tf.Tensor, temperature: tf.Tensor) -> tf.Tensor:
        """``a = softmax(v Q^T / tau)``: item vectors ``[..., d]`` -> weights ``[..., m]``."""
        logits = tf.tensordot(item_vectors, self.meta_matrix, axes=[[-1], [1]])
        return tf.nn.softmax(logits / tf.cast(temperature, logits.dtype), axis=-1)

    def call(self, inputs: tf.Tensor, mask: Optional[tf.Tensor] = None,
             return_weights: bool = False):
        if mask is None:
            mask = tf.ones(tf.shape(inputs)[:2], tf.bool)
        mask = tf.cast(mask, tf.bool)
        x = inputs
        if self.positions is not None:
            n = tf.shape(inputs)[1]
            tf.debugging.assert_less_equal(n, self.max_positions,
                                           message="sequence longer than max_positions")
            x = x + tf.gather(self.positions, tf.range(n - 1, -1, -1))[None]
        # ``where``, not a product, so that nothing from a padded position can reach the output.
        x = tf.where(mask[:, :, None], x, tf.zeros_like(x))
        keys = tf.tensordot(x, self.key_kernel, axes=1)
        values = tf.tensordot(x, self.value_kernel, axes=1)
        logits = tf.einsum("md,bld->bml", self.hard_queries(), keys) / math.sqrt(self._dim)
        weights = masked_softmax(logits, tf.broadcast_to(mask[:, None, :], tf.shape(logits)))
        out = tf.einsum("bml,bld->bmd", weights, values)
        if return_weights:
            return out, weights
        return out

    def compute_mask(self, inputs, mask=None):
        return None

    def get_config(self) -> Dict[str, Any]:
        config = super().get_config()
        config.update(num_queries=self.num_queries, max_positions=self.max_positions)
        return config


@tf.keras.utils.register_keras_serializable(package="t2diff")
class LightweightSimilarityScorer(tf.keras.layers.Layer):
    """FIT's Lightweight Similarity Scorer: a similarity matrix ``[..., m, m']`` -> a score.

    ``LSS(S) = <w, S> + MLP(flatten(S))`` with ``w`` ``[m, m']`` and an MLP of ``hidden_units``
    whose output layer (``Dense(1)``, with the only bias of the score) starts at zero.

    Call arguments:
      inputs: ``[..., m, m']``.

    Returns:
      ``[...]`` scores.
    """

    def __init__(self, hidden_units: Sequence[int] = (16,), activation: str = "swish",
                 **kwargs):
        super().__init__(**kwargs)
        self.hidden_units = tuple(int(u) for u in hidden_units)
        self.activation = activation

    def build(self, input_shape):
        rows, columns = int(input_shape[-2]), int(input_shape[-1])
        self._shape = (rows, columns)
        self.linear_weights = self.add_weight(
            name="linear_weights", shape=[rows, columns],
            initializer=tf.keras.initializers.Constant(1.0 / math.sqrt(rows * columns)))
        self._hidden = [tf.keras.layers.Dense(u, activation=self.activation, name=f"hidden_{i}")
                        for i, u in enumerate(self.hidden_units)]
        self._output = tf.keras.layers.Dense(1, kernel_initializer="zeros", name="output")
        super().build(input_shape)

    def linear(self, inputs: tf.Tensor) -> tf.Tensor:
        """The weighted sum ``<w, S>`` alone: ``[..., m, m']`` -> ``[...]``."""
        return tf.reduce_sum(inputs * self.linear_weights, axis=[-2, -1])

    def call(self, inputs: tf.Tensor) -> tf.Tensor:
        rows, columns = self._shape
        h = tf.reshape(inputs, tf.concat([tf.shape(inputs)[:-2], [rows * columns]], axis=0))
        for layer in self._hidden:
            h = layer(h)
        return self.linear(inputs) + tf.squeeze(self._output(h), axis=-1)

    def get_config(self) -> Dict[str, Any]:
        config = super().get_config()
        config.update(hidden_units=list(self.hidden_units), activation=self.activation)
        return config


class FIT(RetrievalModel):
    """FIT (see the module docstring).

    Args:
      config: hyperparameters.
      num_items: ``N``.
      item_features: optional multi-hot side features ``[N + 1, G]``.
      item_frequencies: unused (FIT trains with the full softmax); accepted for the registry.
      example_spec: window shapes (``history_length`` sizes the position embeddings).
    """

    def __init__(self, config: FITConfig = FITConfig(), *, num_items: int,
                 item_features: Optional[np.ndarray] = None,
                 item_frequencies: Optional[np.ndarray] = None,
                 example_spec: F.ExampleSpec = F.ExampleSpec(), name: str = "fit"):
        super().__init__(num_items, config.embedding_dim, config.item_tower_units, config.loss,
                         item_features=item_features, item_frequencies=item_frequencies,
                         example_spec=example_spec, name=name)
        self.config = config
        d, heads = config.embedding_dim, config.num_item_heads
        self.meta_queries = MetaQueryModule(
            config.num_meta_queries,
            max_positions=example_spec.history_length if config.use_positions else 0,
            name="meta_query_module")
        self.user_head = feed_forward(config.user_tower_units, d, name="user_head")
        self.item_heads = tf.keras.layers.Dense(heads * d, name="item_heads")
        self.scorer = LightweightSimilarityScorer(config.scorer_units, config.scorer_activation,
                                                  name="similarity_scorer")
        # Training steps seen (drives the routing temperature); saved with the weights.
        self.train_steps = tf.Variable(0, trainable=False, dtype=tf.int64, name="train_steps",
                                       aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA)

    # -- routing temperature --------------------------------------------------------------------

    def routing_temperature(self) -> tf.Tensor:
        """``tau = max(final, initial * (final / initial) ** (step / decay_steps))``."""
        c = self.config
        if c.temperature_decay_steps == 0 or c.final_temperature == c.initial_temperature:
            return tf.constant(c.initial_temperature, tf.float32)
        progress = tf.cast(self.train_steps, tf.float32) / float(c.temperature_decay_steps)
        tau = c.initial_temperature * tf.pow(c.final_temperature / c.initial_temperature,
                                             progress)
        return tf.maximum(tau, c.final_temperature)

    # -- towers ---------------------------------------------------------------------------------

    def interests(self, features: Features, training: bool = False) -> tf.Tensor:
        """User interests ``U`` ``[batch, m, d]`` from the ``history`` only."""
        history = features[F.HISTORY]
        mask = tf.not_equal(history, F.PADDING_ID)
        vectors = self.items(history)
        attended = self.meta_queries(vectors, mask=mask)
        return self.user_head(attended, training=training)

    def user_tower(self, features: Features, training: bool = False
                   ) -> Tuple[tf.Tensor, tf.Tensor]:
        """``(flatten(U) [batch, m d], 0)``: the ANN query (see :meth:`candidate_embeddings`)."""
        interests = self.interests(features, training=training)
        flat = tf.reshape(interests, [-1, self.config.num_meta_queries * self.embedding_dim])
        return flat, tf.constant(0.0)

    def item_side(self, item_ids: tf.Tensor) -> Tuple[tf.Tensor, tf.Tensor]:
        """Item ids ``[...]`` -> ``(routing a [..., m], heads V [..., m', d])``."""
        vectors = self.items(item_ids)
        heads = self.item_heads(self.item_tower(vectors))
        heads = tf.reshape(heads, tf.concat(
            [tf.shape(item_ids), [self.config.num_item_heads, self.embedding_dim]], axis=0))
        if self.config.routing:
            routing = self.meta_queries.routing(vectors, self.routing_temperature())
        else:
            routing = tf.ones(tf.concat([tf.shape(item_ids), [self.config.num_meta_queries]], 0))
        return routing, heads

    def candidate_embeddings(self, item_ids: tf.Tensor) -> tf.Tensor:
        """The ANN key of each item: ``flatten_j(a_ij sum_j' w_jj' V_ij')`` ``[n, m d]``.

        ``query_embeddings @ candidate_embeddings^T`` is exactly the linear part ``<w, S>`` of
        the LSS score (the MLP residual and the bias excluded).
        """
        routing, heads = self.item_side(item_ids)
        self._build_scorer()
        keys = tf.einsum("...kd,jk->...jd", heads, self.scorer.linear_weights)
        keys = keys * routing[..., None]
        return tf.reshape(keys, tf.concat(
            [tf.shape(item_ids), [self.config.num_meta_queries * self.embedding_dim]], axis=0))

    # -- late interaction -----------------------------------------------------------------------

    def _build_scorer(self):
        if not self.scorer.built:
            self.scorer.build([None, self.config.num_meta_queries, self.config.num_item_heads])

    def similarity(self, interests: tf.Tensor, routing: tf.Tensor, heads: tf.Tensor,
                   per_row: bool) -> tf.Tensor:
        """``S[j, j'] = a_ij <U_j, V_ij'>``.

        Args:
          interests: ``U`` ``[batch, m, d]``.
          routing: ``[batch, k, m]`` (``per_row``) or ``[k, m]`` (shared by every row).
          heads: ``[batch, k, m', d]`` or ``[k, m', d]``.
          per_row: whether the items differ per row.

        Returns:
          ``[batch, k, m, m']``.
        """
        if per_row:
            similarity = tf.einsum("bjd,bkld->bkjl", interests, heads)
            return similarity * routing[..., None]
        similarity = tf.einsum("bjd,kld->bkjl", interests, heads)
        return similarity * routing[None, :, :, None]

    def score_items(self, features: Features, item_ids: tf.Tensor,
                    training: bool = False) -> tf.Tensor:
        """Exact LSS scores of given items: ``item_ids`` ``[batch, k]`` (one shortlist per row)
        or ``[k]`` (the same items for every row) -> ``[batch, k]``."""
        item_ids = tf.convert_to_tensor(item_ids)
        interests = self.interests(_query(features), training=training)
        routing, heads = self.item_side(item_ids)
        self._build_scorer()
        per_row = item_ids.shape.rank == 2
        return self.scorer(self.similarity(interests, routing, heads, per_row))

    def score_corpus(self, features: Features, training: bool = False) -> tf.Tensor:
        """Exact LSS scores of every item ``1..N``: ``[batch, N]`` (column ``j`` = item
        ``j + 1``)."""
        return self.score_items(features, self.corpus_ids(), training=training)

    def retrieve(self, features: Features, k: int = 10, shortlist: int = 100
                 ) -> Tuple[tf.Tensor, tf.Tensor]:
        """Two-stage top-``k``: a ``shortlist`` by the single-vector inner product (what an ANN
        index of :meth:`corpus_embeddings` returns), then exact LSS re-scoring.

        Returns:
          ``(scores [batch, k], item ids [batch, k])``, best first.
        """
        shortlist = min(max(shortlist, k), self.num_items)
        k = min(k, shortlist)
        approximate = tf.matmul(self.query_embeddings(features), self.corpus_embeddings(),
                                transpose_b=True)
        _, columns = tf.math.top_k(approximate, k=shortlist)
        candidates = tf.cast(columns, tf.int64) + 1
        exact = self.score_items(features, candidates)
        scores, order = tf.math.top_k(exact, k=k)
        return scores, tf.gather(candidates, order, batch_dims=1)

    # -- loss -----------------------------------------------------------------------------------

    def compute_loss(self, features: Features, training: bool = False) -> tf.Tensor:
        """Full softmax over exactly the ``N`` LSS scores, averaged over the batch."""
        logits = self.score_corpus(features, training=training)
        if self.loss_config.temperature is not None:
            logits = logits / self.loss_config.temperature
        target = tf.cast(features[F.TARGET], tf.int64)
        loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(target - 1, logits))
        if training:
            self.train_steps.assign_add(1)
        return self.total_loss(loss)

    def model_config(self) -> Dict[str, object]:
        description = super().model_config()
        description["query_dim"] = self.config.num_meta_queries * self.embedding_dim
        return description


def _query(features: Features) -> Dict[str, tf.Tensor]:
    """The ``QUERY_FEATURES`` of a batch (the target, a label, is dropped)."""
    return {name: features[name] for name in F.QUERY_FEATURES if name in features}
