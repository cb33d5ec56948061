"""Grouping by user through partition files (``user_partitions.py``): every row reaches its user
once, in order; partitions respect their bound; the pipeline writes what the runner's grouping
writes; the files go away."""

import dataclasses
import glob
import gzip
import json
import os
import random
import struct
import subprocess
import sys

import apache_beam as beam
import numpy as np
import pytest
from apache_beam.options.pipeline_options import PipelineOptions

from components.preprocessing import readers, user_partitions as up
from components.preprocessing.config import ProtocolConfig, WindowConfig
from components.preprocessing.records import UserRowColumns
from components.preprocessing.transforms import (PreprocessConfig, PreprocessingError,
                                                  resolve_user_grouping, run_preprocessing)
from t2diff_tf.features import ExampleSpec, SequenceSpec


def random_elements(seed, users=40, elements=300, max_rows=9):
    """``(user, UserRowColumns)`` elements as readers hand them over: a user's rows split over
    several elements, positions unique, time ties on purpose."""
    rng = random.Random(seed)
    out, line = [], 0
    for _ in range(elements):
        user = f"u{rng.randrange(users)}"
        rows = []
        for _ in range(rng.randint(1, max_rows)):
            line += 1
            rows.append((rng.randrange(20), (rng.randrange(3), line, 0), f"i{rng.randrange(30)}"))
        out.append((user, UserRowColumns.from_rows(rows)))
    return out


def expected_sequences(elements):
    """Each user's rows concatenated and ordered, as the runner's grouping gives them."""
    users = {}
    for user, rows in elements:
        users.setdefault(user, UserRowColumns()).extend(rows)
    return {user: rows.ordered() for user, rows in users.items()}


def write_runs(tmp_path, elements, per_run):
    return [up.write_run(str(tmp_path), elements[i:i + per_run])
            for i in range(0, len(elements), per_run)]


def slot_rows(runs):
    return up._SlotRows().merge_accumulators(  # noqa: SLF001
        [up._SlotRows().add_input(up._SlotRows().create_accumulator(), r) for r in runs])  # noqa: SLF001


@pytest.mark.parametrize("bound", [1, 25, 400, 10 ** 9])
def test_partitions_cover_every_slot_once_within_the_bound(tmp_path, bound):
    elements = random_elements(0)
    runs = write_runs(tmp_path, elements, per_run=37)
    partitions = up.plan_partitions(slot_rows(runs), bound)
    # Contiguous, disjoint slot ranges, in order.
    for before, after in zip(partitions, partitions[1:]):
        assert before.end_slot <= after.first_slot
    per_slot = {}
    for user, rows in elements:
        per_slot[up.slot_of(user)] = per_slot.get(up.slot_of(user), 0) + len(rows)
    for slot, n in per_slot.items():
        holding = [p for p in partitions if p.first_slot <= slot < p.end_slot]
        assert len(holding) == 1
    assert sum(p.rows for p in partitions) == sum(len(r) for _, r in elements)
    for p in partitions:
        slots_in = [n for s, n in per_slot.items() if p.first_slot <= s < p.end_slot]
        assert p.rows == sum(slots_in) > 0
        # Above the bound only when one slot alone holds more.
        assert p.rows <= bound or len(slots_in) == 1
    # The partitions' bytes in each run are the run's frames, each byte once.
    for run in runs:
        pieces = [up.run_bytes(run.path, p.first_slot, p.end_slot) for p in partitions]
        assert pieces[0][0] == 0
        assert all(a[1] == b[0] for a, b in zip(pieces, pieces[1:]))
        assert pieces[-1][1] == os.path.getsize(run.path) - 8 * (up.SLOTS + 1)


def test_a_run_finds_each_slots_bytes_from_its_table(tmp_path):
    elements = random_elements(4, users=300, elements=400)
    run = up.write_run(str(tmp_path), elements)
    for slot in set(up.slot_of(u) for u, _ in elements):
        start, end = up.run_bytes(run.path, slot, slot + 1)
        (frame,) = up.read_frames(run.path, start, end)
        assert {u for u, _ in frame} == {u for u, _ in elements if up.slot_of(u) == slot}
    empty = next(s for s in range(up.SLOTS) if s not in set(run.slots.tolist()))
    start, end = up.run_bytes(run.path, empty, empty + 1)
    assert start == end


