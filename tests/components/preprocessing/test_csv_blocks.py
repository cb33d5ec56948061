"""Arrow's parse of whole CSV pieces: the same records and counts as the per-line parse, on
pieces it takes (every line of the header's width, no carriage return), with every field set
to values at the edge of what a plain line may hold."""

import random

import numpy as np
import pytest

from components.preprocessing import readers
from components.preprocessing.records import Event, Filtered, PlainRows, UserRowBatcher

# Values each field takes once: plain, not plain but well-formed (the per-line parse
# normalises, filters or dead-letters them), and values that only look numeric.
EDGES = ["7", "007", " 7", "7 ", "a b", "-5", "+5", "1.5", "1e3", "1.0", "0", "", "\u00e9",
         '"x"', 'a"b', "x\u2028", "x\x7f", "~!", "9999999999999", "253402300799",
         "253402300800", "1649376000000", "99999999999999999999", "\t5", "\x00", "1,5"]

CSV = ("user,item,timestamp,label", readers.CsvLog("unused", label_column="label"),
       lambda rng, k: f"u{rng.randrange(50)},i{rng.randrange(400)},{1600000000 + k},"
                      f"{rng.randrange(2)}")
KUAIRAND = ("user_id,video_id,date,hourmin,time_ms,is_click,is_like,tab",
            readers.KuaiRandLog("unused"),
            lambda rng, k: f"{rng.randrange(50)},{rng.randrange(400)},20220408,1000,"
                           f"{1649376000000 + 1000 * k},{rng.randrange(2)},0,"
                           f"{rng.randrange(1, 3)}")
UNTIMED = ("user;item", readers.CsvLog("unused", timestamp_column="", delimiter=";"),
           lambda rng, k: f"{rng.randrange(50)};{rng.randrange(400)}")


def _write(tmp_path, header, make_line, separator, n=5000):
    rng = random.Random(7)
    lines = [make_line(rng, k) for k in range(n)]
    fields = lines[0].split(separator)
    edges = [separator.join(fields[:i] + [value] + fields[i + 1:])
             for i in range(len(fields)) for value in EDGES if separator not in value]
    # Well-formed lines only (the header's width, no carriage return): Arrow takes the pieces.
    edges = [e for e in edges if len(e.split(separator)) == len(fields) and "\r" not in e]
    body = lines[: n // 2] + edges + lines[n // 2:]
    path = tmp_path / "log.csv"
    path.write_bytes(("\n".join([header] + body) + "\n").encode())
    return str(path), len(body)


@pytest.mark.parametrize("fmt", [CSV, KUAIRAND, UNTIMED], ids=["csv", "kuairand", "untimed"])
def test_arrow_pieces_make_the_per_line_records(tmp_path, fmt):
    header, source, make_line = fmt
    parser = source.parser()
    path, n = _write(tmp_path, header, make_line, source.delimiter)

    def split(records):
        records = list(records)
        counts = {r[0]: r[1] for r in records if type(r) is tuple}
        return [r for r in records if type(r) is not tuple], counts

    fast, fast_counts = split(readers.read_file_records(parser, path, 3))
    general, general_counts = split(readers.read_file_records(parser, path, 3, fast=False))
    assert fast == general and fast_counts == general_counts
    assert fast_counts[readers.LINES_READ] == n + 1
    # The pieces did go through Arrow, and its rows hold what the records hold.
    pieces = list(readers.read_file_records(parser, path, 3, plain_rows=True))
    plain = [p for p in pieces if isinstance(p, PlainRows)]
    assert plain and sum(len(p) for p in plain) > n * 0.9
    others = [r for r in pieces if isinstance(r, (Event, Filtered))]
    expanded = [r for p in plain for _, r in p.records()]
    assert sorted(map(repr, others + expanded)) == sorted(
        map(repr, [r for r in general if isinstance(r, (Event, Filtered))]))


def test_batched_plain_rows_equal_events_added_one_by_one(tmp_path):
    header, source, make_line = KUAIRAND
    parser = source.parser()
    path, _ = _write(tmp_path, header, make_line, ",")
    by_rows, by_events = UserRowBatcher(max_rows=700), UserRowBatcher()
    got, expected = {}, {}
    for piece in readers.read_file_records(parser, path, 3, plain_rows=True):
        if isinstance(piece, PlainRows):
            batches = by_rows.add_plain(piece)
        elif isinstance(piece, Event):
            batches = by_rows.add(piece)
        else:
            continue
        for user, columns in batches:
            got.setdefault(user, []).append(columns)
    for record in readers.read_file_records(parser, path, 3, fast=False):
        if isinstance(record, Event):
            for user, columns in by_events.add(record):
                expected.setdefault(user, []).append(columns)
    for store, batcher in ((got, by_rows), (expected, by_events)):
        for user, columns in batcher.flush():
            store.setdefault(user, []).append(columns)
    assert got.keys() == expected.keys() and len(got) > 10

    def ordered(parts):
        whole = parts[0]
        for part in parts[1:]:
            whole.extend(part)
        return whole.ordered()

    for user in expected:
        assert ordered(got[user]) == ordered(expected[user])


def test_a_piece_arrow_cannot_split_takes_the_per_line_path(tmp_path):
    header, source, make_line = CSV
    parser = source.parser()
    path = tmp_path / "bad.csv"
    path.write_bytes(b"user,item,timestamp,label\nu1,i1,1600000000,1\nu1,i2\nu2,i3,1600000001,1\n")
    pieces = list(readers.read_file_records(parser, str(path), 0, plain_rows=True))
    assert not any(isinstance(p, PlainRows) for p in pieces)
    assert sum(isinstance(p, Event) for p in pieces) == 2
    # CRLF endings are counted by the per-line path, so such pieces are not Arrow's either.
    path.write_bytes(b"user,item,timestamp,label\r\nu1,i1,1600000000,1\r\n")
    pieces = list(readers.read_file_records(parser, str(path), 0, plain_rows=True))
    assert not any(isinstance(p, PlainRows) for p in pieces)
    assert dict(p for p in pieces if type(p) is tuple)["normalised.crlf_line_endings"] == 2
