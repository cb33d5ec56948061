"""What readers emit: interactions, dead letters and filter decisions (plain tuples, cheap in Beam)."""

from __future__ import annotations

import json
from typing import Dict, Iterator, List, NamedTuple, Optional, Tuple


class Event(NamedTuple):
    """One interaction. ``order`` = (file index, line number, position in line) breaks time ties
    in input order; ``timestamp`` is seconds since the epoch or ``None`` when the log has none."""

    user: str
    item: str
    timestamp: Optional[int]
    order: Tuple[int, int, int]

    def sort_key(self):
        return (self.timestamp if self.timestamp is not None else 0, self.order)


#: One interaction as the per-user grouping carries it: ``(timestamp, order, item)``. Plain
#: tuples encode far faster than NamedTuples in Beam.
UserRow = Tuple[Optional[int], Tuple[int, int, int], str]

#: Some of one user's interactions: ``(user, [UserRow, ...])``. A source may emit several of
#: these per user (one per file block, say); the preprocessing concatenates them.
UserRows = Tuple[str, List[UserRow]]


class UserRowBatcher:
    """Collects :class:`Event` s into :data:`UserRows`, one element per user per batch.

    Beam's cost is per element: a reader that hands over one ``(user, rows)`` per user and
    file block instead of one element per interaction spends that cost once per user (on a
    1M-row log, ~4K users against 1M interactions). ``max_rows`` bounds what is held before
    a flush, so a reader's memory does not grow with its input.
    """

    def __init__(self, max_rows: int = 500_000):
        self.max_rows = max_rows
        self._rows: Dict[str, List[UserRow]] = {}
        self._held = 0

    def add(self, event: Event) -> Iterator[UserRows]:
        """Holds ``event``; yields the held batches when ``max_rows`` is reached."""
        rows = self._rows.get(event.user)
        if rows is None:
            rows = self._rows[event.user] = []
        rows.append((event.timestamp, event.order, event.item))
        self._held += 1
        if self._held >= self.max_rows:
            yield from self.flush()

    def flush(self) -> Iterator[UserRows]:
        """Yields and forgets everything held."""
        rows, self._rows, self._held = self._rows, {}, 0
        yield from rows.items()


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
