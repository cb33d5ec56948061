"""Batch candidates from a pushed bundle: the exact top-K of the model's own embeddings, raw ids
through the bundle's vocabulary, the model version, a moved bundle, and bad input named."""

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from t2diff_tf import features as F
from t2diff_tf.serving import batch_candidates as B
from t2diff_tf.serving.brute_force import numpy_top_k

from .conftest import NUM_ITEMS, SPEC, VERSION, random_windows

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(__file__))))


def _write_windows(path, windows, user_ids, timestamps=None, gzip=False):
    """Window examples as the preprocessing writes them (user_id, query features, target)."""
    rows = len(user_ids)
    options = "GZIP" if gzip else None
    with tf.io.TFRecordWriter(str(path), options=options) as writer:
        for i in range(rows):
            feature = {name: tf.train.Feature(int64_list=tf.train.Int64List(
                value=np.reshape(windows[name][i], [-1]).tolist()))
                for name in F.QUERY_FEATURES + (F.TARGET,)}
            feature[F.TARGET_TIMESTAMP] = tf.train.Feature(int64_list=tf.train.Int64List(
                value=[0 if timestamps is None else int(timestamps[i])]))
            feature[F.USER_ID] = tf.train.Feature(bytes_list=tf.train.BytesList(
                value=[user_ids[i].encode()]))
            writer.write(tf.train.Example(features=tf.train.Features(
                feature=feature)).SerializeToString())
    return str(path)


def _exact_raw_top_k(model, windows, k):
    """The brute-force top-K of the trained model itself (not of the bundle), as raw ids."""
    queries = model.query_embeddings({n: tf.constant(windows[n]) for n in F.QUERY_FEATURES})
    corpus = model.corpus_embeddings().numpy()
    scores, rows = numpy_top_k(queries.numpy(), corpus, k)
    return [[f"raw{r + 1}" for r in row] for row in rows], scores


@pytest.fixture(scope="module")
def bundle(exported):
    return B.CandidateBundle(exported.result.destination)


@pytest.mark.parametrize("output_name", ["candidates.parquet", "candidates.tfrecord.gz"])
def test_exact_top_k_is_the_models_brute_force_top_k_in_raw_ids(exported, bundle, tmp_path,
                                                                output_name):
    windows = random_windows(70, seed=5)
    users = [f"user-{i}" for i in range(70)]
    examples = _write_windows(tmp_path / "windows.tfrecord.gz", windows, users, gzip=True)
    output = str(tmp_path / output_name)
    summary = B.generate_candidates(bundle, [examples], output,
                                    B.BatchCandidatesConfig(top_k=50, batch_size=32))
    got = B.read_candidates(output)
    assert got[B.USER_ID] == users  # batches of 32, 32, 6 keep the input order
    expected_ids, expected_scores = _exact_raw_top_k(exported.model, windows, 50)
    assert got[B.ITEM_IDS] == expected_ids
    np.testing.assert_allclose(np.asarray(got[B.SCORES]), expected_scores, rtol=1e-5, atol=1e-5)
    assert got[B.MODEL_VERSION] == [VERSION] * 70
    assert summary.model_version == VERSION and summary.users_written == 70
    assert summary.windows_read == 70 and summary.skipped == {} and summary.accounted()
    with open(output + ".summary.json") as f:
        assert json.load(f)["users_written"] == 70


def test_k_beyond_the_pushed_top_k_model_and_the_raw_id_round_trip(exported, bundle, tmp_path):
    # The pushed top_k model answers K = 20; batch candidates give any K from the same snapshot.
    windows = random_windows(5, seed=6)
    examples = _write_windows(tmp_path / "w.tfrecord", windows, [f"u{i}" for i in range(5)])
    output = str(tmp_path / "c.parquet")
    B.generate_candidates(bundle, [examples], output, B.BatchCandidatesConfig(top_k=300))
    got = B.read_candidates(output)
    assert all(len(row) == 300 and len(set(row)) == 300 for row in got[B.ITEM_IDS])
    # raw -> int (the bundle's vocabulary) -> raw gives the same ids; every id is a real item.
    back = bundle.raw_ids[bundle.ids_of_raw(got[B.ITEM_IDS][0])]
    assert list(back) == got[B.ITEM_IDS][0]
    assert set(bundle.ids_of_raw(sum(got[B.ITEM_IDS], []))) <= set(range(1, NUM_ITEMS + 1))
    # The first 20 are what the bundle's own top_k SavedModel serves.
    served = tf.saved_model.load(exported.result.top_k_path).signatures["serving_default"](
        **{n: tf.constant(windows[n], tf.int64) for n in F.QUERY_FEATURES})
    served_raw = bundle.raw_ids[served["item_ids"].numpy()].tolist()
    assert [row[:20] for row in got[B.ITEM_IDS]] == served_raw


