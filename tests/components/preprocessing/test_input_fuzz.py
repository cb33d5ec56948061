"""Fuzzing the input contract: seeded, bounded mutations of lines and whole files.

The only allowed outcomes are a well-formed interaction, a counted dead letter naming file, line,
field and a known reason, a counted filter decision, or the project's own ``InputError`` naming
the file. Never another exception, an ``unexpected_error`` dead letter, or counts that do not
add up (read = kept + filtered + rejected).

The 1,000+ mutated lines per reader and the 50+ damaged files go through the code Beam runs
(``resolve_files`` and ``check_data_files`` before Beam, ``read_file_records`` inside it) without
Beam; a few damaged files go through the whole Beam preprocessing.
"""

import gzip
import json
import os
import random
from typing import Callable, NamedTuple, Optional

import numpy as np
import pytest

from components.preprocessing import contract as C
from components.preprocessing import readers
from components.preprocessing.config import WindowConfig
from components.preprocessing.input_files import check_data_files, resolve_files
from components.preprocessing.records import DeadLetter, Event, Filtered, InputError
from components.preprocessing.transforms import PreprocessConfig, run_preprocessing
from components.preprocessing.vocabulary import VOCABULARY_FILE
from t2diff_tf.features import ExampleSpec

SEED = 20240613
LINES_PER_READER = 1200
CONFIG = PreprocessConfig(window=WindowConfig(ExampleSpec(history_length=4)),
                          max_rejected_fraction=0.5)

# Values that broke, or could break, a reader: huge, non-finite, odd digits, separators,
# control characters, quotes, spaces, empty.
NASTY = ["1e20", "100000000000000000000", "9223372036854775808", "-9223372036854775809",
         "nan", "NaN", "-nan", "inf", "-inf", "Infinity", "1e400", "-1e400", "1e-400",
         "\u0661\u0662\u0663", "\uff11\uff12", "\u00b2", "\U0001d7d9", "1_000", "0x10", "1,5",
         "1.5.5", "+", "-", ".", "e5", "1e", " 5", "5 ", "\t5", "5\t", "\u00a05", "", " ",
         "\x00", "a\x00b", "a\tb", "a\rb", "a\x1fb", "a\x7fb", "a\x85b", "a\u2028b", "a\ufeffb",
         '"', '"a"', 'a"b', '"a', "\u00e9t\u00e9", "\U0001f600", "-1", "-0", "007", "0",
         "253402300800", "253402300799", "1649376000000", "9" * 400, "x" * 5000]
# Raw bytes that are not UTF-8, or are line structure.
NASTY_BYTES = [b"\xff", b"\xc3", b"\xed\xa0\x80", b"\x80abc", b"\xef\xbb\xbf", b"\r", b"\r\r",
               b"\x00", b"\x1b[31m"]


class Format(NamedTuple):
    """A reader under test: how to make a valid line, its separator and its parser."""

    name: str
    header: Optional[str]
    make_line: Callable[[random.Random, int], str]
    separator: str
    parser: readers.LineParser
    integer_ids: bool
    one_interaction_per_line: bool


def _ratings_line(rng, k):
    return f"{rng.randrange(1, 50)}::{rng.randrange(1, 400)}::{rng.randrange(1, 6)}::" \
           f"{978300000 + k}"


def _sequence_line(rng, k):
    return " ".join(str(rng.randrange(1, 400)) for _ in range(rng.randrange(2, 8)))


def _csv_line(rng, k):
    return f"u{rng.randrange(50)},i{rng.randrange(400)},{1600000000 + k},{rng.randrange(2)}"


def _kuairand_line(rng, k):
    return (f"{rng.randrange(50)},{rng.randrange(400)},20220408,1000,{1649376000000 + 1000 * k},"
            f"{rng.randrange(2)},0,{rng.randrange(1, 3)}")


