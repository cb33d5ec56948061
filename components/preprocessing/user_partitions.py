"""The per-user steps of the preprocessing, over users grouped either by the runner or on disk.

The preprocessing groups a log's rows by user, then runs per-user steps (order, filter, k-core,
windows, chunks) whose later ones wait for whole-log side inputs (the item counts, the
vocabulary). A runner with a spilling shuffle (Dataflow, Flink, Spark) holds neither the grouping
nor the collections that wait in memory. The DirectRunner holds both: every row of the log sits in
one process until the windows are written, so its peak memory grew with the log (1.2 GB at 6.5M
rows, 2.9 GB at 20M; BENCHMARKS.md).

:class:`UserSequences` is what ``transforms.build_pipeline`` writes the per-user steps against;
two implementations:

- :class:`ShuffledUserSequences`: the runner groups (``CombinePerKey``) and carries every
  ``(user, items, timestamps)`` sequence as a Beam element.
- :class:`PartitionedUserSequences`: the rows go through files on disk, and Beam carries only
  file names, so that a worker holds at most a bounded number of rows at a time, whatever the
  size of the log:

  1. *Runs.* Each worker buffers up to ``rows_per_run`` rows of the ``(user, UserRowColumns)``
     stream and writes them as one run file, ordered by the user's *slot* (CRC-32 of the user id,
     modulo :data:`SLOTS`), ending with a table of where each slot's bytes start; Beam carries
     the run's path and its rows per slot.
  2. *Partitions.* The rows per slot, summed over all runs (one ``int64[SLOTS]``), are cut into
     contiguous slot ranges of at most ``rows_per_partition`` rows (a range is never empty; a
     single slot above the bound stands alone, and holds whole users only: one user's history
     is the floor). A partition is a slot range; its reader finds the range's bytes in every run
     from the run's table (two 8-byte reads), so what is held besides the rows is the list of
     run paths.
  3. *Per-user steps.* A partition is read, its rows grouped by user and put in time order, and
     the sequences written to a partition file; each later step reads one partition file and
     writes the sequences it keeps to a new one, its other outputs (counts, examples) going on
     as Beam elements.

Both give the same examples, stats and vocabulary (``tests/.../test_user_partitions.py`` and the
DaskRunner comparison check it); only the order of users, and so of records within a split,
differs. Files go under a ``beam-temp-user-partitions-*`` folder of the output directory, removed
when the run ends (``transforms.run_preprocessing``).
"""

from __future__ import annotations

import abc
import dataclasses
import pickle
import struct
import uuid
import zlib
from typing import Dict, Iterable, Iterator, List, Optional, Sequence, Tuple

import apache_beam as beam
import numpy as np
from apache_beam.transforms.window import GlobalWindows

from components.preprocessing import filesystem
from components.preprocessing.records import UserRowColumns

#: Slots users are hashed into. A partition is a contiguous range of slots, so this bounds how
#: finely rows can be cut: at 20M rows a slot holds about 1,200 rows.
SLOTS = 1 << 14

#: Rows a worker buffers before writing a run (about 24 bytes each in ``UserRowColumns``).
ROWS_PER_RUN = 1_000_000

#: Rows a partition holds at most (unless one slot alone holds more).
ROWS_PER_PARTITION = 1_000_000

#: Sequences per frame of a partition file (what is pickled in one piece).
SEQUENCES_PER_FRAME = 2_048

TEMP_PREFIX = "beam-temp-user-partitions-"

UserSequence = Tuple[object, List[str], Optional[List[int]]]  # (user, items, timestamps or None)


def slot_of(user) -> int:
    """The user's slot: stable across processes and runs (Python's ``hash`` of a string is not)."""
    return zlib.crc32(str(user).encode("utf-8")) % SLOTS


# ------------------------------------------------------------------------------------------------
# Frame files: a file is frames of ``<8-byte little-endian length><pickle>``.

_LENGTH = struct.Struct("<Q")


def _frame(value) -> bytes:
    data = pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
    return _LENGTH.pack(len(data)) + data


