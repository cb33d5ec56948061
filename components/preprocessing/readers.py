"""Sources of interaction logs, each a Beam ``PTransform`` producing a :class:`ParsedLog`.

Every file-based source reads its files line by line (gzip is detected from the content), so
that each record keeps its file and line number. Every field is parsed under one input contract
(``contract.py``): a record that breaks it goes to the dead-letter output naming file, line,
field and reason; valid records a rule drops are counted by reason. What can be known about a
file before parsing rows (it exists, is readable, not empty, its gzip stream is whole, its
header has the needed columns once each) is checked before any Beam work
(``input_files.py``). Files are read in parallel across files (shard large logs into several
files to scale out).

Sources: :class:`MovieLensRatings` (``ratings.dat``, ``movies.dat`` genres), :class:`SequenceFile`
(``user item item ...``), :class:`KuaiRandLog`, :class:`CsvLog` (generic), :class:`TfdsMovieLens`
and :class:`SyntheticLog` (the embedded default).
"""

from __future__ import annotations

import csv
import re
from typing import (Callable, Dict, Iterator, List, Mapping, NamedTuple, Optional, Sequence,
                    Tuple, Union)

import apache_beam as beam

from components.preprocessing import contract as C
from components.preprocessing import file_blocks
from components.preprocessing import synthetic
from components.preprocessing.input_files import (  # noqa: F401  (re-exported)
    check_data_files, first_line, open_binary, parse_header, read_lines, resolve_files)
from components.preprocessing.input_files import Line, chunk_lines, decode_line, file_chunks
from components.preprocessing.csv_blocks import (PLAIN_NUMBER, PLAIN_TIME, PlainCsvBlocks,
                                                 plain_id_characters)
from components.preprocessing.records import (  # noqa: F401  (RowFilter re-exported)
    Count, DeadLetter, Event, Filtered, InputError, PlainRows, RowFilter, UserRowBatcher,
    UserRowColumns)

Record = Union[Event, DeadLetter, Filtered, Count]

DEAD_LETTER = "dead_letter"
FILTERED = "filtered"
COUNTS = "counts"

LINES_READ = "lines_read"
HEADER_LINES = "header_lines"
BLANK_LINES = "blank_lines"
INTERACTIONS_READ = "interactions_read"


class ParsedLog(NamedTuple):
    """The PCollections a source produces.

    user_rows: :data:`records.UserRows`, ``(user, records.UserRowColumns)``, one or more per
    user (:class:`records.UserRowBatcher`); dead_letters: :class:`DeadLetter`;
    filtered: ``(reason, n)``; counts: ``(counter name, n)`` (lines read, headers, blanks, interactions read,
    normalisations); item_genres: ``(raw item id, tuple of genre names)``.
    """

    user_rows: beam.PCollection
    dead_letters: beam.PCollection
    filtered: beam.PCollection
    counts: beam.PCollection
    item_genres: beam.PCollection


# ------------------------------------------------------------------------------------------------
# Lines -> records


def _as_tuple(paths: Union[str, Sequence[str]]) -> Tuple[str, ...]:
    return (paths,) if isinstance(paths, str) else tuple(paths)


def dead_letter(path: str, line_no: int, field: str, error: C.FieldError, raw: str,
                interactions: int = 1) -> DeadLetter:
    """The dead letter of a field that broke the contract."""
    return DeadLetter(path, line_no, field, error.detail, C.raw_for_dead_letter(raw),
                      interactions, error.reason)


class LineParser:
    """Parses one decoded line of a text log into records. Subclasses define the format.

    ``parse`` yields :class:`Event`, :class:`DeadLetter` (naming the field and reason),
    :class:`Filtered` and :class:`Count` (normalisations) records; it does not raise on any
    line.
    """

    has_header = False

    def interactions(self, line: str) -> int:
        """How many interactions a line holds when it has to be refused whole."""
        return 1

    def header_spec(self) -> Optional[Tuple[str, Sequence[str]]]:
        """``(delimiter, required columns)`` of a format with a header line, else ``None``."""
        return None

    def read_header(self, line: Optional[str], path: str):
        return None

    def parse(self, line: str, path: str, line_no: int, file_index: int,
              header) -> Iterator[Record]:
        raise NotImplementedError

    def clean_line_matcher(self, header
                           ) -> Optional[Callable[[str], Optional[Tuple[str, str, Optional[int]]]]]:
        """An optional shortcut for the common line: a function that returns ``(user, item,
        timestamp)`` for a line ``parse`` would turn into exactly that one :class:`Event` and
        nothing else (no count, no filter), and ``None`` for any other line (which then takes
        ``parse``). Lines reach it decoded with ``surrogateescape``: a line holding a lone
        surrogate was not UTF-8 and must not match. ``None`` (default): no shortcut."""
        return None

    def plain_block_parser(self, header) -> Optional[PlainCsvBlocks]:
        """An optional parser of whole pieces of lines at once (``csv_blocks.py``), taking
        exactly the lines ``clean_line_matcher`` would and making the same records of them.
        ``None`` (default): lines are matched one by one."""
        return None


