"""TF Serving REST bodies (row and columnar) -> signature inputs, and responses."""

import base64
import json

import numpy as np
import pytest
import tensorflow as tf

from t2diff_tf.serving import rest


@pytest.fixture(scope="module")
def two_inputs():
    def fn(history, session_length):
        return {"total": tf.reduce_sum(history, axis=1) + session_length,
                "first": history[:, 0]}

    return tf.function(fn, input_signature=[
        tf.TensorSpec([None, 3], tf.int64, name="history"),
        tf.TensorSpec([None], tf.int64, name="session_length")]).get_concrete_function()


@pytest.fixture(scope="module")
def one_input():
    return tf.function(lambda examples: {"length": tf.strings.length(examples)},
                       input_signature=[tf.TensorSpec([None], tf.string, name="examples")]
                       ).get_concrete_function()


def test_row_format(two_inputs):
    request = {"instances": [{"history": [1, 2, 3], "session_length": 1},
                             {"history": [4, 5, 6], "session_length": 2}]}
    tensors = rest.request_to_tensors(json.dumps(request), two_inputs)
    np.testing.assert_array_equal(tensors["history"].numpy(), [[1, 2, 3], [4, 5, 6]])
    assert tensors["history"].dtype == tf.int64 and tensors["session_length"].shape == [2]
    response = rest.format_response(two_inputs(**tensors), row_format=True)
    assert response == {"predictions": [{"total": 7, "first": 1}, {"total": 17, "first": 4}]}


def test_columnar_format(two_inputs):
    request = {"inputs": {"history": [[1, 2, 3]], "session_length": [5]}}
    tensors = rest.request_to_tensors(request, two_inputs)
    response = rest.format_response(two_inputs(**tensors), row_format=False)
    assert response == {"outputs": {"total": [11], "first": [1]}}


def test_single_input_bare_values_and_b64(one_input):
    payload = [b"\x00\xffab", b"xyz"]
    rows = {"instances": [{"b64": base64.b64encode(p).decode()} for p in payload]}
    tensors = rest.request_to_tensors(rows, one_input)
    assert tensors["examples"].numpy().tolist() == payload
    assert rest.format_response(one_input(**tensors), True) == {"predictions": [4, 3]}
    columns = {"inputs": [{"b64": base64.b64encode(p).decode()} for p in payload]}
    assert rest.request_to_tensors(columns, one_input)["examples"].numpy().tolist() == payload
    named = {"instances": [{"examples": {"b64": base64.b64encode(b"q").decode()}}]}
    assert rest.request_to_tensors(named, one_input)["examples"].numpy().tolist() == [b"q"]


@pytest.mark.parametrize("request_body, message", [
    ({"instances": [{"history": [1, 2, 3]}]}, "missing"),
    ({"instances": [{"history": [1, 2, 3], "session_length": 1, "x": 1}]}, "unknown"),
    ({"instances": [{"history": [1, 2], "session_length": 1}]}, "shape"),
    ({"instances": [{"history": [1.5, 2, 3], "session_length": 1}]}, "integers"),
    ({"inputs": {"history": [[1, 2, 3]], "session_length": [1, 2]}}, "batch size"),
    ({"instances": [], "inputs": {}}, "exactly one"),
    ({"instances": [1, 2]}, "single-input"),
    ("not json", "not JSON"),
])
def test_bad_requests(two_inputs, request_body, message):
    with pytest.raises(rest.RequestError, match=message):
        rest.request_to_tensors(request_body, two_inputs)


def test_predict_rejects_unknown_signature():
    module = tf.Module()
    module.f = tf.function(lambda x: {"y": x},
                           input_signature=[tf.TensorSpec([None], tf.float32, name="x")])
    loaded = type("Loaded", (), {"signatures": {"serving_default":
                                                module.f.get_concrete_function()}})()
    assert rest.predict(loaded, {"inputs": [1.0, 2.0]}) == {"outputs": [1.0, 2.0]}
    with pytest.raises(rest.RequestError, match="unknown signature"):
        rest.predict(loaded, {"signature_name": "nope", "inputs": [1.0]})


def test_ragged_rows_are_a_request_error():
    from t2diff_tf.serving.rest import RequestError, _to_array

    spec = tf.TensorSpec([None, 3], tf.int64)
    with pytest.raises(RequestError, match="not a rectangular array"):
        _to_array("history", [[1, 2, 3], [1, 2]], spec)
