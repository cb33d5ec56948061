"""The whole TFX pipeline through LocalDagRunner on small synthetic data, and its failure modes."""

import glob
import json
import os

import numpy as np
import pytest
import tensorflow as tf

from components.preprocessing.records import InputError
from components.preprocessing.schema import schema_text, window_schema
from pipeline import cli, local
from t2diff_tf.features import ExampleSpec

SMALL = ["--synthetic-users", "160", "--synthetic-items", "120", "--history-length", "20",
         "--epochs", "1", "--batch-size", "128", "--ks", "10,20", "--model",
         "mean_pool_two_tower", "--model-config", '{"embedding_dim": 16}']


def config_for(tmp_path, *extra):
    args = cli.build_parser().parse_args(
        ["run", *SMALL, "--output-root", str(tmp_path / "root"), *extra])
    return cli.pipeline_config_from_args(args)


def executions(config):
    from ml_metadata.metadata_store import metadata_store
    from ml_metadata.proto import metadata_store_pb2

    connection = metadata_store_pb2.ConnectionConfig()
    connection.sqlite.filename_uri = config.metadata_path
    store = metadata_store.MetadataStore(connection)
    names = {t.id: t.name for t in store.get_execution_types()}
    return [(names[e.type_id], metadata_store_pb2.Execution.State.Name(e.last_known_state))
            for e in store.get_executions()]


def one(pattern):
    found = glob.glob(pattern, recursive=True)
    assert found, f"nothing matches {pattern}"
    return found[0]


def read_window(examples_uri):
    from components.evaluator import example_spec
    from t2diff_tf import features as F
    from t2diff_tf.training import read_examples

    batch = next(iter(read_examples(f"{examples_uri}/Split-test/*", example_spec(examples_uri), 4)))
    return {name: batch[name] for name in F.QUERY_FEATURES}


def test_pipeline_end_to_end_then_cached(tmp_path):
    config = config_for(tmp_path)
    local.run(config)
    root = config.pipeline_root

    examples = one(f"{root}/PreprocessLogs/examples/*")
    for split in ("train", "validation", "test"):
        assert glob.glob(f"{examples}/Split-{split}/data_tfrecord-*.gz")
    stats = json.load(open(f"{examples}/stats.json"))
    assert stats["kept"] + sum(stats["filtered"].values()) + stats["rejected"] == \
        stats["interactions_read"]
    one(f"{root}/StatisticsGen/statistics/*/Split-train/FeatureStats.pb")
    one(f"{root}/SchemaGen/schema/*/schema.pbtxt")
    one(f"{root}/ExampleValidator/anomalies/*/Split-test/*")

    serving = one(f"{root}/Trainer/model/*/Format-Serving")
    corpus = np.load(f"{serving}/assets.extra/corpus_embeddings.npy")
    assert corpus.shape == (stats["items"], 16)
    training = json.load(open(f"{serving}/assets.extra/training.json"))
    assert "val_recall@20" in training["history"]

    report = json.load(open(one(f"{root}/RetrievalEvaluator/evaluation/*/metrics.json")))
    assert report["model"]["num_examples"] == stats["examples"]["test"]
    assert 0.0 <= report["model"]["metrics"]["recall@20"] <= 1.0
    low, high = report["model"]["intervals"]["recall@20"]
    assert low <= report["model"]["metrics"]["recall@20"] <= high
    assert os.path.getsize(one(f"{root}/RetrievalEvaluator/evaluation/*/metrics.png")) > 1000
    assert report["blessing"]["blessed"]
    one(f"{root}/RetrievalEvaluator/blessing/*/BLESSED")

    manifest_path = one(f"{config.serving_destination}/*/manifest.json")
    manifest = json.load(open(manifest_path))
    assert manifest["corpus_size"] == stats["items"] and manifest["embedding_dim"] == 16
    # A serving client builds the query features with the training windows' rules.
    assert manifest["query_features"]["session_rule"] == {"mode": "last_k", "k": 10}
    bundle = os.path.dirname(manifest_path)
    for name in ("user_tower", "top_k", "scann_top_k"):
        one(f"{bundle}/{name}/*/saved_model.pb")
    assert os.path.exists(f"{bundle}/models.config")
    # The pushed user tower answers like the Trainer's model (same SavedModel lineage).
    pushed = tf.saved_model.load(os.path.dirname(one(f"{bundle}/user_tower/*/saved_model.pb")))
    trained = tf.saved_model.load(serving)
    request = {k: v for k, v in read_window(examples).items()}
    np.testing.assert_allclose(pushed.signatures["serving_default"](**request)["user_embedding"],
                               trained.signatures["serving_default"](**request)["user_embedding"],
                               rtol=1e-5, atol=1e-6)

    first = executions(config)
    assert all(state == "COMPLETE" for _, state in first), first
    local.run(config)
    second = executions(config)[len(first):]
    cached = {name for name, state in second if state == "CACHED"}
    assert any("PreprocessLogs" in n for n in cached) and any("Trainer" in n for n in cached), \
        second


