"""Writing TFRecord files from elements that are lists of records.

The preprocessing builds a user's examples together (``windows.user_window_examples``); handing them to
the sink one Beam element per example cost about 12 microseconds of runner bookkeeping per
example (a windowed value, a timestamp, a DoFn call), about a tenth of the preprocessing's CPU
at 50 windows a user. :class:`WriteTFRecordBatches` takes one element per user and split and
writes the same records, in the same framing and file format (gzip for a ``.gz`` suffix), as
``beam.io.WriteToTFRecord`` of the flattened elements, with one write (one compression call) per
element instead of one per record, and ``.gz`` files deflated at :data:`GZIP_LEVEL`.
"""

from __future__ import annotations

import gzip
import struct
from typing import Sequence

import apache_beam as beam
from apache_beam.coders import coders
from apache_beam.io import tfrecordio
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems


_masked_crc32c = tfrecordio._TFRecordUtil._masked_crc32c  # noqa: SLF001 (TFRecord's checksum)


class _TFRecordBatchSink(tfrecordio._TFRecordSink):  # noqa: SLF001 (Beam's TFRecord framing)
    """A TFRecord sink whose every element is a sequence of serialized records."""

    def open(self, temp_path):
        if CompressionTypes.detect_compression_type(temp_path) != CompressionTypes.GZIP:
            return super().open(temp_path)
        return _GzipWriter(FileSystems.create(temp_path, self.mime_type,
                                              CompressionTypes.UNCOMPRESSED))

    def write_record(self, file_handle, value: Sequence[bytes]) -> None:
        # One write per batch: the file handle compresses every write it gets, and a zlib call
        # per ~400-byte record cost more than the deflate itself (about a sixth of the
        # preprocessing's CPU at 50 windows a user). The framing is TFRecord's, record by record.
        frames = []
        for record in value:
            length = struct.pack("<Q", len(record))
            frames += (length, struct.pack("<I", _masked_crc32c(length)), record,
                       struct.pack("<I", _masked_crc32c(record)))
        file_handle.write(b"".join(frames))


#: The gzip level of ``.gz`` outputs. Level 1 deflates these examples about 3x faster than
#: zlib's default (6) for files about a fifth larger; the deflate was the largest single cost of
#: the preprocessing after the examples were built without a proto (measured in BENCHMARKS.md).
GZIP_LEVEL = 1


class _GzipWriter:
    """A binary file handle that gzips what it is given at ``GZIP_LEVEL`` into ``raw``."""

    def __init__(self, raw):
        self._raw = raw
        self._gzip = gzip.GzipFile(fileobj=raw, mode="wb", compresslevel=GZIP_LEVEL, mtime=0)

    def write(self, data: bytes) -> None:
        self._gzip.write(data)

    def close(self) -> None:
        self._gzip.close()  # writes the gzip trailer; does not close ``raw``
        self._raw.close()


class WriteTFRecordBatches(beam.PTransform):
    """``PCollection[Sequence[bytes]]`` -> TFRecord files ``<prefix>-SSSSS-of-NNNNN<suffix>``.

    Args:
      file_path_prefix: as ``beam.io.WriteToTFRecord``'s.
      file_name_suffix: ``.gz`` writes gzip (the compression follows the suffix).
      num_shards: 0 lets the runner decide (no shuffle before writing).
    """

    def __init__(self, file_path_prefix: str, file_name_suffix: str = "", num_shards: int = 0):
        super().__init__()
        self._sink = _TFRecordBatchSink(file_path_prefix, coders.BytesCoder(), file_name_suffix,
                                        num_shards, None, CompressionTypes.AUTO)

    def expand(self, batches):
        return batches | beam.io.Write(self._sink)
