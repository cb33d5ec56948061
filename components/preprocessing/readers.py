"""Sources of interaction logs, each a Beam ``PTransform`` producing a :class:`ParsedLog`.

Every file-based source reads its files line by line (gzip is detected from the content), so
that each record keeps its file and line number: malformed records go to the dead-letter output
naming file, line, field and reason; valid records a rule drops are counted by reason. Files
are read in parallel across files (shard large logs into several files to scale out).

Sources: :class:`MovieLensRatings` (``ratings.dat``, ``movies.dat`` genres), :class:`SequenceFile`
(``user item item ...``), :class:`KuaiRandLog`, :class:`CsvLog` (generic), :class:`TfdsMovieLens`
and :class:`SyntheticLog` (the embedded default).
"""

from __future__ import annotations

import csv
import gzip
from typing import Dict, Iterator, List, Mapping, NamedTuple, Optional, Sequence, Tuple, Union

import apache_beam as beam
import tensorflow as tf

from components.preprocessing import synthetic
from components.preprocessing.records import DeadLetter, Event, Filtered, InputError

Record = Union[Event, DeadLetter, Filtered]

DEAD_LETTER = "dead_letter"
FILTERED = "filtered"
COUNTS = "counts"

LINES_READ = "lines_read"
HEADER_LINES = "header_lines"
BLANK_LINES = "blank_lines"
INTERACTIONS_READ = "interactions_read"


class ParsedLog(NamedTuple):
    """The PCollections a source produces.

    events: :class:`Event`; dead_letters: :class:`DeadLetter`; filtered: ``(reason, n)``;
    counts: ``(counter name, n)`` (lines read, headers, blanks, interactions read);
    item_genres: ``(raw item id, tuple of genre names)``.
    """

    events: beam.PCollection
    dead_letters: beam.PCollection
    filtered: beam.PCollection
    counts: beam.PCollection
    item_genres: beam.PCollection


# ------------------------------------------------------------------------------------------------
# Files


def open_binary(path: str):
    """Opens ``path`` (local or any ``tf.io.gfile`` filesystem), gunzipping when it is gzip."""
    f = tf.io.gfile.GFile(path, "rb")
    magic = f.read(2)
    f.seek(0)
    return gzip.GzipFile(fileobj=f) if magic == b"\x1f\x8b" else f


def resolve_files(patterns: Union[str, Sequence[str]]) -> List[str]:
    """Expands globs and checks every file exists, is readable and is not empty.

    Raises:
      InputError: naming the pattern or file and what is wrong with it.
    """
    patterns = [patterns] if isinstance(patterns, str) else list(patterns)
    if not patterns:
        raise InputError("no input file given")
    files: List[str] = []
    for pattern in patterns:
        try:
            matched = sorted(tf.io.gfile.glob(pattern))
        except tf.errors.OpError as e:
            raise InputError(f"{pattern}: cannot list: {e.message}") from e
        if not matched:
            raise InputError(f"{pattern}: no such file")
        files.extend(matched)
    for path in files:
        if tf.io.gfile.isdir(path):
            raise InputError(f"{path}: is a directory, expected a file")
        try:
            with open_binary(path) as f:
                head = f.read(1 << 16)
        except (OSError, tf.errors.OpError, EOFError) as e:
            raise InputError(f"{path}: cannot read: {e}") from e
        if not head.strip():
            raise InputError(f"{path}: file is empty")
    return files


def _as_tuple(paths: Union[str, Sequence[str]]) -> Tuple[str, ...]:
    return (paths,) if isinstance(paths, str) else tuple(paths)


def _decode(raw: bytes) -> Optional[str]:
    try:
        return raw.decode("utf-8").rstrip("\r\n")
    except UnicodeDecodeError:
        return None