def read_frames(path: str, start: int = 0, end: Optional[int] = None) -> Iterator[object]:
    """The values of the frames of ``path`` within bytes ``[start, end)`` (``end`` ``None``: to
    the end of the file)."""
    with filesystem.open_binary(path) as f:
        if start:
            f.seek(start)
        data = f.read() if end is None else f.read(end - start)
    position = 0
    while position < len(data):
        (length,) = _LENGTH.unpack_from(data, position)
        position += _LENGTH.size
        if position + length > len(data):
            raise OSError(f"{path}: truncated frame at byte {start + position - _LENGTH.size}")
        yield pickle.loads(data[position:position + length])
        position += length


class _SequenceWriter:
    """Writes sequences to a new partition file in ``directory``, a frame at a time."""

    def __init__(self, directory: str, stage: str):
        self.path = filesystem.join(directory, f"{stage}-{uuid.uuid4().hex}.frames")
        self._file = filesystem.create_binary(self.path)
        self._pending: List[UserSequence] = []

    def write(self, sequence: UserSequence) -> None:
        self._pending.append(sequence)
        if len(self._pending) >= SEQUENCES_PER_FRAME:
            self._flush()

    def _flush(self) -> None:
        if self._pending:
            self._file.write(_frame(self._pending))
            self._pending = []

    def close(self) -> str:
        self._flush()
        self._file.close()
        return self.path


def read_sequences(path: str) -> Iterator[UserSequence]:
    """The sequences of a partition file, in the order they were written."""
    for frame in read_frames(path):
        yield from frame


# ------------------------------------------------------------------------------------------------
# Runs and partitions


@dataclasses.dataclass(frozen=True)
class RunFile:
    """One run: ``path``, and the rows it holds in each of its slots (``slots[k]`` ascending,
    ``rows[k]``). Where each slot's bytes lie is in the file itself (:func:`run_bytes`), so
    that what Beam carries and sums stays small however many runs a log makes."""

    path: str
    slots: np.ndarray
    rows: np.ndarray


@dataclasses.dataclass(frozen=True)
class Partition:
    """Slots ``[first_slot, end_slot)``, holding ``rows`` rows over all runs."""

    first_slot: int
    end_slot: int
    rows: int


_OFFSETS_BYTES = 8 * (SLOTS + 1)


def write_run(directory: str, elements: Sequence[Tuple[object, UserRowColumns]]) -> RunFile:
    """``(user, rows)`` elements -> one run file: a frame per slot held, in slot order, then
    every slot's first byte (``int64[SLOTS + 1]`` little-endian, the last entry where the
    frames end), so a reader finds a slot range's bytes with two small reads."""
    slotted = sorted(((slot_of(user), i) for i, (user, _) in enumerate(elements)))
    path = filesystem.join(directory, f"run-{uuid.uuid4().hex}.frames")
    slots, starts, rows = [], [], []
    written = 0
    with filesystem.create_binary(path) as f:
        i = 0
        while i < len(slotted):
            slot = slotted[i][0]
            j = i
            while j < len(slotted) and slotted[j][0] == slot:
                j += 1
            members = [elements[k] for _, k in slotted[i:j]]
            frame = _frame(members)
            f.write(frame)
            slots.append(slot)
            starts.append(written)
            rows.append(sum(len(r) for _, r in members))
            written += len(frame)
            i = j
        # An empty slot starts where the next held one does (or where the frames end).
        offsets = np.full(SLOTS + 1, written, np.int64)
        offsets[slots] = starts
        offsets = np.minimum.accumulate(offsets[::-1])[::-1]
        f.write(offsets.astype("<i8").tobytes())
    return RunFile(path, np.asarray(slots, np.int64), np.asarray(rows, np.int64))