@pytest.mark.parametrize("per_run,bound", [(1, 1), (37, 60), (1000, 10 ** 9)])
def test_grouping_gives_each_user_all_its_rows_in_time_order(tmp_path, per_run, bound):
    elements = random_elements(1)
    runs = write_runs(tmp_path, elements, per_run)
    seen = {}
    for partition in up.plan_partitions(slot_rows(runs), bound):
        for user, items, timestamps in up.group_partition(partition, [r.path for r in runs]):
            assert user not in seen  # a user is whole in one partition
            seen[user] = (items, timestamps)
    assert seen == expected_sequences(elements)


def test_slots_are_stable_across_processes():
    # crc32, not Python's salted str hash: every worker process must agree.
    users = ["u1", "用户", "17"]
    code = ("from components.preprocessing import user_partitions as up; "
            f"print([up.slot_of(u) for u in {users!r}])")
    for seed in ("1", "2"):
        result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                                check=True, env={**os.environ, "PYTHONHASHSEED": seed})
        assert result.stdout.strip() == str([up.slot_of(u) for u in users])
    assert up.slot_of(17) == up.slot_of("17")


def test_damaged_files_are_errors_naming_them(tmp_path):
    writer = up._SequenceWriter(str(tmp_path), "kept")  # noqa: SLF001
    for user, rows in random_elements(2, elements=5):
        writer.write((user, rows.items, None))
    path = writer.close()
    with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) - 3)
    with pytest.raises(OSError, match=os.path.basename(path)):
        list(up.read_sequences(path))
    short = tmp_path / "short.frames"
    short.write_bytes(b"12345678")
    with pytest.raises(OSError, match="short.frames: not a run file"):
        up.run_bytes(str(short), 0, 1)


def test_write_runs_holds_at_most_a_run_of_rows(tmp_path):
    dofn = up._WriteRuns(str(tmp_path), rows_per_run=50)  # noqa: SLF001
    dofn.start_bundle()
    elements = random_elements(3)
    runs, held = [], []
    for element in elements:
        runs += list(dofn.process(element))
        held.append(dofn._rows)  # noqa: SLF001
    runs += [w.value for w in dofn.finish_bundle()]
    assert max(held) < 50
    assert sum(int(r.rows.sum()) for r in runs) == sum(len(r) for _, r in elements)


def test_auto_grouping_is_disk_on_the_direct_runner_and_shuffle_elsewhere():
    direct = beam.Pipeline(options=PipelineOptions([]))
    assert resolve_user_grouping(direct, "auto") == "disk"
    assert resolve_user_grouping(direct, "shuffle") == "shuffle"
    flink = beam.Pipeline(options=PipelineOptions(["--runner=FlinkRunner"]))
    assert resolve_user_grouping(flink, "auto") == "shuffle"
    with pytest.raises(ValueError, match="user_grouping"):
        resolve_user_grouping(direct, "memory")


# ------------------------------------------------------------------------------------------------
# The pipeline


def write_log(path, users=60, seed=0):
    """A CSV log with rare items (for the k-core), time ties and a bad row."""
    rng = np.random.default_rng(seed)
    lines = ["user,item,timestamp"]
    for u in range(users):
        for _ in range(rng.integers(3, 40)):
            lines.append(f"u{u},i{int(rng.zipf(1.4)) % 300},{int(rng.integers(0, 500))}")
    lines.insert(7, "u1,,12")
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def output_records(root):
    import tensorflow as tf  # noqa: PLC0415

    out = {}
    for split in sorted(glob.glob(os.path.join(root, "Split-*"))):
        files = sorted(glob.glob(os.path.join(split, "*")))
        out[os.path.basename(split)] = sorted(
            r.numpy() for r in tf.data.TFRecordDataset(files, compression_type="GZIP"))
    with open(os.path.join(root, "stats.json")) as f:
        stats = json.load(f)
    stats.pop("elapsed_seconds")
    with open(os.path.join(root, "item_vocabulary.tsv")) as f:
        vocabulary = f.read()
    return out, stats, vocabulary