class _ReadLines(beam.DoFn):
    """``(file index, path)`` -> records of every line, via ``parser``.

    Main output: :class:`Event`; tagged outputs ``dead_letter``, ``filtered`` (``(reason, n)``)
    and ``counts`` (per-file totals).
    """

    def __init__(self, parser: "LineParser"):
        self._parser = parser

    def process(self, element):
        file_index, path = element
        counts = {LINES_READ: 0, HEADER_LINES: 0, BLANK_LINES: 0, INTERACTIONS_READ: 0}
        filtered: Dict[str, int] = {}
        header = None
        with open_binary(path) as f:
            for line_no, raw in enumerate(f, start=1):
                counts[LINES_READ] += 1
                line = _decode(raw)
                if line is None:
                    counts[INTERACTIONS_READ] += 1
                    yield beam.pvalue.TaggedOutput(DEAD_LETTER, DeadLetter(
                        path, line_no, "<line>", "not valid UTF-8",
                        raw[:200].decode("utf-8", "replace")))
                    continue
                if self._parser.has_header and header is None:
                    header = self._parser.read_header(line, path)
                    counts[HEADER_LINES] += 1
                    continue
                if not line.strip():
                    counts[BLANK_LINES] += 1
                    continue
                for record in self._parser.parse(line, path, line_no, file_index, header):
                    if isinstance(record, Event):
                        counts[INTERACTIONS_READ] += 1
                        yield record
                    elif isinstance(record, DeadLetter):
                        counts[INTERACTIONS_READ] += record.interactions
                        yield beam.pvalue.TaggedOutput(DEAD_LETTER, record)
                    else:
                        counts[INTERACTIONS_READ] += record.interactions
                        filtered[record.reason] = filtered.get(record.reason, 0) + record.interactions
        for name, n in counts.items():
            yield beam.pvalue.TaggedOutput(COUNTS, (name, n))
        for reason, n in filtered.items():
            yield beam.pvalue.TaggedOutput(FILTERED, (reason, n))


class LineParser:
    """Parses one line of a text log into records. Subclasses define the format."""

    has_header = False

    def read_header(self, line: str, path: str):
        return None

    def parse(self, line: str, path: str, line_no: int, file_index: int,
              header) -> Iterator[Record]:
        raise NotImplementedError


def _read_text_files(pipeline_input, label: str, files: Sequence[str], parser: LineParser,
                     genres: Mapping[str, Sequence[str]]) -> ParsedLog:
    outputs = (pipeline_input
               | f"{label}Files" >> beam.Create(list(enumerate(files)))
               | f"{label}Reshuffle" >> beam.Reshuffle()
               | f"{label}Read" >> beam.ParDo(_ReadLines(parser)).with_outputs(
                   DEAD_LETTER, FILTERED, COUNTS, main="events"))
    genre_rows = pipeline_input | f"{label}Genres" >> beam.Create(
        sorted((item, tuple(g)) for item, g in genres.items()))
    return ParsedLog(outputs.events, outputs[DEAD_LETTER], outputs[FILTERED], outputs[COUNTS],
                     genre_rows)


def _int_field(value: str, path: str, line_no: int, field: str, raw: str,
               interactions: int = 1) -> Union[int, DeadLetter]:
    try:
        return int(value)
    except ValueError:
        return DeadLetter(path, line_no, field, f"expected an integer, got {value!r}", raw,
                          interactions)


def _float_field(value: str, path: str, line_no: int, field: str, raw: str
                 ) -> Union[float, DeadLetter]:
    try:
        return float(value)
    except ValueError:
        return DeadLetter(path, line_no, field, f"expected a number, got {value!r}", raw)


# ------------------------------------------------------------------------------------------------
# MovieLens-1M ratings.dat + movies.dat


class _RatingsParser(LineParser):
    FIELDS = ("UserID", "MovieID", "Rating", "Timestamp")

    def __init__(self, min_rating: Optional[float]):
        self.min_rating = min_rating

    def parse(self, line, path, line_no, file_index, header):
        fields = line.split("::")
        if len(fields) != 4:
            yield DeadLetter(path, line_no, "<line>",
                             f"expected 4 fields UserID::MovieID::Rating::Timestamp separated by "
                             f"'::', got {len(fields)}", line)
            return
        values = []
        for name, value in zip(self.FIELDS, fields):
            parsed = (_float_field if name == "Rating" else _int_field)(
                value.strip(), path, line_no, name, line)
            if isinstance(parsed, DeadLetter):
                yield parsed
                return
            values.append(parsed)
        user, item, rating, timestamp = values
        if self.min_rating is not None and rating < self.min_rating:
            yield Filtered("rating_below_min")
            return
        yield Event(str(user), str(item), timestamp, (file_index, line_no, 0))


