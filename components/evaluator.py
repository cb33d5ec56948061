"""``RetrievalEvaluator``: full-corpus Recall@K / MRR@K with bootstrap CIs, and a blessing.

It loads the Trainer's user-tower SavedModel (``serving_default``: query features ->
``user_embedding``) and the item corpus embeddings saved beside it, ranks every test target
among all items, compares with a threshold, an optional baseline trained in the same run, and
the model that serves (the pipeline's latest blessed model, resolved from ML Metadata), and
writes:

    <evaluation.uri>/metrics.json   metrics, 95% intervals, baseline's, blessing decision
    <evaluation.uri>/metrics.png    the metrics with their intervals (and the baseline's)
    <blessing.uri>/BLESSED | NOT_BLESSED

Against what serves: the serving model ranks the same test examples. It was trained on earlier
data, so its item ids are another vocabulary's: the examples' ids are mapped to its ids through
the raw ids (:class:`RemappedRetrievalModel`); a history item it does not know becomes padding,
and an item it does not know can never be retrieved (scored ``-inf``, so a target it does not
know is ranked last). The candidate is blessed only if it beats the serving model on the
blessing metric with the paired bootstrap interval over users (``t2diff_tf.metrics.
paired_difference``): rule ``better`` needs the interval's lower end above 0; rule
``not_worse`` needs its upper end at or above 0. When the candidate *is* the serving model (a
rerun whose Trainer was cached) it stays blessed. Without a serving model (the first run) only
the threshold and the same-run baseline apply.

The blessing carries ``blessed`` and ``current_model_id`` (the model's ML Metadata id), the
properties TFX's ``LatestBlessedModelStrategy`` resolves by.
"""


import json
import os
from typing import Dict, Optional, Sequence

import numpy as np
import tensorflow as tf
from tfx import v1 as tfx
from tfx.types import artifact_utils

from components.base_model import BaseModel
from components.preprocessing.transforms import STATS_FILE, PreprocessConfig, split_dir
from components.preprocessing.vocabulary import Vocabulary
from t2diff_tf import features as F
from t2diff_tf import metrics as M
from t2diff_tf.training import read_examples
from t2diff_tf.warm_start import ItemIdMapping

Parameter = tfx.dsl.components.Parameter
InputArtifact = tfx.dsl.components.InputArtifact
OutputArtifact = tfx.dsl.components.OutputArtifact

CORPUS_EMBEDDINGS = os.path.join("assets.extra", "corpus_embeddings.npy")
SERVING_DIR = "Format-Serving"


class SavedRetrievalModel(tf.Module):
    """A trained model read back from its SavedModel: what ``metrics.evaluate`` and the serving
    export need (``query_embeddings``, ``corpus_embeddings``, ``num_items``).

    Args:
      serving_dir: the user-tower SavedModel (a ``serving_default`` signature over the query
        features returning ``user_embedding``) with ``assets.extra/corpus_embeddings.npy``
        (``[N, d]``, row ``i`` = item ``i + 1``) beside it.
    """

    def __init__(self, serving_dir: str):
        super().__init__(name="saved_retrieval_model")
        self.loaded = tf.saved_model.load(serving_dir)  # tracked: re-exports keep its variables
        self._signature = self.loaded.signatures["serving_default"]
        with tf.io.gfile.GFile(os.path.join(serving_dir, CORPUS_EMBEDDINGS), "rb") as f:
            self._corpus = np.load(f)
        self.num_items = int(self._corpus.shape[0])

    def query_embeddings(self, features, training: bool = False) -> tf.Tensor:
        inputs = {name: tf.cast(features[name], tf.int64) for name in F.QUERY_FEATURES}
        return self._signature(**inputs)["user_embedding"]

    def corpus_embeddings(self) -> np.ndarray:
        return self._corpus


