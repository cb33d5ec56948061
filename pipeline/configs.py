"""Typed configuration of the whole TFX pipeline (what ``create_pipeline`` takes)."""

import dataclasses
import json
import os
from typing import Optional, Tuple

from components.preprocessing.sources import SourceConfig
from components.preprocessing.transforms import PreprocessConfig
from t2diff_tf.models.registry import available_models
from t2diff_tf.training import TrainConfig

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_OUTPUT_ROOT = os.path.join(REPO_ROOT, "outputs", "tfx")
PIPELINE_NAME = "t2diff"


@dataclasses.dataclass(frozen=True)
class EvalConfig:
    """The Evaluator: cut-offs, blessing rule and intervals (see ``components.evaluator``)."""

    split: str = "test"
    ks: Tuple[int, ...] = (2, 10, 20, 100)
    blessing_metric: str = "recall@20"
    threshold: float = 0.0
    min_improvement: float = 0.0
    exclude_history: bool = False
    num_bootstrap: int = 1000


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
      eval: evaluation and blessing.
      push_destination: where blessed models go (default ``<output_root>/serving``).
      schema_path: optional schema the examples must match (stops the run early otherwise).
      beam_pipeline_args: Beam options for the Beam-powered components (DirectRunner default).
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
    push_destination: Optional[str] = None
    schema_path: Optional[str] = None
    beam_pipeline_args: Tuple[str, ...] = ("--direct_running_mode=in_memory",
                                          "--direct_num_workers=1")
    enable_cache: bool = True

    def __post_init__(self):
        for name in (self.model, self.baseline_model):
            if name is not None and name not in available_models():
                raise ValueError(f"unknown model {name!r}; known models: "
                                 f"{', '.join(available_models())}")

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