FORMATS = [
    Format("ml1m_ratings", None, _ratings_line, "::",
           readers.MovieLensRatings("unused", min_rating=3).parser(), True, True),
    Format("sequences", None, _sequence_line, " ", readers.SequenceFile("unused").parser(),
           True, False),
    Format("csv", "user,item,timestamp,label", _csv_line, ",",
           readers.CsvLog("unused", label_column="label").parser(), False, True),
    Format("kuairand", "user_id,video_id,date,hourmin,time_ms,is_click,is_like,tab",
           _kuairand_line, ",", readers.KuaiRandLog("unused").parser(), False, True),
]


def mutate(rng: random.Random, line: str, separator: str) -> bytes:
    """One seeded mutation of a valid line, as bytes (some mutations are not UTF-8)."""
    fields = line.split(separator)
    op = rng.randrange(10)
    if op == 0:  # a field replaced by a nasty value
        fields[rng.randrange(len(fields))] = rng.choice(NASTY)
        return separator.join(fields).encode()
    if op == 1:  # a nasty value glued into a field
        i = rng.randrange(len(fields))
        fields[i] = fields[i] + rng.choice(NASTY) if rng.random() < 0.5 else \
            rng.choice(NASTY) + fields[i]
        return separator.join(fields).encode()
    if op == 2:  # raw bytes inserted anywhere
        data = line.encode()
        at = rng.randrange(len(data) + 1)
        return data[:at] + rng.choice(NASTY_BYTES) + data[at:]
    if op == 3:  # a field dropped or duplicated
        if rng.random() < 0.5 and len(fields) > 1:
            del fields[rng.randrange(len(fields))]
        else:
            i = rng.randrange(len(fields))
            fields.insert(i, fields[i])
        return separator.join(fields).encode()
    if op == 4:  # the line cut short
        return line[:rng.randrange(len(line))].encode()
    if op == 5:  # random printable and non-printable characters
        return "".join(chr(rng.choice([rng.randrange(32, 127), rng.randrange(0, 32),
                                       rng.randrange(0x80, 0x3000)]))
                       for _ in range(rng.randrange(1, 40))).encode("utf-8", "surrogatepass")
    if op == 6:  # a character replaced
        at = rng.randrange(len(line))
        return (line[:at] + chr(rng.randrange(0, 0x2100)) + line[at + 1:]).encode(
            "utf-8", "surrogatepass")
    if op == 7:  # another separator
        return line.replace(separator, rng.choice([",", ";", "\t", "::", ":", "  ", ""]),
                            1).encode()
    if op == 8:  # quoted fields, in part
        i = rng.randrange(len(fields))
        fields[i] = rng.choice(['"{}"', '"{}', '{}"', '""{}""', "'{}'"]).format(fields[i])
        return separator.join(fields).encode()
    return line.encode()  # unchanged: must come out as interactions


def check_event(event: Event, fmt: Format) -> None:
    check = C.check_integer_id if fmt.integer_ids else C.check_id
    assert check(event.user) == event.user and check(event.item) == event.item
    if event.timestamp is not None:
        assert C.EARLIEST_TIMESTAMP <= event.timestamp <= C.LATEST_TIMESTAMP
        assert isinstance(event.timestamp, int)


def check_records(records, path: str, num_lines: int, check: Callable[[Event], None]):
    """The invariants of a file's records; returns (events, dead letters, filtered, counts)."""
    events, dead, filtered, counts = [], [], [], {}
    for record in records:
        if isinstance(record, Event):
            check(record)
            events.append(record)
        elif isinstance(record, DeadLetter):
            assert record.file == path
            assert 1 <= record.line <= num_lines
            assert record.field and record.reason
            assert record.code in C.REASONS, record
            assert record.code != C.UNEXPECTED_ERROR, record
            assert len(record.raw) <= C.MAX_RAW_CHARS + 30
            dead.append(record)
        elif isinstance(record, Filtered):
            filtered.append(record)
        else:
            name, n = record
            counts[name] = counts.get(name, 0) + n
    rejected = sum(d.interactions for d in dead)
    assert counts[readers.INTERACTIONS_READ] == \
        len(events) + rejected + sum(f.interactions for f in filtered)
    return events, dead, filtered, counts


