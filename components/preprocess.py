"""``PreprocessLogs``: the Beam preprocessing as a TFX component.

Its ``Examples`` artifact holds what ``run_preprocessing`` writes: ``Split-train``,
``Split-validation``, ``Split-test`` (and ``Split-train_sequences`` with a sequence layout; gzipped tf.Example TFRecords, as ExampleGen writes them, so
StatisticsGen, SchemaGen, ExampleValidator and the Trainer read them as usual), plus the item
vocabulary, item features, schema, dead letters and stats at the artifact's root.
"""


import json
import os

import apache_beam as beam
import tensorflow as tf
from tfx import v1 as tfx
from tfx.types import artifact_utils

from components.preprocessing.config import SERVING, SPLITS, TRAIN_SEQUENCES
from components.preprocessing.schema import read_schema, validate_examples
from components.preprocessing.sources import SourceConfig
from components.preprocessing.transforms import PreprocessConfig, run_preprocessing, split_dir
from t2diff_tf import features as F

Parameter = tfx.dsl.components.Parameter
OutputArtifact = tfx.dsl.components.OutputArtifact
BeamComponentParameter = tfx.dsl.components.BeamComponentParameter


class SchemaMismatchError(ValueError):
    """The examples do not match the schema the user asked them to follow."""


def check_against_schema(output_dir: str, schema_path: str) -> None:
    """Raises :class:`SchemaMismatchError` naming the problems when the examples do not follow
    the schema at ``schema_path``."""
    schema = read_schema(schema_path)
    for split in SPLITS:
        files = tf.io.gfile.glob(os.path.join(split_dir(output_dir, split), "*"))
        problems = validate_examples(files, schema)
        if problems:
            raise SchemaMismatchError(
                f"Split-{split} does not match schema {schema_path}: " + "; ".join(problems[:5]))


def window_contract() -> str:
    """The window features, comma-separated (``t2diff_tf.features``): what a run of
    :func:`PreprocessLogs` is keyed on besides its configuration."""
    return ",".join(F.SEQUENCE_FEATURES + F.SCALAR_FEATURES)


@tfx.dsl.components.component(use_beam=True)
def PreprocessLogs(
    examples: OutputArtifact[tfx.types.standard_artifacts.Examples],
    source: Parameter[str],
    preprocess_config: Parameter[str] = "{}",
    schema_path: Parameter[str] = "",
    window_features: Parameter[str] = "",
    beam_pipeline: BeamComponentParameter[beam.Pipeline] = None,
) -> None:
    """Reads a log and writes window examples per split.

    Args:
      examples: the output; its ``split_names`` are train, validation, test, serving (and
        train_sequences with chunks).
      source: ``SourceConfig`` as JSON (``SourceConfig(...).to_json()``).
      preprocess_config: ``PreprocessConfig.to_json()`` as a JSON string.
      schema_path: optional schema the examples must follow (else only the generated one).
      window_features: the window contract this code writes (:func:`window_contract`). An
        execution property, so that a cached run under an older contract (say, before
        ``history_timestamps``) is not reused: TFX's cache does not see library code change.
      beam_pipeline: given by TFX from the pipeline's ``beam_pipeline_args``.
    """
    if window_features and window_features != window_contract():
        raise ValueError(f"this pipeline was defined for windows of {window_features!r}, but "
                         f"this code writes {window_contract()!r}: rebuild the pipeline")
    config = PreprocessConfig.from_json(json.loads(preprocess_config))
    stats = run_preprocessing(SourceConfig.from_json(source).build(), examples.uri, config,
                              pipeline=beam_pipeline)
    if schema_path:
        check_against_schema(examples.uri, schema_path)
    # The sequence chunks (when asked for) are a split of their own, for the Trainer only:
    # the pipeline keeps them out of StatisticsGen (their features are not the windows').
    # So are the serving windows (no target), for batch candidates.
    splits = (list(SPLITS) + ([TRAIN_SEQUENCES] if config.sequences is not None else [])
              + ([SERVING] if config.serving_windows else []))
    examples.split_names = artifact_utils.encode_split_names(splits)
    examples.set_string_custom_property("file_format", "tfrecords_gzip")
    examples.set_string_custom_property("payload_format", "FORMAT_TF_EXAMPLE")
    for key in ("interactions_read", "kept", "rejected", "items", "users_kept"):
        examples.set_int_custom_property(key, int(stats[key]))
    examples.set_int_custom_property(
        "history_length", config.window.example.history_length)
