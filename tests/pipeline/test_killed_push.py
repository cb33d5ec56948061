"""A push killed with SIGKILL, before and just after its bundle is renamed into place, and the
run that follows: exactly one version per model, no leftovers, the manifest and index agree, and
no execution is left RUNNING."""

import glob
import json
import os
import signal
import subprocess
import sys
import textwrap

import numpy as np

from pipeline import cli, local
from tests.pipeline.test_local_pipeline import SMALL, executions

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# Runs the pipeline, and kills itself (SIGKILL: no handler, no cleanup) when the push renames its
# temporary bundle into the destination: just before the rename, or just after it.
KILLED_PUSH = textwrap.dedent("""
    import os, signal, sys
    when, args = sys.argv[1], sys.argv[2:]
    real_rename = os.rename

    def rename(src, dst):
        pushing = os.path.basename(str(src)).startswith(".tmp-")
        if pushing and when == "before":
            os.kill(os.getpid(), signal.SIGKILL)
        real_rename(src, dst)
        if pushing and when == "after":
            os.kill(os.getpid(), signal.SIGKILL)

    os.rename = rename
    from pipeline import cli, local
    local.run(cli.pipeline_config_from_args(cli.build_parser().parse_args(args)))
""")


def test_a_killed_push_then_a_rerun_leaves_one_version_and_no_debris(tmp_path):
    args = ["run", *SMALL, "--output-root", str(tmp_path / "root")]
    config = cli.pipeline_config_from_args(cli.build_parser().parse_args(args))
    script = tmp_path / "killed_push.py"
    script.write_text(KILLED_PUSH)
    env = dict(os.environ, PYTHONPATH=ROOT, TF_CPP_MIN_LOG_LEVEL="2")
    destination = config.serving_destination

    def killed(when):
        run = subprocess.run([sys.executable, str(script), when, *args], env=env, cwd=ROOT,
                             capture_output=True, text=True, timeout=900)
        assert run.returncode == -signal.SIGKILL, run.stderr[-3000:]
        return sorted(os.listdir(destination))

    # Killed before the rename: only the temporary bundle exists.
    left = killed("before")
    assert len(left) == 1 and left[0].startswith(".tmp-"), left
    # Killed again, just after the rename this time: the first push's debris was removed and the
    # bundle is in place, but the run never recorded the push.
    left = killed("after")
    versions = [n for n in left if n.isdigit()]
    assert len(versions) == 1 and not any(n.startswith((".tmp-", ".old-")) for n in left), left

    local.run(config)
    names = sorted(os.listdir(destination))
    assert names == versions, names  # the same model is not pushed a second time
    bundle = os.path.join(destination, versions[0])
    manifest = json.load(open(os.path.join(bundle, "manifest.json")))
    assert manifest["model_version"] == int(versions[0])
    corpus = np.load(glob.glob(os.path.join(
        config.pipeline_root, "Trainer/model/*/Format-Serving/assets.extra/"
                              "corpus_embeddings.npy"))[0])
    assert manifest["corpus_size"] == corpus.shape[0]
    for name in ("user_tower", "top_k", "scann_top_k"):
        assert glob.glob(os.path.join(bundle, name, "*", "saved_model.pb")), name
    states = [state for _, state in executions(config)]
    assert "RUNNING" not in states, states
    assert "CANCELED" in states  # the killed runs' executions were closed, not taken as results
