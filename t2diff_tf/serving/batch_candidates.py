"""Batch candidate generation: the top-K items of every user, from a pushed bundle.

Nightly batch jobs (email, pre-computed home feeds, cache warm-up) need each user's candidates
written to a file, beside the online TF Serving path. :func:`generate_candidates` reads window
examples, embeds them with the bundle's user-tower SavedModel in batches, searches the bundle's
item embeddings, and writes one row per user::

    user_id        string           the raw user id of the window
    item_ids       list<string>     K raw item ids (through the bundle's vocabulary), best first
    scores         list<float32>    their inner-product scores
    model_version  int64            the bundle's ``manifest.json`` ``model_version``

as Parquet (``.parquet``) or as ``tf.Example`` TFRecords (``.tfrecord``/``.tfrecord.gz``, same
feature names). Beside it, ``<output>.summary.json`` (counts, index, timing) and
``<output>.skipped.jsonl`` (every skipped window: file, record, user, reason). The output is
written under a temporary name and renamed at the end: a failed run leaves no half-written file.

It works from the bundle directory alone (wherever it was copied): the user tower from
``user_tower/<version>``, the item embeddings from the ``top_k/<version>`` SavedModel's
variables (the snapshot the exact top-K model serves), the raw ids from the bundle's
``item_vocabulary.tsv`` (checked against the manifest's sha256) and, for ``index="scann"``,
the serialized searcher in ``scann_searcher/``. Nothing of the model's Python code is needed.

**Input.** ``tf.Example`` windows in the layout of :mod:`t2diff_tf.features` (what the
preprocessing writes per split; gzip or not): ``user_id`` and the ``QUERY_FEATURES``
(``history``, ``history_time_lag``, ``history_session``, ``history_timestamps`` ``[L]``,
``session_length``); ``target``
is not read, ``target_timestamp`` is optional. A user with several windows is scored once, on
the window with the latest ``target_timestamp`` (then the longer history, then the one read last,
files in sorted order); the others are counted as ``superseded_by_later_window``. The input
nightly jobs want is the preprocessing's ``Split-serving``: one window per user that ends at the
user's latest behaviour (no target), so the candidates are for the item after everything the log
holds. (Under leave-one-out, ``Split-test`` also holds one window per user, but its history stops
before the user's last item.)

**Item ids.** The windows hold integer item ids of the vocabulary they were written with. When
that vocabulary is found (``item_vocabulary.tsv`` in the examples' artifact directory, the parent
of ``Split-*``, or passed explicitly) and differs from the bundle's, ids are mapped through the
raw ids to the bundle's; a window holding an item the bundle does not know is skipped
(``item_not_in_bundle_vocabulary``), never scored with a wrong id. Without that vocabulary the
ids are taken as the bundle's, and ids outside ``0..N`` are skipped
(``item_id_outside_bundle_vocabulary``).

**Nothing is lost silently:** ``windows_read = users_written + superseded + sum(skipped)``, and
the summary says so. Malformed records (``malformed_example``) and windows the serving
signature's own guards refuse (``rejected_by_user_tower``: e.g. a time lag out of range) are
found row by row, so one bad window costs one row, not its batch. A file that cannot be read
whole stops the run with the file named: a corrupt TFRecord, or a truncated gzip file (checked
with zlib first, since TensorFlow's reader takes some truncated files for shorter ones).

``components/batch_candidates.py`` runs the same job as a Beam pipeline (same rows, same counts)
for user sets too large for one process.

**Index.** ``exact``: ``scores = E_u @ E_items^T`` and ``tf.math.top_k`` (ties to the lower
item id), the same result as the bundle's ``top_k`` model for any K. ``scann``: the pushed
ScaNN searcher (``leaves_to_search`` overrides the pushed value); its recall against exact
search is in the manifest. Beyond the index's ``reorder_k``, ScaNN's scores are the quantised
estimates; the summary says when K exceeds it.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
import zlib
from collections import Counter
from typing import Callable, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import tensorflow as tf

from t2diff_tf import features as F
from t2diff_tf.serving.manifest import MANIFEST_FILE, ServingManifest, file_sha256

EXACT = "exact"
SCANN = "scann"
INDEXES = (EXACT, SCANN)
PARQUET = "parquet"
TFRECORD = "tfrecord"
FORMATS = (PARQUET, TFRECORD)

USER_ID = "user_id"
ITEM_IDS = "item_ids"
SCORES = "scores"
MODEL_VERSION = "model_version"

# Where the top-K SavedModel keeps the item embeddings and their ids (BruteForceIndex variables
# of TopKModule.index, as tf.saved_model.save names them in the checkpoint).
CANDIDATES_KEY = "index/candidates/.ATTRIBUTES/VARIABLE_VALUE"
IDENTIFIERS_KEY = "index/identifiers/.ATTRIBUTES/VARIABLE_VALUE"
VOCABULARY_FILE = "item_vocabulary.tsv"

# Skip reasons (the summary's ``skipped`` keys).
MALFORMED = "malformed_example"
EMPTY_USER_ID = "empty_user_id"
UNKNOWN_ITEM = "item_not_in_bundle_vocabulary"
OUT_OF_RANGE_ITEM = "item_id_outside_bundle_vocabulary"
REJECTED_BY_TOWER = "rejected_by_user_tower"
SUPERSEDED = "superseded_by_later_window"


class BatchCandidatesError(ValueError):
    """Bad input: a missing or corrupt bundle, unreadable examples, bad arguments. The message
    names the file (and the record or line where there is one)."""


@dataclasses.dataclass(frozen=True)
class BatchCandidatesConfig:
    """How candidates are generated.

    Attributes:
      top_k: ``K``, items written per user (capped at the corpus size ``N``).
      index: ``"exact"`` (brute force over the item embeddings) or ``"scann"`` (the bundle's
        ScaNN searcher).
      batch_size: windows per user-tower call and search.
      leaves_to_search: ScaNN only: leaves searched per query (default: the pushed index's).
      output_format: ``"parquet"`` or ``"tfrecord"``; ``None`` = from the output's extension.
      examples_vocabulary: the vocabulary the windows' item ids come from (``int_id raw_id
        count`` TSV); ``None`` = look beside the examples (module docstring).
    """

    top_k: int = 100
    index: str = EXACT
    batch_size: int = 1024
    leaves_to_search: Optional[int] = None
    output_format: Optional[str] = None
    examples_vocabulary: Optional[str] = None

    def __post_init__(self):
        if self.top_k < 1:
            raise BatchCandidatesError(f"top_k must be >= 1, got {self.top_k}")
        if self.index not in INDEXES:
            raise BatchCandidatesError(f"index must be one of {INDEXES}, got {self.index!r}")
        if self.batch_size < 1:
            raise BatchCandidatesError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.leaves_to_search is not None and self.leaves_to_search < 1:
            raise BatchCandidatesError("leaves_to_search must be >= 1")
        if self.output_format is not None and self.output_format not in FORMATS:
            raise BatchCandidatesError(
                f"output_format must be one of {FORMATS}, got {self.output_format!r}")


# ------------------------------------------------------------------------------------------------
# The bundle


def read_vocabulary(path: str) -> Dict[int, str]:
    """``{int id: raw id}`` of an ``int_id<TAB>raw_id<TAB>count`` file with a header line.

    Raises:
      BatchCandidatesError: a missing file, or a line that is not ``int<TAB>raw[<TAB>count]``
        (file and line named), or an id given twice.
    """
    if not os.path.isfile(path):
        raise BatchCandidatesError(f"{path}: vocabulary file not found")
    vocabulary: Dict[int, str] = {}
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            fields = line.rstrip("\n").split("\t")
            if number == 1 and fields[0] == "int_id":
                continue
            if len(fields) < 2 or not fields[0].isdigit():
                raise BatchCandidatesError(
                    f"{path}:{number}: expected 'int_id<TAB>raw_id<TAB>count', got {line!r}")
            int_id = int(fields[0])
            if int_id in vocabulary:
                raise BatchCandidatesError(f"{path}:{number}: int_id {int_id} appears twice")
            vocabulary[int_id] = fields[1]
    return vocabulary


def resolve_bundle_dir(path: str) -> str:
    """The bundle directory: ``path`` itself when it holds ``manifest.json``, else (a push
    destination) its highest-numbered version that holds one.

    Raises:
      BatchCandidatesError: no bundle there.
    """
    if not os.path.isdir(path):
        raise BatchCandidatesError(f"{path}: bundle directory not found")
    if os.path.isfile(os.path.join(path, MANIFEST_FILE)):
        return os.path.abspath(path)
    versions = sorted((int(n) for n in os.listdir(path)
                       if n.isdigit() and os.path.isfile(os.path.join(path, n, MANIFEST_FILE))))
    if not versions:
        raise BatchCandidatesError(
            f"{os.path.join(path, MANIFEST_FILE)}: not found (nor any <version>/{MANIFEST_FILE} "
            f"under {path}): not a pushed bundle")
    return os.path.abspath(os.path.join(path, str(versions[-1])))


def read_bundle_manifest(bundle_dir: str) -> ServingManifest:
    """The bundle's manifest, with errors that name the file, line and field."""
    path = os.path.join(bundle_dir, MANIFEST_FILE)
    try:
        with open(path, encoding="utf-8") as f:
            values = json.load(f)
    except FileNotFoundError:
        raise BatchCandidatesError(f"{path}: not found: not a pushed bundle") from None
    except json.JSONDecodeError as e:
        raise BatchCandidatesError(f"{path}:{e.lineno}: corrupt manifest (not JSON: {e.msg}, "
                                   f"column {e.colno})") from None
    if not isinstance(values, dict):
        raise BatchCandidatesError(f"{path}: corrupt manifest (expected a JSON object)")
    fields = {f.name for f in dataclasses.fields(ServingManifest)}
    required = {f.name for f in dataclasses.fields(ServingManifest)
                if f.default is dataclasses.MISSING}
    missing = sorted(required - set(values))
    if missing:
        raise BatchCandidatesError(f"{path}: corrupt manifest, missing field(s) {missing}")
    manifest = ServingManifest.from_dict({k: v for k, v in values.items() if k in fields})
    for name in ("model_version", "corpus_size", "history_length", "embedding_dim"):
        value = getattr(manifest, name)
        if not isinstance(value, int) or value < 1:
            raise BatchCandidatesError(
                f"{path}: corrupt manifest, field {name!r} must be a positive integer, "
                f"got {value!r}")
    if not isinstance(manifest.paths, dict):
        raise BatchCandidatesError(f"{path}: corrupt manifest, field 'paths' must be an object")
    return manifest