def read_movielens_genres(path: str) -> Dict[str, Tuple[str, ...]]:
    """``movies.dat`` (``MovieID::Title::Genres``, latin-1) -> ``{movie id: genres}``.

    Raises:
      InputError: naming file and line of a malformed row.
    """
    resolve_files(path)
    genres: Dict[str, Tuple[str, ...]] = {}
    with open_binary(path) as f:
        for line_no, raw in enumerate(f, start=1):
            line = raw.decode("latin-1").rstrip("\r\n")
            if not line.strip():
                continue
            fields = line.split("::")
            if len(fields) != 3:
                raise InputError(f"{path}:{line_no}: expected MovieID::Title::Genres, got "
                                 f"{len(fields)} fields: {line!r}")
            movie, _, names = fields
            if not movie.strip().isdigit():
                raise InputError(f"{path}:{line_no}: field 'MovieID': expected an integer, "
                                 f"got {movie!r}")
            genres[movie.strip()] = tuple(g for g in names.split("|") if g)
    return genres


class MovieLensRatings(beam.PTransform):
    """MovieLens ``ratings.dat`` files (``UserID::MovieID::Rating::Timestamp``, optionally
    gzipped) with genres from ``movies.dat`` as item side features.

    Args:
      paths: file paths or globs of ratings files.
      movies_path: ``movies.dat`` (optional).
      min_rating: keep ratings >= this (``None`` keeps all, as the paper does).
    """

    def __init__(self, paths: Union[str, Sequence[str]], movies_path: Optional[str] = None,
                 min_rating: Optional[float] = None):
        super().__init__()
        self.paths = _as_tuple(paths)
        self.movies_path = movies_path
        self.min_rating = min_rating

    def expand(self, pbegin):
        genres = read_movielens_genres(self.movies_path) if self.movies_path else {}
        return _read_text_files(pbegin, "Ratings", resolve_files(self.paths),
                                _RatingsParser(self.min_rating), genres)


# ------------------------------------------------------------------------------------------------
# Ordered sequence files


class _SequenceParser(LineParser):

    def __init__(self, integer_ids: bool):
        self.integer_ids = integer_ids

    def parse(self, line, path, line_no, file_index, header):
        tokens = line.split()
        user, items = tokens[0], tokens[1:]
        if not items:
            yield DeadLetter(path, line_no, "items", "a user with no items (expected "
                             "'user item item ...' separated by whitespace)", line, 0)
            return
        if self.integer_ids and not user.isdigit():
            yield DeadLetter(path, line_no, "user", f"expected an integer, got {user!r}", line,
                             len(items))
            return
        for pos, item in enumerate(items, start=1):
            if self.integer_ids and not item.isdigit():
                yield DeadLetter(path, line_no, f"item[{pos}]",
                                 f"expected an integer, got {item!r}", line)
            else:
                yield Event(user, item, None, (file_index, line_no, pos))


class SequenceFile(beam.PTransform):
    """Whitespace-separated ``user item item ...`` lines; the order of items is time order (no
    timestamps, so time lags are counted in steps and only last-k sessions apply).

    Args:
      paths: file paths or globs (optionally gzipped).
      integer_ids: require integer user and item ids (MovieLens); off for opaque string ids.
      genres: optional ``{item: genres}`` side features (e.g. from ``read_movielens_genres``).
    """

    def __init__(self, paths: Union[str, Sequence[str]], integer_ids: bool = True,
                 genres: Optional[Mapping[str, Sequence[str]]] = None):
        super().__init__()
        self.paths = _as_tuple(paths)
        self.integer_ids = integer_ids
        self.genres = dict(genres or {})

    def expand(self, pbegin):
        return _read_text_files(pbegin, "Sequences", resolve_files(self.paths),
                                _SequenceParser(self.integer_ids), self.genres or {})


# ------------------------------------------------------------------------------------------------
# CSV logs (generic and KuaiRand)


class RowFilter(NamedTuple):
    """Keep a row only if ``float(row[column])`` is ``>= value`` (op ``"ge"``) or ``== value``
    (op ``"eq"``); otherwise it is counted as filtered with ``reason``."""

    column: str
    op: str
    value: float
    reason: str

    def keeps(self, x: float) -> bool:
        return x >= self.value if self.op == "ge" else x == self.value


