"""What readers emit: interactions (per user, in columns), dead letters and filter decisions."""

from __future__ import annotations

import json
from array import array
from typing import Dict, Iterable, Iterator, List, NamedTuple, Optional, Tuple, Union

import numpy as np


class Event(NamedTuple):
    """One interaction. ``order`` = (file index, line number, position in line) breaks time ties
    in input order; ``timestamp`` is seconds since the epoch or ``None`` when the log has none."""

    user: str
    item: str
    timestamp: Optional[int]
    order: Tuple[int, int, int]

    def sort_key(self):
        return (self.timestamp if self.timestamp is not None else 0, self.order)


#: One interaction as a source may hand it over: ``(timestamp, order, item)``.
UserRow = Tuple[Optional[int], Tuple[int, int, int], str]


#: Bits of a packed input position ``(file, line, position)``: 16 + 32 + 15 = 63, so a packed
#: position is a non-negative int64 and orders exactly as the tuple does.
_FILE_BITS, _LINE_BITS, _POSITION_BITS = 16, 32, 15


def _pack(order: Tuple[int, int, int]) -> Optional[int]:
    """``(file, line, position)`` as one int64 ordering as the tuple, or ``None`` when a part
    is out of its bits' range."""
    f, line, p = order
    if 0 <= f < 1 << _FILE_BITS and 0 <= line < 1 << _LINE_BITS and 0 <= p < 1 << _POSITION_BITS:
        return (f << (_LINE_BITS + _POSITION_BITS)) | (line << _POSITION_BITS) | p
    return None


def _unpack(key: int) -> Tuple[int, int, int]:
    return (key >> (_LINE_BITS + _POSITION_BITS),
            (key >> _POSITION_BITS) & ((1 << _LINE_BITS) - 1),
            key & ((1 << _POSITION_BITS) - 1))


class UserRowColumns:
    """Some of one user's interactions, column by column: timestamps and input positions in
    ``array('q')`` s, item ids in a list.

    This is what the per-user grouping carries and holds, so its size is the preprocessing's
    memory: about 24 bytes an interaction (8 for the timestamp, 8 for the input position
    packed into one int64, 8 for a reference to an item id that readers share between rows),
    against about 250 for a tuple of Python objects per interaction, and it crosses Beam's
    stage boundaries as a few byte strings instead of one pickled tuple per interaction.

    The input position ``(file index, line, position in line)`` breaks time ties in input
    order. It is packed into one int64 while every part fits (65,536 files, 2**32 lines a
    file, 32,768 interactions a line); a row that does not fit turns these columns ``wide``
    (three int64 a row), which order the same way.

    A row's missing timestamp (a log without time) is stored as ``UNTIMED`` (the smallest
    int64, outside every accepted time) and counted in ``untimed``: it orders as time 0, and
    :meth:`ordered` reports no timestamps when any row has none, as for tuples.
    """

    UNTIMED = -(2 ** 63)

    __slots__ = ("timestamps", "untimed", "order", "wide", "items")

    def __init__(self):
        self.timestamps = array("q")
        self.untimed = 0
        self.order = array("q")  # packed input positions, or (file, line, position) if wide
        self.wide = False
        self.items: List[str] = []

    @classmethod
    def from_rows(cls, rows: Iterable[UserRow]) -> "UserRowColumns":
        columns = cls()
        for timestamp, order, item in rows:
            columns.append(timestamp, order, item)
        return columns

    def append(self, timestamp: Optional[int], order: Tuple[int, int, int], item: str) -> None:
        if timestamp is None:
            self.untimed += 1
            timestamp = self.UNTIMED
        if not self.wide:
            key = _pack(order)
            if key is None:
                self._widen()
        if self.wide:
            self.order.extend(order)
        else:
            self.order.append(key)
        self.timestamps.append(timestamp)
        self.items.append(item)

    def extend_packed(self, timestamps: Optional[np.ndarray], packed: np.ndarray,
                      items: List[str]) -> None:
        """Appends rows given as columns: ``timestamps`` ``[n]`` int64 seconds (``None``: the
        log has no time), ``packed`` ``[n]`` input positions as :func:`pack_positions` packs
        them, ``items`` ``[n]`` ids."""
        n = len(items)
        if timestamps is None:
            self.untimed += n
            timestamps = np.full(n, self.UNTIMED, np.int64)
        if self.wide:
            wide = np.stack([packed >> (_LINE_BITS + _POSITION_BITS),
                             (packed >> _POSITION_BITS) & ((1 << _LINE_BITS) - 1),
                             packed & ((1 << _POSITION_BITS) - 1)], axis=1)
            self.order.frombytes(np.ascontiguousarray(wide, np.int64).tobytes())
        else:
            self.order.frombytes(np.ascontiguousarray(packed, np.int64).tobytes())
        self.timestamps.frombytes(np.ascontiguousarray(timestamps, np.int64).tobytes())
        self.items.extend(items)

    def _wide_order(self) -> array:
        if self.wide:
            return self.order
        wide = array("q")
        for key in self.order:
            wide.extend(_unpack(key))
        return wide

    def _widen(self) -> None:
        self.order, self.wide = self._wide_order(), True

    def extend(self, other: "UserRowColumns") -> "UserRowColumns":
        if other.wide and not self.wide:
            self._widen()
        self.order.extend(other._wide_order() if self.wide else other.order)
        self.timestamps.extend(other.timestamps)
        self.untimed += other.untimed
        self.items.extend(other.items)
        return self

    def __len__(self) -> int:
        return len(self.items)

    def _orders(self) -> List[Tuple[int, int, int]]:
        if not self.wide:
            return [_unpack(key) for key in self.order]
        order = self.order
        return [(order[3 * i], order[3 * i + 1], order[3 * i + 2]) for i in range(len(self))]

    def rows(self) -> List[UserRow]:
        """The rows as tuples, in the order they were added."""
        return [(None if t == self.UNTIMED else t, order, item)
                for t, order, item in zip(self.timestamps, self._orders(), self.items)]

    def ordered(self) -> Tuple[List[str], Optional[List[int]]]:
        """``(items, timestamps or None)`` in time order, ties in input order (file, line,
        position); timestamps are ``None`` when any row had none."""
        timestamps = np.frombuffer(self.timestamps, dtype=np.int64)
        if self.untimed:
            timestamps = np.where(timestamps == self.UNTIMED, 0, timestamps)
        # lexsort sorts by the last key first, and is stable.
        if self.wide:
            order = np.frombuffer(self.order, dtype=np.int64).reshape(-1, 3)
            keys = np.lexsort((order[:, 2], order[:, 1], order[:, 0], timestamps))
        else:
            keys = np.lexsort((np.frombuffer(self.order, dtype=np.int64), timestamps))
        items = [self.items[i] for i in keys.tolist()]
        return items, None if self.untimed else timestamps[keys].tolist()

    def __getstate__(self):
        return (self.timestamps.tobytes(), self.untimed, self.order.tobytes(), self.wide,
                self.items)

    def __setstate__(self, state):
        timestamps, self.untimed, order, self.wide, self.items = state
        self.timestamps = array("q")
        self.timestamps.frombytes(timestamps)
        self.order = array("q")
        self.order.frombytes(order)

    def __eq__(self, other):
        return (isinstance(other, UserRowColumns) and self.rows() == other.rows())

    def __repr__(self):
        return f"UserRowColumns({self.rows()!r})"


