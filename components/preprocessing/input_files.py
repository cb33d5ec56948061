"""Input files: the checks that run before any Beam work, and how lines are read and decoded.

Before Beam (:func:`resolve_files`, :func:`check_data_files`), each file is checked for what can
be known without parsing rows, and a problem stops the run with :class:`InputError` naming the
file: it exists, is a file, is readable, is not empty, a gzip file decompresses through its
whole length (a truncated or corrupt gzip is refused, not only its start), a header (CSV) has
the needed columns and no duplicate, and the inputs hold at least one data line.

Lines (:func:`read_lines`, :func:`decode_line`) are split on ``\\n``. Policy:
  - a UTF-8 byte-order mark at the start of a file is accepted and removed
    (``normalised.bom_stripped``);
  - a ``\\r\\n`` line ending is accepted (``normalised.crlf_line_endings``); a ``\\r`` anywhere
    else stays in the line and the line is dead-lettered (``control_character_in_line``);
  - a line that is not UTF-8 is dead-lettered (``not_utf8``).
"""

from __future__ import annotations

import csv
import gzip
import zlib
from typing import Dict, Iterator, List, NamedTuple, Optional, Sequence, Tuple, Union


from components.preprocessing import filesystem
from components.preprocessing.contract import UTF8_BOM, control_characters, is_blank
from components.preprocessing.records import InputError

GZIP_MAGIC = b"\x1f\x8b"
_CHUNK = 1 << 16
# Errors a damaged gzip stream raises while it is read.
GZIP_ERRORS = (OSError, EOFError, zlib.error)


def open_binary(path: str):
    """Opens ``path`` (local or any filesystem Beam has), gunzipping when it is gzip."""
    f = filesystem.open_binary(path)
    magic = f.read(2)
    f.seek(0)
    return gzip.GzipFile(fileobj=f) if magic == GZIP_MAGIC else f


def is_gzip(path: str) -> bool:
    with filesystem.open_binary(path) as f:
        return f.read(2) == GZIP_MAGIC


def check_gzip(path: str) -> int:
    """Decompresses all of ``path`` and returns its uncompressed size.

    Raises:
      InputError: the stream is truncated, fails its CRC, or has trailing garbage.
    """
    size = 0
    try:
        with filesystem.open_binary(path) as raw, gzip.GzipFile(fileobj=raw) as f:
            while True:
                chunk = f.read(_CHUNK)
                if not chunk:
                    return size
                size += len(chunk)
    except (EOFError, zlib.error, gzip.BadGzipFile) as e:
        raise InputError(f"{path}: corrupt or truncated gzip (after {size:,} uncompressed "
                         f"bytes): {e}") from None
    except OSError as e:
        raise InputError(f"{path}: cannot read: {e}") from None


def resolve_files(patterns: Union[str, Sequence[str]]) -> List[str]:
    """Expands globs and checks every file exists, is a readable non-empty file and, when it
    is gzip, decompresses to its end.

    Raises:
      InputError: naming the pattern or file and what is wrong with it.
    """
    patterns = [patterns] if isinstance(patterns, str) else list(patterns)
    if not patterns:
        raise InputError("no input file given")
    files: List[str] = []
    for pattern in patterns:
        try:
            matched = filesystem.glob(pattern)
        except OSError as e:
            raise InputError(f"{pattern}: cannot list: {e}") from e
        if not matched:
            raise InputError(f"{pattern}: no such file")
        files.extend(matched)
    for path in files:
        if filesystem.isdir(path):
            raise InputError(f"{path}: is a directory, expected a file")
        try:
            gz = is_gzip(path)
        except OSError as e:
            raise InputError(f"{path}: cannot read: {e}") from e
        if gz:
            check_gzip(path)
        try:
            with open_binary(path) as f:
                head = f.read(1 << 16)
        except GZIP_ERRORS as e:
            raise InputError(f"{path}: cannot read: {e}") from e
        if not head.replace(UTF8_BOM, b"", 1).strip():
            raise InputError(f"{path}: file is empty")
    return files


class Line(NamedTuple):
    """One line: its number, its text (``None`` when not UTF-8), the raw bytes, and which
    normalisations its reading applied (a BOM removed, a CRLF ending)."""

    number: int
    text: Optional[str]
    raw: bytes
    bom: bool
    crlf: bool


def decode_line(raw: bytes, number: int) -> Line:
    """Decodes one raw line (with its ``\\n``) under the policy in the module docstring."""
    bom = number == 1 and raw.startswith(UTF8_BOM)
    body = raw[len(UTF8_BOM):] if bom else raw
    if body.endswith(b"\n"):
        body = body[:-1]
    crlf = body.endswith(b"\r")
    if crlf:
        body = body[:-1]
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        text = None
    return Line(number, text, raw, bom, crlf)


def raw_lines(f, position: int = 0, end: int = -1, chunk_size: int = _CHUNK
              ) -> Iterator[bytes]:
    """Lines of a binary stream split on ``\n`` only, each with its ``\n`` (the last one
    maybe without), read from the stream's current offset, which is byte ``position`` of the
    file (a line start), while a line starts before byte ``end`` (-1: to the end).
    ``GFile.readline`` is not used: it drops the ``\r`` of a ``\r\n``, so a plain file and
    its gzip would read differently."""
    pending = b""
    while True:
        chunk = f.read(chunk_size)
        if not chunk:
            break
        pending += chunk
        begin = 0
        while True:
            if 0 <= end <= position:
                return
            stop = pending.find(b"\n", begin)
            if stop < 0:
                break
            yield pending[begin:stop + 1]
            position += stop + 1 - begin
            begin = stop + 1
        pending = pending[begin:]
    if pending and not 0 <= end <= position:
        yield pending