class _CsvParser(LineParser):
    has_header = True

    def __init__(self, source: "CsvLog"):
        self.source = source

    def read_header(self, line, path):
        columns = [c.strip() for c in next(csv.reader([line], delimiter=self.source.delimiter))]
        missing = [c for c in self.source.required_columns() if c not in columns]
        if missing:
            raise InputError(f"{path}:1: missing column(s) {missing} in header {columns} "
                             f"(delimiter {self.source.delimiter!r})")
        return {name: i for i, name in enumerate(columns)}

    def parse(self, line, path, line_no, file_index, header):
        s = self.source
        try:
            fields = next(csv.reader([line], delimiter=s.delimiter))
        except csv.Error as e:
            yield DeadLetter(path, line_no, "<line>", f"not valid CSV: {e}", line)
            return
        if len(fields) != len(header):
            yield DeadLetter(path, line_no, "<line>",
                             f"expected {len(header)} fields separated by {s.delimiter!r}, got "
                             f"{len(fields)}", line)
            return
        user = fields[header[s.user_column]].strip()
        item = fields[header[s.item_column]].strip()
        for name, value in ((s.user_column, user), (s.item_column, item)):
            if not value:
                yield DeadLetter(path, line_no, name, "empty id", line)
                return
        timestamp = None
        if s.timestamp_column:
            parsed = _float_field(fields[header[s.timestamp_column]].strip(), path, line_no,
                                  s.timestamp_column, line)
            if isinstance(parsed, DeadLetter):
                yield parsed
                return
            timestamp = int(parsed // s.timestamp_divisor)
        for rule in s.filters:
            parsed = _float_field(fields[header[rule.column]].strip(), path, line_no,
                                  rule.column, line)
            if isinstance(parsed, DeadLetter):
                yield parsed
                return
            if not rule.keeps(parsed):
                yield Filtered(rule.reason)
                return
        yield Event(user, item, timestamp, (file_index, line_no, 0))


class CsvLog(beam.PTransform):
    """A CSV log with a header row: ``user, item, timestamp[, label]`` (column names configurable).

    Args:
      paths: file paths or globs (optionally gzipped).
      user_column, item_column: id columns (any non-empty string).
      timestamp_column: numeric time column, or ``""`` for a log already in time order.
      timestamp_divisor: divides the time column to get seconds (1000 for milliseconds).
      label_column: optional column; rows with ``label < min_label`` are filtered.
      delimiter: field separator.
      filters: extra :class:`RowFilter` rules.
    """

    def __init__(self, paths: Union[str, Sequence[str]], user_column: str = "user",
                 item_column: str = "item", timestamp_column: str = "timestamp",
                 timestamp_divisor: float = 1.0, label_column: Optional[str] = None,
                 min_label: float = 1.0, delimiter: str = ",",
                 filters: Sequence[RowFilter] = ()):
        super().__init__()
        self.paths = _as_tuple(paths)
        self.user_column = user_column
        self.item_column = item_column
        self.timestamp_column = timestamp_column
        self.timestamp_divisor = timestamp_divisor
        self.delimiter = delimiter
        rules = [RowFilter(label_column, "ge", min_label, "label_below_min")] if label_column else []
        self.filters = tuple(rules) + tuple(filters)

    def required_columns(self) -> List[str]:
        names = [self.user_column, self.item_column, self.timestamp_column]
        return [n for n in names + [rule.column for rule in self.filters] if n]

    def expand(self, pbegin):
        return _read_text_files(pbegin, "Csv", resolve_files(self.paths), _CsvParser(self), {})


class KuaiRandLog(CsvLog):
    """KuaiRand logs (``user_id, video_id, date, hourmin, time_ms, is_click, ..., tab, ...``).

    Keeps clicks (``is_click == 1``) in the main tab (``tab == 1``), as the paper does; other rows
    are counted as filtered (``not_click``, ``not_main_tab``).

    Args:
      paths: the log files (e.g. ``log_standard_4_08_to_4_21_1k.csv``), optionally gzipped.
      main_tab: the tab to keep, or ``None`` for all tabs.
    """

    def __init__(self, paths: Union[str, Sequence[str]], main_tab: Optional[int] = 1):
        rules = [RowFilter("is_click", "eq", 1.0, "not_click")]
        if main_tab is not None:
            rules.append(RowFilter("tab", "eq", float(main_tab), "not_main_tab"))
        super().__init__(paths, user_column="user_id", item_column="video_id",
                         timestamp_column="time_ms", timestamp_divisor=1000.0, filters=rules)


# ------------------------------------------------------------------------------------------------
# TFDS and synthetic


def _tfds_rows(_, name: str, data_dir: Optional[str], min_rating: Optional[float]):
    import tensorflow_datasets as tfds  # only users of this source need TFDS at run time

    dataset = tfds.load(name, split="train", data_dir=data_dir, download=False)
    genre_names = None
    read = kept_filtered = 0
    for index, row in enumerate(tfds.as_numpy(dataset)):
        read += 1
        user = row["user_id"].decode()
        item = row["movie_id"].decode()
        if min_rating is not None and float(row["user_rating"]) < min_rating:
            kept_filtered += 1
            continue
        yield Event(user, item, int(row["timestamp"]), (0, index + 1, 0))
        if "movie_genres" in row:
            if genre_names is None:
                builder = tfds.builder(name, data_dir=data_dir)
                genre_names = builder.info.features["movie_genres"].feature.names
            yield beam.pvalue.TaggedOutput("genres", (item, tuple(
                genre_names[g] for g in row["movie_genres"])))
    yield beam.pvalue.TaggedOutput(COUNTS, (INTERACTIONS_READ, read))
    yield beam.pvalue.TaggedOutput(COUNTS, (LINES_READ, read))
    if kept_filtered:
        yield beam.pvalue.TaggedOutput(FILTERED, ("rating_below_min", kept_filtered))


class TfdsMovieLens(beam.PTransform):
    """TFDS ``movielens/1m-ratings`` (or another ``movielens/*-ratings``) prepared in
    ``data_dir`` beforehand (``tfds build`` with internet); the pipeline never downloads.

    Rows carry no file position, so ties in time keep the data set's row order.
    """

    def __init__(self, name: str = "movielens/1m-ratings", data_dir: Optional[str] = None,
                 min_rating: Optional[float] = None):
        super().__init__()
        self.name = name
        self.data_dir = data_dir
        self.min_rating = min_rating

    def expand(self, pbegin):
        outputs = (pbegin | "TfdsImpulse" >> beam.Impulse()
                   | "TfdsRead" >> beam.FlatMap(_tfds_rows, self.name, self.data_dir,
                                                self.min_rating).with_outputs(
                       "genres", COUNTS, FILTERED, main="events"))
        empty = pbegin | "TfdsNoDeadLetters" >> beam.Create([])
        genres = outputs.genres | "TfdsGenresDistinct" >> beam.Distinct()
        return ParsedLog(outputs.events, empty, outputs[FILTERED], outputs[COUNTS], genres)


def _synthetic_user(user_index: int, config: synthetic.SyntheticConfig):
    rows = synthetic.user_interactions(user_index, config)
    for pos, (user, item, ts) in enumerate(rows):
        yield Event(user, item, ts, (0, user_index + 1, pos))
    yield beam.pvalue.TaggedOutput(COUNTS, (INTERACTIONS_READ, len(rows)))


class SyntheticLog(beam.PTransform):
    """The deterministic synthetic drift log (see ``synthetic.py``), generated per user."""

    def __init__(self, config: synthetic.SyntheticConfig = synthetic.SyntheticConfig()):
        super().__init__()
        self.config = config

    def expand(self, pbegin):
        outputs = (pbegin | "SyntheticUsers" >> beam.Create(list(range(self.config.num_users)))
                   | "SyntheticGenerate" >> beam.FlatMap(_synthetic_user, self.config).with_outputs(
                       COUNTS, main="events"))
        empty = pbegin | "SyntheticNoDeadLetters" >> beam.Create([])
        empty_filtered = pbegin | "SyntheticNoFiltered" >> beam.Create([])
        genres = pbegin | "SyntheticGenres" >> beam.Create(
            sorted((k, tuple(v)) for k, v in synthetic.item_genres(self.config).items()))
        return ParsedLog(outputs.events, empty, empty_filtered, outputs[COUNTS], genres)