def parse_line(parser: LineParser, line: str, path: str, line_no: int, file_index: int,
               header) -> Iterator[Record]:
    """``parser.parse`` under the rules every format shares: a ``\\r`` or ``\\n`` left inside
    the line is a dead letter, and an unexpected error in the parser becomes a dead letter
    (``unexpected_error``) instead of stopping the run."""
    if "\r" in line or "\n" in line:
        yield dead_letter(path, line_no, "<line>", C.FieldError(
            C.CONTROL_CHARACTER_IN_LINE, "a carriage return inside the line (only a CRLF line "
            "ending is accepted)"), line, parser.interactions(line))
        return
    records: List[Record] = []
    try:
        records = list(parser.parse(line, path, line_no, file_index, header))
    except Exception as e:  # noqa: BLE001  (a parser bug must not lose the line silently)
        yield dead_letter(path, line_no, "<line>", C.FieldError(
            C.UNEXPECTED_ERROR, f"{type(e).__name__}: {e}"), line, parser.interactions(line))
        return
    yield from records


def read_file_records(parser: LineParser, path: str, file_index: int, chunks=None, header=None,
                      fast: bool = True, plain_rows: bool = False
                      ) -> Iterator[Union[Record, PlainRows, Tuple[str, int]]]:
    """Every record of the file at ``path``, then its counters as ``(name, n)`` tuples.

    ``chunks`` (``(first line number, bytes of whole lines)`` pieces, default: the whole file
    via ``input_files.file_chunks``) reads part of the file, e.g. one ``file_blocks`` block,
    with ``header`` parsed beforehand when the part has no line 1.

    With ``fast`` (default), the plain lines of a piece are parsed together when the parser
    has a ``plain_block_parser`` (Arrow, in columns), else a piece that is valid UTF-8 is
    decoded in one call and each line that ``parser.clean_line_matcher`` accepts becomes its
    :class:`Event`; every other line takes the general path. Records come in line order. With
    ``plain_rows``, the plain lines of a piece come as one :class:`records.PlainRows` instead
    of a record each, after the piece's other records. A test holds every path to the same
    records and counts on fuzzed files.

    Raises:
      InputError: ``path:line`` when the file cannot be read further, or its header is bad.
    """
    counts = {LINES_READ: 0, HEADER_LINES: 0, BLANK_LINES: 0, INTERACTIONS_READ: 0,
              C.BOM_STRIPPED: 0, C.CRLF_LINE_ENDINGS: 0, C.TRIMMED_FIELDS: 0}

    def general(line: Line):
        nonlocal header
        counts[LINES_READ] += 1
        counts[C.BOM_STRIPPED] += line.bom
        counts[C.CRLF_LINE_ENDINGS] += line.crlf
        if parser.has_header and line.number == 1:
            header = parser.read_header(line.text, path)
            counts[HEADER_LINES] += 1
            return
        if line.text is None:
            counts[INTERACTIONS_READ] += 1
            yield dead_letter(path, line.number, "<line>", C.FieldError(
                C.NOT_UTF8, "not valid UTF-8"), line.raw.decode("utf-8", "replace"))
            return
        if C.is_blank(line.text):
            counts[BLANK_LINES] += 1
            return
        for record in parse_line(parser, line.text, path, line.number, file_index, header):
            if isinstance(record, Count):
                counts[record.name] = counts.get(record.name, 0) + record.n
                continue
            counts[INTERACTIONS_READ] += 1 if isinstance(record, Event) else record.interactions
            yield record

    def plain_piece(number: int, data: bytes):
        parsed = block.parse(data, number, file_index)
        if parsed is None:
            return False
        rows, others = parsed
        raws = data.split(b"\n") if others else []

        def other_records():
            for line_no in others:
                yield line_no, general(decode_line(raws[line_no - number] + b"\n", line_no))

        counts[LINES_READ] += len(rows)
        counts[INTERACTIONS_READ] += len(rows)
        return rows, other_records()

    match, block, matcher_header = None, None, object()  # built once per header
    for number, data in (file_chunks(path) if chunks is None else chunks):
        if fast and number == 1:  # line 1 (a header, a BOM) always takes the general path
            cut = data.find(b"\n") + 1 or len(data)
            for line in chunk_lines(1, data[:cut]):
                yield from general(line)
            number, data = 2, data[cut:]
        if fast and header is not matcher_header and (
                header is not None or not parser.has_header):
            match, matcher_header = parser.clean_line_matcher(header), header
            block = parser.plain_block_parser(header)
        if not data:
            continue
        whole = data.rfind(b"\n") + 1
        piece = plain_piece(number, data[:whole]) if block is not None and whole else False
        if piece:
            rows, others = piece
            if plain_rows:
                for _, records in others:
                    yield from records
                yield rows
            else:  # the plain rows' records and the other lines', merged in line order
                plain = rows.records()
                nxt = next(plain, None)
                for line_no, records in others:
                    while nxt is not None and nxt[0] < line_no:
                        yield nxt[1]
                        nxt = next(plain, None)
                    yield from records
                while nxt is not None:
                    yield nxt[1]
                    nxt = next(plain, None)
            if whole < len(data):
                yield from general(decode_line(data[whole:], number + data.count(b"\n")))
            continue
        if match is None:
            for line in chunk_lines(number, data):
                yield from general(line)
            continue
        # Bytes that are not UTF-8 become lone surrogates, which no matcher accepts; such a
        # line goes back to its exact bytes for the general path (which dead-letters it).
        text = data.decode("utf-8", "surrogateescape")
        texts = text.split("\n")
        last = texts.pop()  # "" after a final "\n", else a last line without one
        matched = 0
        for i, line_text in enumerate(texts):
            row = match(line_text)
            if row is not None:
                matched += 1
                yield Event(row[0], row[1], row[2], (file_index, number + i, 0))
            else:
                yield from general(decode_line(
                    (line_text + "\n").encode("utf-8", "surrogateescape"), number + i))
        if last:
            yield from general(decode_line(last.encode("utf-8", "surrogateescape"),
                                           number + len(texts)))
        counts[LINES_READ] += matched
        counts[INTERACTIONS_READ] += matched
    for name, n in counts.items():
        if n or not name.startswith("normalised."):
            yield name, n


