"""The input contract: how every field of every source is parsed, and why a record is refused.

Every reader (``readers.py``) parses its fields with these functions, so that one rule holds for
all of them. A field that breaks the contract raises :class:`FieldError` carrying a reason name
(below); the reader turns it into a dead letter naming file, line, field and reason, and the
count goes to ``stats.json`` (``rejected_by_reason.<name>``). Nothing is changed silently: the
only normalisations are the ones listed under *Accepted*, and each is counted
(``normalised.*`` in ``stats.json``).

Accepted:
  - ids: any UTF-8 text without control characters, quotes or surrounding spaces. Integer ids
    (``ml1m_ratings``, ``sequences``) are ASCII digits up to 2**63 - 1, kept as written (``007``
    and ``7`` are two ids).
  - numbers (ratings, labels, filter columns): ASCII decimal literals
    (``[+-]digits[.digits][e[+-]digits]``) with a finite value.
  - timestamps: such a literal that, divided by the source's divisor and floored, gives whole
    seconds in ``[0, 253402300799]`` (1970-01-01 .. 9999-12-31 UTC); ``ml1m_ratings`` takes
    integers only. Computed exactly (no float rounding of large values).
  - with ``trim_spaces``: spaces around a field are removed (``normalised.trimmed_fields``).

Dead-lettered (reason names): see the constants below.
"""

from __future__ import annotations

import decimal
import re
from typing import Tuple

INT64_MAX = 2 ** 63 - 1
# The plausible calendar of an interaction: 1970-01-01T00:00:00Z .. 9999-12-31T23:59:59Z.
EARLIEST_TIMESTAMP = 0
LATEST_TIMESTAMP = 253_402_300_799
# Dead letters keep at most this many characters of the raw line.
MAX_RAW_CHARS = 1000

# Reason names of dead letters.
NOT_UTF8 = "not_utf8"
WRONG_FIELD_COUNT = "wrong_field_count"
MALFORMED_CSV = "malformed_csv"
CONTROL_CHARACTER_IN_LINE = "control_character_in_line"
EMPTY_ID = "empty_id"
CONTROL_CHARACTER_IN_ID = "control_character_in_id"
QUOTE_IN_ID = "quote_in_id"
SPACE_AROUND_VALUE = "space_around_value"
NOT_AN_INTEGER = "not_an_integer"
INTEGER_OUT_OF_RANGE = "integer_out_of_range"
NOT_A_NUMBER = "not_a_number"
NOT_FINITE = "not_finite"
TIMESTAMP_OUT_OF_RANGE = "timestamp_out_of_range"
NO_ITEMS = "no_items"
UNEXPECTED_ERROR = "unexpected_error"

REASONS = (NOT_UTF8, WRONG_FIELD_COUNT, MALFORMED_CSV, CONTROL_CHARACTER_IN_LINE, EMPTY_ID,
           CONTROL_CHARACTER_IN_ID, QUOTE_IN_ID, SPACE_AROUND_VALUE, NOT_AN_INTEGER,
           INTEGER_OUT_OF_RANGE, NOT_A_NUMBER, NOT_FINITE, TIMESTAMP_OUT_OF_RANGE, NO_ITEMS,
           UNEXPECTED_ERROR)

# Counters of the normalisations the contract allows (``normalised.<name>`` in stats.json).
TRIMMED_FIELDS = "normalised.trimmed_fields"
BOM_STRIPPED = "normalised.bom_stripped"
CRLF_LINE_ENDINGS = "normalised.crlf_line_endings"

UTF8_BOM = b"\xef\xbb\xbf"

_INTEGER = re.compile(r"[0-9]+\Z", re.ASCII)
_SIGNED_INTEGER = re.compile(r"[+-]?[0-9]+\Z", re.ASCII)
_NUMBER = re.compile(r"[+-]?([0-9]+(\.[0-9]*)?|\.[0-9]+)([eE][+-]?[0-9]+)?\Z", re.ASCII)
_NON_FINITE = {"nan", "inf", "infinity"}
# Separators of the whitespace-separated formats: ASCII spaces and tabs only.
_BLANKS = " \t"
# Unicode category Cc is exactly U+0000..U+001F and U+007F..U+009F.
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\ufeff]")


class FieldError(ValueError):
    """A field that breaks the contract: ``reason`` is one of :data:`REASONS`, ``detail`` says
    what was found."""

    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


def _shown(value: str, limit: int = 60) -> str:
    return repr(value if len(value) <= limit else value[:limit] + "...")


def is_blank(line: str) -> bool:
    """A blank line holds nothing but ASCII spaces and tabs (it is counted, not parsed)."""
    return not line.strip(_BLANKS)


def split_blanks(line: str):
    """Splits a whitespace-separated line on runs of ASCII spaces and tabs (other whitespace,
    such as form feeds or U+2028, stays in the token and fails the token's check)."""
    return [t for t in line.replace("\t", " ").split(" ") if t]


def control_characters(text: str) -> str:
    """The characters of ``text`` that no id or line may hold: Unicode category ``Cc`` (tab,
    CR, LF, NUL, DEL, C1 controls), U+2028/U+2029 (line/paragraph separators) and U+FEFF
    (a byte-order mark inside the data)."""
    if not _CONTROL.search(text):
        return ""
    return "".join(sorted(set(_CONTROL.findall(text))))


def trimmed(value: str, trim_spaces: bool) -> Tuple[str, bool]:
    """``(value without surrounding spaces, whether anything was removed)``.

    Raises:
      FieldError: ``space_around_value`` when there are spaces and ``trim_spaces`` is off.
    """
    stripped = value.strip()
    if stripped == value:
        return value, False
    if not trim_spaces:
        raise FieldError(SPACE_AROUND_VALUE,
                         f"leading or trailing space in {_shown(value)} (pass --trim-spaces to "
                         "remove such spaces, counted in stats.json)")
    return stripped, True


