"""The exported SavedModels answer TF Serving-shaped requests like the in-process model."""

import base64
import datetime
import hashlib
import json
import os

import numpy as np
import pytest
import tensorflow as tf
from tensorflow.core.protobuf import saved_model_pb2
from tensorflow_serving.apis import prediction_log_pb2

from t2diff_tf import features as F
from t2diff_tf.serving import rest
from t2diff_tf.serving import signatures as S
from t2diff_tf.serving.brute_force import numpy_top_k
from t2diff_tf.serving.manifest import read_manifest
from t2diff_tf.serving.model_server_config import read_model_server_config
from t2diff_tf.serving.scann_index import load_pybind_index
from t2diff_tf.serving.warmup import read_warmup_requests

from .conftest import K, NUM_ITEMS, SPEC, VERSION


def _instances(queries):
    rows = len(queries[F.HISTORY])
    return {"instances": [{n: np.asarray(queries[n][i]).tolist() for n in F.QUERY_FEATURES}
                          for i in range(rows)]}


def _expected_embeddings(exported):
    return exported.model.query_embeddings(
        {n: tf.constant(v) for n, v in exported.queries.items()}).numpy()


def _exact_ids(exported, k=K):
    corpus = exported.model.corpus_embeddings().numpy()
    _, rows = numpy_top_k(_expected_embeddings(exported), corpus, k)
    return rows + 1  # row i is item i + 1


def _recall(found, exact):
    return np.mean([len(set(f) & set(e)) / len(e) for f, e in zip(found, exact)])


def _ops(version_dir):
    saved = saved_model_pb2.SavedModel()
    with open(os.path.join(version_dir, "saved_model.pb"), "rb") as f:
        saved.ParseFromString(f.read())
    ops = set()
    for meta in saved.meta_graphs:
        ops.update(node.op for node in meta.graph_def.node)
        for function in meta.graph_def.library.function:
            ops.update(node.op for node in function.node_def)
    return ops


def test_layout_is_what_tf_serving_reads(exported):
    result = exported.result
    for name in ("user_tower", "top_k", "scann_top_k"):
        version_dir = os.path.join(result.destination, name, str(VERSION))
        assert os.path.isfile(os.path.join(version_dir, "saved_model.pb"))
        assert os.path.isdir(os.path.join(version_dir, "variables"))
        assert os.path.isfile(os.path.join(version_dir, "assets.extra",
                                           "tf_serving_warmup_requests"))
    assert result.user_tower_path == os.path.join(result.destination, "user_tower", str(VERSION))
    assert os.path.isfile(os.path.join(result.scann_searcher_path, "scann_assets.pbtxt"))
    parent = os.path.dirname(result.destination)
    assert [e for e in os.listdir(parent) if e.startswith(".")] == []


def test_user_tower_signature_shapes(exported):
    loaded = tf.saved_model.load(exported.result.user_tower_path)
    assert set(loaded.signatures) == {S.SERVING_DEFAULT, S.SERVE_TF_EXAMPLES}
    signature = loaded.signatures[S.SERVING_DEFAULT]
    specs = rest.input_specs(signature)
    assert set(specs) == set(F.QUERY_FEATURES)
    for name in F.SEQUENCE_FEATURES:
        assert specs[name].shape.as_list() == [None, SPEC.history_length]
        assert specs[name].dtype == tf.int64
    assert specs[F.SESSION_LENGTH].shape.as_list() == [None]
    assert signature.structured_outputs[S.USER_EMBEDDING].shape.as_list() == [None, 16]
    examples = rest.input_specs(loaded.signatures[S.SERVE_TF_EXAMPLES])
    assert examples[S.EXAMPLES].shape.as_list() == [None]
    assert examples[S.EXAMPLES].dtype == tf.string


def test_user_tower_answers_instances_request_like_the_model(exported):
    loaded = tf.saved_model.load(exported.result.user_tower_path)
    response = rest.predict(loaded, json.dumps(_instances(exported.queries)))
    embeddings = np.asarray(response["predictions"])
    assert embeddings.shape == (32, 16)
    np.testing.assert_allclose(embeddings, _expected_embeddings(exported), rtol=1e-5, atol=1e-6)


def test_user_tower_answers_columnar_request(exported):
    loaded = tf.saved_model.load(exported.result.user_tower_path)
    request = {"inputs": {n: np.asarray(v).tolist() for n, v in exported.queries.items()}}
    response = rest.predict(loaded, request)
    np.testing.assert_allclose(np.asarray(response["outputs"]), _expected_embeddings(exported),
                               rtol=1e-5, atol=1e-6)