class _ReadLines(beam.DoFn):
    """A ``file_blocks.Block`` (a whole file, or a byte range of a large one) -> records of its
    lines, via ``parser``; ``newlines`` (side input) are the ``\n`` counts of the blocks before
    it, for true line numbers.

    Main output: :data:`records.UserRows`, one per user of the block; tagged outputs
    ``dead_letter``, ``filtered`` (``(reason, n)``) and ``counts`` (per-block totals).
    """

    def __init__(self, parser: LineParser):
        self._parser = parser

    def process(self, block, newlines=None):
        header = None
        if self._parser.has_header and block.start > 0:
            header = self._parser.read_header(first_line(block.path).text, block.path)
        chunks = file_blocks.block_chunks(block, newlines or {})
        filtered: Dict[str, int] = {}
        batcher = UserRowBatcher()
        for record in read_file_records(self._parser, block.path, block.file_index, chunks,
                                        header, plain_rows=True):
            if isinstance(record, PlainRows):
                for reason, n in record.filtered().items():
                    filtered[reason] = filtered.get(reason, 0) + n
                yield from batcher.add_plain(record)
            elif isinstance(record, Event):
                yield from batcher.add(record)
            elif isinstance(record, DeadLetter):
                yield beam.pvalue.TaggedOutput(DEAD_LETTER, record)
            elif isinstance(record, Filtered):
                filtered[record.reason] = filtered.get(record.reason, 0) + record.interactions
            else:
                yield beam.pvalue.TaggedOutput(COUNTS, record)
        yield from batcher.flush()
        for reason, n in filtered.items():
            yield beam.pvalue.TaggedOutput(FILTERED, (reason, n))