def run_bytes(path: str, first_slot: int, end_slot: int) -> Tuple[int, int]:
    """The bytes ``[start, end)`` of slots ``[first_slot, end_slot)`` in the run ``path``."""
    with filesystem.open_binary(path) as f:
        f.seek(0, 2)
        table = f.tell() - _OFFSETS_BYTES
        if table < 0:
            raise OSError(f"{path}: not a run file (shorter than its slot table)")
        f.seek(table + 8 * first_slot)
        (start,) = struct.unpack("<q", f.read(8))
        f.seek(table + 8 * end_slot)
        (end,) = struct.unpack("<q", f.read(8))
    if not 0 <= start <= end <= table:
        raise OSError(f"{path}: slot table out of range ({start}, {end}; frames end at {table})")
    return start, end


class _SlotRows(beam.CombineFn):
    """:class:`RunFile` s -> rows per slot over all of them (``int64[SLOTS]``)."""

    def create_accumulator(self):
        return np.zeros(SLOTS, np.int64)

    def add_input(self, counts, run):
        np.add.at(counts, run.slots, run.rows)
        return counts

    def merge_accumulators(self, accumulators):
        merged = self.create_accumulator()
        for counts in accumulators:
            merged += counts
        return merged

    def extract_output(self, counts):
        return counts


def plan_partitions(slot_rows: np.ndarray, rows_per_partition: int) -> List[Partition]:
    """Cuts the slots (``slot_rows``: rows per slot, ``[SLOTS]``) into contiguous ranges of at
    most ``rows_per_partition`` rows (a slot holding more stands alone); empty ranges are left
    out."""
    partitions = []
    first, held = 0, 0
    for slot in np.flatnonzero(slot_rows).tolist():
        n = int(slot_rows[slot])
        if held and held + n > rows_per_partition:
            partitions.append(Partition(first, slot, held))
            first, held = slot, 0
        held += n
    if held:
        partitions.append(Partition(first, SLOTS, held))
    return partitions


def group_partition(partition: Partition, run_paths: Iterable[str]) -> Iterator[UserSequence]:
    """A partition's rows (read from every run in ``run_paths``) grouped by user, each user's
    ``(user, items, timestamps)`` in time order (ties in input order), as ``transforms``
    orders a runner-grouped user."""
    users: Dict[object, UserRowColumns] = {}
    for path in run_paths:
        start, end = run_bytes(path, partition.first_slot, partition.end_slot)
        if start == end:
            continue
        for frame in read_frames(path, start, end):
            for user, rows in frame:
                held = users.get(user)
                if held is None:
                    users[user] = rows
                else:
                    held.extend(rows)
    for user in list(users):
        items, timestamps = users.pop(user).ordered()
        yield user, items, timestamps


class _WriteRuns(beam.DoFn):
    """``(user, UserRowColumns)`` -> :class:`RunFile` for every ``rows_per_run`` rows held."""

    def __init__(self, directory: str, rows_per_run: int):
        self._directory = directory
        self._rows_per_run = rows_per_run

    def start_bundle(self):
        self._held: List[Tuple[object, UserRowColumns]] = []
        self._rows = 0

    def process(self, element):
        self._held.append(element)
        self._rows += len(element[1])
        if self._rows >= self._rows_per_run:
            yield self._flush()

    def _flush(self) -> RunFile:
        run = write_run(self._directory, self._held)
        self._held, self._rows = [], 0
        return run

    def finish_bundle(self):
        if self._held:
            yield GlobalWindows.windowed_value(self._flush())


class _GroupPartition(beam.DoFn):
    """:class:`Partition` -> the path of a partition file of its users' ordered sequences."""

    def __init__(self, directory: str):
        self._directory = directory

    def process(self, partition: Partition, run_paths: List[str]):
        writer = _SequenceWriter(self._directory, "grouped")
        for sequence in group_partition(partition, run_paths):
            writer.write(sequence)
        yield writer.close()


class _MapPartition(beam.DoFn):
    """A partition file -> ``dofn`` applied to each of its sequences: plain outputs (kept
    sequences) written to a new partition file whose path is the main output; tagged outputs
    passed on. Side inputs reach ``dofn.process`` as keyword arguments."""

    def __init__(self, dofn: beam.DoFn, directory: str, stage: str):
        self._dofn = dofn
        self._directory = directory
        self._stage = stage

    def process(self, path: str, **side_inputs):
        writer = _SequenceWriter(self._directory, self._stage)
        for sequence in read_sequences(path):
            for output in self._dofn.process(sequence, **side_inputs) or ():
                if isinstance(output, beam.pvalue.TaggedOutput):
                    yield output
                else:
                    writer.write(output)
        yield writer.close()


