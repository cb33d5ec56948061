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

    def to_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: Dict[str, Any]) -> "ServingManifest":
        return cls(**values)

    def normalized(self) -> "ServingManifest":
        """The manifest as it reads back from JSON (tuples become lists, keys strings)."""
        return ServingManifest.from_dict(json.loads(json.dumps(self.to_dict(), default=str)))


def write_manifest(path: str, manifest: ServingManifest) -> str:
    with open(path, "w") as f:
        json.dump(manifest.to_dict(), f, indent=2, sort_keys=True, default=str)
        f.write("\n")
    return path


def read_manifest(path: str) -> ServingManifest:
    with open(path) as f:
        return ServingManifest.from_dict(json.load(f))