class CandidateBundle:
    """A pushed bundle, loaded for batch retrieval.

    Args:
      path: the bundle directory (``<push destination>/<version>``) or the push destination
        (its latest version is taken).

    Attributes:
      directory: the bundle directory.
      manifest: its :class:`ServingManifest`; ``model_version``, ``num_items`` (``N``) and
        ``history_length`` (``L``) from it.
      raw_ids: ``[N + 1]`` object array, ``raw_ids[i]`` = raw id of item ``i`` (``""`` at 0).
      item_embeddings: ``[N, d]`` float32, row ``r`` is item ``item_ids[r]``.
      item_ids: ``[N]`` int64 (the corpus ids, ``1..N``).

    Raises:
      BatchCandidatesError: a missing or corrupt part, named by its file.
    """

    def __init__(self, path: str):
        self.directory = resolve_bundle_dir(path)
        self.manifest = read_bundle_manifest(self.directory)
        manifest_path = os.path.join(self.directory, MANIFEST_FILE)
        self.model_version = int(self.manifest.model_version)
        self.num_items = int(self.manifest.corpus_size)
        self.history_length = int(self.manifest.history_length)

        vocabulary_path = os.path.join(self.directory, self.manifest.vocabulary_path)
        if not os.path.isfile(vocabulary_path):
            raise BatchCandidatesError(
                f"{vocabulary_path}: the bundle's vocabulary is missing ({manifest_path} "
                f"names it)")
        if file_sha256(vocabulary_path) != self.manifest.vocabulary_sha256:
            raise BatchCandidatesError(
                f"{vocabulary_path}: sha256 differs from the manifest's vocabulary_sha256: the "
                f"vocabulary does not belong to this model")
        self.vocabulary_path = vocabulary_path
        vocabulary = read_vocabulary(vocabulary_path)
        self.raw_ids = np.empty(max(vocabulary, default=0) + 1, dtype=object)
        self.raw_ids[:] = ""
        for int_id, raw in vocabulary.items():
            self.raw_ids[int_id] = raw
        self._raw_to_int = {raw: int_id for int_id, raw in vocabulary.items()}

        self.user_tower_path = self._part("user_tower")
        self.top_k_path = self._part("top_k")
        checkpoint = os.path.join(self.top_k_path, "variables", "variables")
        try:
            reader = tf.train.load_checkpoint(checkpoint)
            self.item_embeddings = np.ascontiguousarray(
                reader.get_tensor(CANDIDATES_KEY), dtype=np.float32)
            self.item_ids = np.asarray(reader.get_tensor(IDENTIFIERS_KEY), dtype=np.int64)
        except (tf.errors.OpError, ValueError) as e:
            raise BatchCandidatesError(
                f"{checkpoint}: cannot read the item embeddings of the top-K model "
                f"({type(e).__name__}: {str(e).splitlines()[0]})") from None
        if self.item_embeddings.shape != (self.num_items, self.manifest.embedding_dim):
            raise BatchCandidatesError(
                f"{checkpoint}: item embeddings of shape {self.item_embeddings.shape}, the "
                f"manifest says N={self.num_items}, d={self.manifest.embedding_dim}")
        if self.item_ids.size and (self.item_ids.min() < 1
                                   or self.item_ids.max() >= len(self.raw_ids)
                                   or np.any(self.raw_ids[self.item_ids] == "")):
            raise BatchCandidatesError(
                f"{vocabulary_path}: does not cover the model's item ids 1..{self.num_items}")

        absl_logger = logging.getLogger("absl")
        level = absl_logger.level
        # Loading warns once per function about custom gradients that serving never needs.
        absl_logger.setLevel(logging.ERROR)
        try:
            loaded = tf.saved_model.load(self.user_tower_path)
        except (tf.errors.OpError, OSError, ValueError) as e:
            raise BatchCandidatesError(f"{self.user_tower_path}: cannot load the user tower "
                                       f"SavedModel ({str(e).splitlines()[0]})") from None
        finally:
            absl_logger.setLevel(level)
        if "serving_default" not in loaded.signatures:
            raise BatchCandidatesError(f"{self.user_tower_path}: no serving_default signature")
        self._loaded_user_tower = loaded
        self._user_tower = loaded.signatures["serving_default"]
        self._scann = None

    def _part(self, name: str) -> str:
        relative = self.manifest.paths.get(name)
        if relative is None:
            raise BatchCandidatesError(
                f"{os.path.join(self.directory, MANIFEST_FILE)}: corrupt manifest, 'paths' has "
                f"no {name!r}")
        path = os.path.join(self.directory, relative)
        if not os.path.isfile(os.path.join(path, "saved_model.pb")):
            raise BatchCandidatesError(f"{path}: SavedModel missing from the bundle")
        return path

    def ids_of_raw(self, raw_ids: Sequence[str]) -> np.ndarray:
        """The bundle's int ids of ``raw_ids`` (``-1`` for raw ids it does not know)."""
        return np.asarray([self._raw_to_int.get(r, -1) for r in raw_ids], dtype=np.int64)

    def scann_index(self):
        """The pushed ScaNN searcher (:class:`~t2diff_tf.serving.scann_index.PybindIndex`)."""
        if self._scann is None:
            from t2diff_tf.serving.scann_index import load_pybind_index  # noqa: PLC0415

            relative = self.manifest.paths.get("scann_searcher")
            directory = os.path.join(self.directory, relative or "scann_searcher")
            if relative is None or not os.path.isdir(directory):
                raise BatchCandidatesError(
                    f"{directory}: this bundle has no ScaNN searcher (pushed without ScaNN); "
                    f"use the exact index")
            try:
                self._scann = load_pybind_index(directory)
            except Exception as e:  # noqa: BLE001 (ScaNN raises plain RuntimeErrors)
                raise BatchCandidatesError(f"{directory}: cannot load the ScaNN searcher "
                                           f"({str(e).splitlines()[0]})") from None
        return self._scann

    def scann_reorder_k(self) -> Optional[int]:
        scann = (self.manifest.index or {}).get("scann") or {}
        return scann.get("reorder_k") if scann.get("mode") == "tree_ah" else None

    def embed(self, features: Mapping[str, np.ndarray]) -> np.ndarray:
        """User embeddings ``[b, d]`` float32 of query features ``{name: [b, ...]}`` through the
        bundle's ``serving_default`` signature (its input guards included)."""
        outputs = self._user_tower(**{n: tf.constant(features[n], tf.int64)
                                      for n in F.QUERY_FEATURES})
        return outputs["user_embedding"].numpy()

    def search(self, embeddings: np.ndarray, k: int, index: str = EXACT,
               leaves_to_search: Optional[int] = None) -> Tuple[np.ndarray, np.ndarray]:
        """Top-``k`` items of each embedding ``[b, d]``: ``(scores [b, k] float32, item int ids
        [b, k] int64)``, best first."""
        k = min(int(k), self.num_items)
        if index == EXACT:
            scores = tf.linalg.matmul(tf.constant(embeddings, tf.float32),
                                      tf.constant(self.item_embeddings), transpose_b=True)
            top_scores, rows = tf.math.top_k(scores, k=k)
            return top_scores.numpy(), self.item_ids[rows.numpy()]
        if index == SCANN:
            return self.scann_index().search(embeddings, k=k,
                                             leaves_to_search=leaves_to_search)
        raise BatchCandidatesError(f"index must be one of {INDEXES}, got {index!r}")


