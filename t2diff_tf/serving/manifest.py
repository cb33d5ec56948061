"""``manifest.json``: what an export contains and what it was built from.

It ties the served artefacts to their inputs so that a deployment can check that the user tower,
the indices and the item vocabulary belong together: the model version, the sha256 of the
vocabulary file's bytes, the embedding dimension, the corpus size, the index parameters, the
export time and every path written (relative to the export directory).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from typing import Any, Dict, Optional

FORMAT_VERSION = 1
MANIFEST_FILE = "manifest.json"
# The item vocabulary inside a bundle (int id, raw id, count per line): paths are relative to it.
BUNDLED_VOCABULARY = "item_vocabulary.tsv"


def file_sha256(path: str, chunk_size: int = 1 << 20) -> str:
    """Hex sha256 of the file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(chunk_size), b""):
            digest.update(chunk)
    return digest.hexdigest()


@dataclasses.dataclass(frozen=True)
class ServingManifest:
    """The contents of ``manifest.json``.

    Attributes:
      model_version: the TF Serving version number of every model in the export.
      model_name: the model's class or registry name.
      model_config: the model's own description (``RetrievalModel.model_config()``), if any.
      vocabulary_path: the vocabulary inside the bundle, relative to it
        (``item_vocabulary.tsv``).
      vocabulary_sha256: sha256 of that file's bytes.
      embedding_dim: ``d`` of user and item embeddings.
      corpus_size: ``N``, the items in the indices (ids ``1..N``; 0 = padding, never returned).
      history_length: ``L`` of the query inputs.
      k: items each top-K signature returns.
      index: the indices' parameters (``brute_force`` and, if exported, the resolved ScaNN
        config).
      exported_at: ISO-8601 UTC time of the export.
      paths: ``{artefact: path relative to the export directory}``.
      served_models: ``{artefact: TF Serving model name}``.
      signatures: ``{artefact: [signature names]}``.
      library_versions: TensorFlow, TFRS, ScaNN versions used.
      format_version: version of this manifest layout.
      source: what the export was pushed from, when the caller says (the Pusher: the model's
        artifact and content fingerprint, the examples, the blessing metrics); a model whose
        fingerprint a bundle already records is not pushed again.
      query_features: how a client builds the user tower's inputs from a user's behaviours
        (:func:`query_features_description`): window length, time-lag buckets and, when the
        caller knows it (the Pusher does), the session rule the model was trained with.
    """

    model_version: int
    model_name: str
    model_config: Optional[Dict[str, Any]]
    vocabulary_path: str
    vocabulary_sha256: str
    embedding_dim: int
    corpus_size: int
    history_length: int
    k: int
    index: Dict[str, Any]
    exported_at: str
    paths: Dict[str, str]
    served_models: Dict[str, str]
    signatures: Dict[str, Any]
    library_versions: Dict[str, str]
    format_version: int = FORMAT_VERSION
    source: Optional[Dict[str, Any]] = None
    query_features: Optional[Dict[str, Any]] = None

    def to_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: Dict[str, Any]) -> "ServingManifest":
        return cls(**values)

    def normalized(self) -> "ServingManifest":
        """The manifest as it reads back from JSON (tuples become lists, keys strings)."""
        return ServingManifest.from_dict(json.loads(json.dumps(self.to_dict(), default=str)))


def query_features_description(history_length: int, num_time_lag_buckets: int,
                               session: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    """The recipe of the query features (``t2diff_tf.features``) for a serving client: a request
    must build them exactly as the training windows were built, or the tower sees inputs it
    never learned from."""
    description: Dict[str, Any] = {
        "history": f"the user's last {history_length} item ids (vocabulary int ids), oldest "
                   f"first, left-padded with 0",
        "history_length": history_length,
        "history_time_lag": "per behaviour, min(num_time_lag_buckets - 1, 1 + floor(log2(1 + "
                            "gap))) with gap the seconds from the behaviour to the request "
                            "(steps to the next position when the training log had no time); "
                            "0 on padding",
        "num_time_lag_buckets": num_time_lag_buckets,
        "history_session": "per behaviour, the session index counted back from the latest "
                           "behaviour's session (0 = the most recent session); -1 on padding",
        "session_length": "the number of behaviours with history_session == 0",
        "history_timestamps": "per behaviour, its time in seconds since the epoch (its step "
                              "index in the user's log when the training log had no time); "
                              "0 on padding",
    }
    if session is not None:
        description["session_rule"] = dict(session)
    return description


def write_manifest(path: str, manifest: ServingManifest) -> str:
    with open(path, "w") as f:
        json.dump(manifest.to_dict(), f, indent=2, sort_keys=True, default=str)
        f.write("\n")
    return path


def read_manifest(path: str) -> ServingManifest:
    with open(path) as f:
        return ServingManifest.from_dict(json.load(f))
