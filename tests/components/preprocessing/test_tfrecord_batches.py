"""WriteTFRecordBatches: the records of list elements, framed and compressed as WriteToTFRecord
frames the flattened elements."""

import glob
import os

import apache_beam as beam
import pytest
import tensorflow as tf

from components.preprocessing.tfrecord_batches import WriteTFRecordBatches


def _read(pattern, compression):
    records = []
    for path in sorted(glob.glob(pattern)):
        records += [r.numpy() for r in tf.data.TFRecordDataset(path, compression_type=compression)]
    return records


@pytest.mark.parametrize("suffix,compression,shards", [(".gz", "GZIP", 0), ("", "", 0),
                                                       (".gz", "GZIP", 2)])
def test_batches_write_the_records_of_their_elements(tmp_path, suffix, compression, shards):
    batches = [[f"user{u}-record{i}".encode() * (1 + i) for i in range(u % 4)] for u in range(30)]
    with beam.Pipeline() as p:
        created = p | beam.Create(batches)
        _ = created | "Batches" >> WriteTFRecordBatches(
            os.path.join(tmp_path, "batches", "data"), file_name_suffix=suffix, num_shards=shards)
        _ = (created | beam.FlatMap(lambda b: b)
             | "Flat" >> beam.io.WriteToTFRecord(os.path.join(tmp_path, "flat", "data"),
                                                 file_name_suffix=suffix, num_shards=shards))
    got = _read(os.path.join(tmp_path, "batches", "data-*"), compression)
    flat = _read(os.path.join(tmp_path, "flat", "data-*"), compression)
    expected = [r for b in batches for r in b]
    assert sorted(got) == sorted(flat) == sorted(expected) and len(got) == 43
    files = glob.glob(os.path.join(tmp_path, "batches", f"data-*-of-*{suffix}"))
    assert files and (shards == 0 or len(files) == shards)
    # A batch's records stay together and in order within a file.
    position = {r: i for i, r in enumerate(got)}
    for b in (b for b in batches if b):
        indices = [position[r] for r in b]
        assert indices == list(range(indices[0], indices[0] + len(b)))
