"""Errors from inside a Beam job as one line: what our Beam jobs (preprocessing, batch
candidates) show a user instead of Beam's logged traceback."""

from __future__ import annotations

import contextlib
import logging
import re
from typing import Iterator

# Beam appends "[while running 'Step/Name']" to an error raised inside a step.
_BEAM_STEP = re.compile(r"\s*\[while running '[^\]]*'\]")


class _DropBeamTracebacks(logging.Filter):
    """Beam logs the traceback of an exception inside a step before re-raising it; the job
    reports the error itself, in one line."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.levelno >= logging.ERROR and record.exc_info)


@contextlib.contextmanager
def quiet_beam_errors() -> Iterator[None]:
    """Within the block, Beam does not log the tracebacks of errors raised inside steps."""
    logger = logging.getLogger("apache_beam.runners.common")
    dropper = _DropBeamTracebacks()
    logger.addFilter(dropper)
    try:
        yield
    finally:
        logger.removeFilter(dropper)


def one_line(error: BaseException) -> str:
    """The error's first line without Beam's step suffix (its type name when it has no text)."""
    text = _BEAM_STEP.sub("", str(error)).strip()
    return text.splitlines()[0] if text else type(error).__name__