class RemappedRetrievalModel:
    """A model trained on another vocabulary, ranking examples of this one.

    Args:
      model: the old model (``query_embeddings``, ``corpus_embeddings`` ``[N_old, d]``).
      mapping: the examples' item ids (``N`` items) -> the model's ids, 0 for an item it does
        not know.
      spec: the examples' shapes; old_spec: the model's (a different ``L`` is cut or left-padded).

    ``score_corpus(features)`` is ``[batch, N]``: column ``j`` is the old model's score of the
    examples' item ``j + 1``, ``-inf`` for an item the old model does not know.
    """

    def __init__(self, model, mapping: ItemIdMapping, spec: F.ExampleSpec,
                 old_spec: F.ExampleSpec):
        if spec.num_time_lag_buckets != old_spec.num_time_lag_buckets:
            raise ValueError(f"the serving model was trained with {old_spec.num_time_lag_buckets} "
                             f"time-lag buckets, these examples have "
                             f"{spec.num_time_lag_buckets}: they cannot be compared")
        self.model = model
        self.num_items = mapping.num_new_items
        self._old_ids = tf.constant(mapping.old_ids, tf.int64)
        self._length, self._old_length = spec.history_length, old_spec.history_length
        self._corpus = tf.constant(model.corpus_embeddings(), tf.float32)

    def _fit_length(self, values: tf.Tensor, padding: int) -> tf.Tensor:
        if self._old_length <= self._length:
            return values[:, self._length - self._old_length:]  # the latest behaviours
        missing = self._old_length - self._length
        return tf.pad(values, [[0, 0], [missing, 0]], constant_values=tf.cast(padding,
                                                                              values.dtype))

    def query_features(self, features) -> dict:
        """The examples' query features in the old model's ids and shapes."""
        history = tf.gather(self._old_ids, tf.cast(features[F.HISTORY], tf.int64))
        return {F.HISTORY: self._fit_length(history, F.PADDING_ID),
                F.HISTORY_TIME_LAG: self._fit_length(
                    tf.cast(features[F.HISTORY_TIME_LAG], tf.int64), 0),
                F.HISTORY_SESSION: self._fit_length(
                    tf.cast(features[F.HISTORY_SESSION], tf.int64), F.PADDING_SESSION),
                F.SESSION_LENGTH: tf.minimum(tf.cast(features[F.SESSION_LENGTH], tf.int64),
                                             self._old_length),
                F.HISTORY_TIMESTAMPS: self._fit_length(
                    tf.cast(features[F.HISTORY_TIMESTAMPS], tf.int64), 0)}

    def score_corpus(self, features) -> tf.Tensor:
        queries = self.model.query_embeddings(self.query_features(features))
        scores = tf.matmul(queries, self._corpus, transpose_b=True)  # [batch, N_old]
        unknown = tf.fill([tf.shape(scores)[0], 1], tf.constant(-np.inf, scores.dtype))
        return tf.gather(tf.concat([unknown, scores], axis=1), self._old_ids[1:], axis=1)


def serving_dir(model_uri: str) -> str:
    return os.path.join(model_uri, SERVING_DIR)


def preprocess_config(examples_uri: str) -> PreprocessConfig:
    """The configuration an examples artifact was written with (from its ``stats.json``)."""
    with tf.io.gfile.GFile(os.path.join(examples_uri, STATS_FILE)) as f:
        return PreprocessConfig.from_json(json.load(f)["config"])


def example_spec(examples_uri: str) -> F.ExampleSpec:
    return preprocess_config(examples_uri).window.example


def evaluate_saved_model(model_uri: str, examples_uri: str, split: str, ks: Sequence[int],
                         exclude_history: bool, num_bootstrap: int) -> M.EvaluationResult:
    spec = example_spec(examples_uri)
    dataset = read_examples(os.path.join(split_dir(examples_uri, split), "*"), spec, 512)
    return M.evaluate(SavedRetrievalModel(serving_dir(model_uri)), dataset, ks=ks,
                      exclude_history=exclude_history, num_bootstrap=num_bootstrap)


SERVING_RULES = ("better", "not_worse")
SERVING_VOCABULARY = os.path.join("assets.extra", "item_vocabulary.tsv")


def evaluate_serving_model(serving_uri: str, examples_uri: str, split: str, ks: Sequence[int],
                           exclude_history: bool, num_bootstrap: int) -> M.EvaluationResult:
    """The serving model ranked on these examples, their ids mapped to its vocabulary."""
    base = BaseModel.read(serving_dir(serving_uri))
    spec = example_spec(examples_uri)
    mapping = ItemIdMapping.from_raw_ids(base.vocabulary.raw_ids,
                                         Vocabulary.read(examples_uri).raw_ids)
    model = RemappedRetrievalModel(SavedRetrievalModel(base.serving_dir), mapping, spec,
                                   base.spec)
    dataset = read_examples(os.path.join(split_dir(examples_uri, split), "*"), spec, 512)
    return M.evaluate(model, dataset, ks=ks, exclude_history=exclude_history,
                      num_bootstrap=num_bootstrap)