def test_serve_tf_examples_agrees(exported):
    loaded = tf.saved_model.load(exported.result.user_tower_path)
    windows = dict(exported.queries)
    windows[F.TARGET] = np.ones(32, np.int64)  # labels in the example are ignored
    examples = S.serialize_query_examples(windows)
    request = {"signature_name": S.SERVE_TF_EXAMPLES,
               "instances": [{"b64": base64.b64encode(e).decode()} for e in examples]}
    response = rest.predict(loaded, request)
    np.testing.assert_allclose(np.asarray(response["predictions"]),
                               _expected_embeddings(exported), rtol=1e-5, atol=1e-6)


def test_top_k_matches_numpy_brute_force(exported):
    loaded = tf.saved_model.load(exported.result.top_k_path)
    response = rest.predict(loaded, _instances(exported.queries))
    ids = np.asarray([p[S.ITEM_IDS] for p in response["predictions"]])
    scores = np.asarray([p[S.SCORES] for p in response["predictions"]])
    assert ids.shape == (32, K) and scores.shape == (32, K)
    assert ids.min() >= 1 and ids.max() <= NUM_ITEMS
    np.testing.assert_array_equal(ids, _exact_ids(exported))
    assert np.all(np.diff(scores, axis=1) <= 1e-6)
    # The embedding signature answers the same.
    outputs = loaded.signatures[S.TOP_K_FROM_EMBEDDING](
        user_embedding=tf.constant(_expected_embeddings(exported)))
    np.testing.assert_array_equal(outputs[S.ITEM_IDS].numpy(), ids)
    assert outputs[S.ITEM_IDS].dtype == tf.int64


def test_stock_models_use_no_custom_ops(exported):
    for path in (exported.result.user_tower_path, exported.result.top_k_path):
        assert not [op for op in _ops(path) if op.startswith("Scann")]
    assert [op for op in _ops(exported.result.scann_path) if op.startswith("Scann")]


def test_scann_savedmodel_reloads_and_mostly_agrees(exported):
    import scann  # noqa: F401  (registers the ScaNN ops before loading)

    loaded = tf.saved_model.load(exported.result.scann_path)
    response = rest.predict(loaded, _instances(exported.queries))
    ids = np.asarray([p[S.ITEM_IDS] for p in response["predictions"]])
    assert ids.shape == (32, K)
    assert ids.min() >= 1 and ids.max() <= NUM_ITEMS
    assert _recall(ids, _exact_ids(exported)) >= 0.8


def test_pybind_searcher_reloads_and_answers(exported):
    from scann.scann_ops.py import scann_ops_pybind

    directory = exported.result.scann_searcher_path
    raw = scann_ops_pybind.load_searcher(directory)
    rows, _ = raw.search_batched(_expected_embeddings(exported), final_num_neighbors=K)
    exact = _exact_ids(exported)
    assert _recall(np.asarray(rows) + 1, exact) >= 0.8
    index = load_pybind_index(directory)
    scores, ids = index.search(_expected_embeddings(exported), k=K)
    assert ids.shape == (32, K) and scores.shape == (32, K)
    assert _recall(ids, exact) >= 0.8


def test_warmup_records_parse_and_replay(exported):
    import scann  # noqa: F401

    for name, path in exported.result.warmup_paths.items():
        logs = list(read_warmup_requests(path))
        assert logs and all(isinstance(log, prediction_log_pb2.PredictionLog) for log in logs)
        loaded = tf.saved_model.load(os.path.dirname(os.path.dirname(path)))
        signatures = set()
        for log in logs:
            request = log.predict_log.request
            assert request.model_spec.name == name
            signatures.add(request.model_spec.signature_name)
            inputs = {k: tf.make_ndarray(v) for k, v in request.inputs.items()}
            outputs = loaded.signatures[request.model_spec.signature_name](**inputs)
            assert all(v.shape[0] == len(next(iter(inputs.values())))
                       for v in outputs.values())
        assert {S.SERVING_DEFAULT, S.SERVE_TF_EXAMPLES} <= signatures


def test_models_config_parses(exported):
    result = exported.result
    config = read_model_server_config(result.models_config_path)
    entries = {c.name: c for c in config.model_config_list.config}
    assert set(entries) == {"user_tower", "top_k"}
    for name, entry in entries.items():
        assert entry.model_platform == "tensorflow"
        assert entry.base_path == os.path.join(result.destination, name)
        assert os.path.isdir(os.path.join(entry.base_path, str(VERSION)))
    scann_config = read_model_server_config(result.scann_models_config_path)
    assert {c.name for c in scann_config.model_config_list.config} == {
        "user_tower", "top_k", "scann_top_k"}


