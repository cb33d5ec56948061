"""Exports are all-or-nothing: a failure midway leaves no trace."""

import os

import pytest

from t2diff_tf.serving import export as export_module
from t2diff_tf.serving.atomic import atomic_directory
from t2diff_tf.serving.scann_index import ScannConfig

from .conftest import SPEC


def test_atomic_directory_renames_on_success(tmp_path):
    destination = tmp_path / "out"
    with atomic_directory(str(destination)) as workdir:
        assert os.path.dirname(workdir) == str(tmp_path) and workdir != str(destination)
        (open(os.path.join(workdir, "a"), "w")).write("x")
        assert not destination.exists()
    assert (destination / "a").read_text() == "x"
    assert sorted(os.listdir(tmp_path)) == ["out"]


def test_atomic_directory_cleans_up_on_error(tmp_path):
    with pytest.raises(RuntimeError):
        with atomic_directory(str(tmp_path / "out")) as workdir:
            open(os.path.join(workdir, "a"), "w").close()
            raise RuntimeError("boom")
    assert os.listdir(tmp_path) == []


def test_atomic_directory_refuses_then_overwrites(tmp_path):
    destination = tmp_path / "out"
    destination.mkdir()
    (destination / "old").write_text("old")
    with pytest.raises(FileExistsError):
        with atomic_directory(str(destination)):
            pass
    with atomic_directory(str(destination), overwrite=True) as workdir:
        open(os.path.join(workdir, "new"), "w").close()
    assert os.listdir(destination) == ["new"]
    assert sorted(os.listdir(tmp_path)) == ["out"]


@pytest.mark.parametrize("failing_step", ["write_manifest", "build_pybind_index"])
def test_failed_export_leaves_nothing_behind(exported, tmp_path, monkeypatch, failing_step):
    def boom(*args, **kwargs):
        raise RuntimeError(f"injected failure in {failing_step}")

    monkeypatch.setattr(export_module, failing_step, boom)
    destination = tmp_path / "serving"
    with pytest.raises(RuntimeError, match="injected failure"):
        export_module.export_for_serving(
            exported.model, SPEC, str(destination), exported.vocabulary_path, version=1, k=5,
            scann=ScannConfig())
    assert os.listdir(tmp_path) == []


def test_existing_export_is_kept_unless_overwrite(exported, tmp_path):
    destination = tmp_path / "serving"
    first = export_module.export_for_serving(exported.model, SPEC, str(destination),
                                             exported.vocabulary_path, version=1, k=5, scann=None)
    assert first.scann_path is None and first.scann_models_config_path is None
    assert sorted(os.listdir(destination)) == ["item_vocabulary.tsv", "manifest.json",
                                              "models.config", "top_k", "user_tower"]
    with pytest.raises(FileExistsError):
        export_module.export_for_serving(exported.model, SPEC, str(destination),
                                         exported.vocabulary_path, version=2, scann=None)
    assert os.listdir(destination / "user_tower") == ["1"]
    second = export_module.export_for_serving(
        exported.model, SPEC, str(destination), exported.vocabulary_path, version=2, k=5,
        scann=None, overwrite=True)
    assert second.version == 2 and os.listdir(destination / "user_tower") == ["2"]
    assert sorted(os.listdir(tmp_path)) == ["serving"]
