"""The ``tensorflow_metadata`` schemas of the examples: windows (``schemas/window_example.pbtxt``),
serving windows (``schemas/serving_window.pbtxt``) and training sequence chunks
(``schemas/sequence_example.pbtxt``)."""

from __future__ import annotations

from typing import List, Optional, Sequence

from google.protobuf import text_format
from tensorflow_metadata.proto.v0 import schema_pb2

from t2diff_tf import features as F
from t2diff_tf.features import ExampleSpec, SequenceSpec


def _adder(schema: schema_pb2.Schema):
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
    return add


def window_schema(spec: ExampleSpec, num_items: Optional[int] = None) -> schema_pb2.Schema:
    """Schema of one window: fixed shapes, value ranges, and the item id domain when known."""
    schema = schema_pb2.Schema()
    max_item = num_items if num_items is not None else None
    add = _adder(schema)
    L = spec.history_length
    add(F.USER_ID, schema_pb2.BYTES, 0, description="raw user id")
    add(F.HISTORY, schema_pb2.INT, L, 0, max_item, "item ids, oldest first, left-padded with 0")
    add(F.HISTORY_TIME_LAG, schema_pb2.INT, L, 0, spec.num_time_lag_buckets - 1,
        "log2 bucket of the gap to the target (seconds, or steps without time); 0 = padding")
    add(F.HISTORY_SESSION, schema_pb2.INT, L, F.PADDING_SESSION, L,
        "session index counted back from the target; -1 = padding")
    add(F.HISTORY_TIMESTAMPS, schema_pb2.INT, L, 0, None,
        "each behaviour's time, seconds since the epoch (its step index in the user's log "
        "without time); 0 = padding")
    add(F.SESSION_LENGTH, schema_pb2.INT, 0, 0, L, "length of the most recent session")
    add(F.TARGET, schema_pb2.INT, 0, 1, max_item, "the next item id")
    add(F.TARGET_TIMESTAMP, schema_pb2.INT, 0, 0, None, "seconds since the epoch; 0 = unknown")
    return schema


def serving_window_schema(spec: ExampleSpec, num_items: Optional[int] = None
                          ) -> schema_pb2.Schema:
    """Schema of one serving window (``Split-serving``): a window's query features, ending at
    the user's latest behaviour, with no ``target``; ``target_timestamp`` is the time the lags
    are measured to."""
    schema = window_schema(spec, num_items)
    kept = [f for f in schema.feature if f.name != F.TARGET]
    del schema.feature[:]
    schema.feature.extend(kept)
    for feature in schema.feature:
        if feature.name == F.HISTORY_TIME_LAG:
            feature.annotation.tag[:] = [
                "log2 bucket of the gap to the latest behaviour (seconds; steps to the next "
                "position without time); 0 = padding"]
        elif feature.name == F.HISTORY_SESSION:
            feature.annotation.tag[:] = ["session index counted back from the latest "
                                         "behaviour's; -1 = padding"]
        elif feature.name == F.TARGET_TIMESTAMP:
            feature.annotation.tag[:] = ["the latest behaviour's time, seconds since the "
                                         "epoch; 0 = unknown"]
    return schema


def sequence_schema(spec: SequenceSpec, num_items: Optional[int] = None) -> schema_pb2.Schema:
    """Schema of one training chunk (``t2diff_tf.features.SequenceSpec``)."""
    schema = schema_pb2.Schema()
    add = _adder(schema)
    length = spec.chunk_length
    add(F.USER_ID, schema_pb2.BYTES, 0, description="raw user id")
    add(F.SEQUENCE_ITEMS, schema_pb2.INT, length, 0, num_items,
        "item ids, oldest first, left-padded with 0; inputs 0..L-1, labels 1..L")
    add(F.SEQUENCE_TIMESTAMPS, schema_pb2.INT, length, 0, None,
        "seconds since the epoch, or step index when the log has no time; 0 = padding")
    add(F.SEQUENCE_SESSIONS, schema_pb2.INT, length, F.PADDING_SESSION, None,
        "session id, non-decreasing (time-gap number, or step index under last-k); -1 = padding")
    add(F.SEQUENCE_LENGTH, schema_pb2.INT, 0, 2, length, "valid items in the chunk")
    return schema


def feature_spec_from_schema(schema: schema_pb2.Schema) -> dict:
    """``tf.io.parse_example`` spec of a schema of fixed-shape features."""
    import tensorflow as tf

    dtypes = {schema_pb2.INT: tf.int64, schema_pb2.FLOAT: tf.float32, schema_pb2.BYTES: tf.string}
    return {f.name: tf.io.FixedLenFeature([d.size for d in f.shape.dim], dtypes[f.type])
            for f in schema.feature}


def validate_examples(files: Sequence[str], schema: schema_pb2.Schema,
                      batch_size: int = 4096) -> List[str]:
    """Checks TFRecord files of tf.Examples against ``schema``: every feature present with its
    type and shape, and int values inside their domain. Returns the problems (empty: valid)."""
    import tensorflow as tf

    spec = feature_spec_from_schema(schema)
    domains = {f.name: f.int_domain for f in schema.feature if f.HasField("int_domain")}
    problems: List[str] = []
    dataset = tf.data.TFRecordDataset(list(files), compression_type="GZIP").batch(batch_size)
    for batch_index, serialized in enumerate(dataset):
        try:
            parsed = tf.io.parse_example(serialized, spec)
        except tf.errors.InvalidArgumentError as e:
            return problems + [f"batch {batch_index}: {e.message.splitlines()[0]}"]
        for name, domain in domains.items():
            values = parsed[name]
            if domain.HasField("min") and tf.reduce_any(values < domain.min):
                problems.append(f"{name}: value {int(tf.reduce_min(values))} below {domain.min}")
            if domain.HasField("max") and tf.reduce_any(values > domain.max):
                problems.append(f"{name}: value {int(tf.reduce_max(values))} above {domain.max}")
    return problems


def schema_text(schema: schema_pb2.Schema) -> str:
    return text_format.MessageToString(schema)


def read_schema(path: str) -> schema_pb2.Schema:
    import tensorflow as tf

    with tf.io.gfile.GFile(path) as f:
        return text_format.Parse(f.read(), schema_pb2.Schema())


if __name__ == "__main__":  # Regenerates the three files in schemas/.
    import os

    folder = os.path.join(os.path.dirname(__file__), "..", "..", "schemas")
    with open(os.path.join(folder, "window_example.pbtxt"), "w") as f:
        f.write("# Schema of the window examples (t2diff_tf/features.py) with the default "
                "ExampleSpec\n# (history_length=50, 32 time-lag buckets). Regenerate: python -m "
                "components.preprocessing.schema\n" + schema_text(window_schema(ExampleSpec())))
    with open(os.path.join(folder, "serving_window.pbtxt"), "w") as f:
        f.write("# Schema of the serving windows (Split-serving; components/preprocessing/"
                "windows.py serving_window)\n# with the default ExampleSpec. Regenerate: python "
                "-m components.preprocessing.schema\n"
                + schema_text(serving_window_schema(ExampleSpec())))
    with open(os.path.join(folder, "sequence_example.pbtxt"), "w") as f:
        f.write("# Schema of the training sequence chunks (t2diff_tf/features.py, SequenceSpec) "
                "with the default\n# history_length=200 (chunks of 201 items). Regenerate: "
                "python -m components.preprocessing.schema\n"
                + schema_text(sequence_schema(SequenceSpec())))
