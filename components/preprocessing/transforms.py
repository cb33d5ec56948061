"""The Beam preprocessing: a parsed log -> window examples per split, vocabulary, stats.

``run_preprocessing(source, output_dir, config)`` is the entry point; it builds and runs one
Beam pipeline (DirectRunner by default; any runner through ``beam_args``) and checks afterwards
that every interaction read is accounted for.

Output directory layout (the ``Split-*`` folders are what a TFX ``Examples`` artifact holds)::

    Split-train/data_tfrecord-*.gz        tf.Example windows (see t2diff_tf.features)
    Split-validation/data_tfrecord-*.gz
    Split-test/data_tfrecord-*.gz
    Split-train_sequences/data_tfrecord-*.gz  training chunks, when ``config.sequences`` is set
                                          (t2diff_tf.features.SequenceSpec)
    item_vocabulary.tsv                   int_id, raw_id, count
    item_features.tsv                     int_id, genres
    schema.pbtxt                          tensorflow_metadata schema of the windows
    sequence_schema.pbtxt                 schema of the chunks (with ``config.sequences``)
    dead_letter/dead_letter.jsonl         rejected records: file, line, field, reason, raw,
                                          code (a reason name of ``contract.REASONS``)
    stats.json                            counts (they add up), config, elapsed time

While it runs, a grouping on disk (``user_partitions.py``, the DirectRunner's default) keeps its
partition files in ``beam-temp-user-partitions-*``, removed when the run ends.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import os
import time
import uuid
from typing import Dict, List, Optional, Sequence

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions

from components.beam_errors import one_line, quiet_beam_errors
from components.preprocessing import filesystem, kcore, readers, user_partitions
from components.preprocessing.config import (SERVING, SPLITS, TRAIN_SEQUENCES, ProtocolConfig,
                                             WindowConfig)
from components.preprocessing.records import DeadLetter, InputError
from components.preprocessing import sequences as chunks
from components.preprocessing.schema import (schema_text, sequence_schema,
                                             serving_window_schema, window_schema)
from components.preprocessing.tfrecord_batches import WriteTFRecordBatches
from components.preprocessing.user_partitions import UserSequences
from components.preprocessing.vocabulary import (ITEM_FEATURES_FILE, VOCABULARY_FILE, ItemFeatures,
                                                 Vocabulary)
from components.preprocessing.windows import (UserHistory, serving_window_examples,
                                              users_window_examples)
from t2diff_tf.features import ExampleSpec, SequenceSpec

STATS_FILE = "stats.json"
SCHEMA_FILE = "schema.pbtxt"
SEQUENCE_SCHEMA_FILE = "sequence_schema.pbtxt"
SERVING_SCHEMA_FILE = "serving_schema.pbtxt"
DEAD_LETTER_DIR = "dead_letter"
FILTERED_USER_TOO_SHORT = "user_below_min_interactions"
FILTERED_BEYOND_USER_CAP = "beyond_max_user_interactions"


class PreprocessingError(RuntimeError):
    """The run failed, or finished with output that cannot be trusted (counts that do not add
    up, a k-core that did not converge)."""


class InputRefusedError(PreprocessingError, InputError):
    """The input was read but refused: nothing usable in it, or more of it malformed than
    ``max_rejected_fraction``. Both a :class:`PreprocessingError` and an :class:`InputError`;
    the message names the files and the first dead letters (file, line, field, reason)."""


@dataclasses.dataclass(frozen=True)
class PreprocessConfig:
    """Everything that shapes the examples besides the source.

    Attributes:
      window: history length, time-lag buckets, session rule.
      protocol: leave-one-out or the paper's user hold-out.
      min_user_interactions: users with fewer kept interactions are dropped (paper: 5); the
        protocol's own minimum (3 for leave-one-out) applies too.
      min_item_interactions: items with fewer interactions are dropped, and with them users
        who fall below ``min_user_interactions``, round by round to a fixed point (k-core: 5 and
        5 give the usual 5-core); 0 (default) keeps every item. Counted per reason in
        ``stats.json`` (``filtered.item_below_min_interactions``; ``kcore``).
      kcore_max_rounds: the most k-core rounds; a run that has not reached the fixed point by
        then fails and says so.
      max_user_interactions: keep only each user's most recent interactions (``None``: all);
        the older ones are counted as filtered (``beyond_max_user_interactions``). With 200,
        MovieLens-1M has 661,028 interactions over 3,649 items, the closest simple rule to the
        T2Diff paper's statistics (643,979 / 3,648).
      max_rejected_fraction: fail the run when more of the interactions read were rejected.
      num_shards: output shards per split. 0 (default) lets the runner choose: each worker
        writes what it produced, with no shuffle; a fixed count makes Beam group every example
        by shard first, which on the DirectRunner holds all serialized examples in memory at
        once (1M KuaiRand-shaped rows: 34 against 27 CPU s, 1.29 against 1.07 GB peak).
      sequences: also write the training data as sequence chunks (``Split-train_sequences``,
        one example per chunk of up to ``L + 1`` items, every training interaction a label
        once) for models that learn from every position; ``None``: windows only.
      serving_windows: also write ``Split-serving``: one window per kept user ending at the
        user's latest behaviour, without a target (``windows.serving_window``), the input of
        nightly batch candidates; never read by training or evaluation.
    """

    window: WindowConfig = WindowConfig()
    protocol: ProtocolConfig = ProtocolConfig()
    min_user_interactions: int = 5
    min_item_interactions: int = 0
    kcore_max_rounds: int = 10
    max_user_interactions: Optional[int] = None
    max_rejected_fraction: float = 0.1
    num_shards: int = 0
    sequences: Optional[SequenceSpec] = None
    serving_windows: bool = True

    def __post_init__(self):
        if self.min_item_interactions < 0 or self.kcore_max_rounds < 1:
            raise ValueError("min_item_interactions must be >= 0 and kcore_max_rounds >= 1")
        if self.max_user_interactions is not None and \
                self.max_user_interactions < max(1, self.min_user_interactions):
            raise ValueError(f"max_user_interactions ({self.max_user_interactions}) must be >= "
                             f"min_user_interactions ({self.min_user_interactions}) and >= 1")

    def to_json(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, values: dict) -> "PreprocessConfig":
        """Inverse of :meth:`to_json`."""
        values = dict(values)
        window = dict(values.pop("window", {}))
        example = ExampleSpec(**window.pop("example", {}))
        sequences = values.pop("sequences", None)
        return cls(window=WindowConfig(example=example, **window),
                   protocol=ProtocolConfig(**values.pop("protocol", {})),
                   sequences=SequenceSpec(**sequences) if sequences else None, **values)


#: How rows are grouped by user (``build_pipeline``).
USER_GROUPINGS = ("auto", "shuffle", "disk")

#: Runner modules whose grouping holds every element in the memory of one process.
_IN_MEMORY_RUNNERS = ("apache_beam.runners.direct", "apache_beam.runners.portability.fn_api_runner",
                      "apache_beam.runners.portability.prism_runner")


def resolve_user_grouping(pipeline: beam.Pipeline, user_grouping: str) -> str:
    """``"shuffle"`` or ``"disk"``: ``"auto"`` is ``"disk"`` when ``pipeline`` runs on an
    in-memory local runner (the DirectRunner in any mode, the default) and ``"shuffle"`` on any
    other (Dataflow, Flink, Spark, Dask), whose shuffle spills or spreads."""
    if user_grouping not in USER_GROUPINGS:
        raise ValueError(f"user_grouping must be one of {USER_GROUPINGS}, not {user_grouping!r}")
    if user_grouping != "auto":
        return user_grouping
    module = type(pipeline.runner).__module__
    return "disk" if module.startswith(_IN_MEMORY_RUNNERS) else "shuffle"


def split_dir(output_dir: str, split: str) -> str:
    return os.path.join(output_dir, f"Split-{split}")


# ------------------------------------------------------------------------------------------------
# Per-user steps


class _CountItems(beam.CombineFn):
    """``(user, items, timestamps)`` sequences -> ``{item: interactions}`` over all of them.

    One input per user, counted with ``Counter.update`` (C speed), instead of one Beam element
    per interaction (``Count.PerElement``): the runner lifts it, so each bundle hands on one
    dictionary.
    """

    def create_accumulator(self):
        return collections.Counter()

    def add_input(self, counts, sequence):
        counts.update(sequence[1])
        return counts

    def merge_accumulators(self, accumulators):
        accumulators = iter(accumulators)
        merged = next(accumulators, None)
        if merged is None:
            return collections.Counter()
        for counts in accumulators:
            merged.update(counts)
        return merged

    def extract_output(self, counts):
        return dict(counts)


class _FilterUsers(beam.DoFn):
    """Drops users below ``minimum`` interactions (tag ``SHORT``: their count) and keeps the
    latest ``maximum`` of the others (tag ``TRUNCATED``: how many older ones were dropped)."""

    SHORT = "short"
    TRUNCATED = "truncated"

    def __init__(self, minimum: int, maximum: Optional[int]):
        self._minimum = minimum
        self._maximum = maximum

    def process(self, sequence):
        user, items, timestamps = sequence
        if len(items) < self._minimum:
            yield beam.pvalue.TaggedOutput(self.SHORT, len(items))
            return
        if self._maximum is not None and len(items) > self._maximum:
            yield beam.pvalue.TaggedOutput(self.TRUNCATED, len(items) - self._maximum)
            items = items[-self._maximum:]
            timestamps = None if timestamps is None else timestamps[-self._maximum:]
        yield user, items, timestamps


#: Users whose windows are built and serialized in one numpy pass
#: (``windows.users_window_examples``): per user, the many small numpy calls cost more than the
#: windows themselves.
USERS_PER_BATCH = 128


class _MakeWindows(beam.DoFn):
    """A batch of kept user sequences -> their serialized tf.Examples of each split, one list
    per split tagged by it (and the users' serving windows, tagged ``serving``, when asked
    for), and ``(counter, examples)`` per split tagged ``COUNTS``: one Beam element per batch
    and split, not per example (:mod:`~components.preprocessing.tfrecord_batches`)."""

    COUNTS = "counts"

    def __init__(self, window: WindowConfig, protocol: ProtocolConfig, serving: bool = False):
        self._window = window
        self._protocol = protocol
        self._serving = serving

    def process(self, batch, lookup: Dict[str, int]):
        to_id = lookup.__getitem__
        histories = [UserHistory(user, list(map(to_id, items)), timestamps)
                     for user, items, timestamps in batch]
        # Deterministic bytes (features in one fixed order), so every runner and process writes
        # the same files; built without a proto per window (example_bytes.py).
        examples = users_window_examples(histories, self._window, self._protocol)
        if self._serving:
            examples[SERVING] = serving_window_examples(histories, self._window)
        for split, written in examples.items():
            yield beam.pvalue.TaggedOutput(split, written)
            yield beam.pvalue.TaggedOutput(self.COUNTS, (f"examples.{split}", len(written)))


class _MakeChunks(beam.DoFn):
    """Kept user sequence -> serialized training chunks (``sequences.user_chunks``)."""

    def __init__(self, window: WindowConfig, protocol: ProtocolConfig, spec: SequenceSpec):
        self._window = window
        self._protocol = protocol
        self._spec = spec

    def process(self, sequence, lookup: Dict[str, int]):
        user, items, timestamps = sequence
        ids = [lookup[item] for item in items]
        for chunk in chunks.user_chunks(user, ids, timestamps, self._window, self._protocol,
                                        self._spec):
            yield (len(chunks.chunk_labels(chunk)),
                   chunks.to_example(chunk).SerializeToString(deterministic=True))


class _KCoreRound(beam.DoFn):
    """One k-core round (``kcore.filter_round``): tagged ``RARE`` (interactions of rare items
    removed) and ``SHORT`` (interactions of a user dropped), main output the kept sequence."""

    RARE = "rare"

    def __init__(self, min_item: int, min_user: int):
        self._min_item = min_item
        self._min_user = min_user

    def process(self, sequence, counts: Dict[str, int]):
        user, items, timestamps = sequence
        result = kcore.filter_round(items, timestamps, counts, self._min_item, self._min_user)
        if result.rare_interactions:
            yield beam.pvalue.TaggedOutput(self.RARE, result.rare_interactions)
        if result.items is None:
            yield beam.pvalue.TaggedOutput(_FilterUsers.SHORT, result.dropped_user_interactions)
            return
        yield user, result.items, result.timestamps


def _k_core(users: UserSequences, min_item: int, min_user: int, rounds: int):
    """Unrolled k-core rounds over users' sequences: returns the kept :class:`UserSequences`
    and the counter PCollections (per-round removals, rare items, dropped users, and the items
    still below ``min_item`` after the last round)."""
    counters = []
    for r in range(rounds):
        counts = users.combine_globally(f"KCoreCounts{r}", _CountItems())
        users, outputs = users.map_users(
            f"KCoreRound{r}", _KCoreRound(min_item, min_user),
            tags=(_KCoreRound.RARE, _FilterUsers.SHORT), counts=beam.pvalue.AsSingleton(counts))
        counters += [
            outputs[_KCoreRound.RARE] | f"KCoreRare{r}" >> beam.FlatMap(
                lambda n, r=r: [(f"filtered.{kcore.FILTERED_ITEM_TOO_RARE}", n),
                                (f"kcore.round_{r + 1:02d}_removed", n)]),
            outputs[_FilterUsers.SHORT] | f"KCoreShort{r}" >> beam.FlatMap(
                lambda n, r=r: [(f"filtered.{FILTERED_USER_TOO_SHORT}", n), ("users_filtered", 1),
                                (f"kcore.round_{r + 1:02d}_removed", n)]),
        ]
    counters.append(users.combine_globally("KCoreFinalCounts", _CountItems())
                    | "KCoreUnconverged" >> beam.FlatMap(
                        lambda counts: [("kcore.items_below_min", 1)
                                        for n in counts.values() if n < min_item]))
    return users, counters


class _Truncate(beam.DoFn):
    """Keeps each user's latest ``maximum`` interactions (tag ``TRUNCATED``: how many older ones
    were dropped)."""

    def __init__(self, maximum: int):
        self._maximum = maximum

    def process(self, sequence):
        user, items, timestamps = sequence
        if len(items) > self._maximum:
            yield beam.pvalue.TaggedOutput(_FilterUsers.TRUNCATED, len(items) - self._maximum)
            items = items[-self._maximum:]
            timestamps = None if timestamps is None else timestamps[-self._maximum:]
        yield user, items, timestamps


class _CountKept(beam.DoFn):
    """Kept sequence -> ``("kept", interactions)``, ``("users_kept", 1)``."""

    def process(self, sequence):
        yield "kept", len(sequence[1])
        yield "users_kept", 1


def _write_text(path: str, text: str) -> str:
    filesystem.write_text(path, text)
    return path


# ------------------------------------------------------------------------------------------------
# The pipeline


def build_pipeline(p: beam.Pipeline, source: beam.PTransform, output_dir: str,
                   config: PreprocessConfig, user_grouping: str = "auto") -> None:
    """Adds the preprocessing of ``source`` to ``p``; outputs land in ``output_dir``.

    ``user_grouping`` (:data:`USER_GROUPINGS`): how rows are grouped by user for the per-user
    steps (``user_partitions.py``): ``"shuffle"`` by the runner, ``"disk"`` through partition
    files under ``output_dir`` (the memory of a worker bounded whatever the log's size),
    ``"auto"`` on disk for the in-memory local runners (the DirectRunner and its modes) and by
    the runner's shuffle otherwise. Both write the same examples, stats and vocabulary.
    """
    log: readers.ParsedLog = p | "Read" >> source
    minimum = max(config.min_user_interactions, config.protocol.min_sequence_length)

    k_core = config.min_item_interactions > 0
    # Sources already hand over one element per user and batch (Beam's per-element cost was
    # the largest part of the run when every interaction was an element).
    if resolve_user_grouping(p, user_grouping) == "disk":
        directory = filesystem.join(output_dir, f"{user_partitions.TEMP_PREFIX}{uuid.uuid4().hex}")
        filesystem.makedirs(directory)
        users = user_partitions.PartitionedUserSequences.group(log.user_rows, directory)
    else:
        users = user_partitions.ShuffledUserSequences.group(log.user_rows)
    kept, filtered = users.map_users(
        "FilterUsers", _FilterUsers(minimum, None if k_core else config.max_user_interactions),
        tags=(_FilterUsers.SHORT, _FilterUsers.TRUNCATED))
    short = filtered[_FilterUsers.SHORT]
    kcore_counters = []
    truncated = filtered[_FilterUsers.TRUNCATED]
    if k_core:
        # The core is of the whole log; each user's cap applies to the core's sequences (so a
        # capped user's older items leave afterwards, as the cap means).
        kept, kcore_counters = _k_core(kept, config.min_item_interactions, minimum,
                                       config.kcore_max_rounds)
        if config.max_user_interactions is not None:
            kept, capped = kept.map_users("CapUsers", _Truncate(config.max_user_interactions),
                                          tags=(_FilterUsers.TRUNCATED,))
            truncated = capped[_FilterUsers.TRUNCATED]

    vocabulary = (kept.combine_globally("ItemCounts", _CountItems())
                  | "Vocabulary" >> beam.Map(Vocabulary.from_counts))
    lookup = vocabulary | "Lookup" >> beam.Map(lambda v: v.lookup())
    genres = log.item_genres | "GenresToDict" >> beam.combiners.ToDict()
    _ = (vocabulary
         | "WriteVocabulary" >> beam.Map(lambda v: v.write(output_dir))
         | "WriteItemFeatures" >> beam.Map(
             lambda _, v, g: ItemFeatures.from_genres(v, g).write(output_dir),
             v=beam.pvalue.AsSingleton(vocabulary), g=beam.pvalue.AsSingleton(genres)))

    windows = kept.flat_map(
        "Windows", _MakeWindows(config.window, config.protocol, config.serving_windows),
        tags=(*SPLITS, SERVING, _MakeWindows.COUNTS), batch_size=USERS_PER_BATCH,
        lookup=beam.pvalue.AsSingleton(lookup))
    shards = config.num_shards
    window_splits = SPLITS + ((SERVING,) if config.serving_windows else ())
    for split in window_splits:
        _ = windows[split] | f"Write{split.title()}" >> WriteTFRecordBatches(
            os.path.join(split_dir(output_dir, split), "data_tfrecord"),
            file_name_suffix=".gz", num_shards=shards)

    sequence_counters = []
    if config.sequences is not None:
        chunked = kept.flat_map(
            "Chunks", _MakeChunks(config.window, config.protocol, config.sequences),
            lookup=beam.pvalue.AsSingleton(lookup)).main
        _ = (chunked
             | "ChunkExamples" >> beam.Map(lambda c: c[1])
             | "WriteTrainSequences" >> beam.io.WriteToTFRecord(
                 os.path.join(split_dir(output_dir, TRAIN_SEQUENCES), "data_tfrecord"),
                 file_name_suffix=".gz", num_shards=shards))
        sequence_counters.append(chunked | "ChunkCounter" >> beam.FlatMap(
            lambda c: [(f"examples.{TRAIN_SEQUENCES}", 1), ("sequence_labels", c[0])]))

    _ = (log.dead_letters
         | "DeadLetterJson" >> beam.Map(DeadLetter.to_json)
         | "WriteDeadLetters" >> beam.io.WriteToText(
             os.path.join(output_dir, DEAD_LETTER_DIR, "dead_letter"), file_name_suffix=".jsonl",
             num_shards=1, shard_name_template=""))

    # Counts. Every interaction read ends up kept, filtered (by reason) or rejected.
    counters = [
        log.counts,
        log.filtered | "FilteredCounter" >> beam.Map(lambda kv: (f"filtered.{kv[0]}", kv[1])),
        log.dead_letters | "RejectedCounter" >> beam.FlatMap(
            lambda d: [("rejected", d.interactions), ("dead_letter_rows", 1),
                       (f"rejected_by_field.{d.field}", d.interactions),
                       (f"rejected_by_reason.{d.code or 'unspecified'}", d.interactions)]),
        short | "ShortCounter" >> beam.FlatMap(
            lambda n: [(f"filtered.{FILTERED_USER_TOO_SHORT}", n), ("users_filtered", 1)]),
        truncated | "TruncatedCounter" >> beam.Map(
            lambda n: (f"filtered.{FILTERED_BEYOND_USER_CAP}", n)),
        kept.flat_map("KeptCounter", _CountKept()).main,
        vocabulary | "ItemsCounter" >> beam.Map(lambda v: ("items", v.size)),
        windows[_MakeWindows.COUNTS],
    ] + sequence_counters + kcore_counters
    _ = (counters
         | "FlattenCounters" >> beam.Flatten()
         | "SumCounters" >> beam.CombinePerKey(sum)
         | "CountersToDict" >> beam.combiners.ToDict()
         | "WriteCounters" >> beam.Map(
             lambda d: _write_text(os.path.join(output_dir, "counters.json"),
                                   json.dumps(d, sort_keys=True))))


def _nest(counters: Dict[str, int]) -> dict:
    out: dict = {}
    for key, value in sorted(counters.items()):
        node = out
        parts = key.split(".", 1)
        if len(parts) == 2:
            node = out.setdefault(parts[0], {})
        node[parts[-1]] = value
    return out


# What a run writes at the top of its output directory (besides ``Split-*`` and dead letters).
_OUTPUT_FILES = (VOCABULARY_FILE, ITEM_FEATURES_FILE, SCHEMA_FILE, SEQUENCE_SCHEMA_FILE,
                 SERVING_SCHEMA_FILE, STATS_FILE, "counters.json")


def _remove_outputs(output_dir: str, created: bool, keep_dead_letters: bool) -> None:
    """Removes what a failed or refused run wrote: the whole directory when the run created it
    (unless dead letters are kept), else every output of this module in it; Beam's
    ``beam-temp-*`` folders go in every case. With ``keep_dead_letters`` only
    ``dead_letter/dead_letter.jsonl`` and ``stats.json`` stay."""
    if not filesystem.exists(output_dir):
        return
    if created and not keep_dead_letters:
        filesystem.rmtree(output_dir)
        return
    for name in filesystem.listdir(output_dir):
        name = name.rstrip("/")
        path = os.path.join(output_dir, name)
        if name == DEAD_LETTER_DIR and keep_dead_letters:
            for inner in filesystem.listdir(path):
                if inner.startswith("beam-temp-"):
                    filesystem.rmtree(os.path.join(path, inner.rstrip("/")))
        elif name.startswith(("Split-", "beam-temp-")) or name == DEAD_LETTER_DIR:
            filesystem.rmtree(path)
        elif name in _OUTPUT_FILES and not (keep_dead_letters and name == STATS_FILE):
            filesystem.remove(path)


def _remove_user_partitions(output_dir: str) -> None:
    """Removes the partition files of a disk grouping (``user_partitions.py``)."""
    for name in filesystem.listdir(output_dir):
        name = name.rstrip("/")
        if name.startswith(user_partitions.TEMP_PREFIX):
            filesystem.rmtree(os.path.join(output_dir, name))


def _input_names(source: beam.PTransform) -> str:
    paths = getattr(source, "paths", None)
    if paths:
        return ", ".join(paths)
    return getattr(source, "name", None) or type(source).__name__


def _run_beam(source: beam.PTransform, output_dir: str, config: PreprocessConfig,
              beam_args: Optional[Sequence[str]], pipeline: Optional[beam.Pipeline],
              user_grouping: str = "auto") -> None:
    """Builds and runs the pipeline; any failure comes out as one line.

    Raises:
      InputError: an input check before Beam, or a file that could not be read inside it
        (``file:line: ...``).
      PreprocessingError: anything else that failed inside Beam (its type and first line; the
        original exception is chained).
    """
    if pipeline is None:
        pipeline = beam.Pipeline(options=PipelineOptions(list(beam_args or [])))
    try:
        with quiet_beam_errors(), pipeline as p:
            build_pipeline(p, source, output_dir, config, user_grouping)
    except (InputError, PreprocessingError) as e:
        raise type(e)(one_line(e)) from e
    except Exception as e:  # noqa: BLE001  (one clear line instead of a Beam traceback)
        raise PreprocessingError(f"preprocessing {_input_names(source)} failed inside Beam: "
                                 f"{type(e).__name__}: {one_line(e)}") from e


def run_preprocessing(source: beam.PTransform, output_dir: str,
                      config: PreprocessConfig = PreprocessConfig(),
                      beam_args: Optional[Sequence[str]] = None,
                      pipeline: Optional[beam.Pipeline] = None,
                      user_grouping: str = "auto") -> dict:
    """Runs the preprocessing and returns the stats (also written to ``stats.json``).

    Args:
      source: a reader from ``readers`` (or ``SourceConfig.build()``).
      output_dir: where the outputs go (local or any filesystem Beam has: ``filesystem.py``).
      config: windows, protocol and filters.
      beam_args: Beam pipeline options (runner and its flags) for a new pipeline.
      pipeline: an unstarted pipeline to use instead (e.g. the one a TFX component is given);
        it is run and waited for here.
      user_grouping: how rows are grouped by user (:data:`USER_GROUPINGS`, ``build_pipeline``):
        by default on disk for the DirectRunner, whose own grouping holds the whole log in
        memory, and by the runner's shuffle otherwise.

    A run that fails or is refused leaves no partial output: no examples, vocabulary or
    ``beam-temp-*`` folders (and no directory at all when it created ``output_dir``), except
    that a refused run with dead letters keeps ``dead_letter/dead_letter.jsonl`` and a
    ``stats.json`` saying why it was refused.

    Raises:
      InputError: the input cannot be read at all (checked before any Beam work starts), or a
        file could not be read inside Beam; the message names the file (and line).
      InputRefusedError: nothing usable was kept, or more than ``max_rejected_fraction`` of the
        interactions were rejected (the dead letters say what was wrong).
      PreprocessingError: the counts do not add up, the k-core did not converge, or something
        else failed inside Beam (one line).
    """
    started = time.time()
    created = not filesystem.exists(output_dir)
    if user_grouping not in USER_GROUPINGS:
        raise ValueError(f"user_grouping must be one of {USER_GROUPINGS}, not {user_grouping!r}")
    try:
        filesystem.makedirs(output_dir)
        _run_beam(source, output_dir, config, beam_args, pipeline, user_grouping)
        _remove_user_partitions(output_dir)
        stats = _collect_stats(source, output_dir, config, started)
    except BaseException:
        _remove_outputs(output_dir, created, keep_dead_letters=False)
        raise
    try:
        _check_stats(stats, source, output_dir, config)
    except PreprocessingError as e:
        stats["refused"] = str(e)
        _write_text(os.path.join(output_dir, STATS_FILE),
                    json.dumps(stats, indent=2, sort_keys=True))
        _remove_outputs(output_dir, created, keep_dead_letters=stats["dead_letter_rows"] > 0)
        raise
    return stats


def _collect_stats(source: beam.PTransform, output_dir: str, config: PreprocessConfig,
                   started: float) -> dict:
    """Reads the counters the pipeline wrote into the stats, writes ``stats.json`` and the
    schemas."""
    with filesystem.open_text(os.path.join(output_dir, "counters.json")) as f:
        counters: Dict[str, int] = json.load(f)
    filesystem.remove(os.path.join(output_dir, "counters.json"))

    stats = _nest(counters)
    stats.setdefault("filtered", {})
    stats.setdefault("examples", {})
    for split in SPLITS:
        stats["examples"].setdefault(split, 0)
    for key in ("kept", "rejected", "dead_letter_rows", "users_kept", "users_filtered", "items",
                "interactions_read", "lines_read", "blank_lines", "header_lines"):
        stats.setdefault(key, 0)
    stats["users_read"] = stats["users_kept"] + stats["users_filtered"]
    if config.min_item_interactions > 0:
        block = stats.setdefault("kcore", {})
        below = block.pop("items_below_min", 0)
        block["rounds_with_removals"] = sum(1 for k, v in block.items()
                                            if k.startswith("round_") and v)
        block["converged"] = below == 0
    accounted = stats["kept"] + sum(stats["filtered"].values()) + stats["rejected"]
    stats["accounted"] = accounted
    stats["config"] = config.to_json()
    stats["source"] = type(source).__name__
    stats["elapsed_seconds"] = round(time.time() - started, 2)

    num_items = stats["items"]
    _write_text(os.path.join(output_dir, SCHEMA_FILE),
                schema_text(window_schema(config.window.example, num_items or None)))
    if config.serving_windows:
        stats["examples"].setdefault(SERVING, 0)
        _write_text(os.path.join(output_dir, SERVING_SCHEMA_FILE),
                    schema_text(serving_window_schema(config.window.example, num_items or None)))
    if config.sequences is not None:
        stats["examples"].setdefault(TRAIN_SEQUENCES, 0)
        stats.setdefault("sequence_labels", 0)
        _write_text(os.path.join(output_dir, SEQUENCE_SCHEMA_FILE),
                    schema_text(sequence_schema(config.sequences, num_items or None)))
    _write_text(os.path.join(output_dir, STATS_FILE), json.dumps(stats, indent=2, sort_keys=True))
    return stats


def _check_stats(stats: dict, source: beam.PTransform, output_dir: str,
                 config: PreprocessConfig) -> None:
    """Raises when the run's output cannot be trusted or the input is refused."""
    dead_letter_path = os.path.join(output_dir, DEAD_LETTER_DIR, "dead_letter.jsonl")
    if stats["accounted"] != stats["interactions_read"]:
        raise PreprocessingError(
            f"counts do not add up: read {stats['interactions_read']} interactions but "
            f"kept + filtered + rejected = {stats['accounted']}")
    read = stats["interactions_read"]
    if config.min_item_interactions > 0 and not stats["kcore"]["converged"]:
        raise PreprocessingError(
            f"the k-core (users >= {max(config.min_user_interactions, 1)}, items >= "
            f"{config.min_item_interactions}) did not reach its fixed point in "
            f"{config.kcore_max_rounds} rounds; raise kcore_max_rounds (--kcore-max-rounds)")
    if stats["kept"] == 0 or stats["examples"]["test"] == 0:
        raise InputRefusedError(
            f"no usable interaction in {_input_names(source)}: read {read}, rejected "
            f"{stats['rejected']}, filtered {stats['filtered']}; first rejects: "
            f"{_first_dead_letters(dead_letter_path)}")
    if read and stats["rejected"] / read > config.max_rejected_fraction:
        raise InputRefusedError(
            f"{stats['rejected']} of {read} interactions rejected in {_input_names(source)} "
            f"(more than {config.max_rejected_fraction:.0%}); first rejects: "
            f"{_first_dead_letters(dead_letter_path)}; all in {dead_letter_path}")


def _first_dead_letters(path: str, n: int = 3) -> List[str]:
    if not filesystem.exists(path):
        return []
    out = []
    with filesystem.open_text(path) as f:
        for line in f:
            out.append(str(DeadLetter(**json.loads(line))))
            if len(out) == n:
                break
    return out