#: Some of one user's interactions: ``(user, UserRowColumns)``. A source may emit several of
#: these per user (one per file block, say); the preprocessing concatenates them.
UserRows = Tuple[str, UserRowColumns]


def pack_positions(file_index: int, lines: np.ndarray) -> Optional[np.ndarray]:
    """The packed input positions ``(file_index, line, 0)`` of ``lines`` ``[n]``, or ``None``
    when one does not fit the packing (then rows are added one by one, widening)."""
    if not 0 <= file_index < 1 << _FILE_BITS or (
            len(lines) and not 0 <= int(lines.min()) <= int(lines.max()) < 1 << _LINE_BITS):
        return None
    return (np.int64(file_index) << (_LINE_BITS + _POSITION_BITS)) | (
        lines.astype(np.int64) << _POSITION_BITS)


class PlainRows(NamedTuple):
    """The plain lines of a piece of a file, parsed at once (``csv_blocks.py``): for every
    line, what its per-line parse makes of it (an :class:`Event`, or a :class:`Filtered`
    drop), in columns.

    ``lines`` ``[n]`` line numbers (ascending); ``user_codes`` / ``item_codes`` ``[n]`` index
    ``user_ids`` / ``item_ids``; ``timestamps`` ``[n]`` seconds, ``None`` for a log without
    time; ``dropped_by`` ``[n]``: -1 for an interaction, else the index in ``reasons`` of the
    filter that dropped the line.
    """

    file_index: int
    lines: np.ndarray
    user_codes: np.ndarray
    user_ids: List[str]
    item_codes: np.ndarray
    item_ids: List[str]
    timestamps: Optional[np.ndarray]
    dropped_by: np.ndarray
    reasons: Tuple[str, ...]

    def __len__(self) -> int:
        return len(self.lines)

    def records(self) -> Iterator[Tuple[int, Union["Event", "Filtered"]]]:
        """``(line, record)`` of every line, as the per-line parse yields them."""
        users, items = self.user_codes.tolist(), self.item_codes.tolist()
        times = None if self.timestamps is None else self.timestamps.tolist()
        for row, (line, dropped) in enumerate(zip(self.lines.tolist(),
                                                  self.dropped_by.tolist())):
            if dropped >= 0:
                yield line, Filtered(self.reasons[dropped])
            else:
                yield line, Event(self.user_ids[users[row]], self.item_ids[items[row]],
                                  None if times is None else times[row],
                                  (self.file_index, line, 0))

    def filtered(self) -> Dict[str, int]:
        """Lines dropped by each filter, by reason."""
        counts = np.bincount(self.dropped_by[self.dropped_by >= 0], minlength=len(self.reasons))
        return {reason: int(n) for reason, n in zip(self.reasons, counts.tolist()) if n}


