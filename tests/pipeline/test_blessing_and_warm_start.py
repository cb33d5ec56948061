"""The production loop: a new model is blessed (and pushed) only when it beats the model that
serves, and training can start from the serving model's weights across a changed vocabulary."""

import glob
import json
import os

import numpy as np
import pytest
import tensorflow as tf

from components.evaluator import (CORPUS_EMBEDDINGS, RemappedRetrievalModel, SavedRetrievalModel,
                                  compare_with_serving, decide_blessing)
from pipeline import cli, local
from pipeline.t2diff_pipeline import create_pipeline
from t2diff_tf import features as F
from t2diff_tf import metrics as M
from t2diff_tf.models.registry import build_model
from t2diff_tf.serving.signatures import UserTowerModule
from t2diff_tf.warm_start import ItemIdMapping, create_variables

# ------------------------------------------------------------------------------------------------
# The decision (fast)


def result_from_ranks(ranks, users):
    ranks = np.asarray(ranks)
    metrics = {k: float(v.mean()) for k, v in M.ranking_metrics(ranks, (20,)).items()}
    return M.EvaluationResult(metrics, {}, len(ranks), len(set(users)), 100, False,
                              ranks=ranks, groups=np.asarray(users))


USERS = [f"u{i}" for i in range(200)]


def test_blessed_only_when_the_paired_interval_says_better():
    rng = np.random.default_rng(0)
    serving = result_from_ranks(rng.integers(1, 60, 200), USERS)  # about a third within 20
    better = result_from_ranks(np.where(rng.random(200) < 0.5, 1, serving.ranks), USERS)
    worse = result_from_ranks(np.where(rng.random(200) < 0.5, 99, serving.ranks), USERS)
    same = result_from_ranks(serving.ranks.copy(), USERS)
    slightly = result_from_ranks(np.where(np.arange(200) == 0, 1, serving.ranks), USERS)

    verdicts = {}
    for name, candidate in (("better", better), ("worse", worse), ("same", same),
                            ("slightly", slightly)):
        comparison = compare_with_serving(candidate, serving, "recall@20", "better", 500)
        verdicts[name] = decide_blessing(candidate, "recall@20", 0.0, None, 0.0, comparison)
    assert verdicts["better"]["blessed"]
    assert verdicts["better"]["serving"]["interval"][0] > 0
    assert not verdicts["worse"]["blessed"]
    assert verdicts["worse"]["serving"]["interval"][1] < 0
    assert "not better than the serving model" in verdicts["worse"]["reasons"][0]
    # Equal is not better, and one more hit among 200 users is within the noise.
    assert not verdicts["same"]["blessed"] and verdicts["same"]["serving"]["difference"] == 0
    assert verdicts["slightly"]["serving"]["difference"] > 0 and not verdicts["slightly"]["blessed"]

    # 'not_worse' lets an equal model through but not a worse one.
    assert compare_with_serving(same, serving, "recall@20", "not_worse", 500)["passed"]
    assert not compare_with_serving(worse, serving, "recall@20", "not_worse", 500)["passed"]
    # The candidate that is the serving model (a cached rerun) stays blessed; the threshold and
    # the same-run baseline still apply.
    assert decide_blessing(same, "recall@20", 0.0, None, 0.0, {"same_model": True})["blessed"]
    assert not decide_blessing(same, "recall@20", 0.99, None, 0.0, {"same_model": True})["blessed"]
    # A serving model that could not be compared (no vocabulary) does not block the blessing.
    assert decide_blessing(same, "recall@20", 0.0, None, 0.0, {"skipped": "why"})["blessed"]
    with pytest.raises(ValueError, match="same examples"):
        compare_with_serving(result_from_ranks([1, 2], ["a", "b"]), serving, "recall@20")
    with pytest.raises(ValueError, match="serving rule"):
        compare_with_serving(same, serving, "recall@20", "whatever")