# ------------------------------------------------------------------------------------------------
# Reading the windows


def _is_gzip(path: str) -> bool:
    with tf.io.gfile.GFile(path, "rb") as f:
        return f.read(2) == b"\x1f\x8b"


def check_gzip_complete(path: str, chunk_size: int = 1 << 22) -> None:
    """Raises when a gzip file ends before its end-of-stream marker.

    TensorFlow's GZIP TFRecord reader stops without an error on some truncated files (a file
    cut between two compressed records reads as a shorter file), so a file copied in part would
    lose users silently; this reads the stream once with zlib to be sure it is whole.

    Raises:
      BatchCandidatesError: the file is truncated or not valid gzip (named).
    """
    decompressor = zlib.decompressobj(wbits=31)
    try:
        with tf.io.gfile.GFile(path, "rb") as f:
            while True:
                chunk = f.read(chunk_size)
                if not chunk:
                    break
                while chunk:
                    decompressor.decompress(chunk)
                    chunk = decompressor.unused_data
                    if decompressor.eof and chunk:  # a further gzip member
                        decompressor = zlib.decompressobj(wbits=31)
    except zlib.error as e:
        raise BatchCandidatesError(f"{path}: corrupt gzip file ({e})") from None
    if not decompressor.eof:
        raise BatchCandidatesError(f"{path}: truncated gzip file (it ends before its "
                                   f"end-of-stream marker; was it copied in part?)")


