"""Readers and the Beam preprocessing on real and malformed lines: nothing is lost silently."""

import gzip
import json
import os

import numpy as np
import pytest
import tensorflow as tf

from components.preprocessing import readers, synthetic
from components.preprocessing.config import ProtocolConfig, WindowConfig
from components.preprocessing.inmemory import synthetic_arrays
from components.preprocessing.records import InputError
from components.preprocessing.transforms import (PreprocessConfig, PreprocessingError,
                                                  run_preprocessing, split_dir)
from t2diff_tf import features as F
from t2diff_tf.features import ExampleSpec

CONFIG = PreprocessConfig(window=WindowConfig(ExampleSpec(history_length=8)))


def read_split(output_dir, split, spec=CONFIG.window.example):
    files = tf.io.gfile.glob(os.path.join(split_dir(output_dir, split), "*.gz"))
    records = [r.numpy() for r in tf.data.TFRecordDataset(files, compression_type="GZIP")]
    if not records:
        return {}
    # np.array would make fixed-width bytes and strip trailing NULs off records.
    return {k: v.numpy() for k, v in spec.parse(tf.constant(records)).items()}


def dead_letters(output_dir):
    with open(os.path.join(output_dir, "dead_letter", "dead_letter.jsonl")) as f:
        return [json.loads(line) for line in f]


def real_lines(path, n):
    with gzip.open(path, "rt") as f:
        return [next(f).rstrip("\n") for _ in range(n)]


def write(path, lines, gz=False):
    data = "".join(line + "\n" for line in lines)
    if gz:
        with gzip.open(path, "wt") as f:
            f.write(data)
    else:
        with open(path, "w") as f:
            f.write(data)
    return str(path)


def assert_accounted(stats):
    assert stats["kept"] + sum(stats["filtered"].values()) + stats["rejected"] == \
        stats["interactions_read"]


def test_ratings_real_lines_with_malformed_rows(tmp_path, ml1m_dir):
    good = real_lines(os.path.join(ml1m_dir, "ratings_users_0001-2999.dat.gz"), 400)
    bad = ["1,1193,5,978300760",            # wrong delimiter
           "1::abc::5::978300760",          # non-numeric id
           "1::1193::5",                    # missing field
           "1::1193::five::978300760"]      # non-numeric rating
    path = write(tmp_path / "ratings.dat.gz", good[:100] + bad + good[100:], gz=True)
    out = str(tmp_path / "out")
    stats = run_preprocessing(readers.MovieLensRatings(
        path, movies_path=os.path.join(ml1m_dir, "movies.dat")), out, CONFIG)
    assert stats["interactions_read"] == 404
    assert stats["rejected"] == 4 and stats["dead_letter_rows"] == 4
    assert_accounted(stats)
    rows = {(d["line"], d["field"]): d["reason"] for d in dead_letters(out)}
    assert set(rows) == {(101, "<line>"), (102, "MovieID"), (103, "<line>"), (104, "Rating")}
    assert "separated by '::'" in rows[(101, "<line>")]
    assert all(d["file"] == path for d in dead_letters(out))
    # Genres from movies.dat became item features: Toy Story (1) is Animation|Children's|Comedy.
    with open(os.path.join(out, "item_features.tsv")) as f:
        header = f.readline()
    assert "Animation" in header and "Comedy" in header


def test_min_rating_filter_is_counted(tmp_path, ml1m_dir):
    lines = real_lines(os.path.join(ml1m_dir, "ratings_users_0001-2999.dat.gz"), 300)
    path = write(tmp_path / "ratings.dat", lines)
    stats = run_preprocessing(readers.MovieLensRatings(path, min_rating=4),
                              str(tmp_path / "out"), CONFIG)
    low = sum(1 for line in lines if float(line.split("::")[2]) < 4)
    assert stats["filtered"]["rating_below_min"] == low > 0
    assert_accounted(stats)


def test_ratings_order_by_timestamp_with_ties_in_input_order(tmp_path):
    # user 1 rated 30, 10, 20 at t=5, 1, 5: time order is 10, 30, 20 (30 before 20: input order).
    lines = ["1::30::5::5", "1::10::5::1", "1::20::5::5", "1::40::5::9", "1::50::5::9"]
    out = str(tmp_path / "out")
    run_preprocessing(readers.MovieLensRatings(write(tmp_path / "r.dat", lines)), out,
                      PreprocessConfig(window=WindowConfig(ExampleSpec(history_length=4))))
    test = read_split(out, "test", ExampleSpec(history_length=4))
    with open(os.path.join(out, "item_vocabulary.tsv")) as f:
        raw = {int(r.split("\t")[0]): r.split("\t")[1] for r in list(f)[1:]}
    assert [raw[i] for i in test[F.HISTORY][0]] == ["10", "30", "20", "40"]
    assert raw[test[F.TARGET][0]] == "50"


