"""The scale benchmark's quality check: the model's figures from the run's printed summary, and
popularity's on the same test windows, in closed form."""

import json

import numpy as np
import tensorflow as tf

from benchmarks import pipeline_scale
from pipeline.configs import PipelineConfig
from pipeline.report import summarize_run


def _example(target: int) -> bytes:
    return tf.train.Example(features=tf.train.Features(feature={
        "target": tf.train.Feature(int64_list=tf.train.Int64List(value=[target]))})
    ).SerializeToString()


def _pipeline_output(root, counts, targets, recalls):
    """A pipeline output laid out as `t2diff run --output-root root` leaves it."""
    config = PipelineConfig(output_root=str(root))
    examples = root / "pipelines" / config.pipeline_name / "PreprocessLogs" / "examples" / "7"
    (examples / "Split-test").mkdir(parents=True)
    with open(examples / "item_vocabulary.tsv", "w") as f:
        f.write("int_id\traw_id\tcount\n")
        for int_id, count in enumerate(counts, start=1):
            f.write(f"{int_id}\tmovie{int_id}\t{count}\n")
    with tf.io.TFRecordWriter(str(examples / "Split-test" / "data-00000-of-00001.gz"),
                              options="GZIP") as writer:
        for target in targets:
            writer.write(_example(target))
    # The printed summary, written by the code that prints it at the end of `t2diff run`.
    evaluation = (root / "pipelines" / config.pipeline_name / "RetrievalEvaluator" /
                  "evaluation" / "9")
    evaluation.mkdir(parents=True)
    (evaluation / "metrics.json").write_text(json.dumps({
        "split": "test",
        "model": {"num_examples": len(targets), "num_items": len(counts),
                  "exclude_history": False,
                  "metrics": recalls, "intervals": {k: (v - 0.01, v + 0.01)
                                                    for k, v in recalls.items()}},
        "blessing": {"blessed": False, "reasons": ["no baseline"]}}))
    with open(root / "run.log", "w") as f:
        f.write("[8/9] RetrievalEvaluator done\n" + summarize_run(config) + "\n")
    return str(root)


def test_popularity_ranks_by_count_and_out_of_vocabulary_targets_miss(tmp_path):
    # 25 items; item i has count 100 - i except item 25, the most frequent: popularity ranks
    # 25 first, then 1, 2, ..., 24. Item 10 is 11th (rank 10, outside the top 10), item 9 is
    # 10th (inside it), item 19 is 20th (inside the top 20), item 20 21st.
    counts = [100 - i for i in range(1, 25)] + [1000]
    targets = [25, 9, 10, 19, 20, 0, 26, 1]  # 0 and 26: not in the vocabulary
    out = _pipeline_output(tmp_path, counts, targets,
                           {"recall@10": 0.3125, "recall@20": 0.4375, "mrr@20": 0.2})
    got = pipeline_scale.quality(out)
    assert got["test_windows"] == len(targets)
    assert got["model_test"] == {"recall@10": 0.3125, "recall@20": 0.4375}
    ranks = {25: 0, 9: 9, 10: 10, 19: 19, 20: 20, 0: 25, 26: 25, 1: 1}
    expected = {f"recall@{k}": round(float(np.mean([ranks[t] < k for t in targets])), 4)
                for k in (10, 20)}
    assert expected == {"recall@10": 0.375, "recall@20": 0.625}
    assert got["popularity_test"] == expected


def test_ties_in_count_go_to_the_smaller_int_id(tmp_path):
    # Items 1..12 all counted 5: popularity's order is 1, 2, ..., 12, as the vocabulary's.
    out = _pipeline_output(tmp_path, [5] * 12, [10, 11, 12],
                           {"recall@10": 0.0, "recall@20": 0.0})
    assert pipeline_scale.quality(out)["popularity_test"] == {"recall@10": 0.3333,
                                                               "recall@20": 1.0}
