"""The ``models.config`` file TF Serving reads with ``--model_config_file``.

A text-format ``tensorflow.serving.ModelServerConfig`` whose ``model_config_list`` names each
model, its base path (the directory holding numbered version directories) and a version policy::

    model_config_list {
      config {
        name: "user_tower"
        base_path: "/serving/t2diff/user_tower"
        model_platform: "tensorflow"
        model_version_policy { latest { num_versions: 1 } }
        version_labels { key: "stable" value: 1700000000 }
      }
    }

Start a server with ``tensorflow_model_server --model_config_file=<dir>/models.config
--rest_api_port=8501``; a model answers on ``/v1/models/<name>:predict``.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Dict, Optional, Sequence

from google.protobuf import text_format
from tensorflow_serving.config import model_server_config_pb2

PLATFORM = "tensorflow"


@dataclasses.dataclass(frozen=True)
class ServedModel:
    """One ``model_config_list`` entry.

    Attributes:
      name: the model name clients address (``/v1/models/<name>``).
      base_path: absolute directory holding ``<version>/`` subdirectories.
      num_versions: how many of the newest versions to serve.
      version_labels: ``{label: version}``, e.g. ``{"stable": 3}``.
    """

    name: str
    base_path: str
    num_versions: int = 1
    version_labels: Optional[Dict[str, int]] = None

    def __post_init__(self):
        if not self.name:
            raise ValueError("a served model needs a name")
        if not os.path.isabs(self.base_path) and "://" not in self.base_path:
            raise ValueError(f"base_path must be absolute (TF Serving resolves relative paths "
                             f"against its working directory), got {self.base_path!r}")
        if self.num_versions < 1:
            raise ValueError("num_versions must be >= 1")


def model_server_config(models: Sequence[ServedModel]
                        ) -> model_server_config_pb2.ModelServerConfig:
    """The ``ModelServerConfig`` proto naming ``models``."""
    names = [m.name for m in models]
    if len(set(names)) != len(names):
        raise ValueError(f"duplicate model names: {names}")
    config = model_server_config_pb2.ModelServerConfig()
    for model in models:
        entry = config.model_config_list.config.add()
        entry.name = model.name
        entry.base_path = model.base_path
        entry.model_platform = PLATFORM
        entry.model_version_policy.latest.num_versions = model.num_versions
        for label, version in (model.version_labels or {}).items():
            entry.version_labels[label] = int(version)
    return config


def write_model_server_config(path: str, models: Sequence[ServedModel],
                              header: Optional[str] = None) -> str:
    """Writes the text proto to ``path`` (``header`` lines become ``#`` comments)."""
    text = text_format.MessageToString(model_server_config(models))
    if header:
        text = "".join(f"# {line}\n" for line in header.splitlines()) + text
    with open(path, "w") as f:
        f.write(text)
    return path


def read_model_server_config(path: str) -> model_server_config_pb2.ModelServerConfig:
    """Parses a ``models.config`` text proto (comments allowed)."""
    with open(path) as f:
        return text_format.Parse(f.read(), model_server_config_pb2.ModelServerConfig())