def test_sequence_file_real_lines_and_bad_tokens(tmp_path, ml1m_dir):
    good = real_lines(os.path.join(ml1m_dir, "sequences.txt.gz"), 30)
    bad = ["x12 1 2 3 4 5 6",        # non-numeric user: the whole line (6 interactions)
           "9999 1193 abc 661 914 3408 2355",   # one bad token
           "9998"]                   # a user with no items
    path = write(tmp_path / "seq.txt", good[:10] + bad + good[10:])
    out = str(tmp_path / "out")
    stats = run_preprocessing(readers.SequenceFile(path), out, CONFIG)
    expected = sum(len(line.split()) - 1 for line in good) + 6 + 6
    assert stats["interactions_read"] == expected
    assert stats["rejected"] == 7
    assert stats["dead_letter_rows"] == 3
    assert_accounted(stats)
    fields = sorted((d["line"], d["field"]) for d in dead_letters(out))
    assert fields == [(11, "user"), (12, "item[2]"), (13, "items")]
    assert stats["examples"]["test"] == stats["users_kept"] == 31


def test_user_cap_keeps_the_latest_interactions_and_counts_the_rest(tmp_path):
    path = write(tmp_path / "seq.txt", ["1 " + " ".join(str(i) for i in range(101, 113)),
                                         "2 201 202 203 204",
                                         "3 " + " ".join(str(i) for i in range(301, 308))])
    out = str(tmp_path / "out")
    config = PreprocessConfig(window=CONFIG.window, max_user_interactions=6)
    stats = run_preprocessing(readers.SequenceFile(path), out, config)
    assert stats["interactions_read"] == 23
    assert stats["filtered"] == {"beyond_max_user_interactions": 6 + 1,
                                 "user_below_min_interactions": 4}
    assert stats["kept"] == 12 and stats["users_kept"] == 2
    assert_accounted(stats)
    raw = {}
    with open(os.path.join(out, "item_vocabulary.tsv")) as f:
        for line in f.read().splitlines()[1:]:
            int_id, raw_id = line.split("\t")[:2]
            raw[int(int_id)] = raw_id
    test = read_split(out, "test")
    by_user = {u.decode(): (h, t) for u, h, t in zip(test[F.USER_ID], test[F.HISTORY],
                                                     test[F.TARGET])}
    history, target = by_user["1"]
    assert raw[target] == "112"
    assert [raw[i] for i in history if i] == ["107", "108", "109", "110", "111"]
    with pytest.raises(ValueError, match="max_user_interactions"):
        PreprocessConfig(max_user_interactions=3)


def test_generic_csv_and_kuairand_filters(tmp_path):
    csv_path = write(tmp_path / "log.csv", [
        "uid;iid;ts;clicked",
        *[f"u{u};i{(u * 7 + k) % 13};{1000 + k};{1 if k % 4 else 0}"
          for u in range(5) for k in range(9)],
        "u9;i1;notatime;1",
        "u9;i1;1000",
    ])
    out = str(tmp_path / "csv")
    stats = run_preprocessing(readers.CsvLog(csv_path, "uid", "iid", "ts", label_column="clicked",
                                             delimiter=";"), out, CONFIG)
    assert stats["interactions_read"] == 47
    assert stats["filtered"]["label_below_min"] == 15
    assert stats["rejected"] == 2
    assert_accounted(stats)

    kuai = write(tmp_path / "kuai.csv", [
        "user_id,video_id,date,hourmin,time_ms,is_click,is_like,tab",
        *[f"{u},{100 + k},20220408,1000,{1649376000000 + 60000 * k},{int(k % 3 != 0)},0,{1 + (k % 5 == 4)}"
          for u in range(4) for k in range(12)],
    ])
    stats = run_preprocessing(readers.KuaiRandLog(kuai), str(tmp_path / "kuai"), CONFIG)
    assert stats["interactions_read"] == 48
    assert stats["filtered"]["not_click"] == 16
    assert stats["filtered"]["not_main_tab"] == 4  # the click at k = 4 (tab 2; k = 9 is no click)
    assert stats["kept"] == 28
    assert_accounted(stats)


