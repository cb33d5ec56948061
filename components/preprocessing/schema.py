"""The ``tensorflow_metadata`` schema of the window examples (``schemas/window_example.pbtxt``)."""

from __future__ import annotations

from typing import Optional

from google.protobuf import text_format
from tensorflow_metadata.proto.v0 import schema_pb2

from t2diff_tf import features as F
from t2diff_tf.features import ExampleSpec


def window_schema(spec: ExampleSpec, num_items: Optional[int] = None) -> schema_pb2.Schema:
    """Schema of one window: fixed shapes, value ranges, and the item id domain when known."""
    schema = schema_pb2.Schema()
    max_item = num_items if num_items is not None else None

    def add(name, type_, length, lo=None, hi=None, description=""):
        feature = schema.feature.add(name=name, type=type_)
        feature.presence.min_fraction = 1.0
        feature.presence.min_count = 1
        feature.shape.dim.add(size=length) if length else feature.shape.SetInParent()
        if lo is not None:
            feature.int_domain.min = lo
            if hi is not None:
                feature.int_domain.max = hi
        if description:
            feature.annotation.tag.append(description)

    L = spec.history_length
    add(F.USER_ID, schema_pb2.BYTES, 0, description="raw user id")
    add(F.HISTORY, schema_pb2.INT, L, 0, max_item, "item ids, oldest first, left-padded with 0")
    add(F.HISTORY_TIME_LAG, schema_pb2.INT, L, 0, spec.num_time_lag_buckets - 1,
        "log2 bucket of the gap to the target (seconds, or steps without time); 0 = padding")
    add(F.HISTORY_SESSION, schema_pb2.INT, L, F.PADDING_SESSION, L,
        "session index counted back from the target; -1 = padding")
    add(F.SESSION_LENGTH, schema_pb2.INT, 0, 0, L, "length of the most recent session")
    add(F.TARGET, schema_pb2.INT, 0, 1, max_item, "the next item id")
    add(F.TARGET_TIMESTAMP, schema_pb2.INT, 0, 0, None, "seconds since the epoch; 0 = unknown")
    return schema


def schema_text(schema: schema_pb2.Schema) -> str:
    return text_format.MessageToString(schema)


def read_schema(path: str) -> schema_pb2.Schema:
    import tensorflow as tf

    with tf.io.gfile.GFile(path) as f:
        return text_format.Parse(f.read(), schema_pb2.Schema())
