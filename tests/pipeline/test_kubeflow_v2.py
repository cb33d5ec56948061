"""The Kubeflow V2 / Vertex runner compiles the same pipeline with Dataflow Beam options."""

import json

from pipeline import kubeflow_v2


def test_compiles_with_dataflow_options(tmp_path):
    out = tmp_path / "spec" / "pipeline.json"
    kubeflow_v2.main(["--project", "my-project", "--region", "europe-west4",
                      "--output-root", str(tmp_path / "root"), "--model", "t2diff",
                      "--baseline-model", "mean_pool_two_tower", "--output", str(out)])
    spec = json.loads(out.read_text())
    pipeline_spec = spec.get("pipelineSpec", spec)
    executors = set(pipeline_spec["deploymentSpec"]["executors"])
    # The latest blessed model (the Evaluator's serving baseline) is resolved on Vertex by the
    # two queries TFX compiles LatestBlessedModelStrategy into.
    assert executors == {f"{c}_executor" for c in (
        "PreprocessLogs", "StatisticsGen", "SchemaGen", "ExampleValidator", "Trainer",
        "BaselineTrainer", "RetrievalEvaluator", "RetrievalPusher",
        "latest_blessed_model_resolver-model-resolver",
        "latest_blessed_model_resolver-model-blessing-resolver")}
    text = out.read_text()
    assert "--runner=DataflowRunner" in text and "--project=my-project" in text
    assert "--region=europe-west4" in text
