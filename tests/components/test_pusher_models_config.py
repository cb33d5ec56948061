"""A bundle moved to another directory: its TF Serving configs are pointed at the new place."""

import shutil

import pytest

from components.pusher import rebase_models_config
from t2diff_tf.serving.model_server_config import (ServedModel, read_model_server_config,
                                                   write_model_server_config)


def _bundle(root):
    for folder in ("user_tower", "top_k", "scann_top_k"):
        (root / folder / "1700000000").mkdir(parents=True)
    stock = [ServedModel("user_tower", str(root / "user_tower")),
             ServedModel("top_k", str(root / "top_k"))]
    write_model_server_config(str(root / "models.config"), stock, header="t2diff export")
    write_model_server_config(str(root / "models_scann.config"),
                              stock + [ServedModel("scann_top_k", str(root / "scann_top_k"))])
    return root


def test_a_moved_bundle_is_rebased(tmp_path):
    old = _bundle(tmp_path / "serving" / "1700000000")
    new = tmp_path / "elsewhere" / "1700000000"
    shutil.copytree(old, new)
    shutil.rmtree(old)
    rewritten = rebase_models_config(str(new))
    assert sorted(p.rsplit("/", 1)[1] for p in rewritten) == ["models.config",
                                                              "models_scann.config"]
    for name, count in (("models.config", 2), ("models_scann.config", 3)):
        config = read_model_server_config(str(new / name))
        entries = config.model_config_list.config
        assert len(entries) == count
        for entry in entries:
            assert entry.base_path == str(new / entry.name)
            assert (new / entry.name / "1700000000").is_dir()
    assert (new / "models.config").read_text().startswith("# t2diff export\n")
    # Served from a bucket or mount point: the paths the server will see.
    rebase_models_config(str(new), base="gs://bucket/serving/1700000000")
    entry = read_model_server_config(str(new / "models.config")).model_config_list.config[0]
    assert entry.base_path == "gs://bucket/serving/1700000000/user_tower"


def test_a_config_naming_a_missing_model_is_refused(tmp_path):
    bundle = _bundle(tmp_path / "b")
    shutil.rmtree(bundle / "top_k")
    with pytest.raises(ValueError, match="'top_k'"):
        rebase_models_config(str(bundle))