def compare_with_serving(result: M.EvaluationResult, serving: M.EvaluationResult, metric: str,
                         rule: str = "better", num_resamples: int = 1000, seed: int = 0) -> Dict:
    """The candidate against the serving model on the same examples: the paired difference of
    ``metric`` (candidate - serving) with its bootstrap interval over users, and whether the
    ``rule`` passes (``better``: interval above 0; ``not_worse``: interval not below 0)."""
    if rule not in SERVING_RULES:
        raise ValueError(f"serving rule must be one of {SERVING_RULES}, got {rule!r}")
    if result.ranks is None or serving.ranks is None or \
            len(result.ranks) != len(serving.ranks):
        raise ValueError("the candidate and the serving model must rank the same examples")
    if result.groups is not None and serving.groups is not None and \
            not np.array_equal(result.groups, serving.groups):
        raise ValueError("the candidate and the serving model ranked the examples in different "
                         "orders")
    k = int(metric.partition("@")[2])
    a = M.ranking_metrics(result.ranks, (k,))[metric]
    b = M.ranking_metrics(serving.ranks, (k,))[metric]
    difference, low, high = M.paired_difference(a, b, result.groups, max(num_resamples, 1),
                                                seed=seed)
    passed = low > 0.0 if rule == "better" else high >= 0.0
    return {"metric": metric, "rule": rule, "candidate": float(a.mean()),
            "serving": float(b.mean()), "difference": difference, "interval": [low, high],
            "passed": bool(passed)}


def decide_blessing(result: M.EvaluationResult, metric: str, threshold: float,
                    baseline: Optional[M.EvaluationResult], min_improvement: float,
                    serving: Optional[Dict] = None) -> Dict:
    """Blessed when ``metric >= threshold``, with a same-run baseline ``metric >= baseline's +
    min_improvement``, and with a serving model when ``serving`` (:func:`compare_with_serving`,
    or ``{"same_model": True}`` when the candidate is the serving model, ``{"skipped": why}``
    when it could not be compared) passes."""
    if metric not in result.metrics:
        raise ValueError(f"blessing metric {metric!r} is not computed; have "
                         f"{sorted(result.metrics)}")
    value = result.metrics[metric]
    reasons = []
    if value < threshold:
        reasons.append(f"{metric} {value:.4f} < threshold {threshold:.4f}")
    if baseline is not None and value < baseline.metrics[metric] + min_improvement:
        reasons.append(f"{metric} {value:.4f} < baseline {baseline.metrics[metric]:.4f} + "
                       f"{min_improvement:.4f}")
    if serving is not None and not serving.get("same_model") and not serving.get("skipped") \
            and not serving["passed"]:
        low, high = serving["interval"]
        reasons.append(
            f"{metric} {serving['candidate']:.4f} is not {serving['rule'].replace('_', ' ')} "
            f"than the serving model's {serving['serving']:.4f} (paired difference "
            f"{serving['difference']:+.4f}, 95% interval [{low:+.4f}, {high:+.4f}])")
    return {"blessed": not reasons, "metric": metric, "value": value, "threshold": threshold,
            "baseline_value": None if baseline is None else baseline.metrics[metric],
            "min_improvement": min_improvement, "serving": serving, "reasons": reasons}