def _read_text_files(pipeline_input, label: str, files: Sequence[str], parser: LineParser,
                     genres: Mapping[str, Sequence[str]]) -> ParsedLog:
    check_data_files(files, parser.header_spec())
    # Large uncompressed files are read in byte-range blocks, in parallel (file_blocks.py).
    blocks = file_blocks.plan_blocks(files, file_blocks.BLOCK_BYTES)
    read = beam.ParDo(_ReadLines(parser))
    if not all(b.last for b in blocks):
        newlines = (pipeline_input
                    | f"{label}Blocks" >> beam.Create([b for b in blocks if not b.last])
                    | f"{label}CountNewlines" >> beam.Map(
                        lambda b: (b.key, file_blocks.count_newlines(b))))
        read = beam.ParDo(_ReadLines(parser), newlines=beam.pvalue.AsDict(newlines))
    outputs = (pipeline_input
               | f"{label}Files" >> beam.Create(blocks)
               | f"{label}Reshuffle" >> beam.Reshuffle()
               | f"{label}Read" >> read.with_outputs(
                   DEAD_LETTER, FILTERED, COUNTS, main="user_rows"))
    genre_rows = pipeline_input | f"{label}Genres" >> beam.Create(
        sorted((item, tuple(g)) for item, g in genres.items()))
    return ParsedLog(outputs.user_rows, outputs[DEAD_LETTER], outputs[FILTERED],
                     outputs[COUNTS], genre_rows)


def _field(value: str, trim_spaces: bool) -> Tuple[str, List[Count]]:
    """``value`` with surrounding spaces removed (when allowed; counted) or refused."""
    value, was_trimmed = C.trimmed(value, trim_spaces)
    return value, [Count(C.TRIMMED_FIELDS)] if was_trimmed else []


# ------------------------------------------------------------------------------------------------
# MovieLens-1M ratings.dat + movies.dat


class _RatingsParser(LineParser):
    FIELDS = ("UserID", "MovieID", "Rating", "Timestamp")

    def __init__(self, min_rating: Optional[float], trim_spaces: bool = False):
        self.min_rating = min_rating
        self.trim_spaces = trim_spaces

    def parse(self, line, path, line_no, file_index, header):
        fields = line.split("::")
        if len(fields) != 4:
            yield dead_letter(path, line_no, "<line>", C.FieldError(
                C.WRONG_FIELD_COUNT, f"expected 4 fields UserID::MovieID::Rating::Timestamp "
                f"separated by '::', got {len(fields)}"), line)
            return
        trimmed = 0
        if self.trim_spaces:
            stripped = [f.strip() for f in fields]
            trimmed = sum(a != b for a, b in zip(fields, stripped))
            fields = stripped
        user, item, rating, timestamp = fields
        name = "UserID"
        try:
            C.check_integer_id(user)
            name = "MovieID"
            C.check_integer_id(item)
            name = "Rating"
            rating = C.parse_number(C.trimmed(rating, False)[0])
            name = "Timestamp"
            timestamp = C.parse_timestamp(C.trimmed(timestamp, False)[0], integer_only=True)
        except C.FieldError as e:
            yield dead_letter(path, line_no, name, e, line)
            return
        if trimmed:
            yield Count(C.TRIMMED_FIELDS, trimmed)
        if self.min_rating is not None and rating < self.min_rating:
            yield Filtered("rating_below_min")
            return
        yield Event(user, item, timestamp, (file_index, line_no, 0))


def read_movielens_genres(path: str) -> Dict[str, Tuple[str, ...]]:
    """``movies.dat`` (``MovieID::Title::Genres``, latin-1) -> ``{movie id: genres}``.

    Raises:
      InputError: naming file and line of a malformed row (a side table: one bad row stops the
        run rather than silently dropping an item's genres).
    """
    resolve_files(path)
    genres: Dict[str, Tuple[str, ...]] = {}
    for line in read_lines(path):
        raw = line.raw[len(C.UTF8_BOM):] if line.bom else line.raw
        text = raw.decode("latin-1").rstrip("\n")
        text = text[:-1] if text.endswith("\r") else text
        if C.is_blank(text):
            continue
        fields = text.split("::")
        if len(fields) != 3:
            raise InputError(f"{path}:{line.number}: expected MovieID::Title::Genres, got "
                             f"{len(fields)} fields: {text[:200]!r}")
        movie, _, names = fields
        try:
            movie = C.check_integer_id(movie.strip())
        except C.FieldError as e:
            raise InputError(f"{path}:{line.number}: field 'MovieID': {e.detail}") from None
        if movie in genres:
            raise InputError(f"{path}:{line.number}: MovieID {movie} appears twice")
        genres[movie] = tuple(g for g in names.split("|") if g)
    return genres