def test_manifest_fields(exported):
    result = exported.result
    manifest = read_manifest(result.manifest_path)
    assert manifest == result.manifest
    with open(exported.vocabulary_path, "rb") as f:
        assert manifest.vocabulary_sha256 == hashlib.sha256(f.read()).hexdigest()
    assert manifest.model_version == VERSION
    assert manifest.embedding_dim == 16 and manifest.corpus_size == NUM_ITEMS
    assert manifest.history_length == SPEC.history_length and manifest.k == K
    query = manifest.query_features
    assert query["history_length"] == SPEC.history_length
    assert query["num_time_lag_buckets"] == SPEC.num_time_lag_buckets
    assert "session_rule" not in query  # the caller did not say
    assert manifest.model_config["class"] == "MeanPoolTwoTower"
    scann = manifest.index["scann"]
    assert scann["mode"] == "tree_ah" and scann["num_leaves"] == 24
    assert scann["num_leaves_to_search"] == 8 and scann["reorder_k"] == 100
    assert 0.8 <= scann["recall_at_k_estimate"]["recall"] <= 1.0
    assert scann["recall_at_k_estimate"]["queries"] == 64 + 8
    assert datetime.datetime.fromisoformat(manifest.exported_at).tzinfo is not None
    for relative in manifest.paths.values():
        assert os.path.exists(os.path.join(result.destination, relative))
    assert manifest.served_models["top_k"] == "top_k"


_BARE_PROCESS = """
import json, sys
import numpy as np
import pytest
import tensorflow as tf
paths, L = json.loads(sys.argv[1]), int(sys.argv[2])
inputs = dict(history=tf.ones([2, L], tf.int64), history_time_lag=tf.ones([2, L], tf.int64),
              history_session=tf.zeros([2, L], tf.int64), session_length=tf.ones([2], tf.int64),
              history_timestamps=tf.zeros([2, L], tf.int64))
shapes = {}
for name, path in paths.items():
    outputs = tf.saved_model.load(path).signatures["serving_default"](**inputs)
    shapes[name] = {k: v.shape.as_list() for k, v in outputs.items()}
# TF Serving's path: a session over the MetaGraph tagged "serve", fed and fetched by the tensor
# names of the signature_def (no Python functions involved).
for name, path in paths.items():
    with tf.Graph().as_default(), tf.compat.v1.Session() as session:
        meta = tf.compat.v1.saved_model.loader.load(session, ["serve"], path)
        signature = meta.signature_def["serving_default"]
        feed = {signature.inputs[k].name: v.numpy() for k, v in inputs.items()}
        fetched = session.run({k: v.name for k, v in signature.outputs.items()}, feed)
        shapes["session_" + name] = {k: list(v.shape) for k, v in fetched.items()}
import t2diff_tf.serving.export  # noqa
shapes["heavy_modules"] = sorted({m.split(".")[0] for m in sys.modules
                                  if m.split(".")[0] in ("tfx", "apache_beam", "components",
                                                         "pipeline")})
print(json.dumps(shapes))
"""


def test_stock_models_load_in_a_bare_tensorflow_process(exported):
    """What a model server sees: no t2diff, Keras classes or ScaNN ops registered at load time,
    and TF Serving's session-over-signature_def path. The library then imports without TFX/Beam."""
    import subprocess
    import sys

    paths = {"user_tower": exported.result.user_tower_path, "top_k": exported.result.top_k_path}
    env = dict(os.environ, TF_USE_LEGACY_KERAS="1", TF_CPP_MIN_LOG_LEVEL="3")
    completed = subprocess.run(
        [sys.executable, "-c", _BARE_PROCESS, json.dumps(paths), str(SPEC.history_length)],
        capture_output=True, text=True, env=env, timeout=120,
        cwd=os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(__file__)))))
    assert completed.returncode == 0, completed.stderr[-2000:]
    shapes = json.loads(completed.stdout.strip().splitlines()[-1])
    assert shapes["user_tower"] == {S.USER_EMBEDDING: [2, 16]}
    assert shapes["top_k"] == {S.ITEM_IDS: [2, K], S.SCORES: [2, K]}
    assert shapes["session_user_tower"] == shapes["user_tower"]
    assert shapes["session_top_k"] == shapes["top_k"]
    assert shapes["heavy_modules"] == []


