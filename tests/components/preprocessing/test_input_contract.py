"""The input contract: strict fields, checks before Beam, one-line errors, nothing left behind."""

import gzip
import json
import logging
import os

import pytest

from components.preprocessing import contract as C
from components.preprocessing import readers
from components.preprocessing.config import WindowConfig
from components.preprocessing.records import InputError
from components.preprocessing.sources import SourceConfig
from components.preprocessing.transforms import (InputRefusedError, PreprocessConfig,
                                                  run_preprocessing)
from components.preprocessing.vocabulary import Vocabulary
from pipeline.cli import describe_lines
from t2diff_tf.features import ExampleSpec

CONFIG = PreprocessConfig(window=WindowConfig(ExampleSpec(history_length=4)))


@pytest.mark.parametrize("value, reason", [
    ("1e20", C.TIMESTAMP_OUT_OF_RANGE), ("100000000000000000000", C.TIMESTAMP_OUT_OF_RANGE),
    ("nan", C.NOT_FINITE), ("-inf", C.NOT_FINITE), ("1e400", C.TIMESTAMP_OUT_OF_RANGE),
    ("\u0661\u0662\u0663", C.NOT_A_NUMBER), ("1_000", C.NOT_A_NUMBER), ("", C.NOT_A_NUMBER),
    ("-1", C.TIMESTAMP_OUT_OF_RANGE), ("253402300800", C.TIMESTAMP_OUT_OF_RANGE),
])
def test_bad_timestamps(value, reason):
    with pytest.raises(C.FieldError) as e:
        C.parse_timestamp(value)
    assert e.value.reason == reason


def test_timestamps_are_exact_and_divided():
    assert C.parse_timestamp("253402300799") == C.LATEST_TIMESTAMP
    assert C.parse_timestamp("1649376000123", 1000.0) == 1649376000
    assert C.parse_timestamp("1.6e9") == 1_600_000_000
    assert C.parse_timestamp("0.5") == 0
    with pytest.raises(C.FieldError, match="--csv-timestamp-divisor 1000"):
        C.parse_timestamp("1649376000123")
    with pytest.raises(C.FieldError) as e:
        C.parse_timestamp("1.5", integer_only=True)
    assert e.value.reason == C.NOT_AN_INTEGER


@pytest.mark.parametrize("value, reason", [
    ("nan", C.NOT_FINITE), ("1e400", C.NOT_FINITE), ("Infinity", C.NOT_FINITE),
    ("\u0665", C.NOT_A_NUMBER), ("5_0", C.NOT_A_NUMBER), ("0x5", C.NOT_A_NUMBER),
])
def test_bad_numbers(value, reason):
    with pytest.raises(C.FieldError) as e:
        C.parse_number(value)
    assert e.value.reason == reason


@pytest.mark.parametrize("value, reason", [
    ("", C.EMPTY_ID), ("a\tb", C.CONTROL_CHARACTER_IN_ID), ("a\rb", C.CONTROL_CHARACTER_IN_ID),
    ("a\x00", C.CONTROL_CHARACTER_IN_ID), ("a\u2028b", C.CONTROL_CHARACTER_IN_ID),
    ('a"b', C.QUOTE_IN_ID),
])
def test_bad_ids(value, reason):
    with pytest.raises(C.FieldError) as e:
        C.check_id(value)
    assert e.value.reason == reason


def test_integer_ids_are_ascii_and_kept_as_written():
    assert C.check_integer_id("007") == "007"
    for value, reason in (("\u0661\u0662", C.NOT_AN_INTEGER), ("1_000", C.NOT_AN_INTEGER),
                          ("\u00b2", C.NOT_AN_INTEGER), ("-1", C.NOT_AN_INTEGER),
                          (str(2 ** 63), C.INTEGER_OUT_OF_RANGE)):
        with pytest.raises(C.FieldError) as e:
            C.check_integer_id(value)
        assert e.value.reason == reason


def test_trimming_is_an_option():
    with pytest.raises(C.FieldError) as e:
        C.trimmed(" u1", trim_spaces=False)
    assert e.value.reason == C.SPACE_AROUND_VALUE
    assert C.trimmed(" u1 ", trim_spaces=True) == ("u1", True)
    assert C.trimmed("u1", trim_spaces=True) == ("u1", False)


def _write(path, text, gz=False):
    data = text.encode()
    with open(path, "wb") as f:
        f.write(gzip.compress(data) if gz else data)
    return str(path)