def test_csv_missing_column_names_file_and_line(tmp_path):
    path = write(tmp_path / "log.csv", ["user,item,time", "1,2,3"])
    with pytest.raises(Exception, match=r"log.csv:1: missing column\(s\) \['timestamp'\]"):
        run_preprocessing(readers.CsvLog(path), str(tmp_path / "out"), CONFIG)


@pytest.mark.parametrize("make, message", [
    (lambda d: str(d / "missing.dat"), "no such file"),
    (lambda d: write(d / "empty.dat", []), "file is empty"),
    (lambda d: str(d), "is a directory"),
])
def test_unusable_inputs_fail_before_beam(tmp_path, make, message):
    with pytest.raises(InputError, match=message):
        run_preprocessing(readers.MovieLensRatings(make(tmp_path)), str(tmp_path / "out"), CONFIG)


def test_unreadable_file_is_a_clear_error(tmp_path):
    path = write(tmp_path / "locked.dat", ["1::2::3::4"])
    os.chmod(path, 0)
    if os.access(path, os.R_OK):  # root reads anything
        pytest.skip("running as root: permissions do not stop reads")
    with pytest.raises(InputError, match="cannot read"):
        run_preprocessing(readers.MovieLensRatings(path), str(tmp_path / "out"), CONFIG)


def test_all_rows_malformed_fails_and_points_at_dead_letters(tmp_path):
    path = write(tmp_path / "wrong.dat", [f"{u},{i},5,{i}" for u in range(3) for i in range(8)])
    with pytest.raises(PreprocessingError, match=r"wrong.dat:1: field '<line>'"):
        run_preprocessing(readers.MovieLensRatings(path), str(tmp_path / "out"), CONFIG)
    assert len(dead_letters(str(tmp_path / "out"))) == 24


def test_too_many_rejects_fail_the_run(tmp_path):
    lines = [f"1::{i}::5::{i}" for i in range(10)] + ["1:2:3:4"] * 3
    with pytest.raises(PreprocessingError, match="3 of 13 interactions rejected"):
        run_preprocessing(readers.MovieLensRatings(write(tmp_path / "r.dat", lines)),
                          str(tmp_path / "out"), CONFIG)


def test_tfds_source_with_mock_data(tmp_path):
    import tensorflow_datasets as tfds

    n = 120
    rows = {
        "user_id": np.array([f"{i % 6}".encode() for i in range(n)]),
        "movie_id": np.array([f"{(i * 5) % 31}".encode() for i in range(n)]),
        "timestamp": np.arange(n, dtype=np.int64)[::-1].copy(),  # newest rows first
        "user_rating": np.array([1.0 + i % 5 for i in range(n)], np.float32),
        "movie_genres": np.array([[i % 3] for i in range(n)], np.int64),
    }

    def as_dataset(self, *args, **kwargs):
        return tf.data.Dataset.from_tensor_slices(rows)

    with tfds.testing.mock_data(as_dataset_fn=as_dataset):
        out = str(tmp_path / "out")
        stats = run_preprocessing(readers.TfdsMovieLens(min_rating=2.0), out, CONFIG)
    assert stats["interactions_read"] == n
    assert stats["filtered"]["rating_below_min"] == n // 5
    assert_accounted(stats)
    assert stats["examples"]["test"] == stats["users_kept"] == 6
    # Rows come newest first; the windows must be in time order: the test target is the user's
    # newest kept rating, i.e. its first kept row in the data set.
    test = read_split(out, "test")
    with open(os.path.join(out, "item_vocabulary.tsv")) as f:
        raw = {int(r.split("\t")[0]): r.split("\t")[1] for r in list(f)[1:]}
    newest = {}
    for i in range(n):
        if rows["user_rating"][i] >= 2.0:
            newest.setdefault(rows["user_id"][i], rows["movie_id"][i].decode())
    assert {u: raw[t] for u, t in zip(test[F.USER_ID], test[F.TARGET])} == newest
    with open(os.path.join(out, "item_features.tsv")) as f:
        assert f.readline().strip() == "int_id\tAction|Adventure|Animation"


