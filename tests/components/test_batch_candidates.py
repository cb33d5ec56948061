"""The Beam batch-candidates job gives the same rows and counts as the in-process one."""

import json
import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402

from components import batch_candidates as beam_job  # noqa: E402
from t2diff_tf import features as F  # noqa: E402
from t2diff_tf.models import build_model  # noqa: E402
from t2diff_tf.serving import batch_candidates as B  # noqa: E402
from t2diff_tf.serving.export import export_for_serving  # noqa: E402
from t2diff_tf.serving.warmup import synthetic_query_features  # noqa: E402

NUM_ITEMS = 200
SPEC = F.ExampleSpec(history_length=6, num_time_lag_buckets=8)


@pytest.fixture(scope="module")
def bundle_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("bundle")
    vocabulary = root / "vocabulary.tsv"
    vocabulary.write_text("int_id\traw_id\tcount\n" + "".join(
        f"{i}\titem-{i}\t1\n" for i in range(1, NUM_ITEMS + 1)))
    tf.keras.utils.set_random_seed(3)
    model = build_model("mean_pool_two_tower", {"embedding_dim": 8}, num_items=NUM_ITEMS,
                        example_spec=SPEC)
    result = export_for_serving(model, SPEC, str(root / "serving" / "5"), str(vocabulary),
                                version=5, k=10, scann=None)
    return result.destination


def _windows_file(path, rows=40):
    windows = synthetic_query_features(SPEC, NUM_ITEMS, rows, seed=4)
    users = [f"u{i % 15}" for i in range(rows)]  # 15 users, most with several windows
    times = [i // 15 for i in range(rows)]
    times[16] = times[31]  # u1's two latest windows tie on time ...
    windows[F.HISTORY][16] = windows[F.HISTORY][31]  # ... and history length
    windows[F.HISTORY][39, 0] = NUM_ITEMS + 1  # u9's latest window holds an unknown item
    with tf.io.TFRecordWriter(str(path), options="GZIP") as writer:
        for i in range(rows):
            feature = {n: tf.train.Feature(int64_list=tf.train.Int64List(
                value=np.reshape(windows[n][i], [-1]).tolist())) for n in F.QUERY_FEATURES}
            feature[F.TARGET_TIMESTAMP] = tf.train.Feature(
                int64_list=tf.train.Int64List(value=[times[i]]))
            feature[F.USER_ID] = tf.train.Feature(bytes_list=tf.train.BytesList(
                value=[users[i].encode()]))
            writer.write(tf.train.Example(features=tf.train.Features(
                feature=feature)).SerializeToString())
        writer.write(b"garbage")
    return str(path)


def test_beam_job_matches_the_in_process_job(bundle_dir, tmp_path):
    examples = _windows_file(tmp_path / "windows.tfrecord.gz")
    config = B.BatchCandidatesConfig(top_k=7, batch_size=4)
    local = B.generate_candidates(B.CandidateBundle(bundle_dir), [examples],
                                  str(tmp_path / "local.parquet"), config)
    summary = beam_job.run_batch_candidates(bundle_dir, [examples], str(tmp_path / "beam"),
                                            config)
    expected = B.read_candidates(str(tmp_path / "local.parquet"))
    got = B.read_candidates(str(tmp_path / "beam" / "candidates-*.parquet"))
    order = np.argsort(got[B.USER_ID])
    assert [got[B.USER_ID][i] for i in order] == sorted(expected[B.USER_ID])
    by_user = dict(zip(expected[B.USER_ID], zip(expected[B.ITEM_IDS], expected[B.SCORES])))
    for user, items, scores in zip(got[B.USER_ID], got[B.ITEM_IDS], got[B.SCORES]):
        assert items == by_user[user][0]
        np.testing.assert_allclose(scores, by_user[user][1], rtol=1e-6)
    assert set(got[B.MODEL_VERSION]) == {5}
    assert len(got[B.USER_ID]) == 14  # u9 skipped
    for field in ("windows_read", "users_written", "superseded", "skipped",
                  "ties_broken_by_read_order", "model_version", "k"):
        assert summary[field] == getattr(local, field), field
    assert summary["skipped"] == {B.MALFORMED: 1, B.OUT_OF_RANGE_ITEM: 1}
    assert summary["windows_read"] == 41 and summary["superseded"] == 25
    assert summary["ties_broken_by_read_order"] == 1
    with open(tmp_path / "beam" / "skipped.jsonl") as f:
        skipped = sorted((json.loads(line) for line in f), key=lambda d: d["reason"])
    assert [(d["reason"], d["record"], d["user_id"]) for d in skipped] == [
        (B.OUT_OF_RANGE_ITEM, 39, "u9"), (B.MALFORMED, 40, None)]
    with open(tmp_path / "beam" / "summary.json") as f:
        assert json.load(f)["users_written"] == 14


def test_bad_input_fails_before_beam_and_leaves_nothing(bundle_dir, tmp_path):
    with pytest.raises(B.BatchCandidatesError, match="bundle directory not found"):
        beam_job.run_batch_candidates(str(tmp_path / "none"), ["x"], str(tmp_path / "out"))
    with pytest.raises(B.BatchCandidatesError, match="matches nothing"):
        beam_job.run_batch_candidates(bundle_dir, [str(tmp_path / "none*")],
                                      str(tmp_path / "out"))
    corrupt = tmp_path / "corrupt.tfrecord"
    corrupt.write_bytes(open(_windows_file(tmp_path / "w.tfrecord.gz"), "rb").read()[:300])
    # Cut between two compressed records: TensorFlow's reader alone would read it as a shorter
    # file without an error.
    with pytest.raises(B.BatchCandidatesError, match=f"{corrupt}: truncated gzip file"):
        beam_job.run_batch_candidates(bundle_dir, [str(corrupt)], str(tmp_path / "out"))
    assert not (tmp_path / "out").exists()