def raw_chunks(f, position: int = 0, end: int = -1, chunk_size: int = _CHUNK
               ) -> Iterator[bytes]:
    """The same lines as :func:`raw_lines`, handed over in pieces of whole lines (each about
    ``chunk_size`` bytes and ending with ``\n``; the stream's last line maybe without), so
    that a reader can decode and split many lines in one call."""
    pending = b""
    while True:
        chunk = f.read(chunk_size)
        pending += chunk
        if end >= 0:
            last_owned = end - position - 1  # a line holding this byte starts before ``end``
            if last_owned < 0:
                return
            stop = pending.find(b"\n", last_owned)
            if stop >= 0:
                yield pending[:stop + 1]
                return
        cut = len(pending) if not chunk else pending.rfind(b"\n") + 1
        if cut:
            yield pending[:cut]
            position += cut
            pending = pending[cut:]
        if not chunk:
            return


def chunk_lines(number: int, data: bytes) -> Iterator[Line]:
    """The decoded lines of a piece of whole lines whose first line is line ``number``."""
    raws = data.split(b"\n")
    last = raws.pop()  # b"" after a final "\n", else a last line without one
    for raw in raws:
        yield decode_line(raw + b"\n", number)
        number += 1
    if last:
        yield decode_line(last, number)


def file_chunks(path: str) -> Iterator[Tuple[int, bytes]]:
    """The whole lines of ``path`` in pieces (see :func:`raw_chunks`), each with the number of
    its first line.

    Raises:
      InputError: ``path:line``: the file cannot be read further (e.g. it was truncated after
        the checks before Beam).
    """
    number = 1
    try:
        with open_binary(path) as f:
            for data in raw_chunks(f):
                yield number, data
                number += data.count(b"\n")
    except GZIP_ERRORS as e:
        raise InputError(f"{path}:{number}: cannot read: {e}") from None


def read_lines(path: str) -> Iterator[Line]:
    """The lines of ``path``, decoded.

    Raises:
      InputError: ``path:line``: the file cannot be read further (e.g. it was truncated after
        the checks before Beam).
    """
    for number, data in file_chunks(path):
        yield from chunk_lines(number, data)


class CsvHeader(NamedTuple):
    """A parsed header: ``{column name: index}`` and the number of columns."""

    index: Dict[str, int]
    width: int


def parse_header(text: Optional[str], path: str, delimiter: str,
                 required: Sequence[str]) -> CsvHeader:
    """A CSV header line -> :class:`CsvHeader` (names compared without surrounding spaces).

    Raises:
      InputError: ``path:1``: not UTF-8, blank, a control character (e.g. a stray ``\\r``),
        malformed CSV, a duplicate column name, or a required column missing.
    """
    where = f"{path}:1"
    if text is None:
        raise InputError(f"{where}: the header is not valid UTF-8")
    if is_blank(text):
        raise InputError(f"{where}: expected a header with column(s) {list(required)}, found a "
                         "blank line")
    bad = control_characters(text.replace(delimiter, ""))
    if bad:
        raise InputError(f"{where}: the header holds control character(s) {bad!r} (a stray "
                         f"carriage return? only a CRLF line ending is accepted): {text!r}")
    try:
        columns = [c.strip() for c in next(csv.reader([text], delimiter=delimiter,
                                                      strict=True))]
    except csv.Error as e:
        raise InputError(f"{where}: the header is not valid CSV: {e}: {text!r}") from None
    seen: Dict[str, int] = {}
    for i, name in enumerate(columns):
        if name and name in seen:
            raise InputError(f"{where}: duplicate column {name!r} in header {columns} "
                             f"(columns {seen[name] + 1} and {i + 1})")
        seen.setdefault(name, i)
    missing = [c for c in required if c not in seen]
    if missing:
        raise InputError(f"{where}: missing column(s) {missing} in header {columns} "
                         f"(delimiter {delimiter!r})")
    return CsvHeader(seen, len(columns))


def first_line(path: str) -> Line:
    """Line 1 of ``path`` (decoded)."""
    for line in read_lines(path):
        return line
    raise InputError(f"{path}: file is empty")


def has_data_line(path: str, skip_header: bool) -> bool:
    """Whether ``path`` holds a non-blank line (after the header when ``skip_header``); stops
    at the first one."""
    for line in read_lines(path):
        if skip_header and line.number == 1:
            continue
        if line.text is None or not is_blank(line.text):
            return True
    return False


def check_data_files(files: Sequence[str], header: Optional[Tuple[str, Sequence[str]]] = None
                     ) -> None:
    """The checks of the rows' container before Beam: every header (``(delimiter, required
    columns)`` when the format has one) and at least one data line over all files.

    Raises:
      InputError: naming the file (and line) of a bad header, or the files when none holds data.
    """
    for path in files:
        if header is not None:
            delimiter, required = header
            parse_header(first_line(path).text, path, delimiter, required)
    if not any(has_data_line(path, header is not None) for path in files):
        what = "a header and no data line" if header is not None else "no data line"
        raise InputError(f"{', '.join(files)}: the input holds {what} (nothing to preprocess)")