def plot_metrics(result: M.EvaluationResult, baseline: Optional[M.EvaluationResult],
                 path: str, title: str, serving: Optional[M.EvaluationResult] = None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [n for n in result.metrics if not n.startswith("ndcg")]
    fig, ax = plt.subplots(figsize=(max(6, len(names) * 0.9), 3.6))
    x = np.arange(len(names))
    runs = [("model", result)] + ([("baseline", baseline)] if baseline else []) + \
        ([("serving model", serving)] if serving else [])
    width = 0.8 / len(runs)
    for i, (label, r) in enumerate(runs):
        values = np.array([r.metrics[n] for n in names])
        low = np.array([r.intervals.get(n, (v, v))[0] for n, v in zip(names, values)])
        high = np.array([r.intervals.get(n, (v, v))[1] for n, v in zip(names, values)])
        ax.bar(x + i * width, values, width, label=label,
               yerr=np.stack([values - low, high - values]), capsize=3)
    ax.set_xticks(x + width * (len(runs) - 1) / 2, names, rotation=30)
    ax.set_ylabel("value (95% CI)")
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    with tf.io.gfile.GFile(path, "wb") as f:
        fig.savefig(f, format="png", dpi=110)
    plt.close(fig)


@tfx.dsl.components.component
def RetrievalEvaluator(
    model: InputArtifact[tfx.types.standard_artifacts.Model],
    examples: InputArtifact[tfx.types.standard_artifacts.Examples],
    evaluation: OutputArtifact[tfx.types.standard_artifacts.ModelEvaluation],
    blessing: OutputArtifact[tfx.types.standard_artifacts.ModelBlessing],
    baseline_model: tfx.dsl.components.InputArtifact[
        tfx.types.standard_artifacts.Model] = None,
    serving_model: tfx.dsl.components.InputArtifact[
        tfx.types.standard_artifacts.Model] = None,
    split: Parameter[str] = "test",
    ks: Parameter[str] = "2,10,20,100",
    blessing_metric: Parameter[str] = "recall@20",
    threshold: Parameter[float] = 0.0,
    min_improvement: Parameter[float] = 0.0,
    exclude_history: Parameter[bool] = False,
    num_bootstrap: Parameter[int] = 1000,
    serving_rule: Parameter[str] = "better",
) -> None:
    """Ranks the ``split`` targets over the whole item corpus and blesses the model.

    Args:
      model: the Trainer's model. baseline_model: optional model to beat (same run).
      serving_model: optional model that serves now (the latest blessed model, resolved from
        ML Metadata); the candidate must beat it by ``serving_rule`` (see the module docstring).
      examples: the preprocessing's examples (the split and its ``stats.json``).
      split: which split to rank (``test``).
      ks: comma-separated cut-offs.
      blessing_metric, threshold, min_improvement: the blessing rule (see ``decide_blessing``).
      exclude_history: drop already-seen items from the ranking.
      num_bootstrap: bootstrap resamples for the 95% intervals.
      serving_rule: ``better`` or ``not_worse`` (paired interval against the serving model).
    """
    if serving_rule not in SERVING_RULES:
        raise ValueError(f"serving_rule must be one of {SERVING_RULES}, got {serving_rule!r}")
    if split not in artifact_utils.decode_split_names(examples.split_names):
        raise ValueError(f"split {split!r} not in the examples' splits "
                         f"{artifact_utils.decode_split_names(examples.split_names)}")
    cutoffs = tuple(int(k) for k in ks.split(","))
    result = evaluate_saved_model(model.uri, examples.uri, split, cutoffs, exclude_history,
                                  num_bootstrap)
    baseline = None
    if baseline_model is not None:
        baseline = evaluate_saved_model(baseline_model.uri, examples.uri, split, cutoffs,
                                        exclude_history, num_bootstrap)
    serving, serving_result = None, None
    if serving_model is not None and serving_model.id == model.id:
        serving = {"same_model": True, "model_uri": serving_model.uri}
        print(f"RetrievalEvaluator: the candidate {model.uri} is the serving model already.")
    elif serving_model is not None and not tf.io.gfile.exists(
            os.path.join(serving_dir(serving_model.uri), SERVING_VOCABULARY)):
        # A model from before the Trainer kept its vocabulary: its ids cannot be mapped.
        serving = {"skipped": f"{serving_model.uri} has no {SERVING_VOCABULARY} (written by an "
                              f"earlier t2diff): not compared", "model_uri": serving_model.uri}
        print(f"RetrievalEvaluator: {serving['skipped']}")
    elif serving_model is not None:
        serving_result = evaluate_serving_model(serving_model.uri, examples.uri, split, cutoffs,
                                                exclude_history, num_bootstrap)
        serving = compare_with_serving(result, serving_result, blessing_metric, serving_rule,
                                       num_bootstrap)
        serving.update(same_model=False, model_uri=serving_model.uri,
                       model_id=serving_model.id)
        low, high = serving["interval"]
        print(f"RetrievalEvaluator: against the serving model {serving_model.uri}: "
              f"{blessing_metric} {serving['candidate']:.4f} vs {serving['serving']:.4f}, "
              f"paired difference {serving['difference']:+.4f} [{low:+.4f}, {high:+.4f}] "
              f"({serving_rule}: {'passed' if serving['passed'] else 'failed'})")
    decision = decide_blessing(result, blessing_metric, threshold, baseline, min_improvement,
                               serving)
    report = {"split": split, "model": result.as_dict(),
              "baseline": None if baseline is None else baseline.as_dict(),
              "serving_model": None if serving_result is None else serving_result.as_dict(),
              "blessing": decision}
    tf.io.gfile.makedirs(evaluation.uri)
    with tf.io.gfile.GFile(os.path.join(evaluation.uri, "metrics.json"), "w") as f:
        json.dump(report, f, indent=2)
    plot_metrics(result, baseline, os.path.join(evaluation.uri, "metrics.png"),
                 f"full-corpus ranking on {split} ({result.num_examples} examples, "
                 f"{result.num_items} items)", serving_result)
    for name, value in result.metrics.items():
        evaluation.set_float_custom_property(name, value)
    tf.io.gfile.makedirs(blessing.uri)
    marker = "BLESSED" if decision["blessed"] else "NOT_BLESSED"
    with tf.io.gfile.GFile(os.path.join(blessing.uri, marker), "w") as f:
        f.write(json.dumps(decision))
    blessing.set_int_custom_property("blessed", int(decision["blessed"]))
    blessing.set_string_custom_property("current_model", model.uri)
    # What TFX's LatestBlessedModelStrategy resolves the latest blessed model by.
    blessing.set_int_custom_property("current_model_id", model.id)