def _rows(users=6, per_user=6):
    return [f"u{u},i{(u * 3 + k) % 11},{1_600_000_000 + 60 * k}"
            for u in range(users) for k in range(per_user)]


def test_csv_issue_cases_are_dead_letters_and_trimming_is_counted(tmp_path):
    bad = ["u9,i1,1e20", "u9,i1,100000000000000000000", "u9,i1,nan", "u9,i1,inf",
           "u9,i1,1e400", "u9,\"i\t1\",1600000000", "u9,i1\x00,1600000000",
           "u9,i1,1_600_000_000", "u9,i1," + "\u0661\u0666" + "\u0660" * 8,
           "u9,i1,1649376000000"]
    spaced = [" u0,i1,1600000999", "u0, i2 ,1600001999"]
    quoted = ['"u1","i,7",1600002999']
    text = ("\ufeffuser,item,timestamp\r\n" + "\r\n".join(_rows() + bad + spaced + quoted)
            + "\r\n\r\n")
    path = _write(tmp_path / "log.csv", text)
    out = str(tmp_path / "out")
    stats = run_preprocessing(readers.CsvLog(path, trim_spaces=True), out,
                              PreprocessConfig(window=CONFIG.window, max_rejected_fraction=0.5))
    assert stats["rejected"] == len(bad)
    assert stats["rejected_by_reason"] == {C.TIMESTAMP_OUT_OF_RANGE: 4, C.NOT_FINITE: 2,
                                           C.CONTROL_CHARACTER_IN_ID: 2, C.NOT_A_NUMBER: 2}
    assert stats["normalised"] == {"bom_stripped": 1, "crlf_line_endings": 51,
                                   "trimmed_fields": 2}
    assert stats["blank_lines"] == 1 and stats["lines_read"] == 51
    assert stats["kept"] == 36 + 3
    assert describe_lines(stats) == ("read 51 lines: 49 interactions, 1 header, 1 blank "
                                     "(normalised: bom stripped 1, crlf line endings 51, "
                                     "trimmed fields 2)")
    with open(os.path.join(out, "dead_letter", "dead_letter.jsonl")) as f:
        letters = [json.loads(line) for line in f]
    assert {(d["line"], d["field"]) for d in letters} >= {(38, "timestamp"), (43, "item")}
    assert all(d["file"] == path and d["code"] in C.REASONS for d in letters)
    vocabulary = Vocabulary.read(out)  # well-formed: a tab in an id never reaches it
    assert "i,7" in vocabulary.raw_ids and "i2" in vocabulary.raw_ids
    assert not [i for i in vocabulary.raw_ids if C.control_characters(i) or i != i.strip()]


def test_without_trimming_spaces_are_dead_letters(tmp_path):
    path = _write(tmp_path / "log.csv", "user,item,timestamp\n" + "\n".join(
        _rows() + ["u0, i1,1600000999"]) + "\n")
    stats = run_preprocessing(readers.CsvLog(path), str(tmp_path / "out"), CONFIG)
    assert stats["rejected_by_reason"] == {C.SPACE_AROUND_VALUE: 1}
    assert "normalised" not in stats


def test_ratings_nan_with_min_rating_and_odd_digits(tmp_path):
    lines = [f"1::{i}::5::{978300760 + i}" for i in range(1, 10)]
    lines += ["1::3::nan::978300760", "1::1_000::5::978300760", "1::\u0661\u0662::5::978300760",
              "1::\u00b2::5::978300760", "1::4::5::100000000000000000000"]
    path = _write(tmp_path / "ratings.dat", "\n".join(lines) + "\n")
    stats = run_preprocessing(readers.MovieLensRatings(path, min_rating=3), str(tmp_path / "o"),
                              PreprocessConfig(window=CONFIG.window, max_rejected_fraction=0.5))
    assert stats["rejected_by_reason"] == {C.NOT_FINITE: 1, C.NOT_AN_INTEGER: 3,
                                           C.TIMESTAMP_OUT_OF_RANGE: 1}
    assert stats["kept"] == 9


