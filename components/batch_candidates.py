"""Batch candidates on Beam: the top-K of every user from a pushed bundle, for large user sets.

The same job as :func:`t2diff_tf.serving.batch_candidates.generate_candidates` (same rows, same
choice of each user's window, same skip reasons), spread over Beam workers: every worker loads
the bundle once (``DoFn.setup``) and scores batches of users. Use it when the users do not fit
one process's time budget; DirectRunner by default, any runner through ``beam_args``::

    ReadWindows (per file)  -> (user, window) | malformed -> dead letters
    LatestWindowPerUser     CombinePerKey: latest target_timestamp, then longer history, then
                            read last (file order, record order); the others are counted
    BatchElements           batch_size users
    ScoreWindows            user tower + exact or ScaNN search + raw ids | skipped -> dead letters
    Write                   <output_dir>/candidates-SSSSS-of-NNNNN.parquet (or .tfrecord.gz)

``<output_dir>/skipped.jsonl`` holds every skipped window (file, record, user, reason, detail),
``<output_dir>/summary.json`` the counts, which add up: ``windows_read = users_written +
superseded + sum(skipped)``. Files are read whole by one worker each, so parallelism in reading
is per file (the preprocessing writes ``--num-shards`` files per split).
"""

from __future__ import annotations

import json
import os
import time
from typing import Dict, List, Optional, Sequence, Tuple

import apache_beam as beam
import numpy as np
import tensorflow as tf
from apache_beam.options.pipeline_options import PipelineOptions

from components.beam_errors import one_line, quiet_beam_errors
from t2diff_tf import features as F
from t2diff_tf.serving import batch_candidates as B

CANDIDATES_PREFIX = "candidates"
SKIPPED_FILE = "skipped.jsonl"
SUMMARY_FILE = "summary.json"
COUNTS_PREFIX = "counts"
DEAD = "dead"
COUNTS = "counts"

# Count keys (besides ``skipped/<reason>``).
WINDOWS_READ = "windows_read"
USERS_WRITTEN = "users_written"
SUPERSEDED = "superseded"
TIES = "ties_broken_by_read_order"


def _dead_letter(path: str, record: int, reason: str, detail: str,
                 user: Optional[str] = None) -> str:
    return json.dumps({"file": path, "record": int(record), "user_id": user, "reason": reason,
                       "detail": detail})


class ReadWindows(beam.DoFn):
    """``(file index, path)`` -> ``(user, (key, serialized))`` per well-formed window, where
    ``key = (target_timestamp, history length, file index, record)`` orders a user's windows.
    Malformed records go to the ``dead`` output; ``counts`` gets the windows read."""

    def __init__(self, history_length: int, batch_size: int):
        self.history_length = history_length
        self.batch_size = batch_size

    def process(self, element: Tuple[int, str]):
        file_index, path = element
        spec = B.window_parse_spec(self.history_length)
        for batch in B.record_batches([path], self.batch_size):
            yield beam.pvalue.TaggedOutput(COUNTS, (WINDOWS_READ, len(batch.serialized)))
            parsed, good, bad = B.parse_windows(batch.serialized, spec)
            for row, message in bad:
                yield beam.pvalue.TaggedOutput(DEAD, _dead_letter(
                    path, batch.first_record + row, B.MALFORMED, message))
                yield beam.pvalue.TaggedOutput(COUNTS, (f"skipped/{B.MALFORMED}", 1))
            if not good:
                continue
            lengths = np.count_nonzero(parsed[F.HISTORY], axis=1)
            for i, row in enumerate(good):
                record = batch.first_record + row
                key = (int(parsed[F.TARGET_TIMESTAMP][i]), int(lengths[i]), file_index, record)
                user = parsed[F.USER_ID][i].decode("utf-8", errors="replace")
                yield user, (key, path, bytes(batch.serialized[row]))


class LatestWindow(beam.CombineFn):
    """A user's windows -> ``(latest (key, path, serialized), windows, windows tied with the
    latest on (target_timestamp, history length))``."""

    def create_accumulator(self):
        return None, 0, 0

    def add_input(self, accumulator, window):
        return self.merge_accumulators([accumulator, (window, 1, 1)])

    def merge_accumulators(self, accumulators):
        best, count, tied = None, 0, 0
        for window, n, n_tied in accumulators:
            count += n
            if window is None:
                continue
            if best is None or window[0][:2] > best[0][:2]:
                best, tied = window, n_tied
            elif window[0][:2] == best[0][:2]:
                tied += n_tied
                best = max(best, window, key=lambda w: w[0])
        return best, count, tied

    def extract_output(self, accumulator):
        return accumulator