def expand_examples(patterns: Sequence[str]) -> List[str]:
    """The files of ``patterns`` (globs or paths), sorted, each once.

    Raises:
      BatchCandidatesError: a pattern that matches no file, a file that is empty, or a gzip
        file that is truncated.
    """
    files: List[str] = []
    for pattern in patterns:
        matched = sorted(p for p in tf.io.gfile.glob(pattern) if not tf.io.gfile.isdir(p))
        if not matched:
            raise BatchCandidatesError(f"{pattern}: no such file (the examples pattern matches "
                                       f"nothing)")
        files.extend(matched)
    unique = sorted(set(files))
    for path in unique:
        if tf.io.gfile.stat(path).length == 0:
            raise BatchCandidatesError(f"{path}: empty file")
        if _is_gzip(path):
            check_gzip_complete(path)
    return unique


def find_examples_vocabulary(files: Sequence[str]) -> Optional[str]:
    """The ``item_vocabulary.tsv`` of the examples' artifact (beside a ``Split-*`` directory or
    beside the files), when all files share one; ``None`` when there is none."""
    found = set()
    for path in files:
        directory = os.path.dirname(os.path.abspath(path))
        for candidate in (os.path.join(directory, VOCABULARY_FILE),
                          os.path.join(os.path.dirname(directory), VOCABULARY_FILE)):
            if os.path.isfile(candidate):
                found.add(candidate)
                break
    if len(found) > 1:
        raise BatchCandidatesError(
            f"the examples come from {len(found)} different artifacts ({sorted(found)}); pass "
            f"the vocabulary of their item ids explicitly")
    return found.pop() if found else None


@dataclasses.dataclass
class RecordBatch:
    """Up to ``batch_size`` consecutive serialized records of one file."""

    file_index: int
    first_record: int
    serialized: np.ndarray  # [b] bytes

    def position(self, row: int) -> Tuple[int, int]:
        """``(file index, record index)`` of row ``row``."""
        return self.file_index, self.first_record + row


def record_batches(files: Sequence[str], size: int) -> Iterator[RecordBatch]:
    """Every record of every file in order, ``size`` at a time (a batch never spans two files);
    a corrupt file fails naming it."""
    for file_index, path in enumerate(files):
        dataset = tf.data.TFRecordDataset(path, compression_type="GZIP" if _is_gzip(path) else "",
                                          buffer_size=1 << 22).batch(size)
        first = 0
        try:
            for serialized in dataset.as_numpy_iterator():
                yield RecordBatch(file_index, first, serialized)
                first += len(serialized)
        except (tf.errors.DataLossError, tf.errors.InvalidArgumentError) as e:
            raise BatchCandidatesError(
                f"{path}: corrupt TFRecord file, within the {size} records after record {first} "
                f"({str(e).splitlines()[0]})") from None