class _FlatMapPartition(beam.DoFn):
    """A partition file -> every output of ``dofn`` on its sequences (or on lists of up to
    ``batch_size`` of them), plain and tagged."""

    def __init__(self, dofn: beam.DoFn, batch_size: Optional[int]):
        self._dofn = dofn
        self._batch_size = batch_size

    def process(self, path: str, **side_inputs):
        if self._batch_size is None:
            for sequence in read_sequences(path):
                yield from self._dofn.process(sequence, **side_inputs) or ()
            return
        batch: List[UserSequence] = []
        for sequence in read_sequences(path):
            batch.append(sequence)
            if len(batch) == self._batch_size:
                yield from self._dofn.process(batch, **side_inputs) or ()
                batch = []
        if batch:
            yield from self._dofn.process(batch, **side_inputs) or ()


class _AccumulatePartition(beam.DoFn):
    """A partition file -> one accumulator of ``combine_fn`` over its sequences."""

    def __init__(self, combine_fn: beam.CombineFn):
        self._combine_fn = combine_fn

    def process(self, path: str):
        fn = self._combine_fn
        accumulator = fn.create_accumulator()
        for sequence in read_sequences(path):
            accumulator = fn.add_input(accumulator, sequence)
        yield accumulator


class ConcatenateRows(beam.CombineFn):
    """Concatenates a user's :class:`records.UserRowColumns`. A combine, not a GroupByKey: the
    runner lifts it, so each bundle hands the shuffle one accumulator per user."""

    def create_accumulator(self):
        return UserRowColumns()

    def add_input(self, accumulator, rows):
        return accumulator.extend(rows)

    def merge_accumulators(self, accumulators):
        accumulators = iter(accumulators)
        merged = next(accumulators, None)
        if merged is None:
            return UserRowColumns()
        for rows in accumulators:
            merged.extend(rows)
        return merged

    def extract_output(self, accumulator):
        return accumulator


class _MergeAccumulators(beam.CombineFn):
    """``combine_fn`` over its own accumulators."""

    def __init__(self, combine_fn: beam.CombineFn):
        self._fn = combine_fn

    def create_accumulator(self):
        return self._fn.create_accumulator()

    def add_input(self, accumulator, other):
        return self._fn.merge_accumulators([accumulator, other])

    def merge_accumulators(self, accumulators):
        return self._fn.merge_accumulators(list(accumulators))

    def extract_output(self, accumulator):
        return self._fn.extract_output(accumulator)


# ------------------------------------------------------------------------------------------------
# The interface the pipeline uses


class UserSequences(abc.ABC):
    """Users' ``(user, items, timestamps or None)`` sequences in a pipeline, however held."""

    @abc.abstractmethod
    def map_users(self, label: str, dofn: beam.DoFn, tags: Sequence[str] = (),
                  **side_inputs) -> Tuple["UserSequences", Dict[str, beam.PCollection]]:
        """``dofn`` on every sequence: its plain outputs are the sequences kept (returned as
        new ``UserSequences``), its outputs tagged with one of ``tags`` come back by tag."""

    @abc.abstractmethod
    def flat_map(self, label: str, dofn: beam.DoFn, tags: Sequence[str] = (),
                 batch_size: Optional[int] = None, main: str = "main",
                 **side_inputs) -> beam.pvalue.DoOutputsTuple:
        """``dofn`` on every sequence (on lists of up to ``batch_size`` of them when given); its
        outputs as Beam elements, plain ones under ``main``."""

    @abc.abstractmethod
    def combine_globally(self, label: str, combine_fn: beam.CombineFn) -> beam.PCollection:
        """``combine_fn`` over every sequence: one element."""