class UserRowBatcher:
    """Collects :class:`Event` s into :data:`UserRows`, one element per user per batch.

    Beam's cost is per element: a reader that hands over one ``(user, rows)`` per user and
    file block instead of one element per interaction spends that cost once per user (on a
    1M-row log, ~4K users against 1M interactions). ``max_rows`` bounds what is held before
    a flush, so a reader's memory does not grow with its input. Equal item ids share one
    string object (until the flush), so the rows hold references, not copies.
    """

    def __init__(self, max_rows: int = 500_000):
        self.max_rows = max_rows
        self._rows: Dict[str, UserRowColumns] = {}
        self._items: Dict[str, str] = {}
        self._held = 0

    def add(self, event: Event) -> Iterator[UserRows]:
        """Holds ``event``; yields the held batches when ``max_rows`` is reached."""
        rows = self._rows.get(event.user)
        if rows is None:
            rows = self._rows[event.user] = UserRowColumns()
        item = self._items.setdefault(event.item, event.item)
        rows.append(event.timestamp, event.order, item)
        self._held += 1
        if self._held >= self.max_rows:
            yield from self.flush()

    def add_plain(self, rows: PlainRows) -> Iterator[UserRows]:
        """Holds the interactions of ``rows`` (its filtered lines are the caller's to count),
        grouped by user at once; yields the held batches when ``max_rows`` is reached."""
        kept = rows.dropped_by < 0
        packed = pack_positions(rows.file_index, rows.lines[kept])
        if packed is None:  # positions beyond the packing: one by one, as events
            for _, record in rows.records():
                if isinstance(record, Event):
                    yield from self.add(record)
            return
        users = rows.user_codes[kept]
        order = np.argsort(users, kind="stable")
        users = users[order]
        packed = packed[order]
        timestamps = None if rows.timestamps is None else rows.timestamps[kept][order]
        shared = np.empty(len(rows.item_ids), object)
        shared[:] = [self._items.setdefault(item, item) for item in rows.item_ids]
        items = shared[rows.item_codes[kept][order]].tolist()
        starts = np.flatnonzero(np.diff(users)) + 1
        bounds = [0] + starts.tolist() + [len(users)]
        user_at = users[np.array(bounds[:-1], np.int64)].tolist() if len(users) else []
        for code, a, b in zip(user_at, bounds[:-1], bounds[1:]):
            user = rows.user_ids[code]
            columns = self._rows.get(user)
            if columns is None:
                columns = self._rows[user] = UserRowColumns()
            columns.extend_packed(None if timestamps is None else timestamps[a:b],
                                  packed[a:b], items[a:b])
        self._held += len(users)
        if self._held >= self.max_rows:
            yield from self.flush()

    def flush(self) -> Iterator[UserRows]:
        """Yields and forgets everything held."""
        rows, self._rows, self._items, self._held = self._rows, {}, {}, 0
        yield from rows.items()


class RowFilter(NamedTuple):
    """Keep a row only if ``float(row[column])`` is ``>= value`` (op ``"ge"``) or ``== value``
    (op ``"eq"``); otherwise it is counted as filtered with ``reason``."""

    column: str
    op: str
    value: float
    reason: str

    def keeps(self, x):
        """For a float, or elementwise for a numpy array of them."""
        return x >= self.value if self.op == "ge" else x == self.value


class DeadLetter(NamedTuple):
    """A record that could not be parsed: where it was, which field, why (``reason``: what was
    found; ``code``: the reason's name in ``contract.REASONS``), and how many interactions it
    held (so that the counts still add up)."""

    file: str
    line: int
    field: str
    reason: str
    raw: str
    interactions: int = 1
    code: str = ""

    def to_json(self) -> str:
        return json.dumps(self._asdict(), ensure_ascii=False)

    def __str__(self) -> str:
        code = f"{self.code}: " if self.code else ""
        return (f"{self.file}:{self.line}: field {self.field!r}: {code}{self.reason} "
                f"(line: {self.raw[:200]!r})")


class Filtered(NamedTuple):
    """A valid record dropped on purpose (a label or rating rule), with the reason."""

    reason: str
    interactions: int = 1


class Count(NamedTuple):
    """A counter a reader adds to (e.g. ``normalised.trimmed_fields``), not a record."""

    name: str
    n: int = 1


class InputError(ValueError):
    """Input that cannot be processed at all (missing, unreadable, empty or corrupt file, bad
    header, or too much of it malformed); the message names the file (and line)."""