def window_parse_spec(history_length: int) -> Dict[str, tf.io.FixedLenFeature]:
    """What is read of a window: ``user_id``, the query features, ``target_timestamp``
    (optional, default 0)."""
    spec = {name: tf.io.FixedLenFeature([history_length], tf.int64)
            for name in F.SEQUENCE_FEATURES}
    spec[F.SESSION_LENGTH] = tf.io.FixedLenFeature([], tf.int64)
    spec[F.USER_ID] = tf.io.FixedLenFeature([], tf.string)
    spec[F.TARGET_TIMESTAMP] = tf.io.FixedLenFeature([], tf.int64, default_value=0)
    return spec


def parse_windows(serialized: np.ndarray, spec) -> Tuple[Dict[str, np.ndarray], List[int],
                                                 List[Tuple[int, str]]]:
    """Parses ``[b]`` serialized examples; on failure, one by one. Returns ``(features of the
    good rows, their rows, [(row, error)] of the malformed ones)``."""
    try:
        parsed = tf.io.parse_example(serialized, spec)
        return {k: v.numpy() for k, v in parsed.items()}, list(range(len(serialized))), []
    except tf.errors.InvalidArgumentError:
        pass
    good, bad, rows = [], [], []
    for row, record in enumerate(serialized):
        try:
            parsed = tf.io.parse_example([record], spec)
        except tf.errors.InvalidArgumentError as e:
            message = str(e).splitlines()[0].split("[[")[0].strip()
            bad.append((row, message[:300]))
            continue
        good.append(row)
        rows.append({k: v.numpy() for k, v in parsed.items()})
    if not rows:
        return {}, [], bad
    return ({k: np.concatenate([r[k] for r in rows]) for k in rows[0]}, good, bad)


# ------------------------------------------------------------------------------------------------
# Writing the candidates


def parquet_schema():
    """The pyarrow schema of a candidates Parquet file."""
    import pyarrow as pa  # noqa: PLC0415

    return pa.schema([(USER_ID, pa.string()), (ITEM_IDS, pa.list_(pa.string())),
                      (SCORES, pa.list_(pa.float32())), (MODEL_VERSION, pa.int64())],
                     metadata={b"t2diff": b"batch candidates"})


def candidate_example(user_id: str, raw_item_ids: Sequence[str], scores: Sequence[float],
                      model_version: int) -> bytes:
    """One user's candidates as a serialized ``tf.Example`` (the TFRecord output's rows)."""
    feature = {
        USER_ID: tf.train.Feature(bytes_list=tf.train.BytesList(value=[user_id.encode()])),
        ITEM_IDS: tf.train.Feature(bytes_list=tf.train.BytesList(
            value=[r.encode("utf-8") for r in raw_item_ids])),
        SCORES: tf.train.Feature(float_list=tf.train.FloatList(value=scores)),
        MODEL_VERSION: tf.train.Feature(int64_list=tf.train.Int64List(value=[model_version]))}
    return tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString()


class _Writer:
    """Writes candidate rows to a temporary file, renamed to ``path`` by :meth:`commit`."""

    def __init__(self, path: str, output_format: str):
        self.path = path
        self.format = output_format
        directory = os.path.dirname(os.path.abspath(path))
        os.makedirs(directory, exist_ok=True)
        self.temporary = os.path.join(directory, f".tmp-{os.getpid()}-{os.path.basename(path)}")
        self.rows = 0
        if output_format == PARQUET:
            import pyarrow as pa  # noqa: PLC0415
            import pyarrow.parquet as pq  # noqa: PLC0415

            self._pa = pa
            self.schema = parquet_schema()
            self._writer = pq.ParquetWriter(self.temporary, self.schema)
        else:
            compression = "GZIP" if path.endswith(".gz") else None
            self._writer = tf.io.TFRecordWriter(self.temporary, options=compression)

    def write(self, user_ids: Sequence[str], raw_item_ids: np.ndarray, scores: np.ndarray,
              model_version: int) -> None:
        """``raw_item_ids`` ``[b, k]`` (object), ``scores`` ``[b, k]``."""
        b, k = raw_item_ids.shape
        if self.format == PARQUET:
            pa = self._pa
            offsets = pa.array(np.arange(0, b * k + 1, k, dtype=np.int32))
            table = pa.Table.from_arrays(
                [pa.array(list(user_ids), pa.string()),
                 pa.ListArray.from_arrays(offsets, pa.array(raw_item_ids.reshape(-1),
                                                            pa.string())),
                 pa.ListArray.from_arrays(offsets, pa.array(
                     np.asarray(scores, np.float32).reshape(-1), pa.float32())),
                 pa.array(np.full(b, model_version, np.int64))], schema=self.schema)
            self._writer.write_table(table)
        else:
            for row in range(b):
                self._writer.write(candidate_example(user_ids[row], raw_item_ids[row],
                                                     scores[row], model_version))
        self.rows += b

    def commit(self) -> None:
        self._writer.close()
        os.replace(self.temporary, self.path)

    def abort(self) -> None:
        try:
            self._writer.close()
        finally:
            if os.path.exists(self.temporary):
                os.remove(self.temporary)


def output_format_of(path: str, requested: Optional[str]) -> str:
    if requested is not None:
        return requested
    name = path.lower()
    if name.endswith(".parquet"):
        return PARQUET
    if name.endswith((".tfrecord", ".tfrecord.gz", ".tfrecords", ".tfrecords.gz")):
        return TFRECORD
    raise BatchCandidatesError(f"{path}: say the output format (end the name in .parquet, "
                               f".tfrecord or .tfrecord.gz, or pass the format)")


