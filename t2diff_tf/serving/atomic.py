"""All-or-nothing directory writes: build in a temporary sibling, rename into place at the end.

TF Serving polls its model base paths and loads any version directory that appears, so a reader
must never see a half-written export. :func:`atomic_directory` yields a fresh temporary directory
next to ``destination`` (same file system, so the final ``rename`` is atomic); if the block raises,
the temporary directory is deleted and ``destination`` is untouched.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import uuid
from typing import Iterator

TEMPORARY_PREFIX = ".tmp-"
PREVIOUS_PREFIX = ".old-"


def _sibling(destination: str, prefix: str) -> str:
    parent, name = os.path.split(os.path.abspath(destination))
    return os.path.join(parent, f"{prefix}{name}-{uuid.uuid4().hex[:12]}")


def check_destination(destination: str, overwrite: bool = False) -> None:
    """Raises ``FileExistsError`` when ``destination`` holds anything and ``overwrite`` is off."""
    if os.path.lexists(destination) and not overwrite:
        if os.path.isdir(destination) and not os.listdir(destination):
            return
        raise FileExistsError(f"{destination} exists; pass overwrite=True to replace it")


@contextlib.contextmanager
def atomic_directory(destination: str, overwrite: bool = False) -> Iterator[str]:
    """Yields a temporary directory that becomes ``destination`` when the block succeeds.

    Args:
      destination: the final directory. Its parent is created if missing.
      overwrite: replace an existing non-empty ``destination`` (it is moved aside, the new
        directory renamed in, then the old one deleted). An empty directory is always replaced.

    Raises:
      FileExistsError: ``destination`` is not empty and ``overwrite`` is off (checked before
        the block runs and again before the rename).
    """
    destination = os.path.abspath(destination)
    check_destination(destination, overwrite)
    os.makedirs(os.path.dirname(destination), exist_ok=True)
    temporary = _sibling(destination, TEMPORARY_PREFIX)
    os.makedirs(temporary)
    try:
        yield temporary
        check_destination(destination, overwrite)
        previous = None
        if os.path.lexists(destination):
            previous = _sibling(destination, PREVIOUS_PREFIX)
            os.rename(destination, previous)
        try:
            os.rename(temporary, destination)
        except BaseException:
            if previous is not None:
                os.rename(previous, destination)
            raise
        if previous is not None:
            shutil.rmtree(previous, ignore_errors=True)
    except BaseException:
        shutil.rmtree(temporary, ignore_errors=True)
        raise
