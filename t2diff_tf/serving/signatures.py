"""Serving signatures of the user tower and of the top-K models.

Every exported model takes the user tower's inputs, the ``QUERY_FEATURES`` of
:mod:`t2diff_tf.features`, as named tensors with a batch dimension:

====================  =======  ===========
input                 dtype    shape
====================  =======  ===========
``history``           int64    ``[None, L]``
``history_time_lag``  int64    ``[None, L]``
``history_session``   int64    ``[None, L]``
``session_length``    int64    ``[None]``
``history_timestamps`` int64   ``[None, L]``
====================  =======  ===========

Signatures:

* ``serving_default`` -- the named inputs above. The user tower returns
  ``{"user_embedding": [None, d] float32}``; a top-K model returns
  ``{"item_ids": [None, K] int64, "scores": [None, K] float32}``.
* ``serve_tf_examples`` -- ``{"examples": [None] string}``, serialized ``tf.Example`` windows
  (as a TFX Trainer exports); only the query features are parsed, so labels may be absent.
  Same outputs as ``serving_default``.
* ``top_k_from_embedding`` (top-K models only) -- ``{"user_embedding": [None, d] float32}`` ->
  ``item_ids`` / ``scores``, for deployments that run the user tower elsewhere.

Inputs are guarded before the model sees them (:func:`check_query_inputs`): item ids must lie in
``0..N`` (0 is padding; ids stay int64 until they are known to fit), time lags in
``0..buckets-1``, sessions in ``-1..L``, session lengths in ``0..L``, timestamps ``>= 0``, and
all five inputs must have the same batch size; a ``user_embedding`` must be finite. A violation fails the request
with ``InvalidArgumentError`` naming the input, which TF Serving answers with HTTP 400. An
empty batch answers an empty batch.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple

import numpy as np
import tensorflow as tf

from t2diff_tf import features as F
from t2diff_tf.features import query_input_specs  # noqa: F401  (re-exported)

SERVING_DEFAULT = "serving_default"
SERVE_TF_EXAMPLES = "serve_tf_examples"
TOP_K_FROM_EMBEDDING = "top_k_from_embedding"

EXAMPLES = "examples"
USER_EMBEDDING = "user_embedding"
ITEM_IDS = "item_ids"
SCORES = "scores"

QueryFunction = Callable[[Dict[str, tf.Tensor]], tf.Tensor]
# An index maps query embeddings ``[batch, d]`` and ``k`` to ``(scores, ids)``, both
# ``[batch, k]`` (the convention of ``tfrs.layers.factorized_top_k.TopK``).
Index = Callable[..., Tuple[tf.Tensor, tf.Tensor]]


def query_feature_spec(spec: F.ExampleSpec) -> Dict[str, tf.io.FixedLenFeature]:
    """The ``tf.io.parse_example`` spec of the query features only (no labels, no user id)."""
    full = spec.feature_spec(with_user_id=False)
    return {name: full[name] for name in F.QUERY_FEATURES}


def serialize_query_examples(features: Mapping[str, Any]) -> List[bytes]:
    """Batch ``{name: [batch, ...]}`` of query features -> serialized ``tf.Example`` per row.

    The inverse of parsing with :func:`query_feature_spec`; extra keys (``target``, ...) are
    written too when present, as int64 features.
    """
    arrays = {name: np.asarray(value) for name, value in features.items()}
    batch = len(next(iter(arrays.values())))
    examples = []
    for row in range(batch):
        feature = {}
        for name, array in arrays.items():
            value = np.reshape(array[row], [-1])
            if value.dtype.kind in "SUO":
                values = [v if isinstance(v, bytes) else str(v).encode() for v in value]
                feature[name] = tf.train.Feature(bytes_list=tf.train.BytesList(value=values))
            else:
                feature[name] = tf.train.Feature(
                    int64_list=tf.train.Int64List(value=value.astype(np.int64).tolist()))
        examples.append(tf.train.Example(
            features=tf.train.Features(feature=feature)).SerializeToString())
    return examples


def as_query_function(model: Any) -> QueryFunction:
    """The user tower of ``model`` as ``features -> e_u [batch, d]`` (inference mode).

    Accepts a :class:`~t2diff_tf.models.base.RetrievalModel` (its ``query_embeddings``), a Keras
    model/layer (called with ``training=False``) or any callable taking the feature dict. Whatever
    it is, its variables must be reachable from ``model`` (a ``tf.Module``/Keras object) for
    ``tf.saved_model.save`` to find them.
    """
    if hasattr(model, "query_embeddings"):
        return lambda features: model.query_embeddings(features, training=False)
    if isinstance(model, tf.keras.layers.Layer):
        return lambda features: model(features, training=False)
    if callable(model):
        return model
    raise TypeError(f"expected a RetrievalModel, a Keras model or a callable, got {type(model)}")


def check_query_inputs(features: Mapping[str, tf.Tensor], spec: F.ExampleSpec,
                       num_items: Optional[int]) -> Dict[str, tf.Tensor]:
    """The query features after in-graph checks (see the module docstring): each returned tensor
    depends on the assertions, so a request that breaks one fails before the model runs."""
    L = spec.history_length
    batch = tf.shape(features[F.HISTORY], out_type=tf.int64)[0]
    checks = []
    for name in F.QUERY_FEATURES:
        size = tf.shape(features[name], out_type=tf.int64)[0]
        checks.append(tf.debugging.assert_equal(
            size, batch, message=f"{name} has a different batch size than {F.HISTORY}"))
    bounds = {F.HISTORY: (F.PADDING_ID, num_items),
              F.HISTORY_TIME_LAG: (0, spec.num_time_lag_buckets - 1),
              F.HISTORY_SESSION: (F.PADDING_SESSION, L),
              F.SESSION_LENGTH: (0, L),
              F.HISTORY_TIMESTAMPS: (0, None)}
    for name, (low, high) in bounds.items():
        value = features[name]
        checks.append(tf.debugging.assert_greater_equal(
            value, tf.constant(low, value.dtype), message=f"{name} must be >= {low}"))
        if high is not None:
            checks.append(tf.debugging.assert_less_equal(
                value, tf.constant(high, value.dtype), message=f"{name} must be <= {high}"))
    with tf.control_dependencies(checks):
        return {name: tf.identity(features[name]) for name in F.QUERY_FEATURES}


def check_embedding(embedding: tf.Tensor) -> tf.Tensor:
    """``embedding`` after a check that every value is finite."""
    return tf.debugging.assert_all_finite(embedding, f"{USER_EMBEDDING} must be finite")


def _user_embedding(query: QueryFunction, features: Dict[str, tf.Tensor],
                    embedding_dim: Optional[int] = None) -> tf.Tensor:
    """``e_u`` ``[batch, d]`` float32; an empty batch gives ``[0, d]`` without running the tower
    (when ``embedding_dim`` is known)."""

    def run():
        embedding = tf.convert_to_tensor(query(features))
        if embedding.shape.rank != 2:
            raise ValueError(f"the user tower must return [batch, d], got shape "
                             f"{embedding.shape}")
        return tf.cast(embedding, tf.float32)

    if embedding_dim is None:
        return run()
    empty = tf.equal(tf.shape(features[F.HISTORY])[0], 0)
    return tf.cond(empty, lambda: tf.zeros([0, embedding_dim], tf.float32), run)


class UserTowerModule(tf.Module):
    """The user tower behind the two feature signatures: -> ``{"user_embedding": [batch, d]}``.

    Args:
      model: the user tower (see :func:`as_query_function`); tracked so that its variables are
        saved.
      spec: the example shapes (``L``).
      num_items: ``N``, the largest item id a request may hold (default: ``model.num_items``
        when it has one; ``None`` checks only the lower bound).
      embedding_dim: ``d`` (default: ``model.embedding_dim``), for empty batches.

    Attributes:
      serve: ``tf.function`` of the named query inputs (``serving_default``).
      serve_tf_examples: ``tf.function`` of ``examples`` ``[batch]`` serialized ``tf.Example``.
    """

    def __init__(self, model: Any, spec: F.ExampleSpec, name: Optional[str] = None,
                 num_items: Optional[int] = None, embedding_dim: Optional[int] = None):
        super().__init__(name=name)
        self.model = model
        query = as_query_function(model)
        parse_spec = query_feature_spec(spec)
        specs = query_input_specs(spec)
        num_items = num_items if num_items is not None else getattr(model, "num_items", None)
        embedding_dim = (embedding_dim if embedding_dim is not None
                         else getattr(model, "embedding_dim", None))

        def embed(features):
            checked = check_query_inputs(features, spec, num_items)
            return {USER_EMBEDDING: _user_embedding(query, checked, embedding_dim)}

        def serve(history, history_time_lag, history_session, session_length,
                  history_timestamps):
            return embed({F.HISTORY: history, F.HISTORY_TIME_LAG: history_time_lag,
                          F.HISTORY_SESSION: history_session, F.SESSION_LENGTH: session_length,
                          F.HISTORY_TIMESTAMPS: history_timestamps})

        def serve_tf_examples(examples):
            return embed(dict(tf.io.parse_example(examples, parse_spec)))

        self.serve = tf.function(serve, input_signature=[specs[n] for n in F.QUERY_FEATURES])
        self.serve_tf_examples = tf.function(
            serve_tf_examples, input_signature=[tf.TensorSpec([None], tf.string, name=EXAMPLES)])

    def signatures(self) -> Dict[str, Any]:
        """``{signature name: concrete function}`` for ``tf.saved_model.save``."""
        return {SERVING_DEFAULT: self.serve.get_concrete_function(),
                SERVE_TF_EXAMPLES: self.serve_tf_examples.get_concrete_function()}


class TopKModule(tf.Module):
    """A user tower followed by a top-K index: -> ``{"item_ids", "scores"}`` ``[batch, K]``.

    The feature signatures call the user tower's own ``tf.function`` s, so a model shared by
    several exported modules is traced once. Without a user tower the module is an index only:
    ``serving_default`` is then ``top_k_from_embedding`` (for a user tower served elsewhere).

    Args:
      user_tower: the :class:`UserTowerModule`, or ``None`` for an index-only module.
      index: ``index(queries [batch, d], k=k) -> (scores [batch, k], ids [batch, k])``, a
        tracked object (e.g. :class:`~t2diff_tf.serving.brute_force.BruteForceIndex` or a TFRS
        ``ScaNN`` layer).
      k: the number of items each signature returns.
      embedding_dim: ``d``, for the ``top_k_from_embedding`` input.
    """

    def __init__(self, user_tower: Optional[UserTowerModule], index: Index, k: int,
                 embedding_dim: int, name: Optional[str] = None):
        super().__init__(name=name)
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        self.user_tower = user_tower
        self.index = index
        self.k = int(k)

        def top_k_from_embedding(user_embedding):
            return self.outputs(user_embedding)

        self.top_k_from_embedding = tf.function(
            top_k_from_embedding,
            input_signature=[tf.TensorSpec([None, embedding_dim], tf.float32, name=USER_EMBEDDING)])
        if user_tower is None:
            return

        def serve(history, history_time_lag, history_session, session_length,
                  history_timestamps):
            return self.outputs(user_tower.serve(
                history=history, history_time_lag=history_time_lag,
                history_session=history_session, session_length=session_length,
                history_timestamps=history_timestamps)[USER_EMBEDDING])

        def serve_tf_examples(examples):
            return self.outputs(user_tower.serve_tf_examples(examples)[USER_EMBEDDING])

        self.serve = tf.function(serve, input_signature=user_tower.serve.input_signature)
        self.serve_tf_examples = tf.function(
            serve_tf_examples, input_signature=user_tower.serve_tf_examples.input_signature)

    def outputs(self, user_embedding: tf.Tensor) -> Dict[str, tf.Tensor]:
        scores, ids = self.index(check_embedding(user_embedding), k=self.k)
        return {ITEM_IDS: tf.cast(ids, tf.int64), SCORES: tf.cast(scores, tf.float32)}

    def signatures(self) -> Dict[str, Any]:
        """``{signature name: concrete function}`` for ``tf.saved_model.save``."""
        from_embedding = self.top_k_from_embedding.get_concrete_function()
        if self.user_tower is None:
            return {SERVING_DEFAULT: from_embedding, TOP_K_FROM_EMBEDDING: from_embedding}
        return {SERVING_DEFAULT: self.serve.get_concrete_function(),
                SERVE_TF_EXAMPLES: self.serve_tf_examples.get_concrete_function(),
                TOP_K_FROM_EMBEDDING: from_embedding}