class _MeanOfHistory(tf.Module):
    """A user tower that is not a RetrievalModel: e_u = mean of a table over the history ids."""

    def __init__(self, table):
        super().__init__()
        self.table = tf.Variable(table)

    def __call__(self, features):
        return tf.reduce_mean(tf.gather(self.table, features[F.HISTORY]), axis=1)


def test_any_callable_user_tower_with_given_item_embeddings(tmp_path, exported):
    from t2diff_tf.serving.export import export_for_serving

    rng = np.random.default_rng(0)
    table = rng.normal(size=(51, 4)).astype(np.float32)
    tower = _MeanOfHistory(table)
    with pytest.raises(ValueError, match="padding id 0"):
        export_for_serving(tower, SPEC, str(tmp_path / "bad"), exported.vocabulary_path,
                           item_embeddings=table, item_ids=np.arange(51), scann=None)
    result = export_for_serving(tower, SPEC, str(tmp_path / "serving"), exported.vocabulary_path,
                                version=3, k=5, item_embeddings=table[1:], scann=None)
    queries = {n: np.minimum(v, 50) if n == F.HISTORY else v
               for n, v in exported.queries.items()}
    loaded = tf.saved_model.load(result.top_k_path)
    ids = np.asarray(rest.predict(loaded, _instances(queries))["predictions"][0][S.ITEM_IDS])
    expected = tower(queries).numpy()
    _, rows = numpy_top_k(expected[:1], table[1:], 5)
    np.testing.assert_array_equal(ids, rows[0] + 1)
    assert result.manifest.model_config is None and result.manifest.corpus_size == 50


# ------------------------------------------------------------------------------------------------
# Guarded signatures: what TF Serving would answer with HTTP 400


def _guarded_tower():
    from t2diff_tf.models.registry import build_model
    from t2diff_tf.serving.signatures import UserTowerModule

    spec = F.ExampleSpec(history_length=6)
    model = build_model("mean_pool_two_tower", {"embedding_dim": 8}, num_items=20,
                        example_spec=spec)
    return UserTowerModule(model, spec), spec


def _request(spec, batch=2, **overrides):
    L = spec.history_length
    features = {F.HISTORY: np.tile(np.arange(1, L + 1), (batch, 1)),
                F.HISTORY_TIME_LAG: np.ones([batch, L]),
                F.HISTORY_SESSION: np.zeros([batch, L]),
                F.SESSION_LENGTH: np.full([batch], 2),
                F.HISTORY_TIMESTAMPS: np.tile(np.arange(L), (batch, 1))}
    features.update(overrides)
    return {k: tf.constant(np.asarray(v), tf.int64) for k, v in features.items()}


@pytest.mark.parametrize("name, value, message", [
    (F.HISTORY, [[1, 2, 3, 4, 5, 21]] * 2, "history must be <= 20"),
    (F.HISTORY, [[1, 2, 3, 4, 5, 2 ** 32 + 5]] * 2, "history must be <= 20"),
    (F.HISTORY, [[1, 2, 3, 4, 5, -1]] * 2, "history must be >= 0"),
    (F.HISTORY_TIME_LAG, [[0, 0, 0, 0, 0, 32]] * 2, "history_time_lag must be <= 31"),
    (F.HISTORY_SESSION, [[-2, 0, 0, 0, 0, 0]] * 2, "history_session must be >= -1"),
    (F.SESSION_LENGTH, [2, 7], "session_length must be <= 6"),
    (F.SESSION_LENGTH, [2], "session_length has a different batch size"),
    (F.HISTORY_TIMESTAMPS, [[0, 0, 0, 0, 0, -1]] * 2, "history_timestamps must be >= 0"),
])
def test_serving_refuses_out_of_range_or_mismatched_inputs(name, value, message):
    tower, spec = _guarded_tower()
    with pytest.raises(tf.errors.InvalidArgumentError, match=message):
        tower.serve(**_request(spec, **{name: value}))