def test_serving_model_ranks_the_new_vocabulary_through_raw_ids(tmp_path):
    """The serving model's scores of the examples' items are its own scores of the same raw
    items; items it does not know are never retrieved, so their targets rank last."""
    spec = F.ExampleSpec(history_length=5)
    old_raw, new_raw = ("a", "b", "c", "d", "e"), ("e", "z", "a", "c", "y", "b")
    old = build_model("mean_pool_two_tower", {"embedding_dim": 8}, num_items=5,
                      item_frequencies=np.full(6, 0.2, np.float32), example_spec=spec)
    create_variables(old, spec)
    module = UserTowerModule(old, spec)
    serving = str(tmp_path / "serving")
    tf.saved_model.save(module, serving, signatures=module.signatures())
    os.makedirs(os.path.join(serving, "assets.extra"), exist_ok=True)
    np.save(os.path.join(serving, CORPUS_EMBEDDINGS), np.asarray(old.corpus_embeddings()))

    mapping = ItemIdMapping.from_raw_ids(old_raw, new_raw)
    remapped = RemappedRetrievalModel(SavedRetrievalModel(serving), mapping, spec, spec)
    new_ids = {raw: i + 1 for i, raw in enumerate(new_raw)}
    old_ids = {raw: i + 1 for i, raw in enumerate(old_raw)}

    def query(ids):
        return {F.HISTORY: tf.constant([[0] * (5 - len(ids)) + ids], tf.int64),
                F.HISTORY_TIME_LAG: tf.ones([1, 5], tf.int64),
                F.HISTORY_SESSION: tf.zeros([1, 5], tf.int64),
                F.SESSION_LENGTH: tf.constant([2], tf.int64),
                F.HISTORY_TIMESTAMPS: tf.zeros([1, 5], tf.int64)}

    history = ["c", "a", "e"]
    scores = remapped.score_corpus(query([new_ids[r] for r in history + ["z"]])).numpy()[0]
    # "z" is unknown to the serving model: it becomes padding in the history.
    user = old.query_embeddings(query([0] + [old_ids[r] for r in history]))
    expected = np.asarray(user @ tf.transpose(old.corpus_embeddings()))[0]
    for raw in new_raw:
        if raw in old_ids:
            np.testing.assert_allclose(scores[new_ids[raw] - 1], expected[old_ids[raw] - 1],
                                       rtol=1e-5, atol=1e-6)
        else:
            assert scores[new_ids[raw] - 1] == -np.inf
    features = {**query([new_ids["c"]]), F.TARGET: tf.constant([new_ids["y"]], tf.int64)}
    result = M.evaluate(remapped, {k: v.numpy() for k, v in features.items()}, ks=(2,),
                        num_bootstrap=0)
    assert result.ranks.tolist() == [len(new_raw)]  # an item it does not know ranks last


SMALL = ["--synthetic-users", "160", "--history-length", "20", "--batch-size", "128",
         "--ks", "10,20", "--model", "mean_pool_two_tower", "--model-config",
         '{"embedding_dim": 16}']


def config_for(root, *extra):
    args = cli.build_parser().parse_args(["run", *SMALL, "--output-root", str(root), *extra])
    return cli.pipeline_config_from_args(args)


def node_ids_and_inputs(pipeline):
    out = {}
    for node in pipeline.components:
        out[node.id] = set(node.inputs.keys()) if hasattr(node, "inputs") else set()
    return out


def test_pipeline_resolves_the_latest_blessed_model_for_evaluator_and_trainer(tmp_path):
    nodes = node_ids_and_inputs(create_pipeline(config_for(tmp_path, "--warm-start")))
    assert "latest_blessed_model_resolver" in nodes
    assert "base_model" in nodes["Trainer"]
    assert "serving_model" in nodes["RetrievalEvaluator"]
    nodes = node_ids_and_inputs(create_pipeline(config_for(tmp_path)))
    assert "base_model" not in nodes["Trainer"] and "serving_model" in nodes["RetrievalEvaluator"]
    nodes = node_ids_and_inputs(create_pipeline(config_for(tmp_path, "--no-serving-baseline")))
    assert "latest_blessed_model_resolver" not in nodes
    assert "serving_model" not in nodes["RetrievalEvaluator"]