def read_candidates(path: str) -> Dict[str, list]:
    """Reads candidates back (tests, notebooks): a file, or a glob of shards (the Beam
    wrapper's), concatenated in sorted order -> ``{user_id: [...], item_ids: [[...]],
    scores: [[...]], model_version: [...]}``."""
    out: Dict[str, list] = {USER_ID: [], ITEM_IDS: [], SCORES: [], MODEL_VERSION: []}
    paths = sorted(tf.io.gfile.glob(path)) or [path]
    for shard in paths:
        if shard.lower().endswith(".parquet"):
            import pyarrow.parquet as pq  # noqa: PLC0415

            table = pq.read_table(shard).to_pydict()
            for name in out:
                out[name].extend(table[name])
            continue
        compression = "GZIP" if _is_gzip(shard) else ""
        for serialized in tf.data.TFRecordDataset(shard, compression_type=compression):
            feature = tf.train.Example.FromString(serialized.numpy()).features.feature
            out[USER_ID].append(feature[USER_ID].bytes_list.value[0].decode())
            out[ITEM_IDS].append([v.decode() for v in feature[ITEM_IDS].bytes_list.value])
            out[SCORES].append(list(feature[SCORES].float_list.value))
            out[MODEL_VERSION].append(feature[MODEL_VERSION].int64_list.value[0])
    return out


# ------------------------------------------------------------------------------------------------
# The job


@dataclasses.dataclass
class CandidatesSummary:
    """What a run did (also written to ``<output>.summary.json``).

    Attributes:
      output: the candidates file.
      bundle: the bundle directory; ``model_version`` its version.
      index: ``"exact"`` or ``"scann"``; ``k`` items per user.
      files: the example files read.
      windows_read: every record read.
      users_written: rows written (one per user).
      superseded: windows not used because the user has a later one.
      skipped: ``{reason: windows}``; each is also a line of ``skipped_path``.
      ties_broken_by_read_order: users whose latest windows tie on time and history length.
      item_id_mapping: ``"identity"`` or the vocabulary the ids were mapped from.
      selection_seconds: wall time of pass 1 (reading every window, choosing each user's).
      scoring_seconds: wall time of pass 2 (embedding, search, writing).
      users_per_second: ``users_written`` over both passes (the bundle's loading excluded).
      notes: warnings a reader should see (e.g. K beyond ScaNN's reorder_k).
    """

    output: str
    bundle: str
    model_version: int
    index: str
    k: int
    files: List[str]
    windows_read: int
    users_written: int
    superseded: int
    skipped: Dict[str, int]
    skipped_path: str
    ties_broken_by_read_order: int
    item_id_mapping: str
    selection_seconds: float
    scoring_seconds: float
    users_per_second: float
    notes: List[str]

    def accounted(self) -> bool:
        return self.windows_read == (self.users_written + self.superseded
                                     + sum(self.skipped.values()))


@dataclasses.dataclass(frozen=True)
class ItemIdMapping:
    """How the windows' item ids become the bundle's.

    Attributes:
      source: ``"identity"`` (the windows use the bundle's ids) or the vocabulary file they were
        written with.
      table: ``[max id + 1]`` int64, ``table[examples id]`` = the bundle's id (``-1``: unknown to
        the bundle; 0 stays padding); ``None`` for the identity.
    """

    source: str = "identity"
    table: Optional[np.ndarray] = None

    @property
    def unknown_items(self) -> int:
        return 0 if self.table is None else int(np.count_nonzero(self.table[1:] < 0))


def item_id_mapping(bundle: CandidateBundle, vocabulary_path: Optional[str]) -> ItemIdMapping:
    """The mapping from the ids of ``vocabulary_path`` (the windows' vocabulary) to the bundle's,
    through the raw ids; the identity when there is none or it is the bundle's own."""
    if vocabulary_path is None or file_sha256(vocabulary_path) == \
            bundle.manifest.vocabulary_sha256:
        return ItemIdMapping()
    vocabulary = read_vocabulary(vocabulary_path)
    table = np.full(max(vocabulary, default=0) + 1, -1, np.int64)
    table[F.PADDING_ID] = F.PADDING_ID
    table[np.fromiter(vocabulary.keys(), np.int64)] = bundle.ids_of_raw(list(vocabulary.values()))
    return ItemIdMapping(source=vocabulary_path, table=table)


@dataclasses.dataclass
class ScoredWindows:
    """:func:`score_windows`' answer for a batch of windows.

    Attributes:
      rows: the input rows that were scored, in order.
      user_ids: their raw user ids.
      raw_item_ids: ``[len(rows), K]`` object array of raw item ids, best first.
      scores: ``[len(rows), K]`` float32.
      skipped: ``[(input row, reason, detail)]`` of the rows that were not scored.
    """

    rows: List[int]
    user_ids: List[str]
    raw_item_ids: np.ndarray
    scores: np.ndarray
    skipped: List[Tuple[int, str, str]]


