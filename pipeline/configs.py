"""Typed configuration of the whole TFX pipeline (what ``create_pipeline`` takes)."""

import dataclasses
import json
import os
from typing import Optional, Tuple

from components.preprocessing.config import VALIDATED_PROTOCOLS
from components.preprocessing.sources import SourceConfig
from components.preprocessing.transforms import PreprocessConfig
from t2diff_tf.models.registry import available_models
from t2diff_tf.training import TrainConfig

SERVING_RULES = ("better", "not_worse")  # components.evaluator.SERVING_RULES
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_OUTPUT_ROOT = os.path.join(REPO_ROOT, "outputs", "tfx")
PIPELINE_NAME = "t2diff"


@dataclasses.dataclass(frozen=True)
class EvalConfig:
    """The Evaluator: cut-offs, blessing rule and intervals (see ``components.evaluator``).

    Attributes:
      serving_baseline: compare with the model that serves, the pipeline's latest blessed model
        (resolved from ML Metadata); a candidate that does not beat it is not blessed or pushed.
      serving_rule: ``better`` (the paired 95% interval of the blessing metric's difference is
        above 0) or ``not_worse`` (the interval is not below 0).
    """

    split: str = "test"
    ks: Tuple[int, ...] = (2, 10, 20, 100)
    blessing_metric: str = "recall@20"
    threshold: float = 0.0
    min_improvement: float = 0.0
    exclude_history: bool = False
    num_bootstrap: int = 1000
    serving_baseline: bool = True
    serving_rule: str = "better"

    def __post_init__(self):
        if self.serving_rule not in SERVING_RULES:
            raise ValueError(f"serving_rule must be one of {SERVING_RULES}, got "
                             f"{self.serving_rule!r}")
        if self.serving_baseline and self.num_bootstrap < 1:
            raise ValueError("comparing with the serving model needs num_bootstrap >= 1")


@dataclasses.dataclass(frozen=True)
class PipelineConfig:
    """Everything one pipeline run needs.

    Attributes:
      pipeline_name: the TFX pipeline name (``tfx run create --pipeline_name``).
      output_root: pipeline root, metadata and push destination default below it.
      source, preprocess: the data and how it becomes windows.
      model: registry name (``t2diff_tf.models.registry``); model_config: its config fields.
      baseline_model: optional second model the Evaluator compares against (trained too).
      train: training settings (epochs, batch, early stopping on validation, strategy).
      eval: evaluation and blessing (against the serving model too, by default).
      warm_start: the Trainer starts from the weights of the pipeline's latest blessed (so
        pushed) model, item rows mapped through the raw ids (``t2diff_tf.warm_start``).
      push_destination: where blessed models go (default ``<output_root>/serving``).
      schema_path: optional schema the examples must match (stops the run early otherwise).
      beam_pipeline_args: Beam options for the Beam-powered components (DirectRunner default).
      preprocess_beam_pipeline_args: Beam options for PreprocessLogs alone, after the
        pipeline's (so they win), e.g. two DirectRunner processes for the preprocessing, where
        StatisticsGen fails in that mode with the verified tfx_bsl (BENCHMARKS.md).
      enable_cache: reuse outputs of unchanged components.
    """

    pipeline_name: str = PIPELINE_NAME
    output_root: str = DEFAULT_OUTPUT_ROOT
    source: SourceConfig = SourceConfig()
    preprocess: PreprocessConfig = PreprocessConfig()
    model: str = "t2diff"
    model_config: Optional[dict] = None
    baseline_model: Optional[str] = None
    baseline_model_config: Optional[dict] = None
    train: TrainConfig = TrainConfig()
    eval: EvalConfig = EvalConfig()
    warm_start: bool = False
    push_destination: Optional[str] = None
    schema_path: Optional[str] = None
    beam_pipeline_args: Tuple[str, ...] = ("--direct_running_mode=in_memory",
                                          "--direct_num_workers=1")
    preprocess_beam_pipeline_args: Tuple[str, ...] = ()
    enable_cache: bool = True

    def __post_init__(self):
        for name in (self.model, self.baseline_model):
            if name is not None and name not in available_models():
                raise ValueError(f"unknown model {name!r}; known models: "
                                 f"{', '.join(available_models())}")
        if not self.preprocess.protocol.has_validation:
            raise ValueError(
                f"protocol {self.preprocess.protocol.name!r} holds out no validation split, "
                f"which the Trainer's epoch selection and the Pusher's warm-up need; the "
                f"pipeline takes {', '.join(VALIDATED_PROTOCOLS)} (leave_last_out is for "
                f"benchmarks/ml1m.py and the preprocess command)")

    @property
    def pipeline_root(self) -> str:
        return os.path.join(self.output_root, "pipelines", self.pipeline_name)

    @property
    def metadata_path(self) -> str:
        return os.path.join(self.output_root, "metadata", self.pipeline_name, "metadata.db")

    @property
    def serving_destination(self) -> str:
        return self.push_destination or os.path.join(self.output_root, "serving")

    def trainer_custom_config(self, model: str, model_config: Optional[dict]) -> dict:
        return {"model": model, "model_config": json.dumps(model_config or {}),
                "train": json.dumps(dataclasses.asdict(self.train)),
                "checkpoint_root": os.path.join(self.pipeline_root, "checkpoints")}