@pytest.mark.parametrize("fmt", FORMATS, ids=lambda f: f.name)
def test_mutated_lines(tmp_path, fmt):
    rng = random.Random(f"{SEED}-{fmt.name}")
    valid = [fmt.make_line(rng, k) for k in range(LINES_PER_READER)]
    mutated = [mutate(rng, line, fmt.separator) for line in valid]
    body = [fmt.header.encode()] if fmt.header else []
    body += mutated
    path = str(tmp_path / f"{fmt.name}.txt")
    with open(path, "wb") as f:
        f.write(b"".join(line.replace(b"\n", b" ") + b"\n" for line in body))
    num_lines = len(body)
    check_data_files(resolve_files(path), fmt.parser.header_spec())
    events, dead, filtered, counts = check_records(
        readers.read_file_records(fmt.parser, path, 0), path, num_lines,
        lambda e: check_event(e, fmt))
    assert counts[readers.LINES_READ] == num_lines
    if fmt.one_interaction_per_line:
        data_lines = num_lines - counts[readers.HEADER_LINES] - counts[readers.BLANK_LINES]
        assert counts[readers.INTERACTIONS_READ] == data_lines
    offset = 2 if fmt.header else 1
    by_line = {}
    for e in events:
        by_line.setdefault(e.order[1], []).append(e)
    for d in dead:
        by_line.setdefault(d.line, []).append(d)
    # Unchanged lines all come out as interactions (or a filter decision); lines with a nasty
    # value in an id or number field never come out as an interaction holding it.
    for k, (line, bad) in enumerate(zip(valid, mutated)):
        outcome = by_line.get(k + offset, [])
        if bad == line.encode():
            assert all(isinstance(r, Event) for r in outcome), (line, outcome)
    assert len(dead) > LINES_PER_READER // 4, "the mutations should break many lines"
    assert len(events) > LINES_PER_READER // 20, "unchanged lines should be kept"
    reasons = {d.code for d in dead}
    assert {C.NOT_UTF8} <= reasons


# Column layouts the CSV shortcut builds its pattern from: another delimiter, no time column,
# columns in another order, a regex-special delimiter.
FAST_PATH_FORMATS = FORMATS + [
    Format("tsv_no_time", "item\tuser\textra", lambda rng, k: f"i{rng.randrange(400)}\t"
           f"u{rng.randrange(50)}\t{rng.choice(['', 'x y', '1.5'])}", "\t",
           readers.CsvLog("unused", timestamp_column="", delimiter="\t").parser(), False, True),
    Format("pipe_ms", "time|user|item", lambda rng, k: f"{1600000000000 + 999 * k}|"
           f"u{rng.randrange(50)}|i{rng.randrange(400)}", "|",
           readers.CsvLog("unused", delimiter="|", timestamp_column="time",
                          timestamp_divisor=1000).parser(), False, True),
]


