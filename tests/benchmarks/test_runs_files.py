"""Every runs file in ``benchmarks/runs/`` names registered models with valid settings.

A typo in a runs file (a model name, a config field, a training setting) would otherwise surface
only when a long benchmark reaches that entry, hours into a chain of runs.
"""

import dataclasses
import glob
import json
import os

import pytest

from t2diff_tf.models.registry import MODELS
from t2diff_tf.training import TrainConfig

from tests.benchmarks.test_ml1m_harness import ROOT, load_script

RUNS_FILES = sorted(glob.glob(os.path.join(ROOT, "benchmarks", "runs", "*.json")))


def test_there_are_runs_files():
    assert RUNS_FILES


@pytest.mark.parametrize("path", RUNS_FILES, ids=os.path.basename)
def test_runs_file_builds_every_config(path):
    harness = load_script("ml1m")
    with open(path) as f:
        specs = json.load(f)
    assert isinstance(specs, list) and specs, path
    labels = [spec["label"] for spec in specs]
    assert len(set(labels)) == len(labels), f"{path}: labels repeat"
    for spec in specs:
        assert set(spec) <= {"label", "model", "config", "train"}, (path, spec["label"])
        assert spec["model"] in MODELS, (path, spec["label"])
        harness.model_config(spec["model"], spec.get("config", {}))
        TrainConfig.from_dict({**dataclasses.asdict(TrainConfig()), **spec.get("train", {})})


def test_a_misspelt_setting_is_caught(tmp_path):
    harness = load_script("ml1m")
    with pytest.raises(TypeError):
        harness.model_config("sasrec", {"embeding_dim": 32})
    with pytest.raises(TypeError):
        TrainConfig.from_dict({**dataclasses.asdict(TrainConfig()), "learning_rte": 0.1})
