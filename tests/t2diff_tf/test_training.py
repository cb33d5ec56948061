"""Training: validation-based selection, and two workers on loopback (MultiWorkerMirrored)."""

import json
import os
import socket
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from components.preprocessing.inmemory import synthetic_arrays
from components.preprocessing.synthetic import SyntheticConfig
from t2diff_tf import metrics as M
from t2diff_tf.models.registry import build_model
from t2diff_tf.training import TrainConfig, arrays_dataset, fit

DATA = SyntheticConfig(num_users=200, num_items=120, num_clusters=8)


def test_fit_restores_the_best_validation_epoch():
    data = synthetic_arrays(DATA)
    config = TrainConfig(epochs=4, batch_size=64, learning_rate=0.02, early_stopping_patience=0,
                         verbose=0)
    validation = arrays_dataset(data.splits["validation"], 256)
    model, history = fit(lambda: build_model("mean_pool_two_tower", {"embedding_dim": 16},
                                             num_items=data.num_items),
                         arrays_dataset(data.splits["train"], 64, 10_000), validation, config)
    assert len(history["val_recall@20"]) == 4
    final = M.evaluate(model, data.splits["validation"], ks=(20,), num_bootstrap=0)
    assert final["recall@20"] == pytest.approx(max(history["val_recall@20"]))


WORKER = textwrap.dedent("""
    import json, os, sys
    os.environ["TF_USE_LEGACY_KERAS"] = "1"
    from components.preprocessing.inmemory import synthetic_arrays
    from components.preprocessing.synthetic import SyntheticConfig
    from t2diff_tf import metrics as M
    from t2diff_tf.models.registry import build_model
    from t2diff_tf.training import TrainConfig, arrays_dataset, fit, make_strategy

    strategy = make_strategy(sys.argv[1])  # before any TensorFlow op
    data = synthetic_arrays(SyntheticConfig(num_users=200, num_items=120, num_clusters=8))
    config = TrainConfig(epochs=2, batch_size=64, learning_rate=0.01, strategy=sys.argv[1],
                         shuffle_buffer=0, verbose=0)
    model, history = fit(lambda: build_model("mean_pool_two_tower", {"embedding_dim": 16},
                                             num_items=data.num_items),
                         arrays_dataset(data.splits["train"], 64), None, config,
                         strategy=strategy)
    result = M.evaluate(model, data.splits["test"], ks=(20,), num_bootstrap=0)
    print("RESULT " + json.dumps({"loss": history["loss"], "recall@20": result["recall@20"]}))
""")


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _result(output: str) -> dict:
    line = [line for line in output.splitlines() if line.startswith("RESULT ")][-1]
    return json.loads(line[len("RESULT "):])


def test_two_workers_on_loopback_train_like_one(tmp_path):
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    single = subprocess.run([sys.executable, str(script), "default"], env=env,
                            capture_output=True, text=True, timeout=300)
    assert single.returncode == 0, single.stderr[-3000:]

    ports = [_free_port(), _free_port()]
    cluster = {"worker": [f"localhost:{p}" for p in ports]}
    workers = [subprocess.Popen(
        [sys.executable, str(script), "multi_worker_mirrored"], stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True,
        env=dict(env, TF_CONFIG=json.dumps({"cluster": cluster,
                                            "task": {"type": "worker", "index": i}})))
        for i in range(2)]
    outputs = [w.communicate(timeout=300) for w in workers]
    for w, (_, err) in zip(workers, outputs):
        assert w.returncode == 0, err[-3000:]
    a, b = (_result(out) for out, _ in outputs)
    assert a["loss"] == pytest.approx(b["loss"], rel=1e-5)  # one model, synchronised
    assert a["recall@20"] == pytest.approx(b["recall@20"], abs=1e-9)
    reference = _result(single.stdout)
    # Same data, same global batch: the same quality within noise.
    assert abs(a["recall@20"] - reference["recall@20"]) < 0.08
    assert np.isfinite(a["loss"]).all()