CONFIG = PreprocessConfig(window=WindowConfig(ExampleSpec(history_length=6)),
                          min_item_interactions=3, max_user_interactions=25,
                          sequences=SequenceSpec(history_length=8))


@pytest.mark.parametrize("protocol", ["leave_one_out", "user_holdout"])
def test_disk_grouping_writes_what_the_runner_grouping_writes(tmp_path, monkeypatch, protocol):
    # Small bounds, so the log spreads over many runs and partitions.
    monkeypatch.setattr(up, "ROWS_PER_RUN", 40)
    monkeypatch.setattr(up, "ROWS_PER_PARTITION", 90)
    log = write_log(tmp_path / "log.csv")
    config = dataclasses.replace(CONFIG, protocol=ProtocolConfig(name=protocol,
                                                                min_target_position=3))
    outputs = {}
    for grouping in ("shuffle", "disk"):
        out = str(tmp_path / grouping)
        stats = run_preprocessing(readers.CsvLog(log), out, config, user_grouping=grouping)
        assert stats["kcore"]["converged"] and stats["filtered"]
        assert not [n for n in os.listdir(out) if n.startswith("beam-temp")]
        outputs[grouping] = output_records(out)
    assert outputs["disk"] == outputs["shuffle"]
    assert outputs["disk"][0]["Split-train"]


def test_disk_grouping_leaves_no_files_when_the_run_is_refused(tmp_path):
    log = tmp_path / "log.csv"
    log.write_text("user,item,timestamp\n" + "".join(f"u{u},i1,1\n" for u in range(5)))
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(PreprocessingError):
        run_preprocessing(readers.CsvLog(str(log)), str(out), CONFIG, user_grouping="disk")
    assert not [n for n in os.listdir(out) if n.startswith("beam-temp")]


# ------------------------------------------------------------------------------------------------
# On an object store (the branches of filesystem.py and the partition files that gs:// or s3://
# would take), in memory: tests/components/preprocessing/object_store.py.


def tfrecords(data: bytes):
    """The records of a gzipped TFRecord file's bytes (framing: length, crc, data, crc)."""
    data, out, position = gzip.decompress(data), [], 0
    while position < len(data):
        (length,) = struct.unpack_from("<Q", data, position)
        out.append(data[position + 12:position + 12 + length])
        position += 12 + length + 4
    return out


def test_disk_grouping_on_an_object_store_writes_what_it_writes_locally(tmp_path, monkeypatch):
    from tests.components.preprocessing import object_store  # registers mem://

    monkeypatch.setattr(up, "ROWS_PER_RUN", 40)
    monkeypatch.setattr(up, "ROWS_PER_PARTITION", 90)
    object_store.clear()
    log = write_log(tmp_path / "log.csv")
    with open(log, "rb") as f:
        object_store.put("mem://bucket/logs/log.csv", f.read())
    local = str(tmp_path / "local")
    local_stats = run_preprocessing(readers.CsvLog(log), local, CONFIG, user_grouping="disk")
    remote_stats = run_preprocessing(readers.CsvLog("mem://bucket/logs/log.csv"),
                                     "mem://bucket/out", CONFIG, user_grouping="disk")
    for stats in (local_stats, remote_stats):
        stats.pop("elapsed_seconds")
        stats.pop("source", None)
    assert remote_stats == local_stats

    stored = object_store.objects()
    written = {k[len("mem://bucket/out/"):]: v for k, v in stored.items()
               if k.startswith("mem://bucket/out/")}
    # Only the outputs are left: no partition files, no Beam temporaries, no counters.json.
    assert not [k for k in written if "beam-temp" in k or k == "counters.json"]
    local_records, _, local_vocabulary = output_records(local)
    for split, records in local_records.items():
        remote = sorted(r for k, v in written.items() if k.startswith(split + "/")
                        for r in tfrecords(v))
        assert remote == records, split
    assert written["item_vocabulary.tsv"].decode() == local_vocabulary
    object_store.clear()