class MovieLensRatings(beam.PTransform):
    """MovieLens ``ratings.dat`` files (``UserID::MovieID::Rating::Timestamp``, optionally
    gzipped) with genres from ``movies.dat`` as item side features.

    Args:
      paths: file paths or globs of ratings files.
      movies_path: ``movies.dat`` (optional).
      min_rating: keep ratings >= this (``None`` keeps all, as the paper does).
      trim_spaces: remove spaces around fields (counted) instead of dead-lettering the row.
    """

    def __init__(self, paths: Union[str, Sequence[str]], movies_path: Optional[str] = None,
                 min_rating: Optional[float] = None, trim_spaces: bool = False):
        super().__init__()
        self.paths = _as_tuple(paths)
        self.movies_path = movies_path
        self.min_rating = min_rating
        self.trim_spaces = trim_spaces

    def parser(self) -> LineParser:
        return _RatingsParser(self.min_rating, self.trim_spaces)

    def expand(self, pbegin):
        genres = read_movielens_genres(self.movies_path) if self.movies_path else {}
        return _read_text_files(pbegin, "Ratings", resolve_files(self.paths), self.parser(),
                                genres)


# ------------------------------------------------------------------------------------------------
# Ordered sequence files


class _SequenceParser(LineParser):

    def __init__(self, integer_ids: bool):
        self.integer_ids = integer_ids

    def interactions(self, line):
        return max(len(C.split_blanks(line)) - 1, 0)

    def parse(self, line, path, line_no, file_index, header):
        check = C.check_integer_id if self.integer_ids else C.check_id
        tokens = C.split_blanks(line)
        user, items = tokens[0], tokens[1:]
        if not items:
            yield dead_letter(path, line_no, "items", C.FieldError(
                C.NO_ITEMS, "a user with no items (expected 'user item item ...' separated by "
                "spaces or tabs)"), line, 0)
            return
        try:
            check(user)
        except C.FieldError as e:
            yield dead_letter(path, line_no, "user", e, line, len(items))
            return
        for pos, item in enumerate(items, start=1):
            try:
                yield Event(user, check(item), None, (file_index, line_no, pos))
            except C.FieldError as e:
                yield dead_letter(path, line_no, f"item[{pos}]", e, line)