@pytest.mark.parametrize("fmt", FAST_PATH_FORMATS, ids=lambda f: f.name)
def test_the_shortcut_for_clean_lines_gives_the_general_paths_records(tmp_path, fmt):
    """``read_file_records`` with the clean-line shortcut (the default) and without it: the
    same records in the same order and the same counts, on mutated lines spread over several
    read pieces (so lines meet piece boundaries), with CRLF endings and no final newline."""
    rng = random.Random(f"{SEED}-fast-{fmt.name}")
    lines = [fmt.make_line(rng, k) for k in range(6 * LINES_PER_READER)]
    body = [fmt.header.encode()] if fmt.header else []
    body += [mutate(rng, line, fmt.separator) if rng.random() < 0.3 else line.encode()
             for line in lines]
    # Every field of a valid line set to each value at the edge of what the shortcut takes.
    edges = [" 7", "7 ", "a b", "9999999999999", "253402300799", "253402300800", "-5", "+5",
             "007", "\u00e9", '"x"', "x\u2028", "", "1.5", "1e3", "1.0", "0", "x\x7f", "~!"]
    fields = lines[0].split(fmt.separator)
    body += [fmt.separator.join(fields[:i] + [value] + fields[i + 1:]).encode()
             for i in range(len(fields)) for value in edges]
    path = str(tmp_path / f"{fmt.name}.txt")
    with open(path, "wb") as f:
        f.write(b"".join(line.replace(b"\n", b" ") + (b"\r\n" if k % 97 == 5 else b"\n")
                         for k, line in enumerate(body)).rstrip(b"\n"))
    assert os.path.getsize(path) > (1 << 16)  # more than one piece of file_chunks

    def split(records):
        records = list(records)
        counts = {}
        for r in records:
            if type(r) is tuple:
                counts[r[0]] = counts.get(r[0], 0) + r[1]
        return [r for r in records if type(r) is not tuple], counts

    fast, fast_counts = split(readers.read_file_records(fmt.parser, path, 3))
    general, general_counts = split(readers.read_file_records(fmt.parser, path, 3, fast=False))
    assert fast == general
    assert fast_counts == general_counts
    assert fast_counts[readers.LINES_READ] == len(body)
    assert sum(isinstance(r, Event) for r in fast) > len(lines) // 10
    if fmt.header:  # the CSV formats: the shortcut takes every valid line that is kept
        header = fmt.parser.read_header(fmt.header, path)
        match = fmt.parser.clean_line_matcher(header)
        for line in lines:
            kept = [r for r in fmt.parser.parse(line, path, 2, 3, header) if isinstance(r, Event)]
            assert (match(line) is not None) == bool(kept), line


@pytest.mark.parametrize("fmt", FORMATS, ids=lambda f: f.name)
def test_known_bad_values_get_their_reason(tmp_path, fmt):
    """Each issue-13 case in each field of each format: dead-lettered, with the reason named."""
    expected = {"1e20": C.TIMESTAMP_OUT_OF_RANGE, "100000000000000000000": C.TIMESTAMP_OUT_OF_RANGE,
                "nan": C.NOT_FINITE, "inf": C.NOT_FINITE, "1e400": C.TIMESTAMP_OUT_OF_RANGE,
                "1_000": C.NOT_A_NUMBER, "\u0661\u0662": C.NOT_A_NUMBER}
    rng = random.Random(SEED)
    line = fmt.make_line(rng, 0).split(fmt.separator)
    time_field = {"ml1m_ratings": 3, "csv": 2, "kuairand": 4}.get(fmt.name)
    id_field = 1
    lines = []
    for value in expected:
        if time_field is not None:
            lines.append(fmt.separator.join(line[:time_field] + [value] + line[time_field + 1:]))
    for value in ["a\tb", "a\rb", "a\x00b", " 7", "7 "]:
        lines.append(fmt.separator.join(line[:id_field] + [value] + line[id_field + 1:]))
    body = ([fmt.header] if fmt.header else []) + lines
    path = str(tmp_path / "bad.txt")
    with open(path, "w", newline="") as f:
        f.write("".join(x + "\n" for x in body))
    events, dead, _, _ = check_records(readers.read_file_records(fmt.parser, path, 0), path,
                                       len(body), lambda e: check_event(e, fmt))
    if fmt.name == "sequences":  # a tab separates tokens there; spaces are separators
        assert all(d.code in (C.NOT_AN_INTEGER, C.CONTROL_CHARACTER_IN_LINE,
                              C.CONTROL_CHARACTER_IN_ID) for d in dead)
        assert len(dead) >= 3
        return
    assert not events
    codes = [d.code for d in dead]
    assert len(codes) == len(lines)
    if time_field is not None:
        got = codes[:len(expected)]
        want = list(expected.values())
        if fmt.name == "ml1m_ratings":  # integer seconds only
            want = [w if w in (C.NOT_FINITE, C.TIMESTAMP_OUT_OF_RANGE) and v[-1] != "0"
                    or v == "100000000000000000000" else C.NOT_AN_INTEGER
                    for v, w in zip(expected, want)]
        assert got == want
    assert codes[-5:] == [C.CONTROL_CHARACTER_IN_ID, C.CONTROL_CHARACTER_IN_LINE,
                          C.CONTROL_CHARACTER_IN_ID, C.SPACE_AROUND_VALUE, C.SPACE_AROUND_VALUE]