def test_missing_or_empty_data_stops_before_any_component(tmp_path):
    config = config_for(tmp_path, "--source", "sequences", "--input", str(tmp_path / "nope.txt"))
    with pytest.raises(InputError, match="nope.txt: no such file"):
        local.run(config)
    assert not os.path.exists(config.pipeline_root)
    (tmp_path / "empty.txt").write_text("")
    config = config_for(tmp_path, "--source", "sequences", "--input", str(tmp_path / "empty.txt"))
    with pytest.raises(InputError, match="empty.txt: file is empty"):
        local.run(config)
    # A CSV whose header names a column twice, or a gzip cut short, stops before any component.
    (tmp_path / "dup.csv").write_text("user,item,timestamp,item\n1,2,3,4\n")
    config = config_for(tmp_path, "--source", "csv", "--input", str(tmp_path / "dup.csv"))
    with pytest.raises(InputError, match="dup.csv.*item"):
        local.run(config)
    assert not os.path.exists(config.pipeline_root)
    import gzip
    whole = gzip.compress(("user,item,timestamp\n" + "1,2,3\n" * 20000).encode())
    (tmp_path / "cut.csv.gz").write_bytes(whole[: len(whole) // 2])
    config = config_for(tmp_path, "--source", "csv", "--input", str(tmp_path / "cut.csv.gz"))
    with pytest.raises(InputError, match="cut.csv.gz"):
        local.run(config)
    assert not os.path.exists(config.pipeline_root)


def test_unknown_model_is_rejected_with_the_known_names(tmp_path, capsys):
    with pytest.raises(SystemExit):
        cli.build_parser().parse_args(["run", "--model", "no_such_model"])
    assert "invalid choice: 'no_such_model'" in capsys.readouterr().err
    from pipeline.configs import PipelineConfig

    with pytest.raises(ValueError, match="unknown model 'no_such_model'; known models: "):
        PipelineConfig(model="no_such_model")


def test_schema_mismatch_stops_the_run_and_pushes_nothing(tmp_path):
    schema = tmp_path / "schema.pbtxt"
    schema.write_text(schema_text(window_schema(ExampleSpec(history_length=50))))
    config = config_for(tmp_path, "--schema", str(schema))
    with pytest.raises(Exception) as raised:
        local.run(config)
    assert "does not match schema" in str(raised.value) or \
        "does not match schema" in repr(raised.value.__cause__)
    assert not glob.glob(f"{config.serving_destination}/**/saved_model.pb", recursive=True)
    assert not glob.glob(f"{config.pipeline_root}/Trainer/model/*/Format-Serving/saved_model.pb")


def test_sequence_layout_trains_next_item_models_on_chunks(tmp_path):
    """With --sequence-length the examples hold the chunks too: SASRec trains on them, the
    mean-pooled baseline on a window per chunk position, and statistics cover the window
    splits only. The chunks (30 inputs) are longer than the windows (20): SASRec's positions
    cover the chunks, its serving signature takes the windows."""
    config = config_for(tmp_path, "--sequence-length", "30", "--model", "sasrec",
                        "--baseline-model", "mean_pool_two_tower",
                        "--model-config", '{"embedding_dim": 16, "tied_item_embeddings": true}')
    local.run(config)
    root = config.pipeline_root
    examples = one(f"{root}/PreprocessLogs/examples/*")
    assert glob.glob(f"{examples}/Split-train_sequences/data_tfrecord-*.gz")
    stats = json.load(open(f"{examples}/stats.json"))
    assert stats["sequence_labels"] == stats["examples"]["train"]
    statistics = one(f"{root}/StatisticsGen/statistics/*")
    assert not os.path.exists(f"{statistics}/Split-train_sequences")
    training = {name: json.load(open(one(f"{root}/{name}/model/*/Format-Serving/assets.extra/"
                                         "training.json")))
                for name in ("Trainer", "BaselineTrainer")}
    assert {name: t["layout"] for name, t in training.items()} == {
        "Trainer": "sequences", "BaselineTrainer": "sequence_windows"}
    assert training["Trainer"]["example_spec"]["history_length"] == 20
    assert training["Trainer"]["example_spec"]["max_positions"] == 30
    # Checkpoints are kept only while a Trainer runs.
    assert not glob.glob(f"{root}/checkpoints/*")
    report = json.load(open(one(f"{root}/RetrievalEvaluator/evaluation/*/metrics.json")))
    assert report["model"]["num_examples"] == stats["examples"]["test"]


def test_executions_a_killed_run_left_running_are_closed(tmp_path):
    from ml_metadata.metadata_store import metadata_store
    from ml_metadata.proto import metadata_store_pb2

    path = str(tmp_path / "metadata.sqlite")
    connection = metadata_store_pb2.ConnectionConfig()
    connection.sqlite.filename_uri = path
    connection.sqlite.connection_mode = 3  # READWRITE_OPENCREATE
    store = metadata_store.MetadataStore(connection)
    type_id = store.put_execution_type(metadata_store_pb2.ExecutionType(name="Trainer"))
    running = metadata_store_pb2.Execution(
        type_id=type_id, last_known_state=metadata_store_pb2.Execution.RUNNING)
    done = metadata_store_pb2.Execution(
        type_id=type_id, last_known_state=metadata_store_pb2.Execution.COMPLETE)
    store.put_executions([running, done])
    assert local.close_stale_executions(path) == 1
    states = sorted(metadata_store_pb2.Execution.State.Name(e.last_known_state)
                    for e in store.get_executions())
    assert states == ["CANCELED", "COMPLETE"]
    assert local.close_stale_executions(path) == 0
    assert local.close_stale_executions(str(tmp_path / "none.sqlite")) == 0
