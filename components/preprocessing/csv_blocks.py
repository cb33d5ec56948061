"""The plain lines of a piece of a CSV log, parsed at once with Arrow (``pyarrow.csv``).

The per-line parse (``readers._CsvParser``) costs a few microseconds a line in Python: on a
KuaiRand-size log (6.5M lines) that was the largest share of the preprocessing's CPU after the
examples. :class:`PlainCsvBlocks` parses a whole piece of lines into columns in Arrow's C++
(on both cores), checks every field against the same rules the per-line shortcut applies
(``_CsvParser.clean_line_matcher``), and hands back :class:`records.PlainRows`: what the
per-line parse makes of every plain line (an interaction, or a filter's drop), with its line
number. Lines that are not plain (a quote, a space, a non-ASCII id, a time
out of range...) are returned by number and take the per-line parse, which dead-letters or
normalises them exactly as before. A piece that Arrow cannot split into rows of the header's
width (a line with the wrong field count, an empty line, bytes that are not UTF-8), or that
holds a carriage return (Arrow ends a row there), is refused
whole (``None``) and takes the per-line path. A test holds both paths to the same records and
counts on fuzzed files.
"""

from __future__ import annotations

from typing import List, Optional, Sequence, Tuple

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from components.preprocessing import contract as C
from components.preprocessing.records import PlainRows, RowFilter

#: The time a plain line may hold: an unsigned integer of at most 18 digits. These patterns and
#: :func:`plain_id_characters` are shared with the per-line shortcut
#: (``readers._CsvParser.clean_line_matcher``), so the two paths take the same lines.
PLAIN_TIME = "[0-9]{1,18}"
#: A number a plain line may hold in a filtered column.
PLAIN_NUMBER = "[0-9]{1,15}(?:\\.[0-9]{1,15})?"


def plain_id_characters(delimiter: str) -> List[str]:
    """The characters of an id the input contract accepts without a doubt: printable ASCII
    other than space, the quote and the delimiter."""
    return [chr(c) for c in range(0x21, 0x7F) if chr(c) not in ('"', delimiter)]