def score_windows(bundle: CandidateBundle, windows: Mapping[str, np.ndarray], k: int,
                  index: str = EXACT, mapping: ItemIdMapping = ItemIdMapping(),
                  leaves_to_search: Optional[int] = None) -> ScoredWindows:
    """The top-``k`` of a batch of parsed windows (``{name: [b, ...]}``, as
    :func:`window_parse_spec` parses them).

    A row is skipped, with its reason, when its user id is empty, when its history holds an item
    the bundle does not know (``mapping``), or when the user tower's input guards refuse it.
    """
    users = [u.decode("utf-8", errors="replace") if isinstance(u, bytes) else str(u)
             for u in windows[F.USER_ID]]
    skipped: List[Tuple[int, str, str]] = []
    valid = np.ones(len(users), bool)
    for i, user in enumerate(users):
        if not user:
            valid[i] = False
            skipped.append((i, EMPTY_USER_ID, "user_id is empty"))
    history = np.asarray(windows[F.HISTORY], np.int64)
    if mapping.table is not None:
        table = mapping.table
        inside = (history >= 0) & (history < len(table))
        mapped = np.where(inside, table[np.clip(history, 0, len(table) - 1)], -1)
        for i in np.flatnonzero(valid & np.any(mapped < 0, axis=1)):
            valid[i] = False
            ids = sorted(set(history[i][mapped[i] < 0].tolist()))[:10]
            skipped.append((int(i), UNKNOWN_ITEM, f"history item id(s) {ids} of "
                            f"{mapping.source} have no row in the bundle's vocabulary"))
        history = np.maximum(mapped, 0)
    else:
        outside = (history < 0) | (history > bundle.num_items)
        for i in np.flatnonzero(valid & np.any(outside, axis=1)):
            valid[i] = False
            ids = sorted(set(history[i][outside[i]].tolist()))[:10]
            skipped.append((int(i), OUT_OF_RANGE_ITEM, f"history item id(s) {ids} outside the "
                            f"bundle's 0..{bundle.num_items}"))
    rows = np.flatnonzero(valid)
    features = {n: np.asarray(windows[n])[rows] for n in F.QUERY_FEATURES}
    features[F.HISTORY] = history[rows]
    embeddings, accepted = _embed_guarded(
        bundle, features,
        lambda j, message: skipped.append((int(rows[j]), REJECTED_BY_TOWER, message)))
    rows = [int(rows[j]) for j in accepted]
    k = min(int(k), bundle.num_items)
    if rows:
        scores, item_ids = bundle.search(embeddings, k, index, leaves_to_search)
    else:
        scores, item_ids = np.zeros([0, k], np.float32), np.zeros([0, k], np.int64)
    return ScoredWindows(rows=rows, user_ids=[users[i] for i in rows],
                         raw_item_ids=bundle.raw_ids[item_ids], scores=scores,
                         skipped=sorted(skipped))


@dataclasses.dataclass
class _Selection:
    """Pass 1's result: which window of each user is scored.

    Attributes:
      chosen: per file, ``[records]`` bool, True for the window scored for its user.
      windows_read: every record read.
      users: users with a well-formed window.
      superseded: well-formed windows not chosen because their user has a later one.
      ties: users whose latest windows tie on time and history length (the one read last
        wins).
      malformed: ``[(file index, record index, error)]`` of records that do not parse.
    """

    chosen: List[np.ndarray]
    windows_read: int
    users: int
    superseded: int
    ties: int
    malformed: List[Tuple[int, int, str]]


def _select_latest_windows(files: Sequence[str], history_length: int, batch_size: int
                           ) -> _Selection:
    """Pass 1: parses every record once and keeps, for every user, the window with the latest
    ``target_timestamp``, then the longer history, then the one read last."""
    spec = window_parse_spec(history_length)
    # user -> ((target_timestamp, history length), (file, record), windows with that key)
    best: Dict[bytes, Tuple[Tuple[int, int], Tuple[int, int], int]] = {}
    counts = [0] * len(files)
    read = superseded = 0
    malformed: List[Tuple[int, int, str]] = []
    for batch in record_batches(files, batch_size):
        read += len(batch.serialized)
        counts[batch.file_index] = batch.first_record + len(batch.serialized)
        parsed, good, bad = parse_windows(batch.serialized, spec)
        malformed.extend(batch.position(row) + (message,) for row, message in bad)
        if not good:
            continue
        lengths = np.count_nonzero(parsed[F.HISTORY], axis=1)
        for i, row in enumerate(good):
            user = parsed[F.USER_ID][i]
            key = (int(parsed[F.TARGET_TIMESTAMP][i]), int(lengths[i]))
            previous = best.get(user)
            if previous is None:
                best[user] = (key, batch.position(row), 1)
                continue
            superseded += 1
            if key >= previous[0]:
                tied = previous[2] + 1 if key == previous[0] else 1
                best[user] = (key, batch.position(row), tied)
    chosen = [np.zeros(count, bool) for count in counts]
    for _, (file_index, record_index), _ in best.values():
        chosen[file_index][record_index] = True
    ties = sum(1 for _, _, tied in best.values() if tied > 1)
    return _Selection(chosen, read, len(best), superseded, ties, malformed)


