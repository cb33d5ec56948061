"""TF Serving warmup records: ``<version>/assets.extra/tf_serving_warmup_requests``.

TF Serving replays these ``PredictionLog`` records (a TFRecord file) when it loads a version, so
that the first real requests do not pay for graph initialisation. Each record here is a
``PredictLog`` whose ``PredictRequest`` names the model, the signature and its input tensors.
TF Serving reads at most 1000 records.
"""

from __future__ import annotations

import os
from typing import Any, Iterator, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import tensorflow as tf
from tensorflow_serving.apis import model_pb2, predict_pb2, prediction_log_pb2

from t2diff_tf import features as F
from t2diff_tf.serving import signatures as S

ASSETS_EXTRA = "assets.extra"
WARMUP_FILE = "tf_serving_warmup_requests"
MAX_WARMUP_RECORDS = 1000


def warmup_path(version_dir: str) -> str:
    """``<version_dir>/assets.extra/tf_serving_warmup_requests``."""
    return os.path.join(version_dir, ASSETS_EXTRA, WARMUP_FILE)


def predict_request(model_name: str, signature_name: str, inputs: Mapping[str, Any]
                    ) -> predict_pb2.PredictRequest:
    """A ``PredictRequest`` for ``signature_name`` of ``model_name`` with ``inputs``."""
    request = predict_pb2.PredictRequest(
        model_spec=model_pb2.ModelSpec(name=model_name, signature_name=signature_name))
    for name, value in inputs.items():
        request.inputs[name].CopyFrom(tf.make_tensor_proto(value))
    return request


def write_warmup_requests(version_dir: str,
                          requests: Sequence[predict_pb2.PredictRequest]) -> str:
    """Writes ``requests`` as ``PredictionLog`` records under ``version_dir``; returns the path."""
    if not requests:
        raise ValueError("no warmup requests to write")
    if len(requests) > MAX_WARMUP_RECORDS:
        raise ValueError(f"TF Serving reads at most {MAX_WARMUP_RECORDS} warmup records, "
                         f"got {len(requests)}")
    path = warmup_path(version_dir)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with tf.io.TFRecordWriter(path) as writer:
        for request in requests:
            log = prediction_log_pb2.PredictionLog(
                predict_log=prediction_log_pb2.PredictLog(request=request))
            writer.write(log.SerializeToString())
    return path


def read_warmup_requests(path: str) -> Iterator[prediction_log_pb2.PredictionLog]:
    """Parses a warmup file back into ``PredictionLog`` protos."""
    for record in tf.data.TFRecordDataset(path).as_numpy_iterator():
        log = prediction_log_pb2.PredictionLog()
        log.ParseFromString(record)
        yield log


def synthetic_query_features(spec: F.ExampleSpec, num_items: int, batch_size: int,
                             seed: int = 0) -> Mapping[str, np.ndarray]:
    """Plausible query windows ``{name: [batch, ...] int64}`` for warmup (not for evaluation).

    Row ``i`` has a random number of valid behaviours (left-padded), ids in ``1..num_items``,
    non-increasing session indices ending in session 0, time-lag buckets growing with age and a
    ``session_length`` that matches the session indices.
    """
    rng = np.random.default_rng(seed)
    length = spec.history_length
    history = np.zeros([batch_size, length], np.int64)
    time_lag = np.zeros([batch_size, length], np.int64)
    session = np.full([batch_size, length], F.PADDING_SESSION, np.int64)
    session_length = np.zeros([batch_size], np.int64)
    timestamps = np.zeros([batch_size, length], np.int64)
    for row in range(batch_size):
        valid = int(rng.integers(1, length + 1))
        history[row, length - valid:] = rng.integers(1, num_items + 1, valid)
        ages = np.arange(valid)[::-1]  # 0 = most recent
        time_lag[row, length - valid:] = np.minimum(spec.num_time_lag_buckets - 1,
                                                    1 + np.floor(np.log2(1.0 + ages)))
        breaks = np.sort(rng.integers(1, valid + 1, size=min(2, valid)))
        indices = np.searchsorted(breaks, ages, side="right")
        session[row, length - valid:] = indices
        session_length[row] = int(np.sum(indices == 0)) or 1
        timestamps[row, length - valid:] = 1_000_000_000 - ages  # a second apart
    return {F.HISTORY: history, F.HISTORY_TIME_LAG: time_lag, F.HISTORY_SESSION: session,
            F.SESSION_LENGTH: session_length, F.HISTORY_TIMESTAMPS: timestamps}


def take_rows(features: Mapping[str, Any], rows: int) -> Mapping[str, np.ndarray]:
    """The first ``rows`` rows of every feature."""
    return {name: np.asarray(value)[:rows] for name, value in features.items()}


def query_warmup_requests(model_name: str, features: Mapping[str, Any],
                          batch_sizes: Tuple[int, ...] = (1, 8),
                          examples: Optional[List[bytes]] = None,
                          embeddings: Optional[np.ndarray] = None
                          ) -> List[predict_pb2.PredictRequest]:
    """Warmup requests of a model with this package's signatures.

    One ``serving_default`` request per batch size (first rows of ``features``), then, when
    given, one ``serve_tf_examples`` request with ``examples`` and one ``top_k_from_embedding``
    request with ``embeddings``.
    """
    available = len(np.asarray(features[F.HISTORY]))
    requests = [predict_request(model_name, S.SERVING_DEFAULT,
                                {n: take_rows(features, b)[n] for n in F.QUERY_FEATURES})
                for b in batch_sizes if b <= available]
    if examples:
        requests.append(predict_request(model_name, S.SERVE_TF_EXAMPLES,
                                        {S.EXAMPLES: np.asarray(examples, dtype=object)}))
    if embeddings is not None:
        requests.append(predict_request(model_name, S.TOP_K_FROM_EMBEDDING,
                                        {S.USER_EMBEDDING: np.asarray(embeddings, np.float32)}))
    return requests
