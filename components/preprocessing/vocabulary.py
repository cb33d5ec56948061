"""The item vocabulary (raw id <-> int id 1..N, with frequencies) and the item feature table."""

from __future__ import annotations

import dataclasses
from typing import Dict, Iterable, List, Mapping, Sequence, Tuple

import numpy as np

from components.preprocessing import filesystem

VOCABULARY_FILE = "item_vocabulary.tsv"
ITEM_FEATURES_FILE = "item_features.tsv"


@dataclasses.dataclass(frozen=True)
class Vocabulary:
    """Items ordered by frequency (descending, ties by raw id); int id ``i`` is ``raw_ids[i-1]``.

    ``counts`` are the numbers of kept interactions per item (all splits), which a sampled
    softmax turns into sampling probabilities for its logQ correction.
    """

    raw_ids: Tuple[str, ...]
    counts: Tuple[int, ...]

    @classmethod
    def from_counts(cls, counts: Mapping[str, int]) -> "Vocabulary":
        ordered = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
        return cls(tuple(k for k, _ in ordered), tuple(int(v) for _, v in ordered))

    @property
    def size(self) -> int:
        """Number of items ``N`` (the padding id 0 not counted)."""
        return len(self.raw_ids)

    def lookup(self) -> Dict[str, int]:
        return {raw: i + 1 for i, raw in enumerate(self.raw_ids)}

    def frequencies(self) -> np.ndarray:
        """``[N + 1]`` float32 probabilities of each id (0 for padding)."""
        counts = np.asarray((0,) + self.counts, dtype=np.float64)
        return (counts / max(1.0, counts.sum())).astype(np.float32)

    def write(self, directory: str) -> str:
        path = filesystem.join(directory, VOCABULARY_FILE)
        filesystem.write_text(path, "".join(
            ["int_id\traw_id\tcount\n"]
            + [f"{i + 1}\t{raw}\t{count}\n"
               for i, (raw, count) in enumerate(zip(self.raw_ids, self.counts))]))
        return path

    @classmethod
    def read(cls, directory: str) -> "Vocabulary":
        path = filesystem.join(directory, VOCABULARY_FILE)
        raw_ids, counts = [], []
        with filesystem.open_text(path) as f:
            header = f.readline().rstrip("\n").split("\t")
            if header != ["int_id", "raw_id", "count"]:
                raise ValueError(f"{path}:1: expected header int_id/raw_id/count, got {header}")
            for line_no, line in enumerate(f, start=2):
                fields = line.rstrip("\n").split("\t")
                if len(fields) != 3 or fields[0] != str(len(raw_ids) + 1):
                    raise ValueError(f"{path}:{line_no}: malformed vocabulary row {line!r}")
                raw_ids.append(fields[1])
                counts.append(int(fields[2]))
        return cls(tuple(raw_ids), tuple(counts))


@dataclasses.dataclass(frozen=True)
class ItemFeatures:
    """Multi-hot side features (genres) per int item id: ``matrix`` is ``[N + 1, G]`` (row 0 = 0)."""

    names: Tuple[str, ...]
    matrix: np.ndarray

    @classmethod
    def from_genres(cls, vocabulary: Vocabulary,
                    genres: Mapping[str, Sequence[str]]) -> "ItemFeatures":
        names = tuple(sorted({g for raw in vocabulary.raw_ids for g in genres.get(raw, ())}))
        index = {g: j for j, g in enumerate(names)}
        matrix = np.zeros((vocabulary.size + 1, len(names)), dtype=np.float32)
        for i, raw in enumerate(vocabulary.raw_ids):
            for g in genres.get(raw, ()):
                matrix[i + 1, index[g]] = 1.0
        return cls(names, matrix)

    def write(self, directory: str) -> str:
        path = filesystem.join(directory, ITEM_FEATURES_FILE)
        lines = ["int_id\t" + "|".join(self.names) + "\n"]
        for i in range(1, self.matrix.shape[0]):
            active = [self.names[j] for j in np.flatnonzero(self.matrix[i])]
            lines.append(f"{i}\t{'|'.join(active)}\n")
        filesystem.write_text(path, "".join(lines))
        return path

    @classmethod
    def read(cls, directory: str) -> "ItemFeatures":
        path = filesystem.join(directory, ITEM_FEATURES_FILE)
        with filesystem.open_text(path) as f:
            header = f.readline().rstrip("\n").split("\t")
            names = tuple(n for n in header[1].split("|") if n) if len(header) > 1 else ()
            index = {g: j for j, g in enumerate(names)}
            rows: List[List[str]] = []
            for line in f:
                _, active = line.rstrip("\n").split("\t")
                rows.append([g for g in active.split("|") if g])
        matrix = np.zeros((len(rows) + 1, len(names)), dtype=np.float32)
        for i, active in enumerate(rows, start=1):
            for g in active:
                matrix[i, index[g]] = 1.0
        return cls(names, matrix)


def count_items(item_ids: Iterable[str]) -> Dict[str, int]:
    counts: Dict[str, int] = {}
    for item in item_ids:
        counts[item] = counts.get(item, 0) + 1
    return counts