def test_beam_output_equals_the_in_memory_path(tmp_path):
    cfg = synthetic.SyntheticConfig(num_users=60, num_items=80, num_clusters=8)
    out = str(tmp_path / "out")
    stats = run_preprocessing(readers.SyntheticLog(cfg), out, CONFIG)
    assert stats["interactions_read"] == sum(1 for _ in synthetic.generate_interactions(cfg))
    expected = synthetic_arrays(cfg, CONFIG.window, CONFIG.protocol).splits
    for split in ("train", "validation", "test"):
        got = read_split(out, split)
        order = np.lexsort((got[F.TARGET], got[F.USER_ID]))
        want_order = np.lexsort((expected[split][F.TARGET], expected[split][F.USER_ID]))
        for name in F.SEQUENCE_FEATURES + F.SCALAR_FEATURES:
            got_sorted = got[name][order]
            want_sorted = expected[split][name][want_order]
            # Sort by (user, target, whole row) to compare multisets of windows exactly.
            key = lambda a, u: sorted(zip(u.tolist(), map(lambda r: np.ravel(r).tolist(), a)))
            assert key(got_sorted, got[F.USER_ID][order]) == \
                key(want_sorted, expected[split][F.USER_ID][want_order]), (split, name)


def test_examples_validate_against_the_schema(tmp_path):
    from components.preprocessing.schema import read_schema, validate_examples, window_schema

    out = str(tmp_path / "out")
    run_preprocessing(readers.SyntheticLog(synthetic.SyntheticConfig(num_users=50, num_items=60,
                                                                     num_clusters=6)), out, CONFIG)
    schema = read_schema(os.path.join(out, "schema.pbtxt"))
    for split in ("train", "validation", "test"):
        files = tf.io.gfile.glob(os.path.join(split_dir(out, split), "*.gz"))
        assert validate_examples(files, schema) == []
    # The serving windows: one per user, ending at the user's latest item (the test target).
    serving = tf.io.gfile.glob(os.path.join(split_dir(out, "serving"), "*.gz"))
    assert validate_examples(serving, read_schema(os.path.join(out, "serving_schema.pbtxt"))) == []
    assert validate_examples(serving, schema)  # no target: not a training window
    spec = {name: tf.io.FixedLenFeature(shape, tf.int64) for name, shape in
            ((F.HISTORY, [8]), (F.SESSION_LENGTH, []))}
    spec[F.USER_ID] = tf.io.FixedLenFeature([], tf.string)
    rows = [tf.io.parse_single_example(r, spec)
            for r in tf.data.TFRecordDataset(serving, compression_type="GZIP")]
    test = read_split(out, "test")
    assert len(rows) == len(test[F.TARGET])
    latest = {u: t for u, t in zip(test[F.USER_ID], test[F.TARGET])}
    assert {r[F.USER_ID].numpy(): int(r[F.HISTORY][-1]) for r in rows} == latest
    files = tf.io.gfile.glob(os.path.join(split_dir(out, "test"), "*.gz"))
    # A schema with another history length, or a smaller item domain, flags the examples.
    assert validate_examples(files, window_schema(ExampleSpec(history_length=9)))
    problems = validate_examples(files, window_schema(CONFIG.window.example, num_items=5))
    assert any("history" in p and "above" in p for p in problems)


def test_checked_in_schema_is_the_default_rendering():
    from components.preprocessing.schema import read_schema, window_schema

    path = os.path.join(os.path.dirname(__file__), "..", "..", "..", "schemas",
                        "window_example.pbtxt")
    assert read_schema(path) == window_schema(ExampleSpec())
    from components.preprocessing.schema import serving_window_schema
    assert read_schema(path.replace("window_example", "serving_window")) == \
        serving_window_schema(ExampleSpec())


def test_leave_one_out_on_all_of_ml1m(tmp_path, ml1m_dir):
    out = str(tmp_path / "ml1m")
    stats = run_preprocessing(
        readers.SequenceFile(os.path.join(ml1m_dir, "sequences.txt.gz")), out,
        PreprocessConfig(protocol=ProtocolConfig(max_train_windows_per_user=10)))
    assert stats["interactions_read"] == 1_000_209
    assert stats["kept"] == 1_000_209 and stats["rejected"] == 0
    assert stats["users_kept"] == 6040 and stats["items"] == 3706
    spec = ExampleSpec()
    test, val = read_split(out, "test", spec), read_split(out, "validation", spec)
    train = read_split(out, "train", spec)
    assert len(set(test[F.USER_ID])) == len(test[F.USER_ID]) == 6040
    assert len(set(val[F.USER_ID])) == len(val[F.USER_ID]) == 6040
    test_target = dict(zip(test[F.USER_ID], test[F.TARGET]))
    val_target = dict(zip(val[F.USER_ID], val[F.TARGET]))
    leaks = sum(1 for u, t in zip(train[F.USER_ID], train[F.TARGET])
                if t == test_target[u] or t == val_target[u])
    assert leaks == 0
    # The test window's history ends with the validation target.
    last = dict(zip(test[F.USER_ID], test[F.HISTORY][:, -1]))
    assert all(last[u] == val_target[u] for u in last)
