"""Training: validation-based selection, two workers on loopback (MultiWorkerMirrored), the
sequence layout's batches, and kill-and-resume."""

import json
import os
import re
import socket
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import tensorflow as tf

from components.preprocessing.inmemory import synthetic_arrays
from components.preprocessing.synthetic import SyntheticConfig
from components.preprocessing.config import WindowConfig
from t2diff_tf import features as F
from t2diff_tf import metrics as M
from t2diff_tf.models.registry import build_model
from t2diff_tf.training import (TrainConfig, _training_features, arrays_dataset, fit,
                                sequence_arrays_dataset, sequence_windows_dataset,
                                without_autotune)

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


def test_a_time_budget_stops_after_the_epoch_that_reaches_it():
    data = synthetic_arrays(DATA)
    config = TrainConfig(epochs=50, batch_size=64, early_stopping_patience=0, verbose=0,
                         time_budget_seconds=1e-6)
    _, history = fit(lambda: build_model("mean_pool_two_tower", {"embedding_dim": 8},
                                         num_items=data.num_items),
                     arrays_dataset(data.splits["train"], 64),
                     arrays_dataset(data.splits["validation"], 256), config)
    assert len(history["val_recall@20"]) == 1
    # Without validation the budget stops training too, and the history still has the clock.
    _, history = fit(lambda: build_model("mean_pool_two_tower", {"embedding_dim": 8},
                                         num_items=data.num_items),
                     arrays_dataset(data.splits["train"], 64), None, config)
    assert len(history["loss"]) == len(history["train_seconds"]) == 1


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


# ------------------------------------------------------------------------------------------------
# The sequence layout


def _chunks(lengths, width=9):
    items = np.zeros([len(lengths), width], np.int64)
    for row, n in enumerate(lengths):
        items[row, width - n:] = np.arange(1, n + 1) + 10 * row
    return {F.SEQUENCE_ITEMS: items, F.SEQUENCE_LENGTH: np.asarray(lengths, np.int64)}