def test_scann_index_mostly_agrees_with_exact(exported, bundle, tmp_path):
    windows = random_windows(64, seed=7)
    examples = _write_windows(tmp_path / "w.tfrecord", windows, [f"u{i}" for i in range(64)])
    output = str(tmp_path / "scann.parquet")
    summary = B.generate_candidates(bundle, [examples], output,
                                    B.BatchCandidatesConfig(top_k=20, index="scann"))
    got = B.read_candidates(output)
    expected, _ = _exact_raw_top_k(exported.model, windows, 20)
    recall = np.mean([len(set(g) & set(e)) / 20 for g, e in zip(got[B.ITEM_IDS], expected)])
    assert 0.8 <= recall <= 1.0
    assert summary.index == "scann" and got[B.MODEL_VERSION] == [VERSION] * 64
    # Searching every leaf is exact on the reordered candidates.
    full = B.generate_candidates(bundle, [examples], str(tmp_path / "all.parquet"),
                                 B.BatchCandidatesConfig(top_k=20, index="scann",
                                                         leaves_to_search=24))
    got = B.read_candidates(str(tmp_path / "all.parquet"))
    recall = np.mean([len(set(g) & set(e)) / 20 for g, e in zip(got[B.ITEM_IDS], expected)])
    assert recall >= 0.99 and full.users_written == 64


def test_latest_window_per_user_and_every_window_accounted(exported, bundle, tmp_path):
    windows = random_windows(6, seed=8)
    # user a: three windows (the one at t=30 is the latest); user b: one; then bad ones.
    users = ["a", "a", "b", "a", "c", "d"]
    times = [10, 30, 5, 20, 1, 1]
    windows[F.HISTORY][4, -1] = NUM_ITEMS + 7          # an id the bundle does not have
    windows[F.HISTORY_TIME_LAG][5, -1] = 10_000         # refused by the signature's guard
    examples = _write_windows(tmp_path / "w.tfrecord", windows, users, times)
    with tf.io.TFRecordWriter(str(tmp_path / "x.tfrecord")) as writer:
        writer.write(b"not an example")
    output = str(tmp_path / "c.parquet")
    summary = B.generate_candidates(bundle, [examples, str(tmp_path / "x.tfrecord")], output,
                                    B.BatchCandidatesConfig(top_k=10))
    got = B.read_candidates(output)
    assert sorted(got[B.USER_ID]) == ["a", "b"]
    only_a = {n: v[1:2] for n, v in windows.items()}
    expected, _ = _exact_raw_top_k(exported.model, only_a, 10)
    assert got[B.ITEM_IDS][got[B.USER_ID].index("a")] == expected[0]
    assert summary.superseded == 2 and summary.windows_read == 7
    assert summary.skipped == {B.MALFORMED: 1, B.OUT_OF_RANGE_ITEM: 1,
                               B.REJECTED_BY_TOWER: 1}
    assert summary.accounted()
    with open(summary.skipped_path) as f:
        lines = [json.loads(line) for line in f]
    reasons = {line["reason"]: line for line in lines}
    assert reasons[B.OUT_OF_RANGE_ITEM]["user_id"] == "c"
    assert str(NUM_ITEMS + 7) in reasons[B.OUT_OF_RANGE_ITEM]["detail"]
    assert "history_time_lag must be <=" in reasons[B.REJECTED_BY_TOWER]["detail"]
    assert reasons[B.MALFORMED]["file"].endswith("x.tfrecord")
    assert reasons[B.MALFORMED]["record"] == 0


def test_item_ids_are_mapped_through_the_examples_vocabulary(exported, bundle, tmp_path):
    """Windows written with another vocabulary (a later preprocessing run): ids go through the
    raw ids; an item the model never saw skips its user, with the reason."""
    windows = random_windows(4, seed=9)
    # The new run numbers items in reverse, and knows one more item ("new-item" = id N + 1).
    artifact = tmp_path / "examples"
    (artifact / "Split-test").mkdir(parents=True)
    (artifact / "item_vocabulary.tsv").write_text("int_id\traw_id\tcount\n" + "".join(
        f"{NUM_ITEMS + 1 - i}\traw{i}\t1\n" for i in range(1, NUM_ITEMS + 1))
        + f"{NUM_ITEMS + 1}\tnew-item\t1\n")
    renumbered = dict(windows)
    renumbered[F.HISTORY] = np.where(windows[F.HISTORY] > 0,
                                     NUM_ITEMS + 1 - windows[F.HISTORY], 0)
    renumbered[F.HISTORY][3, -1] = NUM_ITEMS + 1
    examples = _write_windows(artifact / "Split-test" / "data.tfrecord", renumbered,
                              ["u0", "u1", "u2", "u3"])
    output = str(tmp_path / "c.parquet")
    summary = B.generate_candidates(bundle, [examples], output, B.BatchCandidatesConfig(top_k=5))
    got = B.read_candidates(output)
    expected, _ = _exact_raw_top_k(exported.model, {n: v[:3] for n, v in windows.items()}, 5)
    assert got[B.USER_ID] == ["u0", "u1", "u2"] and got[B.ITEM_IDS] == expected
    assert summary.skipped == {B.UNKNOWN_ITEM: 1}
    assert summary.item_id_mapping.endswith("item_vocabulary.tsv")


