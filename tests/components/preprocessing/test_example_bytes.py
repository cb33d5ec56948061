"""Examples written without a proto: equal, byte for byte, to the protobuf serialization."""

import numpy as np
import pytest
import tensorflow as tf

from components.preprocessing import example_bytes as E
from t2diff_tf import features as F


def _proto_bytes(features, row, user_id):
    values = {name: int(v[row]) if v.ndim == 1 else v[row].tolist()
              for name, v in features.items()}
    return F.int64_example(values, user_id).SerializeToString(deterministic=True)


@pytest.mark.parametrize("seed", range(4))
def test_int64_examples_equal_deterministic_proto_serialization(seed):
    """Random names (some prefixes of others, whose order upb decides), lengths 0 to 4, and
    values from -2**63 to 2**63 - 1 (a negative int64 takes 10 bytes)."""
    rng = np.random.default_rng(seed)
    pool = ["a", "ab", "abc", "b", F.HISTORY, F.HISTORY_TIME_LAG, F.HISTORY_SESSION, F.TARGET,
            F.TARGET_TIMESTAMP, "user", "user_idx", "zz", "\u00e9t\u00e9"]
    for trial in range(100):
        rows, length = int(rng.integers(0, 5)), int(rng.integers(0, 5))
        features = {}
        for name in rng.choice(pool, size=int(rng.integers(1, 6)), replace=False):
            low = [-2, 0, -2 ** 63, -5][rng.integers(0, 4)]
            high = [2, 300, 2 ** 40, 2 ** 63 - 1][rng.integers(0, 4)]
            shape = (rows, length) if rng.random() < 0.6 else (rows,)
            features[str(name)] = rng.integers(low, high, size=shape, dtype=np.int64)
        users = ["u1", "\u00fc", "", "x" * 300]
        user_id = users[trial % 4]
        got = E.int64_examples(features, user_id)
        assert got == [_proto_bytes(features, r, user_id) for r in range(rows)]
        # Many users in one call, one id per row, repeated and out of order.
        per_row = [users[i] for i in rng.integers(0, 4, size=rows)]
        got = E.int64_examples(features, per_row)
        assert got == [_proto_bytes(features, r, per_row[r]) for r in range(rows)]


def test_varints_closed_form():
    values = np.array([0, 1, 127, 128, 300, 2 ** 14 - 1, 2 ** 14, 2 ** 63 - 1, -1, -(2 ** 63)])
    data, bounds = E.varint_bytes(values)
    expected = [b"\x00", b"\x01", b"\x7f", b"\x80\x01", b"\xac\x02", b"\xff\x7f",
                b"\x80\x80\x01", b"\xff" * 8 + b"\x7f", b"\xff" * 9 + b"\x01",
                b"\x80" * 9 + b"\x01"]
    assert [data[bounds[i]:bounds[i + 1]] for i in range(len(values))] == expected
    # Each value on both sides of the table's edges, looked up or computed alike.
    edges = np.array([E._TABLE_LOW - 1, E._TABLE_LOW, -1, 0, E._TABLE_HIGH - 1, E._TABLE_HIGH,
                      2 ** 63 - 1, 5, -(2 ** 63)])
    assert E.varint_bytes(edges)[0] == E._computed_varint_bytes(edges)[0]
    np.testing.assert_array_equal(E.varint_bytes(edges)[1], E._computed_varint_bytes(edges)[1])
    assert [E.varint(n) for n in (0, 127, 128, 300, 2 ** 14, 2 ** 40)] == [
        E.varint_bytes(np.array([n]))[0] for n in (0, 127, 128, 300, 2 ** 14, 2 ** 40)]


def test_examples_parse_back_with_tensorflow():
    history = np.array([[0, 5, 108_000], [-1, 2, 3]])
    examples = E.int64_examples({F.HISTORY: history, F.TARGET: np.array([7, 2 ** 40])}, "u")
    parsed = tf.io.parse_example(examples, {
        F.HISTORY: tf.io.FixedLenFeature([3], tf.int64),
        F.TARGET: tf.io.FixedLenFeature([], tf.int64),
        F.USER_ID: tf.io.FixedLenFeature([], tf.string)})
    np.testing.assert_array_equal(parsed[F.HISTORY].numpy(), history)
    np.testing.assert_array_equal(parsed[F.TARGET].numpy(), [7, 2 ** 40])
    assert parsed[F.USER_ID].numpy().tolist() == [b"u", b"u"]


def test_bad_shapes_and_the_user_id_feature_are_refused():
    with pytest.raises(ValueError, match="shape"):
        E.int64_examples({"a": np.zeros((2, 3)), "b": np.zeros(3)}, "u")
    with pytest.raises(ValueError, match="user_id"):
        E.int64_examples({F.USER_ID: np.zeros(2)}, "u")
    assert E.int64_examples({}, "u") == []
    with pytest.raises(ValueError, match="2 user ids for 3 rows"):
        E.int64_examples({"a": np.zeros(3, np.int64)}, ["u", "v"])