def generate_candidates(bundle: CandidateBundle, examples: Sequence[str], output: str,
                        config: BatchCandidatesConfig = BatchCandidatesConfig(),
                        progress: Optional[Callable[[str], None]] = None) -> CandidatesSummary:
    """Writes the top-K of every user in ``examples`` to ``output`` (module docstring).

    Args:
      bundle: the loaded bundle.
      examples: globs or paths of ``tf.Example`` window files (TFRecord, gzip or not).
      output: the candidates file (``.parquet``, ``.tfrecord`` or ``.tfrecord.gz``).
      config: K, the index, the batch size, the format.
      progress: ``callable(str)`` for progress lines (``None``: silent).

    Returns:
      The :class:`CandidatesSummary`, also written to ``<output>.summary.json``.

    Raises:
      BatchCandidatesError: bad input (named), or no user left to write.
    """
    started = time.perf_counter()
    say = progress or (lambda message: None)
    output_format = output_format_of(output, config.output_format)
    files = expand_examples(examples)
    k = min(config.top_k, bundle.num_items)
    notes: List[str] = []
    if config.top_k > bundle.num_items:
        notes.append(f"top_k {config.top_k} is more than the {bundle.num_items} items; wrote "
                     f"{k} per user")
    if config.index == SCANN:
        bundle.scann_index()  # fails early, naming the directory, when there is none
        reorder = bundle.scann_reorder_k()
        if reorder is not None and k > reorder:
            notes.append(f"K={k} is beyond the ScaNN index's reorder_k={reorder}: the scores of "
                         f"ranks {reorder + 1}..{k} are quantised estimates, and their order "
                         f"approximate")

    # Item ids of the examples -> the bundle's.
    vocabulary_path = config.examples_vocabulary or find_examples_vocabulary(files)
    mapping = item_id_mapping(bundle, vocabulary_path)
    if mapping.table is not None:
        say(f"candidates: item ids mapped from {vocabulary_path} to the bundle's vocabulary "
            f"({mapping.unknown_items:,} of its items unknown to the model)")
    if vocabulary_path is None:
        notes.append("no item vocabulary found beside the examples: their item ids were taken "
                     "as the bundle's")

    selection = _select_latest_windows(files, bundle.history_length, config.batch_size)
    if selection.ties:
        notes.append(f"{selection.ties:,} users have windows that tie on target_timestamp and "
                     f"history length; the one read last was used")
    say(f"candidates: {selection.windows_read:,} windows in {len(files)} file(s), "
        f"{selection.users:,} users ({selection.superseded:,} older windows superseded, "
        f"{len(selection.malformed):,} malformed); scoring with the {config.index} index, K={k}, "
        f"model version {bundle.model_version}")

    skipped: Counter = Counter()
    skipped_path = output + ".skipped.jsonl"
    spec = window_parse_spec(bundle.history_length)
    writer = _Writer(output, output_format)
    selection_seconds = time.perf_counter() - started
    scoring_started = time.perf_counter()
    last_report = scoring_started
    try:
        with open(skipped_path, "w", encoding="utf-8") as dead_letters:

            def skip(where: Tuple[int, int], reason: str, detail: str,
                     user: Optional[str] = None) -> None:
                skipped[reason] += 1
                dead_letters.write(json.dumps({
                    "file": files[where[0]], "record": int(where[1]), "user_id": user,
                    "reason": reason, "detail": detail}) + "\n")

            for file_index, record_index, message in selection.malformed:
                skip((file_index, record_index), MALFORMED, message)

            for batch in record_batches(files, config.batch_size):
                # Only the chosen windows are parsed again (they parsed in pass 1).
                take = np.flatnonzero(selection.chosen[batch.file_index][
                    batch.first_record:batch.first_record + len(batch.serialized)])
                if not len(take):
                    continue
                parsed, _, _ = parse_windows(batch.serialized[take], spec)
                where = [batch.position(int(row)) for row in take]
                scored = score_windows(bundle, parsed, k, config.index, mapping,
                                       config.leaves_to_search)
                for row, reason, detail in scored.skipped:
                    user = parsed[F.USER_ID][row].decode("utf-8", errors="replace")
                    skip(where[row], reason, detail, user or None)
                if scored.rows:
                    writer.write(scored.user_ids, scored.raw_item_ids, scored.scores,
                                 bundle.model_version)
                now = time.perf_counter()
                if now - last_report >= 30:
                    last_report = now
                    say(f"candidates: {writer.rows:,} of {selection.users:,} users written "
                        f"({writer.rows / (now - scoring_started):,.0f}/s)")
        if writer.rows == 0:
            raise BatchCandidatesError(
                f"no user could be scored from {len(files)} file(s) "
                f"({selection.windows_read:,} windows; skipped: {dict(skipped)}); see "
                f"{skipped_path}")
        writer.commit()
    except BaseException:
        writer.abort()
        raise
    scoring_seconds = time.perf_counter() - scoring_started
    summary = CandidatesSummary(
        output=os.path.abspath(output), bundle=bundle.directory,
        model_version=bundle.model_version, index=config.index, k=k, files=list(files),
        windows_read=selection.windows_read, users_written=writer.rows,
        superseded=selection.superseded,
        skipped=dict(sorted(skipped.items())), skipped_path=os.path.abspath(skipped_path),
        ties_broken_by_read_order=selection.ties, item_id_mapping=mapping.source,
        selection_seconds=round(selection_seconds, 3), scoring_seconds=round(scoring_seconds, 3),
        users_per_second=round(writer.rows / max(selection_seconds + scoring_seconds, 1e-9), 1),
        notes=notes)
    if not summary.accounted():
        raise AssertionError(f"windows do not add up: {dataclasses.asdict(summary)}")
    with open(output + ".summary.json", "w", encoding="utf-8") as f:
        json.dump(dataclasses.asdict(summary), f, indent=2)
        f.write("\n")
    return summary


def _embed_guarded(bundle: CandidateBundle, features: Dict[str, np.ndarray], reject
                   ) -> Tuple[np.ndarray, List[int]]:
    """Embeds a batch; when the signature's guards refuse it, row by row so that only the
    offending rows are lost (each passed to ``reject(row, message)``). Returns ``(embeddings of
    the accepted rows, their row numbers)``."""
    try:
        return bundle.embed(features), list(range(len(features[F.HISTORY])))
    except tf.errors.InvalidArgumentError:
        pass
    embeddings, accepted = [], []
    for row in range(len(features[F.HISTORY])):
        try:
            embeddings.append(bundle.embed({n: v[row:row + 1] for n, v in features.items()}))
            accepted.append(row)
        except tf.errors.InvalidArgumentError as e:
            reject(row, _guard_message(e))
    if not embeddings:
        return np.zeros([0, bundle.manifest.embedding_dim], np.float32), []
    return np.concatenate(embeddings), accepted


def _guard_message(error: Exception) -> str:
    """The assertion's own message (``history_time_lag must be <= 31``) out of TF's error."""
    text = str(error)
    for line in text.splitlines():
        if " must be " in line or "different batch size" in line:
            return line.strip()[:300]
    return text.splitlines()[0][:300] if text else type(error).__name__