class ScoreWindows(beam.DoFn):
    """Batches of ``(user, (key, path, serialized))`` -> output rows (dicts for Parquet,
    serialized ``tf.Example`` s for TFRecord); skipped windows to ``dead``."""

    def __init__(self, bundle_dir: str, config: B.BatchCandidatesConfig,
                 vocabulary_path: Optional[str], output_format: str):
        self.bundle_dir = bundle_dir
        self.config = config
        self.vocabulary_path = vocabulary_path
        self.output_format = output_format

    def setup(self):
        self.bundle = B.CandidateBundle(self.bundle_dir)
        self.mapping = B.item_id_mapping(self.bundle, self.vocabulary_path)
        self.spec = B.window_parse_spec(self.bundle.history_length)

    def process(self, batch: List[Tuple[str, tuple]]):
        serialized = np.asarray([window[2] for _, window in batch], dtype=object)
        parsed, _, _ = B.parse_windows(serialized, self.spec)
        scored = B.score_windows(self.bundle, parsed, self.config.top_k, self.config.index,
                                 self.mapping, self.config.leaves_to_search)
        for row, reason, detail in scored.skipped:
            user, (key, path, _) = batch[row]
            yield beam.pvalue.TaggedOutput(DEAD, _dead_letter(path, key[3], reason, detail,
                                                              user or None))
            yield beam.pvalue.TaggedOutput(COUNTS, (f"skipped/{reason}", 1))
        yield beam.pvalue.TaggedOutput(COUNTS, (USERS_WRITTEN, len(scored.rows)))
        version = self.bundle.model_version
        for i, user in enumerate(scored.user_ids):
            items, scores = list(scored.raw_item_ids[i]), scored.scores[i]
            if self.output_format == B.PARQUET:
                yield {B.USER_ID: user, B.ITEM_IDS: items,
                       B.SCORES: [float(s) for s in scores], B.MODEL_VERSION: version}
            else:
                yield B.candidate_example(user, items, scores, version)


def _latest_counts(element):
    _, (_, windows, tied) = element
    yield SUPERSEDED, windows - 1
    if tied > 1:
        yield TIES, 1


def build_candidates_pipeline(pipeline: beam.Pipeline, bundle_dir: str, files: Sequence[str],
                              output_dir: str, config: B.BatchCandidatesConfig,
                              history_length: int, vocabulary_path: Optional[str],
                              output_format: str) -> None:
    """Adds the job's steps to ``pipeline`` (module docstring)."""
    read = (pipeline
            | "Files" >> beam.Create(list(enumerate(files)))
            | "ReadWindows" >> beam.ParDo(ReadWindows(history_length, config.batch_size))
            .with_outputs(DEAD, COUNTS, main="windows"))
    latest = read.windows | "LatestWindowPerUser" >> beam.CombinePerKey(LatestWindow())
    scored = (latest
              | "Chosen" >> beam.Map(lambda element: (element[0], element[1][0]))
              | "Batch" >> beam.BatchElements(min_batch_size=config.batch_size,
                                              max_batch_size=config.batch_size)
              | "ScoreWindows" >> beam.ParDo(ScoreWindows(bundle_dir, config, vocabulary_path,
                                                          output_format))
              .with_outputs(DEAD, COUNTS, main="rows"))
    prefix = os.path.join(output_dir, CANDIDATES_PREFIX)
    if output_format == B.PARQUET:
        _ = scored.rows | "WriteParquet" >> beam.io.WriteToParquet(
            prefix, B.parquet_schema(), file_name_suffix=".parquet")
    else:
        _ = scored.rows | "WriteTFRecord" >> beam.io.WriteToTFRecord(
            prefix, file_name_suffix=".tfrecord.gz")
    _ = ((read[DEAD], scored[DEAD]) | "DeadLetters" >> beam.Flatten()
         | "WriteDeadLetters" >> beam.io.WriteToText(
             os.path.join(output_dir, SKIPPED_FILE), shard_name_template=""))
    superseded = latest | "SupersededCounts" >> beam.FlatMap(_latest_counts)
    _ = ((read[COUNTS], scored[COUNTS], superseded) | "Counts" >> beam.Flatten()
         | "SumCounts" >> beam.CombinePerKey(sum)
         | "CountsJson" >> beam.Map(json.dumps)
         | "WriteCounts" >> beam.io.WriteToText(os.path.join(output_dir, COUNTS_PREFIX),
                                                file_name_suffix=".jsonl"))


