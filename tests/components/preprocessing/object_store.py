"""A Beam filesystem for ``mem://`` paths, kept in this process's memory, that behaves as object
stores do (``gs://``, ``s3://``): flat keys, no directories, a "directory" is a key prefix.

Registering it is importing it: Beam finds filesystems by the scheme of their subclasses. It lets
the tests run the preprocessing's object-store branches (``filesystem.py``, the partition files,
Beam's sinks) in one DirectRunner process, without a network.
"""

from __future__ import annotations

import io
import threading
import time
from typing import Dict, List

from apache_beam.io.filesystem import (BeamIOError, CompressedFile, CompressionTypes,
                                       FileMetadata, FileSystem)

SCHEME = "mem"


class _Store:
    objects: Dict[str, bytes] = {}
    lock = threading.Lock()


def clear() -> None:
    with _Store.lock:
        _Store.objects.clear()


def objects() -> Dict[str, bytes]:
    with _Store.lock:
        return dict(_Store.objects)


def put(path: str, data: bytes) -> None:
    with _Store.lock:
        _Store.objects[path] = data


class _Writer(io.BytesIO):
    """Bytes that become the object ``path`` when closed (as an upload completes)."""

    mode = "wb"

    def __init__(self, path: str):
        super().__init__()
        self._path = path

    def close(self):
        if not self.closed:
            put(self._path, self.getvalue())
        super().close()


class _Reader(io.BytesIO):
    mode = "rb"


def _wrap(raw, path: str, compression_type: str):
    if compression_type == CompressionTypes.AUTO:
        compression_type = CompressionTypes.detect_compression_type(path)
    if compression_type == CompressionTypes.UNCOMPRESSED:
        return raw
    return CompressedFile(raw, compression_type=compression_type)


class InMemoryObjectStore(FileSystem):
    """``mem://bucket/key``: an object store held in a dictionary."""

    @classmethod
    def scheme(cls):
        return SCHEME

    def join(self, basepath, *paths):
        path = basepath.rstrip("/")
        for part in paths:
            path += "/" + part.strip("/")
        return path

    def split(self, path):
        head, _, tail = path.rstrip("/").rpartition("/")
        return head, tail

    def mkdirs(self, path):
        pass  # no directories

    def has_dirs(self):
        return False

    def _list(self, dir_or_prefix):
        for path, data in objects().items():
            if path.startswith(dir_or_prefix):
                yield FileMetadata(path, len(data), time.time())

    def create(self, path, mime_type="application/octet-stream",
               compression_type=CompressionTypes.AUTO):
        return _wrap(_Writer(path), path, compression_type)

    def open(self, path, mime_type="application/octet-stream",
             compression_type=CompressionTypes.AUTO):
        data = objects().get(path)
        if data is None:
            raise BeamIOError(f"open failed: {path} does not exist", {path: FileNotFoundError(path)})
        return _wrap(_Reader(data), path, compression_type)

    def copy(self, source_file_names, destination_file_names):
        for source, destination in zip(source_file_names, destination_file_names):
            for path, data in objects().items():
                if path == source or path.startswith(source.rstrip("/") + "/"):
                    put(destination + path[len(source):], data)

    def rename(self, source_file_names, destination_file_names):
        self.copy(source_file_names, destination_file_names)
        self.delete(source_file_names)

    def exists(self, path):
        return path in objects()

    def size(self, path):
        return len(objects()[path])

    def last_updated(self, path):
        return time.time()

    def checksum(self, path):
        return str(hash(objects()[path]))

    def metadata(self, path):
        return FileMetadata(path, self.size(path), time.time())

    def delete(self, paths: List[str]):
        with _Store.lock:
            for path in paths:
                prefix = path.rstrip("/") + "/"
                for key in [k for k in _Store.objects if k == path or k.startswith(prefix)]:
                    del _Store.objects[key]