class SequenceFile(beam.PTransform):
    """``user item item ...`` lines (separated by ASCII spaces or tabs); the order of items is
    time order (no timestamps, so time lags are counted in steps and only last-k sessions
    apply).

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

    def parser(self) -> LineParser:
        return _SequenceParser(self.integer_ids)

    def expand(self, pbegin):
        return _read_text_files(pbegin, "Sequences", resolve_files(self.paths), self.parser(),
                                self.genres or {})


# ------------------------------------------------------------------------------------------------
# CSV logs (generic and KuaiRand)


class _CsvParser(LineParser):
    """RFC 4180 quoting (a quoted field may hold the delimiter; the quotes are not part of the
    value), parsed strictly; a quote left inside an id is a dead letter (``quote_in_id``)."""

    has_header = True

    def __init__(self, source: "CsvLog"):
        self.source = source

    def header_spec(self):
        return self.source.delimiter, self.source.required_columns()

    def read_header(self, line, path):
        return parse_header(line, path, self.source.delimiter, self.source.required_columns())

    def parse(self, line, path, line_no, file_index, header):
        s = self.source
        try:
            # Without a quote character the csv module splits on the delimiter and nothing
            # else (control characters are refused before): the same fields, 10x cheaper.
            fields = (line.split(s.delimiter) if line and '"' not in line
                      else next(csv.reader([line], delimiter=s.delimiter, strict=True)))
        except csv.Error as e:
            yield dead_letter(path, line_no, "<line>", C.FieldError(
                C.MALFORMED_CSV, f"not valid CSV: {e}"), line)
            return
        header, width = header
        if len(fields) != width:
            yield dead_letter(path, line_no, "<line>", C.FieldError(
                C.WRONG_FIELD_COUNT, f"expected {width} fields separated by {s.delimiter!r}, got "
                f"{len(fields)}"), line)
            return
        counts: List[Count] = []
        try:
            field = s.user_column
            user, trimmed = _field(fields[header[field]], s.trim_spaces)
            counts += trimmed
            C.check_id(user)
            field = s.item_column
            item, trimmed = _field(fields[header[field]], s.trim_spaces)
            counts += trimmed
            C.check_id(item)
            timestamp = None
            if s.timestamp_column:
                field = s.timestamp_column
                value, trimmed = _field(fields[header[field]], s.trim_spaces)
                counts += trimmed
                timestamp = C.parse_timestamp(value, s.timestamp_divisor)
            values = []
            for rule in s.filters:
                field = rule.column
                value, trimmed = _field(fields[header[field]], s.trim_spaces)
                counts += trimmed
                values.append(C.parse_number(value))
        except C.FieldError as e:
            yield dead_letter(path, line_no, field, e, line)
            return
        yield from counts
        for rule, x in zip(s.filters, values):
            if not rule.keeps(x):
                yield Filtered(rule.reason)
                return
        yield Event(user, item, timestamp, (file_index, line_no, 0))

    def clean_line_matcher(self, header):
        """Lines of plain fields only: ids of printable ASCII other than space, quote and the
        delimiter; an integer-seconds time in range; other columns without quotes or line
        breaks. Rows that a filter drops take ``parse``, and so does a log whose time divisor is
        not a whole number."""
        s = self.source
        if not float(s.timestamp_divisor).is_integer():
            return None
        divisor = int(s.timestamp_divisor)
        index, width = header
        delimiter = re.escape(s.delimiter)
        other = f'[^"\\r\\n\\udc80-\\udcff{delimiter}]*'
        # An id ``C.check_id`` accepts without a doubt: printable ASCII, no space or quote.
        identifier = "[" + "".join(map(re.escape, plain_id_characters(s.delimiter))) + "]+"
        columns = [(s.user_column, f"({identifier})"), (s.item_column, f"({identifier})")]
        if s.timestamp_column:
            columns.append((s.timestamp_column, f"({PLAIN_TIME})"))
        columns += [(rule.column, f"({PLAIN_NUMBER})") for rule in s.filters]
        groups = {index[name]: group for name, group in columns}
        if len(groups) != len(columns):
            return None  # a column read twice (say, a filter on the item): not the common case
        pattern = re.compile(delimiter.join(groups.get(i, other) for i in range(width)))
        order = sorted(groups)
        user_at, item_at = order.index(index[s.user_column]), order.index(index[s.item_column])
        time_at = order.index(index[s.timestamp_column]) if s.timestamp_column else None
        rules = [(order.index(index[rule.column]), rule) for rule in s.filters]
        earliest, latest = C.EARLIEST_TIMESTAMP, C.LATEST_TIMESTAMP

        def match(line: str):
            m = pattern.fullmatch(line)
            if m is None:
                return None
            fields = m.groups()
            for at, rule in rules:
                if not rule.keeps(float(fields[at])):
                    return None  # filtered: ``parse`` says why
            if time_at is None:
                return fields[user_at], fields[item_at], None
            timestamp = int(fields[time_at]) // divisor  # as C.parse_timestamp
            if not earliest <= timestamp <= latest:
                return None
            return fields[user_at], fields[item_at], timestamp

        return match


    def plain_block_parser(self, header):
        """Arrow's parse of whole pieces (``csv_blocks.py``), under the same conditions and
        rules as :meth:`clean_line_matcher`."""
        s = self.source
        if not float(s.timestamp_divisor).is_integer():
            return None
        index, width = header
        used = [s.user_column, s.item_column] + ([s.timestamp_column] if s.timestamp_column
                                                 else []) + [rule.column for rule in s.filters]
        if len({index[name] for name in used}) != len(used):
            return None  # a column read twice (say, a filter on the item): not the common case
        return PlainCsvBlocks(
            s.delimiter, width, index[s.user_column], index[s.item_column],
            index[s.timestamp_column] if s.timestamp_column else None,
            int(s.timestamp_divisor),
            [(index[rule.column], rule) for rule in s.filters])


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
      trim_spaces: remove spaces around fields (counted) instead of dead-lettering the row.
    """

    def __init__(self, paths: Union[str, Sequence[str]], user_column: str = "user",
                 item_column: str = "item", timestamp_column: str = "timestamp",
                 timestamp_divisor: float = 1.0, label_column: Optional[str] = None,
                 min_label: float = 1.0, delimiter: str = ",",
                 filters: Sequence[RowFilter] = (), trim_spaces: bool = False):
        super().__init__()
        if not timestamp_divisor > 0:
            raise ValueError(f"timestamp_divisor must be > 0, got {timestamp_divisor}")
        if len(delimiter) != 1 or delimiter in '"\r\n':
            raise ValueError(f"delimiter must be one character other than a quote or a line "
                             f"break, got {delimiter!r}")
        self.paths = _as_tuple(paths)
        self.user_column = user_column
        self.item_column = item_column
        self.timestamp_column = timestamp_column
        self.timestamp_divisor = timestamp_divisor
        self.delimiter = delimiter
        self.trim_spaces = trim_spaces
        rules = [RowFilter(label_column, "ge", min_label, "label_below_min")] if label_column else []
        self.filters = tuple(rules) + tuple(filters)

    def required_columns(self) -> List[str]:
        names = [self.user_column, self.item_column, self.timestamp_column]
        return [n for n in names + [rule.column for rule in self.filters] if n]

    def parser(self) -> LineParser:
        return _CsvParser(self)

    def expand(self, pbegin):
        return _read_text_files(pbegin, "Csv", resolve_files(self.paths), self.parser(), {})


