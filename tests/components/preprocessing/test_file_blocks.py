"""Reading one file in byte-range blocks: every line read once, with its true line number."""

import gzip
import json
import os
import random

import pytest
import tensorflow as tf

from components.preprocessing import file_blocks, readers
from components.preprocessing.input_files import read_lines
from components.preprocessing.transforms import PreprocessConfig, run_preprocessing


def _tricky_file(path, rng):
    """Lines of many lengths: blank ones, CRLF endings, a BOM, a line longer than any block,
    non-UTF-8 bytes, and no newline at the end."""
    parts = ["\ufeffuser,item,timestamp\n".encode()]
    for i in range(300):
        kind = rng.random()
        if kind < 0.05:
            parts.append(b"\n")
        elif kind < 0.1:
            parts.append(f"u{i},i{i},{i}\r\n".encode())
        elif kind < 0.12:
            parts.append(b"x" * rng.randint(100, 400) + b"\n")
        elif kind < 0.14:
            parts.append(b"u\xff\xfe,i,1\n")
        else:
            parts.append(f"u{i % 7},i{rng.randint(1, 30)},{1000 + i}\n".encode())
    parts.append(b"u1,i1,99999")
    with open(path, "wb") as f:
        f.write(b"".join(parts))


@pytest.mark.parametrize("block_bytes", [1, 7, 64, 333, 1 << 20])
def test_blocks_read_every_line_once_with_its_number(tmp_path, block_bytes):
    path = str(tmp_path / "log.csv")
    _tricky_file(path, random.Random(block_bytes))
    blocks = file_blocks.plan_blocks([path], block_bytes)
    size = os.path.getsize(path)
    assert len(blocks) == (-(-size // block_bytes) if block_bytes < size else 1)
    newlines = file_blocks.newline_counts(blocks)
    lines = [line for b in blocks for line in file_blocks.block_lines(b, newlines)]
    assert lines == list(read_lines(path))
    # Against the file itself: the raw lines put back together are its bytes, numbered 1..n.
    with open(path, "rb") as f:
        content = f.read()
    assert b"".join(line.raw for line in lines) == content
    assert [line.number for line in lines] == list(range(1, content.count(b"\n") + 2))


def test_gzip_files_are_one_block(tmp_path):
    path = str(tmp_path / "log.csv.gz")
    with gzip.open(path, "wb") as f:
        f.write(b"user,item,timestamp\n" + b"u1,i1,1\n" * 1000)
    blocks = file_blocks.plan_blocks([path], 10)
    assert [(b.start, b.end, b.last) for b in blocks] == [(0, -1, True)]


def test_a_split_file_gives_the_same_output_and_dead_letters_name_true_lines(tmp_path,
                                                                            monkeypatch):
    path = str(tmp_path / "log.csv")
    rows = ["user,item,timestamp"]
    for i in range(2000):
        rows.append(f"u{i % 50},i{(i * 7) % 90},{1000 + i}")
    rows[777] = "u1,i1,not-a-time"
    rows[1555] = "u2,,5"
    with open(path, "w") as f:
        f.write("\n".join(rows) + "\n")
    config = PreprocessConfig()
    whole = run_preprocessing(readers.CsvLog(path), str(tmp_path / "whole"), config)
    monkeypatch.setattr(file_blocks, "BLOCK_BYTES", 1000)
    assert len(file_blocks.plan_blocks([path], 1000)) > 20
    split = run_preprocessing(readers.CsvLog(path), str(tmp_path / "split"), config)
    for stats in (whole, split):
        stats.pop("elapsed_seconds")
    assert split == whole
    with open(tmp_path / "split" / "dead_letter" / "dead_letter.jsonl") as f:
        dead = sorted((d["line"], d["field"]) for d in map(json.loads, f))
    assert dead == [(778, "timestamp"), (1556, "item")]
    for split_name in ("train", "validation", "test"):
        def records(root):
            files = sorted(str(p) for p in (tmp_path / root / f"Split-{split_name}").iterdir())
            return sorted(r.numpy() for r in tf.data.TFRecordDataset(files, "GZIP"))
        assert records("split") == records("whole")