def test_mutated_tfds_rows():
    rng = random.Random(f"{SEED}-tfds")
    nasty_ids = [b"", b" 1", b"1 ", b"1\t2", b"\x00", b"\xff\xfe", b'"1"', b"\xe2\x80\xa8",
                 "\u0661".encode(), b"x" * 3000]
    nasty_times = [-1, 2 ** 63 - 1, -2 ** 63, 10 ** 13, C.LATEST_TIMESTAMP + 1, 0]
    nasty_ratings = [float("nan"), float("inf"), -float("inf"), 1e38, np.float32("nan")]
    events = dead = 0
    for index in range(LINES_PER_READER):
        row = {"user_id": str(rng.randrange(50)).encode(),
               "movie_id": str(rng.randrange(400)).encode(),
               "timestamp": np.int64(978300000 + index),
               "user_rating": np.float32(rng.randrange(1, 6))}
        op = rng.randrange(5)
        if op == 0:
            row[rng.choice(["user_id", "movie_id"])] = rng.choice(nasty_ids)
        elif op == 1:
            row["timestamp"] = np.int64(rng.choice(nasty_times))
        elif op == 2:
            row["user_rating"] = rng.choice(nasty_ratings)
        records = list(readers.tfds_row_records(row, index, "tfds:fuzz", min_rating=2.0))
        assert len([r for r in records if isinstance(r, (Event, DeadLetter, Filtered))]) == 1
        for r in records:
            if isinstance(r, Event):
                events += 1
                C.check_id(r.user), C.check_id(r.item)
                assert C.EARLIEST_TIMESTAMP <= r.timestamp <= C.LATEST_TIMESTAMP
            elif isinstance(r, DeadLetter):
                dead += 1
                assert r.file == "tfds:fuzz" and r.line == index + 1
                assert r.code in C.REASONS and r.code != C.UNEXPECTED_ERROR
        if op == 4:
            assert not any(isinstance(r, DeadLetter) for r in records)
    assert events > 300 and dead > 300


# ------------------------------------------------------------------------------------------------
# Damaged files


def _gz(data: bytes) -> bytes:
    return gzip.compress(data, mtime=0)


def _base(fmt: Format, rng: random.Random, n: int) -> bytes:
    lines = ([fmt.header] if fmt.header else []) + [fmt.make_line(rng, k) for k in range(n)]
    return "".join(x + "\n" for x in lines).encode()


