"""The preprocessing on Beam's DaskRunner (two worker processes on 127.0.0.1) writes what the
DirectRunner writes: the same examples (parsed, compared as multisets), vocabulary, item
features, dead letters and stats.

The default suite runs a small CSV log with malformed rows, filtered rows and a file read in
several blocks; the heavy tests add the k-core and sequence chunks, and a 200K-row
KuaiRand-shaped log.
"""

import collections
import json
import os

import pytest
import tensorflow as tf

from components.preprocessing import dask_runner, file_blocks, kuairand_synthetic, readers
from components.preprocessing.config import ProtocolConfig
from components.preprocessing.synthetic import SyntheticConfig, generate_interactions
from components.preprocessing.transforms import PreprocessConfig, run_preprocessing
from t2diff_tf.features import SequenceSpec


def parsed_examples(output_dir):
    """``{split folder: Counter of examples}``, each example as sorted ``(feature, values)``."""
    out = {}
    for name in sorted(os.listdir(output_dir)):
        if not name.startswith("Split-"):
            continue
        files = sorted(os.path.join(output_dir, name, f)
                       for f in os.listdir(os.path.join(output_dir, name)))
        examples = collections.Counter()
        for record in tf.data.TFRecordDataset(files, "GZIP"):
            features = tf.train.Example.FromString(record.numpy()).features.feature
            examples[tuple(sorted(
                (key, tuple(f.int64_list.value), tuple(f.float_list.value),
                 tuple(f.bytes_list.value)) for key, f in features.items()))] += 1
        out[name] = examples
    return out


def text(path):
    with open(path) as f:
        return f.read()


def dead_letters(output_dir):
    with open(os.path.join(output_dir, "dead_letter", "dead_letter.jsonl")) as f:
        return sorted(f.read().splitlines())


def assert_same_outputs(direct_dir, direct_stats, dask_dir, dask_stats):
    for stats in (direct_stats, dask_stats):
        stats.pop("elapsed_seconds")
    assert dask_stats == direct_stats
    with open(os.path.join(dask_dir, "stats.json")) as f:
        written = json.load(f)
    written.pop("elapsed_seconds")
    assert written == direct_stats
    direct, dask = parsed_examples(direct_dir), parsed_examples(dask_dir)
    assert set(dask) == set(direct)
    for split in direct:
        assert sum(direct[split].values()) > 0
        assert dask[split] == direct[split], split
    for name in ("item_vocabulary.tsv", "item_features.tsv", "schema.pbtxt"):
        assert text(os.path.join(dask_dir, name)) == text(os.path.join(direct_dir, name)), name
    assert dead_letters(dask_dir) == dead_letters(direct_dir)


def write_small_log(path, users):
    """A synthetic drift log as CSV with ids as strings (the key type Beam #29365 is about), a
    label column (some rows filtered) and malformed rows (dead letters)."""
    with open(path, "w") as f:
        f.write("user,item,timestamp,label\n")
        rows = generate_interactions(SyntheticConfig(num_users=users, num_items=400))
        for i, (user, item, ts) in enumerate(rows):
            f.write(f"u{user},i{item},{ts},{0 if i % 17 == 0 else 1}\n")
            if i % 997 == 5:
                f.write(f"u{user},i{item},not-a-time,1\n")


def run_both(tmp_path, log, config, partitions, source=readers.CsvLog, **source_args):
    direct = run_preprocessing(source(log, **source_args), str(tmp_path / "direct"), config)
    with dask_runner.local_cluster(workers=2) as address:
        dask = run_preprocessing(source(log, **source_args), str(tmp_path / "dask"), config,
                                 dask_runner.dask_beam_args(address, partitions=partitions))
    assert_same_outputs(str(tmp_path / "direct"), direct, str(tmp_path / "dask"), dask)
    return direct


def test_dask_runner_matches_direct_runner(tmp_path, monkeypatch):
    """Small: 80 users, a file read in several blocks, two worker processes."""
    log = str(tmp_path / "log.csv")
    write_small_log(log, users=80)
    monkeypatch.setattr(file_blocks, "BLOCK_BYTES", 10_000)
    assert len(file_blocks.plan_blocks([log], file_blocks.BLOCK_BYTES)) >= 4
    config = PreprocessConfig(protocol=ProtocolConfig(max_train_windows_per_user=5))
    direct = run_both(tmp_path, log, config, partitions=2, label_column="label")
    assert direct["rejected"] > 0 and direct["filtered"]["label_below_min"] > 0


@pytest.mark.heavy
def test_dask_runner_matches_direct_runner_with_k_core_and_sequences(tmp_path, monkeypatch):
    """Every stage: the k-core's ten unrolled rounds (chained side inputs), sequence chunks,
    four partitions (took 560 s on a 2-core machine loaded by other work)."""
    log = str(tmp_path / "log.csv")
    write_small_log(log, users=300)
    monkeypatch.setattr(file_blocks, "BLOCK_BYTES", 40_000)
    # 9 interactions per item: about a tenth of this log's items fall below it (at 3, none did
    # and the k-core had nothing to do).
    config = PreprocessConfig(protocol=ProtocolConfig(max_train_windows_per_user=5),
                              min_item_interactions=9, sequences=SequenceSpec(20))
    direct = run_both(tmp_path, log, config, partitions=4, label_column="label")
    assert direct["kcore"]["rounds_with_removals"] >= 1


@pytest.mark.heavy
def test_dask_runner_matches_direct_runner_on_a_kuairand_shaped_log(tmp_path, monkeypatch):
    log = str(tmp_path / "kuairand.csv")
    kuairand_synthetic.write_csv(kuairand_synthetic.KuaiRandShape(rows=200_000, seed=3), log)
    monkeypatch.setattr(file_blocks, "BLOCK_BYTES", 1 << 20)
    config = PreprocessConfig(protocol=ProtocolConfig(max_train_windows_per_user=20))
    run_both(tmp_path, log, config, partitions=8)