def check_id(value: str) -> str:
    """Returns ``value`` if it is a usable id (already trimmed, or refused for spaces).

    Raises:
      FieldError: ``empty_id``, ``control_character_in_id`` or ``quote_in_id``.
    """
    if not value:
        raise FieldError(EMPTY_ID, "empty id")
    bad = control_characters(value)
    if bad:
        raise FieldError(CONTROL_CHARACTER_IN_ID,
                         f"id {_shown(value)} holds control character(s) {bad!r}")
    if '"' in value:
        raise FieldError(QUOTE_IN_ID, f"id {_shown(value)} holds a quote character (quotes are "
                                      "CSV syntax; a quote left inside an id is a broken quote)")
    return value


def check_integer_id(value: str) -> str:
    """An id that must be a non-negative integer: ASCII digits, at most 2**63 - 1, kept as
    written.

    Raises:
      FieldError: as :func:`check_id`, or ``not_an_integer`` / ``integer_out_of_range``.
    """
    if _INTEGER.match(value) and len(value) < 19:  # the common case, at once
        return value
    trimmed(value, trim_spaces=False)
    check_id(value)
    if not _INTEGER.match(value):
        raise FieldError(NOT_AN_INTEGER,
                         f"expected an integer id (ASCII digits 0-9 only), got {_shown(value)}")
    if len(value.lstrip("0")) > 19 or int(value) > INT64_MAX:
        raise FieldError(INTEGER_OUT_OF_RANGE, f"id {_shown(value)} is above 2**63 - 1")
    return value


def _non_finite(value: str) -> bool:
    return value.lstrip("+-").lower() in _NON_FINITE


def parse_number(value: str) -> float:
    """A finite decimal number (ratings, labels, filter columns).

    Raises:
      FieldError: ``not_finite`` (nan, inf, or a value beyond float range such as ``1e400``),
        ``not_a_number`` (anything else that is not an ASCII decimal literal: ``1_000``,
        Arabic-Indic digits, hex, empty).
    """
    if not _NUMBER.match(value):
        if _non_finite(value):
            raise FieldError(NOT_FINITE, f"expected a finite number, got {_shown(value)}")
        raise FieldError(NOT_A_NUMBER, f"expected a decimal number (ASCII digits), got "
                                       f"{_shown(value)}")
    x = float(value)
    if x != x or x in (float("inf"), float("-inf")):
        raise FieldError(NOT_FINITE, f"{_shown(value)} is beyond the range of a float")
    return x


_EXACT = decimal.Context(prec=60, Emax=10 ** 6, Emin=-10 ** 6,
                         traps=[decimal.Overflow, decimal.InvalidOperation])


def parse_timestamp(value: str, divisor: float = 1.0, integer_only: bool = False) -> int:
    """Whole seconds since the epoch: ``floor(value / divisor)``, computed exactly.

    Raises:
      FieldError: ``not_finite``, ``not_a_number`` / ``not_an_integer`` (with
        ``integer_only``), or ``timestamp_out_of_range`` outside 1970-01-01 .. 9999-12-31 UTC
        (which also refuses anything beyond int64, such as ``1e20`` or ``1e400``).
    """
    if _SIGNED_INTEGER.match(value) and len(value) < 20:  # the common case, exact and fast
        whole = int(value)
        if divisor == 1:
            seconds = whole
        elif float(divisor).is_integer():
            seconds = whole // int(divisor)
        else:
            seconds = None
        if seconds is not None and EARLIEST_TIMESTAMP <= seconds <= LATEST_TIMESTAMP:
            return seconds
    if _non_finite(value):
        raise FieldError(NOT_FINITE, f"expected a finite timestamp, got {_shown(value)}")
    if integer_only:
        if not _SIGNED_INTEGER.match(value):
            raise FieldError(NOT_AN_INTEGER, f"expected integer seconds (ASCII digits), got "
                                             f"{_shown(value)}")
    elif not _NUMBER.match(value):
        raise FieldError(NOT_A_NUMBER, f"expected a decimal timestamp (ASCII digits), got "
                                       f"{_shown(value)}")
    exact = decimal.Decimal(value)
    in_milliseconds = (not integer_only and divisor == 1
                       and LATEST_TIMESTAMP < exact <= LATEST_TIMESTAMP * 1000)
    out_of_range = FieldError(
        TIMESTAMP_OUT_OF_RANGE,
        f"{_shown(value)}{f' / {divisor:g}' if divisor != 1 else ''} is outside 1970-01-01 .. "
        f"9999-12-31 in seconds" + (" (a log in milliseconds needs a divisor of 1000: "
                                    "--csv-timestamp-divisor 1000)" if in_milliseconds else ""))
    if exact.adjusted() > 40:  # far beyond the calendar; no need to divide
        raise out_of_range
    try:
        seconds = int(_EXACT.divide(exact, decimal.Decimal(repr(float(divisor)))).to_integral_value(
            rounding=decimal.ROUND_FLOOR, context=_EXACT))
    except (decimal.Overflow, decimal.InvalidOperation):
        raise out_of_range from None
    if not EARLIEST_TIMESTAMP <= seconds <= LATEST_TIMESTAMP:
        raise out_of_range
    return seconds


def raw_for_dead_letter(raw: str) -> str:
    """The raw line as a dead letter keeps it (at most :data:`MAX_RAW_CHARS` characters)."""
    return raw if len(raw) <= MAX_RAW_CHARS else raw[:MAX_RAW_CHARS] + f"... ({len(raw)} chars)"