class ShuffledUserSequences(UserSequences):
    """Sequences as Beam elements, grouped by the runner's shuffle."""

    def __init__(self, sequences: beam.PCollection):
        self.sequences = sequences

    @classmethod
    def group(cls, user_rows: beam.PCollection,
              label: str = "GroupByUser") -> "ShuffledUserSequences":
        """``(user, UserRowColumns)`` -> ordered sequences, grouped by ``CombinePerKey``."""
        return cls(user_rows
                   | label >> beam.CombinePerKey(ConcatenateRows())
                   | f"{label}OrderByTime" >> beam.Map(_ordered_sequence))

    def map_users(self, label, dofn, tags=(), **side_inputs):
        outputs = self.sequences | label >> beam.ParDo(dofn, **side_inputs).with_outputs(
            *tags, main="kept")
        return ShuffledUserSequences(outputs.kept), {tag: outputs[tag] for tag in tags}

    def flat_map(self, label, dofn, tags=(), batch_size=None, main="main", **side_inputs):
        sequences = self.sequences
        if batch_size is not None:
            sequences = sequences | f"{label}Batch" >> beam.BatchElements(
                min_batch_size=batch_size, max_batch_size=batch_size)
        return sequences | label >> beam.ParDo(dofn, **side_inputs).with_outputs(*tags,
                                                                                 main=main)

    def combine_globally(self, label, combine_fn):
        return self.sequences | label >> beam.CombineGlobally(combine_fn)


class PartitionedUserSequences(UserSequences):
    """Sequences in partition files under ``directory``; Beam carries the file names."""

    def __init__(self, paths: beam.PCollection, directory: str):
        self.paths = paths
        self.directory = directory

    @classmethod
    def group(cls, user_rows: beam.PCollection, directory: str, label: str = "GroupByUser",
              rows_per_run: Optional[int] = None,
              rows_per_partition: Optional[int] = None) -> "PartitionedUserSequences":
        """``(user, UserRowColumns)`` -> ordered sequences in partition files; the bounds
        default to :data:`ROWS_PER_RUN` and :data:`ROWS_PER_PARTITION`."""
        rows_per_run = rows_per_run or ROWS_PER_RUN
        rows_per_partition = rows_per_partition or ROWS_PER_PARTITION
        runs = user_rows | f"{label}WriteRuns" >> beam.ParDo(_WriteRuns(directory, rows_per_run))
        run_paths = runs | f"{label}RunPaths" >> beam.Map(lambda run: run.path)
        paths = (runs
                 | f"{label}SlotRows" >> beam.CombineGlobally(_SlotRows())
                 | f"{label}PlanPartitions" >> beam.FlatMap(plan_partitions, rows_per_partition)
                 | f"{label}Spread" >> beam.Reshuffle()
                 | label >> beam.ParDo(_GroupPartition(directory),
                                       run_paths=beam.pvalue.AsList(run_paths)))
        return cls(paths, directory)

    def map_users(self, label, dofn, tags=(), **side_inputs):
        outputs = self.paths | label >> beam.ParDo(
            _MapPartition(dofn, self.directory, label), **side_inputs).with_outputs(
            *tags, main="kept")
        return (PartitionedUserSequences(outputs.kept, self.directory),
                {tag: outputs[tag] for tag in tags})

    def flat_map(self, label, dofn, tags=(), batch_size=None, main="main", **side_inputs):
        return self.paths | label >> beam.ParDo(
            _FlatMapPartition(dofn, batch_size), **side_inputs).with_outputs(*tags, main=main)

    def combine_globally(self, label, combine_fn):
        return (self.paths
                | f"{label}PerPartition" >> beam.ParDo(_AccumulatePartition(combine_fn))
                | label >> beam.CombineGlobally(_MergeAccumulators(combine_fn)))


def _ordered_sequence(element):
    """(user, UserRowColumns) -> (user, items, timestamps or None), time order, ties in input
    order."""
    user, rows = element
    items, timestamps = rows.ordered()
    return user, items, timestamps
