"""Files for the preprocessing through Beam's filesystems, without TensorFlow.

The preprocessing's Beam sinks already write through ``apache_beam.io.filesystems``; its inputs,
vocabulary, stats and clean-up go through the same layer here, so that local paths and every
scheme Beam has a filesystem for (``gs://``, ``s3://``, ``hdfs://``, ...) behave alike, and so
that neither the command nor a Beam worker imports TensorFlow to run the preprocessing (about
6 s of start-up in each process, an eighth of a 6.5M-row run: BENCHMARKS.md).

Every failure is an ``OSError`` (Beam's ``BeamIOError`` is one).
"""

from __future__ import annotations

import io
import os
import posixpath
import shutil
from typing import BinaryIO, List, TextIO

from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems
from apache_beam.io.localfilesystem import LocalFileSystem


def _is_local(path: str) -> bool:
    return isinstance(FileSystems.get_filesystem(path), LocalFileSystem)


def join(directory: str, *names: str) -> str:
    """``directory/name/...`` in the path's own convention (``os.path`` for local paths)."""
    return FileSystems.join(directory, *names)


def open_binary(path: str) -> BinaryIO:
    """``path`` for reading its bytes as they are (no decompression; seekable)."""
    return FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED)


def create_binary(path: str) -> BinaryIO:
    """``path`` created (or replaced) for writing bytes."""
    return FileSystems.create(path, compression_type=CompressionTypes.UNCOMPRESSED)


def open_text(path: str) -> TextIO:
    """``path`` for reading UTF-8 text; lines end at ``\n`` only (a ``\r`` is data), as
    they were written."""
    return io.TextIOWrapper(open_binary(path), encoding="utf-8", newline="\n")


def read_text(path: str) -> str:
    with open_text(path) as f:
        return f.read()


def write_text(path: str, text: str) -> None:
    """``path`` created (or replaced) holding ``text`` in UTF-8."""
    with create_binary(path) as f:
        f.write(text.encode("utf-8"))


def exists(path: str) -> bool:
    """Whether ``path`` is a file or a directory (on object stores: a prefix of objects)."""
    return FileSystems.exists(path) or isdir(path)


def isdir(path: str) -> bool:
    if _is_local(path):
        return os.path.isdir(path)
    return bool(_objects_under(path))


def size(path: str) -> int:
    """The size of the file ``path`` in bytes."""
    if _is_local(path):
        return os.path.getsize(path)
    matched = FileSystems.match([path])[0].metadata_list
    if not matched:
        raise FileNotFoundError(f"{path}: no such file")
    return matched[0].size_in_bytes


def glob(pattern: str) -> List[str]:
    """The files (and, for local paths, directories) that ``pattern`` matches, sorted; ``*``
    does not cross a ``/``, ``**`` does."""
    if _is_local(pattern) and not any(c in pattern for c in "*?["):
        return [pattern] if os.path.exists(pattern) else []
    try:
        matched = FileSystems.match([pattern])[0].metadata_list
    except OSError:
        if not _is_local(pattern):
            raise
        matched = []  # Beam's local match lists the pattern's directory; a missing one is no match
    return sorted(m.path for m in matched)


def listdir(path: str) -> List[str]:
    """The names directly inside the directory ``path`` (subdirectories included), sorted."""
    if _is_local(path):
        return sorted(os.listdir(path))
    prefix = path.rstrip("/") + "/"
    return sorted({m[len(prefix):].split("/", 1)[0] for m in _objects_under(path)})


def makedirs(path: str) -> None:
    """``path`` and its parents as directories (nothing to do on object stores)."""
    if _is_local(path):
        os.makedirs(path, exist_ok=True)


def remove(path: str) -> None:
    """Deletes the file ``path``."""
    FileSystems.delete([path])


def rmtree(path: str) -> None:
    """Deletes the directory ``path`` and everything in it."""
    if _is_local(path):
        shutil.rmtree(path)
        return
    objects = _objects_under(path)
    if objects:
        FileSystems.delete(objects)


def _objects_under(path: str) -> List[str]:
    """Every object whose name starts with ``path/`` (an object store's directory)."""
    return [m.path for m in FileSystems.match([posixpath.join(path.rstrip("/"), "**")])[0]
            .metadata_list]