def test_serving_answers_an_empty_batch_empty_and_refuses_non_finite_embeddings():
    from t2diff_tf.serving.brute_force import BruteForceIndex
    from t2diff_tf.serving.signatures import TopKModule

    tower, spec = _guarded_tower()
    empty = tower.serve(**_request(spec, batch=0))["user_embedding"]
    assert empty.shape == (0, 8)
    ok = tower.serve(**_request(spec))["user_embedding"]
    assert ok.shape == (2, 8)
    corpus = np.random.default_rng(0).normal(size=(20, 8)).astype(np.float32)
    top_k = TopKModule(tower, BruteForceIndex(corpus, np.arange(1, 21)), 5, 8)
    assert top_k.serve(**_request(spec, batch=0))["item_ids"].shape == (0, 5)
    with pytest.raises(tf.errors.InvalidArgumentError, match="user_embedding must be finite"):
        top_k.top_k_from_embedding(tf.constant([[np.nan] * 8], tf.float32))


MOVED_BUNDLE = """
import json, os, sys
os.environ["TF_USE_LEGACY_KERAS"] = "1"
import numpy as np
import tensorflow as tf
bundle = sys.argv[1]
manifest = json.load(open(os.path.join(bundle, "manifest.json")))
raw = {}
with open(os.path.join(bundle, manifest["vocabulary_path"])) as f:
    next(f)  # header: int_id, raw_id, count
    for line in f:
        int_id, raw_id, _ = line.rstrip("\\n").split("\\t")
        raw[int(int_id)] = raw_id
top_k = tf.saved_model.load(os.path.join(bundle, manifest["paths"]["top_k"]))
request = json.loads(sys.argv[2])
out = top_k.signatures["serving_default"](
    **{k: tf.constant(v, tf.int64) for k, v in request.items()})
print("RESULT " + json.dumps([[raw[int(i)] for i in row] for row in out["item_ids"].numpy()]))
"""


def test_a_moved_bundle_maps_a_users_top_k_to_raw_ids_in_a_fresh_process(exported, tmp_path):
    import shutil
    import subprocess
    import sys

    moved = tmp_path / "elsewhere" / "bundle"
    shutil.copytree(exported.result.destination, moved)
    manifest = read_manifest(str(moved / "manifest.json"))
    assert manifest.vocabulary_path == "item_vocabulary.tsv"
    assert not os.path.isabs(manifest.paths["top_k"])
    request = {k: np.asarray(v)[:2].tolist() for k, v in exported.queries.items()}
    script = tmp_path / "read_bundle.py"
    script.write_text(MOVED_BUNDLE)
    done = subprocess.run([sys.executable, str(script), str(moved), json.dumps(request)],
                          capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"))
    assert done.returncode == 0, done.stderr[-3000:]
    rows = json.loads([l for l in done.stdout.splitlines() if l.startswith("RESULT ")][-1][7:])
    # The original bundle's answer, mapped through the vocabulary the fixture wrote.
    original = tf.saved_model.load(exported.result.top_k_path)
    ids = original.signatures["serving_default"](
        **{k: tf.constant(v, tf.int64) for k, v in request.items()})["item_ids"].numpy()
    assert rows == [[f"raw{i}" for i in row] for row in ids]
    assert len(rows) == 2 and len(rows[0]) == K


def test_scann_below_the_required_recall_is_widened_then_refused(exported, tmp_path):
    from t2diff_tf.serving import export as export_module
    from t2diff_tf.serving.scann_index import ScannConfig

    narrow = ScannConfig(num_leaves=24, num_leaves_to_search=1, reorder_k=20)
    # Reachable: widening searches more leaves until recall on the held-out windows is enough.
    result = export_module.export_for_serving(exported.model, SPEC, str(tmp_path / "ok"),
                                exported.vocabulary_path, version=1, k=K, scann=narrow,
                                probe_features=exported.queries, min_scann_recall=0.95)
    estimate = result.manifest.index["scann"]["recall_at_k_estimate"]
    assert estimate["recall"] >= 0.95 and estimate["required"] == 0.95
    assert estimate["queries"] == len(exported.queries[F.HISTORY]) + 8  # + the warmup windows
    leaves = [t["num_leaves_to_search"] for t in estimate["tuning"]]
    assert leaves == sorted(leaves) and leaves[0] == 1
    assert result.manifest.index["scann"]["num_leaves_to_search"] == leaves[-1]
    # Unreachable: the export stops with a clear message and leaves nothing behind.
    with pytest.raises(export_module.ScannRecallError, match="below the required 1.01"):
        export_module.export_for_serving(exported.model, SPEC, str(tmp_path / "refused" / "1"),
                           exported.vocabulary_path, version=1, k=K, scann=narrow,
                           probe_features=exported.queries, min_scann_recall=1.01)
    assert not os.path.exists(tmp_path / "refused" / "1")
    assert not [p for p in os.listdir(tmp_path / "refused") if p.startswith(".tmp-")]