def test_preprocess_beam_args_reach_preprocess_logs_alone_after_the_pipelines(tmp_path):
    """``--preprocess-beam-arg`` goes to PreprocessLogs only, after the pipeline's options (the
    later flag wins in Beam); StatisticsGen keeps the pipeline's (it fails in multi-process
    mode with the verified tfx_bsl)."""
    config = config_for(tmp_path, "--preprocess-beam-arg=--direct_num_workers=2",
                        "--preprocess-beam-arg=--direct_running_mode=multi_processing")
    built = create_pipeline(config)
    nodes = {node.id: node for node in built.components}
    pipeline_args = list(config.beam_pipeline_args)
    assert built.beam_pipeline_args == pipeline_args  # prepended to each Beam component's
    assert nodes["PreprocessLogs"].executor_spec.beam_pipeline_args == pipeline_args + [
        "--direct_num_workers=2", "--direct_running_mode=multi_processing"]
    assert nodes["StatisticsGen"].executor_spec.beam_pipeline_args == pipeline_args


def test_preprocessing_is_keyed_on_the_window_contract(tmp_path):
    """The window features are an execution property of PreprocessLogs: TFX's cache, blind to
    library code, then reruns the preprocessing when the contract changes."""
    from components.preprocess import window_contract

    nodes = {node.id: node for node in create_pipeline(config_for(tmp_path)).components}
    written = nodes["PreprocessLogs"].exec_properties["window_features"]
    assert written == window_contract()
    assert F.HISTORY_TIMESTAMPS in written.split(",")


# ------------------------------------------------------------------------------------------------
# The whole loop (heavy: four local runs, about 10 minutes on a loaded 2-core machine)


def latest(pattern):
    paths = glob.glob(pattern)
    assert paths, f"nothing matches {pattern}"
    return max(paths, key=os.path.getmtime)


def run_and_read(root, *extra):
    config = config_for(root, *extra)
    local.run(config)
    report = json.load(open(latest(
        f"{config.pipeline_root}/RetrievalEvaluator/evaluation/*/metrics.json")))
    serving_dir = latest(f"{config.pipeline_root}/Trainer/model/*/Format-Serving")
    training = json.load(open(f"{serving_dir}/assets.extra/training.json"))
    bundles = sorted(glob.glob(f"{config.serving_destination}/*/manifest.json"))
    return report["blessing"], training, bundles


@pytest.mark.heavy
def test_blessing_against_what_serves_and_warm_start(tmp_path):
    root = tmp_path / "root"
    data_a = ["--synthetic-items", "120", "--synthetic-seed", "0"]
    # Data B: other users' logs and ten items new to the vocabulary (ids reordered by frequency).
    data_b = ["--synthetic-items", "130", "--synthetic-seed", "1"]

    # 1. Data A, a briefly trained model: nothing serves yet, so it is blessed and pushed.
    blessing, _, bundles = run_and_read(root, *data_a, "--epochs", "1",
                                                 "--learning-rate", "0.001")
    assert blessing["blessed"] and blessing["serving"] is None and len(bundles) == 1

    # 2. Data B, a model that has not learnt anything (learning rate 1e-7 from a random start):
    #    worse than the serving model on B's own test users, so not blessed and not pushed.
    blessing, _, bundles = run_and_read(root, *data_b, "--epochs", "1",
                                        "--learning-rate", "1e-7")
    serving = blessing["serving"]
    assert not blessing["blessed"] and len(bundles) == 1
    assert serving["interval"][1] < 0, serving  # significantly worse
    first_model = serving["model_uri"]
    assert first_model.rstrip("/").split("/")[-2:-1] == ["model"], first_model

    # 3. Data B, warm start from the serving model and no learning: exactly the serving model's
    #    ranking through the new vocabulary (kept items keep their rows), so not better.
    blessing, training, bundles = run_and_read(root, *data_b, "--warm-start", "--epochs", "1",
                                               "--learning-rate", "1e-7")
    warm = training["warm_start"]
    assert warm["used"], warm
    assert warm["base_model"].startswith(first_model)  # the model that serves
    assert warm["report"]["items_added"] == 10 and warm["report"]["items_removed"] == 0
    assert blessing["serving"]["difference"] == 0.0 and blessing["serving"]["interval"] == [0, 0]
    assert not blessing["blessed"] and len(bundles) == 1

    # 4. Data B, warm start and real training: better than the serving model, blessed, pushed.
    blessing, training, bundles = run_and_read(root, *data_b, "--warm-start", "--epochs", "3",
                                               "--learning-rate", "0.003")
    assert training["warm_start"]["used"]
    assert blessing["serving"]["interval"][0] > 0, blessing
    assert blessing["blessed"] and len(bundles) == 2
    newest = json.load(open(bundles[-1]))
    assert newest["corpus_size"] == 130