class PlainCsvBlocks:
    """Parses pieces of a CSV log's lines (no header line) into :class:`records.PlainRows`.

    Args:
      delimiter: the field separator (one character, not a quote or a line break).
      width: fields per line (the header's).
      user_column, item_column: indices of the id columns.
      time_column: index of the integer time column, or ``None`` for a log without time.
      time_divisor: a whole number dividing the time column to get seconds.
      rules: ``(column index, filter)`` in the order the per-line parse applies them (the
        first that drops a row names the reason).
    """

    def __init__(self, delimiter: str, width: int, user_column: int, item_column: int,
                 time_column: Optional[int], time_divisor: int,
                 rules: Sequence[Tuple[int, RowFilter]]):
        self.delimiter = delimiter
        self.width = width
        self.user_column = user_column
        self.item_column = item_column
        self.time_column = time_column
        self.time_divisor = int(time_divisor)
        self.rules = tuple(rules)
        self._identifier = "^[" + "".join(f"\\x{ord(c):02x}"  # RE2's escape of each
                                          for c in plain_id_characters(delimiter)) + "]+$"
        self._names = [f"c{i}" for i in range(width)]

    def _read(self, data: bytes) -> Optional[pa.Table]:
        try:
            return pacsv.read_csv(
                pa.py_buffer(data),
                read_options=pacsv.ReadOptions(column_names=self._names, use_threads=True),
                parse_options=pacsv.ParseOptions(
                    delimiter=self.delimiter, quote_char=False, double_quote=False,
                    escape_char=False, newlines_in_values=False, ignore_empty_lines=False),
                convert_options=pacsv.ConvertOptions(
                    column_types={name: pa.string() for name in self._names},
                    strings_can_be_null=False, quoted_strings_can_be_null=False,
                    check_utf8=True))
        except (pa.ArrowInvalid, pa.ArrowException):
            return None

    def parse(self, data: bytes, first_line: int, file_index: int
              ) -> Optional[Tuple[PlainRows, List[int]]]:
        """``data``: whole lines, each ending in ``\\n``, the first being line ``first_line``.

        Returns ``(plain rows, line numbers of the other lines)``, or ``None`` when the piece
        must take the per-line path whole.
        """
        lines = data.count(b"\n")
        # Arrow ends a row at a carriage return too; a piece holding one (CRLF line endings,
        # which are counted, or a stray one, a dead letter) takes the per-line path.
        if not lines or not data.endswith(b"\n") or b"\r" in data:
            return None
        table = self._read(data)
        if table is None or table.num_rows != lines:
            return None
        plain = pc.and_(pc.match_substring_regex(table[self.user_column], self._identifier),
                        pc.match_substring_regex(table[self.item_column], self._identifier))
        if self.time_column is not None:
            plain = pc.and_(plain, pc.match_substring_regex(table[self.time_column],
                                                            f"^{PLAIN_TIME}$"))
        for column, _ in self.rules:
            plain = pc.and_(plain, pc.match_substring_regex(table[column], f"^{PLAIN_NUMBER}$"))
        if b'"' in data:  # no column of a plain line holds a quote
            for i in range(self.width):
                plain = pc.and_(plain, pc.invert(pc.match_substring(table[i], '"')))
        plain = _numpy(plain)
        numbers = np.arange(first_line, first_line + lines, dtype=np.int64)

        timestamps = None
        if self.time_column is not None:
            times = _numpy(pc.cast(pc.if_else(pa.chunked_array(_chunks(plain, table)),
                                              table[self.time_column], "0"), pa.int64()))
            timestamps = times // self.time_divisor  # as C.parse_timestamp, exactly
            plain &= (timestamps >= C.EARLIEST_TIMESTAMP) & (timestamps <= C.LATEST_TIMESTAMP)
        dropped_by = np.full(lines, -1, np.int8)
        for k, (column, rule) in reversed(list(enumerate(self.rules))):  # the first failing wins
            text = pc.if_else(pa.chunked_array(_chunks(plain, table)), table[column], "0")
            values = _numpy(pc.cast(text, pa.float64()))
            keeps = rule.keeps(values)  # elementwise on the array
            dropped_by[~keeps] = k
        if not plain.any():
            return None
        others = numbers[~plain].tolist()

        selected = pa.array(plain)
        users = pc.dictionary_encode(pc.filter(table[self.user_column], selected)).combine_chunks()
        items = pc.dictionary_encode(pc.filter(table[self.item_column], selected)).combine_chunks()
        rows = PlainRows(
            file_index=file_index,
            lines=numbers[plain],
            user_codes=users.indices.to_numpy(zero_copy_only=False).astype(np.int64),
            user_ids=users.dictionary.to_pylist(),
            item_codes=items.indices.to_numpy(zero_copy_only=False).astype(np.int64),
            item_ids=items.dictionary.to_pylist(),
            timestamps=None if timestamps is None else timestamps[plain],
            dropped_by=dropped_by[plain],
            reasons=self._reasons())
        return rows, others

    def _reasons(self) -> Tuple[str, ...]:
        return tuple(rule.reason for _, rule in self.rules)


def _numpy(values) -> np.ndarray:
    """A (chunked) Arrow array without nulls as one numpy array."""
    if isinstance(values, pa.ChunkedArray):
        chunks = [c.to_numpy(zero_copy_only=False) for c in values.chunks]
        return np.concatenate(chunks) if chunks else np.zeros(0)
    return values.to_numpy(zero_copy_only=False)


def _chunks(mask: np.ndarray, table: pa.Table) -> List[pa.Array]:
    """``mask`` cut into the chunk lengths of ``table``'s columns (for ``if_else``)."""
    out, start = [], 0
    for chunk in table.column(0).chunks:
        out.append(pa.array(mask[start:start + len(chunk)]))
        start += len(chunk)
    return out
