"""What readers emit: interactions, dead letters and filter decisions (plain tuples, cheap in Beam)."""

from __future__ import annotations

import json
from typing import NamedTuple, Optional, Tuple


class Event(NamedTuple):
    """One interaction. ``order`` = (file index, line number, position in line) breaks time ties
    in input order; ``timestamp`` is seconds since the epoch or ``None`` when the log has none."""

    user: str
    item: str
    timestamp: Optional[int]
    order: Tuple[int, int, int]

    def sort_key(self):
        return (self.timestamp if self.timestamp is not None else 0, self.order)


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
