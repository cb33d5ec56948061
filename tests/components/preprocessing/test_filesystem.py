"""File access through Beam's filesystems, and a preprocessing that imports no TensorFlow."""

import os
import subprocess
import sys

import pytest

from components.preprocessing import filesystem as fs


def test_text_round_trip_keeps_carriage_returns_and_unicode(tmp_path):
    path = str(tmp_path / "a.tsv")
    fs.write_text(path, "1\tx\r y\n2\t\u00e9t\u00e9\n")
    with fs.open_text(path) as f:
        assert f.readlines() == ["1\tx\r y\n", "2\t\u00e9t\u00e9\n"]
    assert fs.read_text(path) == "1\tx\r y\n2\t\u00e9t\u00e9\n"
    assert fs.size(path) == len("1\tx\r y\n2\t\u00e9t\u00e9\n".encode())


def test_directories_listing_globbing_and_removal(tmp_path):
    root = str(tmp_path / "out")
    assert not fs.exists(root) and not fs.isdir(root)
    fs.makedirs(fs.join(root, "Split-train"))
    fs.makedirs(fs.join(root, "Split-train"))  # already there: fine
    fs.write_text(fs.join(root, "Split-train", "data-00000-of-00001.gz"), "x")
    fs.write_text(fs.join(root, "stats.json"), "{}")
    assert fs.exists(root) and fs.isdir(root) and not fs.isdir(fs.join(root, "stats.json"))
    assert fs.listdir(root) == ["Split-train", "stats.json"]
    assert fs.glob(fs.join(root, "Split-*", "*.gz")) == [
        fs.join(root, "Split-train", "data-00000-of-00001.gz")]
    assert fs.glob(fs.join(root, "missing", "*.gz")) == []
    assert fs.glob(fs.join(root, "stats.json")) == [fs.join(root, "stats.json")]
    assert fs.glob(fs.join(root, "nothing.json")) == []
    fs.remove(fs.join(root, "stats.json"))
    fs.rmtree(fs.join(root, "Split-train"))
    assert fs.listdir(root) == []
    with pytest.raises(OSError):
        fs.size(fs.join(root, "stats.json"))


def test_the_preprocessing_and_its_command_import_no_tensorflow():
    """The command and every Beam worker import these modules: TensorFlow's import cost
    about 6 s in each (BENCHMARKS.md). The model side still gets the real module."""
    code = ("import sys\n"
            "import components.preprocessing.transforms, components.preprocessing.sources\n"
            "from pipeline import cli\n"
            "cli.build_parser('preprocess')\n"
            "assert 'tensorflow' not in sys.modules, 'tensorflow imported'\n"
            "from t2diff_tf import features as F\n"
            "spec = F.ExampleSpec().feature_spec()\n"
            "import tensorflow as tf\n"
            "assert isinstance(spec[F.HISTORY], tf.io.FixedLenFeature)\n"
            "print('ok')\n")
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env=env, cwd=os.path.dirname(os.path.dirname(os.path.dirname(
                              os.path.dirname(os.path.abspath(__file__))))), timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().endswith("ok")