def run_batch_candidates(bundle: str, examples: Sequence[str], output_dir: str,
                         config: B.BatchCandidatesConfig = B.BatchCandidatesConfig(),
                         beam_args: Optional[Sequence[str]] = None) -> Dict[str, object]:
    """Runs the Beam job and returns the summary (also ``<output_dir>/summary.json``).

    The bundle, the example files and the output format are checked before any Beam work (a
    clear error naming the file); a run that fails inside Beam leaves no candidates behind.

    Raises:
      BatchCandidatesError: bad input, no user scored, or a failure inside Beam (one line).
    """
    started = time.time()
    loaded = B.CandidateBundle(bundle)  # checks the whole bundle before Beam starts
    output_format = config.output_format or B.PARQUET
    files = B.expand_examples(examples)
    vocabulary_path = config.examples_vocabulary or B.find_examples_vocabulary(files)
    if config.index == B.SCANN:
        loaded.scann_index()
    if tf.io.gfile.exists(output_dir) and tf.io.gfile.listdir(output_dir):
        raise B.BatchCandidatesError(f"{output_dir}: output directory exists and is not empty")
    tf.io.gfile.makedirs(output_dir)
    pipeline = beam.Pipeline(options=PipelineOptions(list(beam_args or [])))
    try:
        with quiet_beam_errors(), pipeline as p:
            build_candidates_pipeline(p, loaded.directory, files, output_dir, config,
                                      loaded.history_length, vocabulary_path, output_format)
    except Exception as e:  # noqa: BLE001  (one clear line instead of a Beam traceback)
        tf.io.gfile.rmtree(output_dir)
        raise B.BatchCandidatesError(f"batch candidates failed inside Beam: "
                                     f"{one_line(e)}") from e
    counts: Dict[str, int] = {}
    for path in tf.io.gfile.glob(os.path.join(output_dir, COUNTS_PREFIX + "*")):
        with tf.io.gfile.GFile(path) as f:
            for line in f:
                key, value = json.loads(line)
                counts[key] = counts.get(key, 0) + int(value)
        tf.io.gfile.remove(path)
    skipped = {key.split("/", 1)[1]: n for key, n in sorted(counts.items())
               if key.startswith("skipped/")}
    summary = {
        "output": os.path.join(output_dir, CANDIDATES_PREFIX + "-*"),
        "bundle": loaded.directory, "model_version": loaded.model_version,
        "index": config.index, "k": min(config.top_k, loaded.num_items), "files": list(files),
        "windows_read": counts.get(WINDOWS_READ, 0),
        "users_written": counts.get(USERS_WRITTEN, 0),
        "superseded": counts.get(SUPERSEDED, 0), "skipped": skipped,
        "skipped_path": os.path.join(output_dir, SKIPPED_FILE),
        "ties_broken_by_read_order": counts.get(TIES, 0),
        "item_id_mapping": vocabulary_path if B.item_id_mapping(
            loaded, vocabulary_path).table is not None else "identity",
        "seconds": round(time.time() - started, 3), "runner_args": list(beam_args or [])}
    accounted = summary["users_written"] + summary["superseded"] + sum(skipped.values())
    if accounted != summary["windows_read"]:
        raise B.BatchCandidatesError(f"windows do not add up: {summary}")
    if summary["users_written"] == 0:
        raise B.BatchCandidatesError(
            f"no user could be scored from {len(files)} file(s) "
            f"({summary['windows_read']:,} windows; skipped: {skipped}); see "
            f"{summary['skipped_path']}")
    with tf.io.gfile.GFile(os.path.join(output_dir, SUMMARY_FILE), "w") as f:
        f.write(json.dumps(summary, indent=2) + "\n")
    return summary