class KuaiRandLog(CsvLog):
    """KuaiRand logs (``user_id, video_id, date, hourmin, time_ms, is_click, ..., tab, ...``).

    Keeps clicks (``is_click == 1``) in the main tab (``tab == 1``), as the paper does; other rows
    are counted as filtered (``not_click``, ``not_main_tab``).

    Args:
      paths: the log files (e.g. ``log_standard_4_08_to_4_21_1k.csv``), optionally gzipped.
      main_tab: the tab to keep, or ``None`` for all tabs.
      trim_spaces: remove spaces around fields (counted) instead of dead-lettering the row.
    """

    def __init__(self, paths: Union[str, Sequence[str]], main_tab: Optional[int] = 1,
                 trim_spaces: bool = False):
        rules = [RowFilter("is_click", "eq", 1.0, "not_click")]
        if main_tab is not None:
            rules.append(RowFilter("tab", "eq", float(main_tab), "not_main_tab"))
        super().__init__(paths, user_column="user_id", item_column="video_id",
                         timestamp_column="time_ms", timestamp_divisor=1000.0, filters=rules,
                         trim_spaces=trim_spaces)


# ------------------------------------------------------------------------------------------------
# TFDS and synthetic


def _tfds_text(value, what: str) -> str:
    if isinstance(value, bytes):
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            raise C.FieldError(C.NOT_UTF8, f"{what} is not valid UTF-8: {value[:60]!r}") from None
    return str(value)


def tfds_row_records(row: Mapping, index: int, where: str, min_rating: Optional[float],
                     trim_spaces: bool = False) -> Iterator[Record]:
    """One TFDS MovieLens row (``user_id``, ``movie_id`` bytes, ``timestamp`` int,
    ``user_rating`` float) under the input contract; ``where`` names the data set in dead
    letters, ``index + 1`` is the row's "line"."""
    line_no = index + 1
    shown = "{" + ", ".join(f"{k}: {row.get(k)!r}" for k in
                            ("user_id", "movie_id", "user_rating", "timestamp")) + "}"
    counts: List[Count] = []
    field = "user_id"
    try:
        user, trimmed = _field(_tfds_text(row["user_id"], field), trim_spaces)
        counts += trimmed
        C.check_id(user)
        field = "movie_id"
        item, trimmed = _field(_tfds_text(row["movie_id"], field), trim_spaces)
        counts += trimmed
        C.check_id(item)
        field = "user_rating"
        rating = C.parse_number(repr(float(row["user_rating"])))
        field = "timestamp"
        timestamp = C.parse_timestamp(str(int(row["timestamp"])), integer_only=True)
    except C.FieldError as e:
        yield dead_letter(where, line_no, field, e, shown)
        return
    yield from counts
    if min_rating is not None and rating < min_rating:
        yield Filtered("rating_below_min")
        return
    yield Event(user, item, timestamp, (0, line_no, 0))


