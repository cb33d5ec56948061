"""`tfx pipeline create` + `tfx run create`, as a user types them (heavy: about 2 minutes)."""

import glob
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.mark.heavy
def test_tfx_cli_creates_and_runs_the_pipeline(tmp_path):
    tfx = os.path.join(os.path.dirname(sys.executable), "tfx")
    env = dict(os.environ, HOME=str(tmp_path / "home"), TF_USE_LEGACY_KERAS="1",
               T2DIFF_PIPELINE_ARGS=f"--synthetic-users 120 --synthetic-items 80 --model "
                                    f"mean_pool_two_tower --epochs 1 --output-root {tmp_path}/out")
    create = subprocess.run([tfx, "pipeline", "create", "--pipeline_path=pipeline/local.py",
                             "--engine=local"], cwd=ROOT, env=env, capture_output=True, text=True,
                            timeout=600)
    assert create.returncode == 0, create.stderr[-2000:]
    assert 'Pipeline "t2diff" created successfully' in create.stdout
    run = subprocess.run([tfx, "run", "create", "--pipeline_name=t2diff", "--engine=local"],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stderr[-3000:]
    assert glob.glob(f"{tmp_path}/out/serving/*/manifest.json")