@pytest.mark.parametrize("name, text, gz, message", [
    ("dup.csv", "user,item,timestamp,item\nu,i,1,i\n", False,
     r"dup.csv:1: duplicate column 'item' .* \(columns 2 and 4\)"),
    ("missing.csv", "\ufeffuser,item\nu,i\n", False,
     r"missing.csv:1: missing column\(s\) \['timestamp'\]"),
    ("cr.csv.gz", "user,item\r,timestamp\nu,i,1\n", True, r"cr.csv.gz:1: the header holds control"),
    ("empty.csv", "", False, "empty.csv: file is empty"),
    ("header.csv", "user,item,timestamp\n\n", False, "header.csv: the input holds a header and no"),
])
def test_refused_before_beam_leaves_nothing(tmp_path, name, text, gz, message):
    path = _write(tmp_path / name, text, gz)
    out = tmp_path / "out"
    with pytest.raises(InputError, match=message):
        run_preprocessing(readers.CsvLog(path), str(out), CONFIG)
    assert not out.exists()


def test_truncated_gzip_is_refused_before_beam(tmp_path):
    text = "user,item,timestamp\n" + "\n".join(
        f"u{k % 300},i{k % 1000},{1_600_000_000 + k}" for k in range(40000)) + "\n"
    data = gzip.compress(text.encode())
    assert len(data) > 70_000
    path = tmp_path / "log.csv.gz"
    path.write_bytes(data[:(1 << 16) + 1000])
    with pytest.raises(InputError, match="log.csv.gz: corrupt or truncated gzip"):
        run_preprocessing(readers.CsvLog(str(path)), str(tmp_path / "out"), CONFIG)
    assert not (tmp_path / "out").exists()


class _CutAfterChecks(readers.CsvLog):
    """A log that is cut short after the checks before Beam, as a file rotated mid-run is."""

    def expand(self, pbegin):
        log = super().expand(pbegin)
        with open(self.paths[0], "rb") as f:
            data = f.read()
        with open(self.paths[0], "wb") as f:
            f.write(data[:len(data) // 2])
        return log


def test_read_error_inside_beam_is_one_line_and_leaves_no_output(tmp_path, caplog):
    rows = [f"u{k % 40},i{k % 500},{1_600_000_000 + k}" for k in range(30000)]
    path = _write(tmp_path / "log.csv.gz", "user,item,timestamp\n" + "\n".join(rows) + "\n", True)
    existing = tmp_path / "out"
    existing.mkdir()
    (existing / "notes.txt").write_text("the user's own file")
    with caplog.at_level(logging.ERROR), pytest.raises(InputError) as raised:
        run_preprocessing(_CutAfterChecks(path), str(existing), CONFIG)
    message = str(raised.value)
    assert message.startswith(f"{path}:") and "cannot read" in message
    assert "\n" not in message and "while running" not in message
    assert not [r for r in caplog.records if r.exc_info]
    # The directory existed before: only what the run wrote is gone, beam-temp-* included.
    assert sorted(p.name for p in existing.rglob("*")) == ["notes.txt"]


def test_refused_run_keeps_only_dead_letters_and_why(tmp_path):
    path = _write(tmp_path / "wrong.dat", "\n".join(f"{u},{i},5,{i}" for u in range(3)
                                                    for i in range(8)) + "\n")
    out = tmp_path / "out"
    with pytest.raises(InputRefusedError, match=r"wrong.dat:1: field '<line>': wrong_field_count"):
        run_preprocessing(readers.MovieLensRatings(path), str(out), CONFIG)
    assert sorted(str(p.relative_to(out)) for p in out.rglob("*")) == [
        "dead_letter", "dead_letter/dead_letter.jsonl", "stats.json"]
    stats = json.loads((out / "stats.json").read_text())
    assert stats["rejected"] == 24 and "no usable interaction" in stats["refused"]


def test_movies_dat_ids_are_strict(tmp_path):
    path = _write(tmp_path / "movies.dat", "1::Toy Story (1995)::Animation\n\u00b2::X::Drama\n")
    with pytest.raises(InputError, match=r"movies.dat:2: field 'MovieID'"):
        readers.read_movielens_genres(path)


def test_source_config_checks_inputs_without_beam(tmp_path):
    good = _write(tmp_path / "good.csv", "user,item,timestamp\n" + "\n".join(_rows()) + "\n")
    SourceConfig(kind="csv", paths=(good,)).check_inputs()
    bad = _write(tmp_path / "bad.csv.gz", "user,item,timestamp,user\nu,i,1,u\n", gz=True)
    with pytest.raises(InputError, match=r"bad.csv.gz:1: duplicate column 'user'"):
        SourceConfig(kind="csv", paths=(good, bad)).check_inputs()
    SourceConfig(kind="synthetic").check_inputs()
