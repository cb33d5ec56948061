"""``create_pipeline``: preprocessing -> statistics/schema/validation -> Trainer -> Evaluator ->
Pusher, as one TFX pipeline any orchestrator runs (LocalDagRunner, Kubeflow V2 / Vertex).

A run is one day of a continuous loop: a ``Resolver`` with TFX's ``LatestBlessedModelStrategy``
finds the pipeline's latest blessed model in ML Metadata (the model that serves: only blessed
models are pushed). The Evaluator compares the new model with it (``EvalConfig.
serving_baseline``), and with ``PipelineConfig.warm_start`` the Trainer starts from its weights
(the Trainer's ``base_model`` channel)."""

import json
import os
from typing import List, Optional

from tfx import v1 as tfx

from components.evaluator import RetrievalEvaluator
from components.preprocessing.config import SERVING, TRAIN_SEQUENCES
from components.preprocess import PreprocessLogs, window_contract
from components.pusher import RetrievalPusher
from pipeline.configs import REPO_ROOT, PipelineConfig

TRAINER_MODULE = os.path.join(REPO_ROOT, "components", "trainer_module.py")


def create_pipeline(config: PipelineConfig,
                    metadata_connection_config=None) -> tfx.dsl.Pipeline:
    """The t2diff pipeline for ``config``.

    Args:
      config: data, model, training, evaluation and push settings.
      metadata_connection_config: ML Metadata connection (LocalDagRunner: SQLite at
        ``config.metadata_path``; Kubeflow/Vertex supply their own, pass ``None``).
    """
    preprocess = PreprocessLogs(
        source=config.source.to_json(),
        preprocess_config=json.dumps(config.preprocess.to_json()),
        schema_path=config.schema_path or "",
        window_features=window_contract()).with_id("PreprocessLogs")
    if config.preprocess_beam_pipeline_args:
        preprocess.with_beam_pipeline_args(list(config.preprocess_beam_pipeline_args))
    examples = preprocess.outputs["examples"]
    # Statistics, schema and validation are of the window splits; the sequence chunks and the
    # serving windows (no target) follow their own schemas (schemas/sequence_example.pbtxt,
    # serving_window.pbtxt), checked where they are written.
    statistics = tfx.components.StatisticsGen(examples=examples,
                                              exclude_splits=[TRAIN_SEQUENCES, SERVING])
    schema = tfx.components.SchemaGen(statistics=statistics.outputs["statistics"],
                                      infer_feature_shape=True)
    validator = tfx.components.ExampleValidator(statistics=statistics.outputs["statistics"],
                                                schema=schema.outputs["schema"])

    def trainer(component_id: str, model: str, model_config: Optional[dict], base_model=None):
        return tfx.components.Trainer(
            module_file=TRAINER_MODULE, examples=examples, schema=schema.outputs["schema"],
            base_model=base_model,
            train_args=tfx.proto.TrainArgs(splits=["train"]),
            eval_args=tfx.proto.EvalArgs(splits=["validation"]),
            custom_config=config.trainer_custom_config(model, model_config)).with_id(component_id)

    components: List = [preprocess, statistics, schema, validator]
    latest_blessed = None
    if config.eval.serving_baseline or config.warm_start:
        latest_blessed = tfx.dsl.Resolver(
            strategy_class=tfx.dsl.experimental.LatestBlessedModelStrategy,
            model=tfx.dsl.Channel(type=tfx.types.standard_artifacts.Model),
            model_blessing=tfx.dsl.Channel(type=tfx.types.standard_artifacts.ModelBlessing),
        ).with_id("latest_blessed_model_resolver")
        components.append(latest_blessed)
    main_trainer = trainer("Trainer", config.model, config.model_config,
                           latest_blessed.outputs["model"] if config.warm_start else None)
    components.append(main_trainer)
    baseline = None
    if config.baseline_model:
        baseline = trainer("BaselineTrainer", config.baseline_model, config.baseline_model_config)
        components.append(baseline)
    e = config.eval
    evaluator = RetrievalEvaluator(
        model=main_trainer.outputs["model"], examples=examples,
        baseline_model=baseline.outputs["model"] if baseline else None,
        serving_model=(latest_blessed.outputs["model"] if config.eval.serving_baseline
                       else None), serving_rule=e.serving_rule,
        split=e.split, ks=",".join(map(str, e.ks)), blessing_metric=e.blessing_metric,
        threshold=e.threshold, min_improvement=e.min_improvement,
        exclude_history=e.exclude_history, num_bootstrap=e.num_bootstrap)
    pusher = RetrievalPusher(model=main_trainer.outputs["model"],
                             model_blessing=evaluator.outputs["blessing"], examples=examples,
                             push_destination=config.serving_destination)
    components += [evaluator, pusher]
    return tfx.dsl.Pipeline(
        pipeline_name=config.pipeline_name, pipeline_root=config.pipeline_root,
        components=components, enable_cache=config.enable_cache,
        metadata_connection_config=metadata_connection_config,
        beam_pipeline_args=list(config.beam_pipeline_args))