def _tfds_rows(_, name: str, data_dir: Optional[str], min_rating: Optional[float],
               trim_spaces: bool = False):
    import tensorflow_datasets as tfds  # only users of this source need TFDS at run time

    dataset = tfds.load(name, split="train", data_dir=data_dir, download=False)
    genre_names = None
    read = 0
    counts: Dict[str, int] = {}
    filtered: Dict[str, int] = {}
    batcher = UserRowBatcher()
    for index, row in enumerate(tfds.as_numpy(dataset)):
        read += 1
        for record in tfds_row_records(row, index, f"tfds:{name}", min_rating, trim_spaces):
            if isinstance(record, Event):
                yield from batcher.add(record)
                if "movie_genres" in row:
                    if genre_names is None:
                        builder = tfds.builder(name, data_dir=data_dir)
                        genre_names = builder.info.features["movie_genres"].feature.names
                    yield beam.pvalue.TaggedOutput("genres", (record.item, tuple(
                        genre_names[g] for g in row["movie_genres"])))
            elif isinstance(record, DeadLetter):
                yield beam.pvalue.TaggedOutput(DEAD_LETTER, record)
            elif isinstance(record, Filtered):
                filtered[record.reason] = filtered.get(record.reason, 0) + record.interactions
            else:
                counts[record.name] = counts.get(record.name, 0) + record.n
    yield from batcher.flush()
    yield beam.pvalue.TaggedOutput(COUNTS, (INTERACTIONS_READ, read))
    yield beam.pvalue.TaggedOutput(COUNTS, (LINES_READ, read))
    for name_, n in counts.items():
        yield beam.pvalue.TaggedOutput(COUNTS, (name_, n))
    for reason, n in filtered.items():
        yield beam.pvalue.TaggedOutput(FILTERED, (reason, n))


class TfdsMovieLens(beam.PTransform):
    """TFDS ``movielens/1m-ratings`` (or another ``movielens/*-ratings``) prepared in
    ``data_dir`` beforehand (``tfds build`` with internet); the pipeline never downloads.

    Rows carry no file position, so ties in time keep the data set's row order.
    """

    def __init__(self, name: str = "movielens/1m-ratings", data_dir: Optional[str] = None,
                 min_rating: Optional[float] = None, trim_spaces: bool = False):
        super().__init__()
        self.name = name
        self.data_dir = data_dir
        self.min_rating = min_rating
        self.trim_spaces = trim_spaces

    def expand(self, pbegin):
        outputs = (pbegin | "TfdsImpulse" >> beam.Impulse()
                   | "TfdsRead" >> beam.FlatMap(_tfds_rows, self.name, self.data_dir,
                                                self.min_rating, self.trim_spaces).with_outputs(
                       "genres", DEAD_LETTER, COUNTS, FILTERED, main="user_rows"))
        genres = outputs.genres | "TfdsGenresDistinct" >> beam.Distinct()
        return ParsedLog(outputs.user_rows, outputs[DEAD_LETTER], outputs[FILTERED],
                         outputs[COUNTS], genres)


def _synthetic_user(user_index: int, config: synthetic.SyntheticConfig):
    rows = synthetic.user_interactions(user_index, config)
    if rows:
        yield rows[0][0], UserRowColumns.from_rows(
            (ts, (0, user_index + 1, pos), item) for pos, (_, item, ts) in enumerate(rows))
    yield beam.pvalue.TaggedOutput(COUNTS, (INTERACTIONS_READ, len(rows)))


class SyntheticLog(beam.PTransform):
    """The deterministic synthetic drift log (see ``synthetic.py``), generated per user."""

    def __init__(self, config: synthetic.SyntheticConfig = synthetic.SyntheticConfig()):
        super().__init__()
        self.config = config

    def expand(self, pbegin):
        outputs = (pbegin | "SyntheticUsers" >> beam.Create(list(range(self.config.num_users)))
                   | "SyntheticGenerate" >> beam.FlatMap(_synthetic_user, self.config).with_outputs(
                       COUNTS, main="user_rows"))
        empty = pbegin | "SyntheticNoDeadLetters" >> beam.Create([])
        empty_filtered = pbegin | "SyntheticNoFiltered" >> beam.Create([])
        genres = pbegin | "SyntheticGenres" >> beam.Create(
            sorted((k, tuple(v)) for k, v in synthetic.item_genres(self.config).items()))
        return ParsedLog(outputs.user_rows, empty, empty_filtered, outputs[COUNTS], genres)