def test_bad_bundles_and_inputs_are_named(exported, tmp_path):
    with pytest.raises(B.BatchCandidatesError, match="bundle directory not found"):
        B.CandidateBundle(str(tmp_path / "nowhere"))
    with pytest.raises(B.BatchCandidatesError, match="not a pushed bundle"):
        B.CandidateBundle(str(tmp_path))
    broken = tmp_path / "broken"
    shutil.copytree(exported.result.destination, broken)
    manifest = broken / "manifest.json"
    text = manifest.read_text()
    manifest.write_text(text[:200])
    with pytest.raises(B.BatchCandidatesError,
                       match=rf"{manifest}:\d+: corrupt manifest \(not JSON"):
        B.CandidateBundle(str(broken))
    values = json.loads(text)
    del values["corpus_size"]
    manifest.write_text(json.dumps(values))
    with pytest.raises(B.BatchCandidatesError, match=r"missing field\(s\) \['corpus_size'\]"):
        B.CandidateBundle(str(broken))
    manifest.write_text(text)
    with open(broken / "item_vocabulary.tsv", "a") as f:
        f.write("9999\tsomething-else\t1\n")
    with pytest.raises(B.BatchCandidatesError, match="item_vocabulary.tsv: sha256 differs"):
        B.CandidateBundle(str(broken))
    shutil.copyfile(exported.vocabulary_path, broken / "item_vocabulary.tsv")
    shutil.rmtree(broken / "scann_searcher")
    bundle = B.CandidateBundle(str(broken))  # a bundle is usable without ScaNN ...
    windows = random_windows(2, seed=1)
    examples = _write_windows(tmp_path / "w.tfrecord", windows, ["u0", "u1"])
    with pytest.raises(B.BatchCandidatesError, match="scann_searcher: this bundle has no ScaNN"):
        B.generate_candidates(bundle, [examples], str(tmp_path / "c.parquet"),
                              B.BatchCandidatesConfig(index="scann"))  # ... but not for scann
    with pytest.raises(B.BatchCandidatesError, match="matches nothing"):
        B.generate_candidates(bundle, [str(tmp_path / "none-*.tfrecord")],
                              str(tmp_path / "c.parquet"))
    with pytest.raises(B.BatchCandidatesError, match="say the output format"):
        B.generate_candidates(bundle, [examples], str(tmp_path / "c.csv"))
    corrupt = tmp_path / "corrupt.tfrecord"
    corrupt.write_bytes(open(examples, "rb").read()[:-7])
    with pytest.raises(B.BatchCandidatesError, match=rf"{corrupt}: corrupt TFRecord file"):
        B.generate_candidates(bundle, [str(corrupt)], str(tmp_path / "c.parquet"))
    cut = tmp_path / "cut.tfrecord.gz"
    whole = open(_write_windows(tmp_path / "w.gz", random_windows(40, seed=2),
                                [f"u{i}" for i in range(40)], gzip=True), "rb").read()
    cut.write_bytes(whole[:len(whole) // 2])
    with pytest.raises(B.BatchCandidatesError, match=rf"{cut}: truncated gzip file"):
        B.generate_candidates(bundle, [str(cut)], str(tmp_path / "c.parquet"))
    assert not (tmp_path / "c.parquet").exists()
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".tmp-")]


def test_cli_from_a_bundle_moved_to_another_directory(exported, tmp_path):
    """`t2diff candidates` in a fresh process, on a copy of the push destination, while the
    original bundle is out of the way (so nothing can be read from where it was pushed)."""
    destination = tmp_path / "copied" / "serving"
    shutil.copytree(exported.result.destination, destination / str(VERSION))
    original = exported.result.destination
    windows = random_windows(9, seed=11)
    users = [f"user-{i}" for i in range(9)]
    examples = _write_windows(tmp_path / "w.tfrecord.gz", windows, users, gzip=True)
    output = tmp_path / "out" / "candidates.tfrecord"
    env = dict(os.environ, TF_USE_LEGACY_KERAS="1", TF_CPP_MIN_LOG_LEVEL="3")
    os.rename(original, original + ".away")
    try:
        run = subprocess.run(
            [sys.executable, "-m", "pipeline.cli", "candidates", "--bundle", str(destination),
             "--examples", str(tmp_path / "w.*"), "--output", str(output), "--top-k", "15",
             "--batch-size", "4"], capture_output=True, text=True, timeout=300, env=env,
            cwd=REPO)
    finally:
        os.rename(original + ".away", original)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "9 users written" in run.stdout and f"model version {VERSION}" in run.stdout
    got = B.read_candidates(str(output))
    expected, _ = _exact_raw_top_k(exported.model, windows, 15)
    assert got[B.USER_ID] == users and got[B.ITEM_IDS] == expected
    assert got[B.MODEL_VERSION] == [VERSION] * 9


def test_cli_names_a_missing_bundle_in_one_line(tmp_path, capsys):
    from pipeline.cli import main

    code = main(["candidates", "--bundle", str(tmp_path / "none"), "--examples", "x",
                 "--output", str(tmp_path / "c.parquet")])
    assert code == 2
    assert capsys.readouterr().err.strip() == (
        f"t2diff candidates: error: {tmp_path / 'none'}: bundle directory not found")