def test_sequence_batches_group_lengths_and_trim_shared_padding():
    lengths = [2, 9, 3, 8, 2, 9, 3, 8, 4, 5]
    arrays = _chunks(lengths)
    seen = []
    for batch in sequence_arrays_dataset(arrays, batch_size=2, num_buckets=3):
        history, target = batch[F.HISTORY].numpy(), batch[F.TARGET].numpy()
        lengths = (history != 0).sum(1) + 1          # valid items of each chunk
        # Trimmed to the longest chunk of the batch; chunks of one batch share a length bucket
        # (3 buckets of width 3 over chunks of up to 9 items; 9 itself is in the last one).
        assert history.shape[1] + 1 == lengths.max()
        assert len({min(n // 3, 2) for n in lengths}) == 1
        for h, t in zip(history, target):
            seen.append(tuple(h[h != 0].tolist()) + (int(t),))
    expected = sorted(tuple(row[row != 0].tolist()) for row in arrays[F.SEQUENCE_ITEMS])
    assert sorted(seen) == expected        # every chunk once, labels = the chunk shifted


def test_by_default_one_length_bucket_mixes_lengths_so_every_label_weighs_alike():
    # Unshuffled, one bucket batches chunks in file order: a short and a long chunk share a
    # batch (padded to the long one), where length buckets would have kept them apart.
    lengths = [2, 9, 2, 9, 3, 8]
    arrays = _chunks(lengths)
    batches = list(sequence_arrays_dataset(arrays, batch_size=2))   # one bucket: the default
    assert len(batches) == 3
    seen = []
    for batch in batches:
        history, target = batch[F.HISTORY].numpy(), batch[F.TARGET].numpy()
        valid = (history != 0).sum(1) + 1
        assert history.shape[1] + 1 == valid.max()
        assert sorted(valid.tolist()) in ([2, 9], [3, 8])
        for h, t in zip(history, target):
            seen.append(tuple(h[h != 0].tolist()) + (int(t),))
    expected = sorted(tuple(row[row != 0].tolist()) for row in arrays[F.SEQUENCE_ITEMS])
    assert sorted(seen) == expected
    bucketed = list(sequence_arrays_dataset(arrays, batch_size=2, num_buckets=3))
    assert all(len({min(int(n) // 3, 2) for n in (b[F.HISTORY].numpy() != 0).sum(1) + 1}) == 1
               for b in bucketed)


def test_positions_per_batch_sizes_each_bucket_so_labels_per_batch_stay_about_equal():
    # 3 buckets over chunks of up to 9 items: upper lengths 3, 6, 9. With 18 positions a batch,
    # short chunks come 6 (18 // 3) to a batch, middle ones 3, long ones 2.
    lengths = [2] * 12 + [5] * 6 + [9] * 4
    arrays = _chunks(lengths)
    batches = list(sequence_arrays_dataset(arrays, batch_size=1000, num_buckets=3,
                                           positions_per_batch=18))
    sizes = sorted(int(b[F.HISTORY].shape[0]) for b in batches)
    assert sizes == [2, 2, 3, 3, 6, 6]
    seen = []
    for batch in batches:
        history, target = batch[F.HISTORY].numpy(), batch[F.TARGET].numpy()
        # The padded batch [chunks, longest] stays within the positions budget.
        assert history.shape[0] * (history.shape[1] + 1) <= 18
        for h, t in zip(history, target):
            seen.append(tuple(h[h != 0].tolist()) + (int(t),))
    expected = sorted(tuple(row[row != 0].tolist()) for row in arrays[F.SEQUENCE_ITEMS])
    assert sorted(seen) == expected        # every chunk once
    # Labels per batch (history positions that have a next item): 6 x 1, 3 x 4, 2 x 8, so each
    # label weighs 1/6 .. 1/16 instead of 1/2 .. 1/16 with batch_size 2.
    per_batch = sorted(int((b[F.HISTORY].numpy() != 0).sum()) for b in batches)
    assert per_batch == [6, 6, 12, 12, 16, 16]


def test_positions_per_batch_with_one_bucket_is_a_fixed_batch_of_longest_chunks():
    arrays = _chunks([2, 9, 3, 8, 4, 5, 6, 7, 9, 2])
    batches = list(sequence_arrays_dataset(arrays, batch_size=1000, positions_per_batch=27))
    assert [int(b[F.HISTORY].shape[0]) for b in batches] == [3, 3, 3, 1]


def test_training_input_runs_without_the_autotuner_and_yields_the_same_batches():
    # Keras destroys an epoch's iterator before the next epoch; with the autotuner on, that
    # waits for its thread's timed sleep (up to a minute between epochs, measured).
    arrays = _chunks([2, 9, 3, 8, 4, 5])
    dataset = sequence_arrays_dataset(arrays, batch_size=2)
    assert dataset.options().autotune.enabled is not False
    plain = without_autotune(dataset)
    assert plain.options().autotune.enabled is False
    assert _training_features(dataset).options().autotune.enabled is False   # what fit trains on
    for a, b in zip(dataset, plain):
        np.testing.assert_array_equal(a[F.HISTORY].numpy(), b[F.HISTORY].numpy())
        np.testing.assert_array_equal(a[F.TARGET].numpy(), b[F.TARGET].numpy())


def test_train_config_needs_at_least_one_length_bucket():
    assert TrainConfig().length_buckets == 1
    assert TrainConfig.from_dict({"length_buckets": 8}).length_buckets == 8
    with pytest.raises(ValueError, match="length_buckets"):
        TrainConfig(length_buckets=0)
    assert TrainConfig().positions_per_batch is None
    assert TrainConfig.from_dict({"positions_per_batch": 4096}).positions_per_batch == 4096
    with pytest.raises(ValueError, match="positions_per_batch"):
        TrainConfig(positions_per_batch=0)


def test_adam_beta_2_reaches_the_optimizer_and_is_checked():
    data = synthetic_arrays(DATA)
    config = TrainConfig.from_dict({"epochs": 1, "batch_size": 64, "steps_per_epoch": 1,
                                    "verbose": 0, "adam_beta_2": 0.98})
    model, _ = fit(lambda: build_model("mean_pool_two_tower", {"embedding_dim": 8},
                                       num_items=data.num_items),
                   arrays_dataset(data.splits["train"], 64), None, config)
    assert model.optimizer.get_config()["beta_2"] == pytest.approx(0.98)
    assert TrainConfig().adam_beta_2 == 0.999
    for bad in (0.0, 1.0):
        with pytest.raises(ValueError, match="adam_beta_2"):
            TrainConfig(adam_beta_2=bad)


def test_sasrec_learns_from_sequence_chunks():
    # Many clusters and a flat popularity: the next item is predictable from the sequence only.
    log = SyntheticConfig(num_users=400, num_items=300, num_clusters=30, zipf_exponent=0.3)
    window = WindowConfig(F.ExampleSpec(history_length=20))
    data = synthetic_arrays(log, window, sequences=F.SequenceSpec(history_length=20))
    counts = np.bincount(data.splits["train"]["target"], minlength=data.num_items + 1)
    counts[0] = -1
    popularity = np.isin(data.splits["validation"]["target"], np.argsort(-counts)[:20]).mean()
    config = TrainConfig(epochs=5, batch_size=32, learning_rate=0.005, verbose=0,
                         early_stopping_patience=0)
    model, history = fit(
        lambda: build_model("sasrec", {"embedding_dim": 16, "tied_item_embeddings": True,
                                       "scale_embeddings": True},
                            num_items=data.num_items, example_spec=window.example),
        sequence_arrays_dataset(data.splits["train_sequences"], 32, 10_000),
        arrays_dataset(data.splits["validation"], 256), config)
    assert history["loss"][-1] < history["loss"][0]
    assert len(history["train_seconds"]) == 5 and np.all(np.diff(history["train_seconds"]) > 0)
    assert max(history["val_recall@20"]) > popularity + 0.05


def test_t2diff_learns_from_every_chunk_position():
    """A per-target model on the sequence layout: one window per labelled chunk position, so an
    epoch has as many examples as the uncapped window split, and the model learns."""
    log = SyntheticConfig(num_users=80, num_items=60, num_clusters=6)
    window = WindowConfig(F.ExampleSpec(history_length=10), session_k=4)
    data = synthetic_arrays(log, window, sequences=F.SequenceSpec(history_length=30))
    chunks = data.splits["train_sequences"]
    labels = int(np.sum(np.maximum(np.count_nonzero(chunks[F.SEQUENCE_ITEMS], axis=1) - 1, 0)))
    assert labels == len(data.splits["train"][F.TARGET])  # every training target, once
    config = TrainConfig(epochs=2, batch_size=64, learning_rate=0.005, verbose=0,
                         early_stopping_patience=0)
    train = sequence_windows_dataset(chunks, window.sequence_windows(), 64, 1000)
    assert sum(int(b[F.TARGET].shape[0]) for b in train) == labels

    class Batches(tf.keras.callbacks.Callback):
        per_epoch = []

        def on_epoch_begin(self, epoch, logs=None):
            self.per_epoch.append(0)

        def on_train_batch_end(self, batch, logs=None):
            self.per_epoch[-1] += 1

    model, history = fit(
        lambda: build_model("t2diff", {"embedding_dim": 8, "attention_units": [8],
                                       "user_tower_units": [16], "item_tower_units": [16]},
                            num_items=data.num_items, example_spec=window.example),
        train, arrays_dataset(data.splits["validation"], 256), config, callbacks=[Batches()])
    assert Batches.per_epoch == [-(-labels // 64)] * 2
    assert history["tower_loss"][-1] < history["tower_loss"][0]
    assert max(history["val_recall@20"]) > 20 / data.num_items + 0.1  # well above chance


KILLED_RUN = textwrap.dedent("""
    import json, os, signal, sys
    os.environ["TF_USE_LEGACY_KERAS"] = "1"
    import tensorflow as tf
    from components.preprocessing.config import WindowConfig
    from components.preprocessing.inmemory import synthetic_arrays
    from components.preprocessing.synthetic import SyntheticConfig
    from t2diff_tf import features as F
    from t2diff_tf.models.registry import build_model
    from t2diff_tf.training import TrainConfig, arrays_dataset, fit, sequence_arrays_dataset

    class KillAt(tf.keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            print("EPOCH", epoch, int(self.model.optimizer.iterations.numpy()), flush=True)
            if epoch == int(sys.argv[2]):
                os.kill(os.getpid(), signal.SIGKILL)  # kill -9: no handler, no cleanup

    spec, window = F.SequenceSpec(12), WindowConfig(F.ExampleSpec(12))
    data = synthetic_arrays(SyntheticConfig(num_users=120, num_items=60, num_clusters=4),
                            window, sequences=spec)
    config = TrainConfig(epochs=4, batch_size=32, verbose=2, early_stopping_patience=0,
                         checkpoint_dir=sys.argv[1])
    model, history = fit(lambda: build_model("sasrec", {"embedding_dim": 8},
                                             num_items=data.num_items,
                                             example_spec=window.example),
                         sequence_arrays_dataset(data.splits["train_sequences"], 32, 0),
                         arrays_dataset(data.splits["validation"], 256)
                         if sys.argv[3] == "validation" else None, config,
                         callbacks=[KillAt()])
    print("RESULT " + json.dumps(history))
""")


@pytest.mark.parametrize("validation", ["validation", "none"])
def test_a_killed_run_resumes_after_its_last_epoch(tmp_path, validation):
    script = tmp_path / "run.py"
    script.write_text(KILLED_RUN)
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    checkpoints = str(tmp_path / "checkpoints")

    def run(kill_at):
        return subprocess.run([sys.executable, str(script), checkpoints, str(kill_at),
                               validation], env=env, capture_output=True, text=True,
                              timeout=300)

    killed = run(2)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    started = [line.split() for line in killed.stdout.splitlines() if line.startswith("EPOCH")]
    assert [int(e) for _, e, _ in started] == [0, 1, 2]
    steps_done = int(started[-1][2])

    resumed = run(-1)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    started = [line.split() for line in resumed.stdout.splitlines() if line.startswith("EPOCH")]
    # The same command continues at the third epoch, with the optimizer's state restored.
    assert [int(e) for _, e, _ in started] == [2, 3]
    assert int(started[0][2]) == steps_done
    # Keras's progress line counts an epoch's steps, not every step since the run began.
    steps_of_epoch_2 = str(int(started[1][2]) - steps_done)
    counts = re.findall(r"^(\d+)/(\d+) - ", resumed.stdout, re.MULTILINE)
    assert counts == [(steps_of_epoch_2, steps_of_epoch_2)] * 2, resumed.stdout[-2000:]
    # The history covers the killed process's epochs too, and the clock goes on from them.
    history = _result(resumed.stdout)
    assert len(history["loss"]) == 4 and len(history["train_seconds"]) == 4
    assert history["train_seconds"] == sorted(history["train_seconds"])
    assert history["train_seconds"][0] > 0
    assert len(history.get("val_recall@20", [])) == (4 if validation == "validation" else 0)

    # A finished run is not trained again: it restores its selected (or last) weights.
    again = run(-1)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "EPOCH" not in again.stdout
    assert _result(again.stdout) == history


def test_a_resumable_t2diff_exports_to_a_saved_model(tmp_path):
    # Resumable training creates the variables before fitting; it must not leave the model with
    # an input signature that SavedModel export would trace with training=True and no target
    # (T2Diff refuses that: its one-step-denoise x_hat needs the target).
    import tensorflow as tf

    from t2diff_tf.serving.signatures import UserTowerModule

    window = WindowConfig(F.ExampleSpec(12))
    data = synthetic_arrays(SyntheticConfig(num_users=60, num_items=40, num_clusters=4), window)
    config = TrainConfig(epochs=1, batch_size=64, steps_per_epoch=2, verbose=0,
                         checkpoint_dir=str(tmp_path / "checkpoints"))
    model, _ = fit(lambda: build_model("t2diff", {"embedding_dim": 8}, num_items=data.num_items,
                                       example_spec=window.example),
                   arrays_dataset(data.splits["train"], 64),
                   arrays_dataset(data.splits["validation"], 256), config)
    module = UserTowerModule(model, window.example)
    tf.saved_model.save(module, str(tmp_path / "saved"), signatures=module.signatures())
    loaded = tf.saved_model.load(str(tmp_path / "saved"))
    assert "serving_default" in loaded.signatures