def damaged_files(fmt: Format, rng: random.Random):
    """``(name, bytes)`` of damaged versions of a valid file of ``fmt``."""
    data = _base(fmt, rng, 300)
    big = _base(fmt, rng, 12000)  # > 64 KiB uncompressed and compressed ~ 100 KiB
    big_gz = _gz(big)
    assert len(big) > 1 << 16
    header_len = len(fmt.header) + 1 if fmt.header else 0
    first_line = data[header_len:data.index(b"\n", header_len) + 1]
    files = [
        ("plain.txt", data),
        ("gz_valid.gz", _gz(data)),
        ("gz_truncated_half.gz", big_gz[:len(big_gz) // 2]),
        ("gz_truncated_after_64k.gz", big_gz[:(1 << 16) + 100]),
        ("gz_truncated_trailer.gz", big_gz[:-4]),
        ("gz_flipped_byte.gz", big_gz[:len(big_gz) // 3] + bytes([big_gz[len(big_gz) // 3] ^ 0xFF])
         + big_gz[len(big_gz) // 3 + 1:]),
        ("gz_trailing_garbage.gz", _gz(data) + b"garbage!"),
        ("gz_header_only_bytes.gz", big_gz[:10]),
        ("gz_of_nothing.gz", _gz(b"")),
        ("bom.txt", C.UTF8_BOM + data),
        ("bom_crlf.txt.gz", _gz(C.UTF8_BOM + data.replace(b"\n", b"\r\n"))),
        ("crlf.txt", data.replace(b"\n", b"\r\n")),
        ("cr_only.txt", data.replace(b"\n", b"\r")),
        ("stray_cr_line1.txt.gz", _gz(data.replace(b"\n", b"\r\n", 1)[:5] + b"\r"
                                      + data.replace(b"\n", b"\r\n", 1)[5:])),
        ("empty.txt", b""),
        ("blank_lines_only.txt", b"\n \n\t\n"),
        ("header_only.txt", data[:header_len] if header_len else b"\n"),
        ("binary_garbage.bin", bytes(rng.randrange(256) for _ in range(5000))),
        ("binary_garbage.gz", _gz(bytes(rng.randrange(256) for _ in range(5000)))),
        ("utf16.txt", data.decode().encode("utf-16")),
        ("nul_bytes.txt", data.replace(b"\n", b"\x00\n", 7)),
        ("huge_numbers.txt", data.replace(b"1", b"9" * 30)),
        ("no_final_newline.txt", data.rstrip(b"\n")),
        ("one_long_line.txt", first_line.rstrip(b"\n") * 2000),
        ("latin1.txt", data + "caf\u00e9 \u00e9t\u00e9\n".encode("latin-1")),
        ("blank_first_line.txt", b"\n" + data),
    ]
    if fmt.header:
        header = fmt.header.encode()
        files += [
            ("duplicate_column.txt",
             data.replace(header, header + b"," + header.split(b",")[1], 1)),
            ("missing_column.txt", data.replace(header, b",".join(header.split(b",")[1:]), 1)),
            ("header_semicolons.txt", data.replace(header, header.replace(b",", b";"), 1)),
            ("quoted_header.txt", data.replace(header, b",".join(
                b'"' + c + b'"' for c in header.split(b",")), 1)),
            ("header_spaces.txt", data.replace(header, header.replace(b",", b" , "), 1)),
            ("header_unclosed_quote.txt", data.replace(header, b'"' + header, 1)),
        ]
    return files


def outcome_of_file(fmt: Format, path: str):
    """Runs the checks before Beam and the reader; returns ``("error", message)`` or
    ``("records", (events, dead, filtered, counts))``."""
    try:
        files = resolve_files(path)
        check_data_files(files, fmt.parser.header_spec())
    except InputError as e:
        return "error", str(e)
    with open(path, "rb") as f:
        num_lines = max(1, f.read().count(b"\n") + 1)
    return "records", check_records(readers.read_file_records(fmt.parser, path, 0), path,
                                    num_lines, lambda e: check_event(e, fmt))


def test_damaged_files(tmp_path):
    rng = random.Random(f"{SEED}-files")
    seen = 0
    errors = {}
    for fmt in FORMATS:
        for name, data in damaged_files(fmt, rng):
            path = str(tmp_path / f"{fmt.name}-{name}")
            with open(path, "wb") as f:
                f.write(data)
            kind, result = outcome_of_file(fmt, path)
            seen += 1
            if kind == "error":
                assert path in result, result
                errors[(fmt.name, name)] = result
            else:
                events, dead, _, counts = result
                assert counts[readers.LINES_READ] > 0
    # A directory and a missing file.
    for path in (str(tmp_path), str(tmp_path / "missing.txt")):
        with pytest.raises(InputError, match=str(path)):
            resolve_files(path)
        seen += 1
    assert seen >= 50
    # What must be refused before Beam, for every format.
    for fmt in FORMATS:
        for name in ("gz_truncated_half.gz", "gz_truncated_after_64k.gz",
                     "gz_truncated_trailer.gz", "gz_flipped_byte.gz", "gz_trailing_garbage.gz",
                     "gz_header_only_bytes.gz", "gz_of_nothing.gz", "empty.txt",
                     "blank_lines_only.txt", "header_only.txt"):
            assert (fmt.name, name) in errors, (fmt.name, name)
        for name in ("plain.txt", "gz_valid.gz", "bom.txt", "bom_crlf.txt.gz", "crlf.txt"):
            assert (fmt.name, name) not in errors, errors.get((fmt.name, name))
    for fmt in FORMATS:
        if fmt.header:
            assert "duplicate column" in errors[(fmt.name, "duplicate_column.txt")]
            assert "missing column" in errors[(fmt.name, "missing_column.txt")]
            assert "control character" in errors[(fmt.name, "stray_cr_line1.txt.gz")]
            assert "not valid UTF-8" in errors[(fmt.name, "utf16.txt")]
            assert (fmt.name, "quoted_header.txt") not in errors
            assert (fmt.name, "header_spaces.txt") not in errors
    assert "after 65,536" in errors[("csv", "gz_truncated_after_64k.gz")] or \
        "truncated" in errors[("csv", "gz_truncated_after_64k.gz")]


def _listing(root):
    return sorted(os.path.relpath(os.path.join(d, n), root)
                  for d, dirs, files in os.walk(root) for n in dirs + files)


@pytest.mark.parametrize("fmt_name, damage, expected", [
    ("csv", "bom_crlf.txt.gz", "ok"),       # accepted: BOM and CRLF removed, counted
    ("ml1m_ratings", "latin1.txt", "ok"),   # one line not UTF-8: a dead letter, a clean run
    ("ml1m_ratings", "gz_truncated_after_64k.gz", "refused before Beam"),
    ("kuairand", "nul_bytes.txt", "refused before Beam"),   # a NUL in the header
    ("sequences", "binary_garbage.bin", "refused after Beam"),   # nothing usable in it
])
def test_damaged_files_through_beam(tmp_path, fmt_name, damage, expected):
    fmt = next(f for f in FORMATS if f.name == fmt_name)
    rng = random.Random(f"{SEED}-beam")
    data = dict(damaged_files(fmt, rng))[damage]
    path = str(tmp_path / damage)
    with open(path, "wb") as f:
        f.write(data)
    source = {"ml1m_ratings": lambda: readers.MovieLensRatings(path),
              "sequences": lambda: readers.SequenceFile(path),
              "csv": lambda: readers.CsvLog(path, label_column="label"),
              "kuairand": lambda: readers.KuaiRandLog(path)}[fmt_name]()
    out = str(tmp_path / "out")
    if expected != "ok":
        with pytest.raises(InputError) as raised:
            run_preprocessing(source, out, CONFIG)
        message = str(raised.value)
        assert path in message and "\n" not in message
        if expected == "refused before Beam":
            assert not os.path.exists(out)
        else:  # a refused run keeps only its dead letters and why it was refused
            assert _listing(out) == ["dead_letter", "dead_letter/dead_letter.jsonl",
                                     "stats.json"]
            with open(os.path.join(out, "stats.json")) as f:
                stats = json.load(f)
            assert "refused" in stats and stats["kept"] == 0
            assert stats["rejected"] == stats["interactions_read"] > 0
        return
    stats = run_preprocessing(source, out, CONFIG)
    assert stats["kept"] + sum(stats["filtered"].values()) + stats["rejected"] == \
        stats["interactions_read"]
    assert not [p for p in _listing(out) if "beam-temp" in p]
    with open(os.path.join(out, VOCABULARY_FILE), encoding="utf-8") as f:
        rows = f.read().split("\n")
    assert rows[-1] == ""
    assert all(len(r.split("\t")) == 3 for r in rows[:-1])
    if damage == "bom_crlf.txt.gz":
        assert stats["rejected"] == 0
        assert stats["normalised"] == {"bom_stripped": 1, "crlf_line_endings": 301}
    else:
        assert stats["rejected_by_reason"] == {C.NOT_UTF8: 1}
