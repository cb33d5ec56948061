"""``RetrievalEvaluator``: full-corpus Recall@K / MRR@K with bootstrap CIs, and a blessing.

It loads the Trainer's user-tower SavedModel (``serving_default``: query features ->
``user_embedding``) and the item corpus embeddings saved beside it, ranks every test target
among all items, compares with a baseline model (optional) and a threshold, and writes:

    <evaluation.uri>/metrics.json   metrics, 95% intervals, baseline's, blessing decision
    <evaluation.uri>/metrics.png    the metrics with their intervals (and the baseline's)
    <blessing.uri>/BLESSED | NOT_BLESSED
"""


import json
import os
from typing import Dict, Optional, Sequence

import numpy as np
import tensorflow as tf
from tfx import v1 as tfx
from tfx.types import artifact_utils

from components.preprocessing.transforms import STATS_FILE, PreprocessConfig, split_dir
from t2diff_tf import features as F
from t2diff_tf import metrics as M
from t2diff_tf.training import read_examples

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


def decide_blessing(result: M.EvaluationResult, metric: str, threshold: float,
                    baseline: Optional[M.EvaluationResult], min_improvement: float) -> Dict:
    """Blessed when ``metric >= threshold`` and, with a baseline, ``metric >= baseline's +
    min_improvement``."""
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
    return {"blessed": not reasons, "metric": metric, "value": value, "threshold": threshold,
            "baseline_value": None if baseline is None else baseline.metrics[metric],
            "min_improvement": min_improvement, "reasons": reasons}


def plot_metrics(result: M.EvaluationResult, baseline: Optional[M.EvaluationResult],
                 path: str, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [n for n in result.metrics if not n.startswith("ndcg")]
    fig, ax = plt.subplots(figsize=(max(6, len(names) * 0.9), 3.6))
    x = np.arange(len(names))
    runs = [("model", result)] + ([("baseline", baseline)] if baseline else [])
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
    split: Parameter[str] = "test",
    ks: Parameter[str] = "2,10,20,100",
    blessing_metric: Parameter[str] = "recall@20",
    threshold: Parameter[float] = 0.0,
    min_improvement: Parameter[float] = 0.0,
    exclude_history: Parameter[bool] = False,
    num_bootstrap: Parameter[int] = 1000,
) -> None:
    """Ranks the ``split`` targets over the whole item corpus and blesses the model.

    Args:
      model: the Trainer's model. baseline_model: optional model to beat.
      examples: the preprocessing's examples (the split and its ``stats.json``).
      split: which split to rank (``test``).
      ks: comma-separated cut-offs.
      blessing_metric, threshold, min_improvement: the blessing rule (see ``decide_blessing``).
      exclude_history: drop already-seen items from the ranking.
      num_bootstrap: bootstrap resamples for the 95% intervals.
    """
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
    decision = decide_blessing(result, blessing_metric, threshold, baseline, min_improvement)
    report = {"split": split, "model": result.as_dict(),
              "baseline": None if baseline is None else baseline.as_dict(),
              "blessing": decision}
    tf.io.gfile.makedirs(evaluation.uri)
    with tf.io.gfile.GFile(os.path.join(evaluation.uri, "metrics.json"), "w") as f:
        json.dump(report, f, indent=2)
    plot_metrics(result, baseline, os.path.join(evaluation.uri, "metrics.png"),
                 f"full-corpus ranking on {split} ({result.num_examples} examples, "
                 f"{result.num_items} items)")
    for name, value in result.metrics.items():
        evaluation.set_float_custom_property(name, value)
    tf.io.gfile.makedirs(blessing.uri)
    marker = "BLESSED" if decision["blessed"] else "NOT_BLESSED"
    with tf.io.gfile.GFile(os.path.join(blessing.uri, marker), "w") as f:
        f.write(json.dumps(decision))
    blessing.set_int_custom_property("blessed", int(decision["blessed"]))
    blessing.set_string_custom_property("current_model", model.uri)
