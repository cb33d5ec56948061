"""Windows as numpy arrays without Beam: for tests, notebooks and quick experiments.

Uses the same window and vocabulary code as the Beam pipeline (``windows.py``,
``vocabulary.py``), so its examples equal the TFRecords the pipeline writes for the same log.
"""

from __future__ import annotations

import dataclasses
from typing import Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from components.preprocessing import synthetic
from components.preprocessing import kcore
from components.preprocessing import sequences as chunking
from components.preprocessing.config import SPLITS, TRAIN_SEQUENCES, ProtocolConfig, WindowConfig
from components.preprocessing.vocabulary import ItemFeatures, Vocabulary
from components.preprocessing.windows import user_windows
from t2diff_tf import features as F

Arrays = Dict[str, np.ndarray]


@dataclasses.dataclass(frozen=True)
class InMemoryData:
    """Window examples per split plus the item catalogue.

    Attributes:
      splits: ``{split: {feature: array}}``; sequence features are ``[n, L]`` int64, scalars
        ``[n]`` int64, ``user_id`` ``[n]`` bytes.
      vocabulary: int id <-> raw id with counts.
      item_features: multi-hot side features ``[N + 1, G]``.
    """

    splits: Dict[str, Arrays]
    vocabulary: Vocabulary
    item_features: ItemFeatures

    @property
    def num_items(self) -> int:
        return self.vocabulary.size


def windows_to_arrays(user_sequences: Mapping[str, Tuple[Sequence[int], Optional[Sequence[int]]]],
                      window: WindowConfig, protocol: ProtocolConfig) -> Dict[str, Arrays]:
    """``{user: (item ids, timestamps or None)}`` -> ``{split: {feature: array}}``."""
    rows: Dict[str, List[dict]] = {s: [] for s in SPLITS}
    for user, (items, timestamps) in user_sequences.items():
        for split, w in user_windows(user, items, timestamps, window, protocol):
            rows[split].append(w)
    out = {}
    for split, ws in rows.items():
        arrays = {name: np.asarray([w[name] for w in ws], dtype=np.int64).reshape(
            (len(ws), window.example.history_length) if name in F.SEQUENCE_FEATURES else (len(ws),))
            for name in F.SEQUENCE_FEATURES + F.SCALAR_FEATURES}
        arrays[F.USER_ID] = np.asarray([str(w[F.USER_ID]).encode() for w in ws], dtype=object)
        out[split] = arrays
    return out


def chunks_to_arrays(user_sequences: Mapping[str, Tuple[Sequence[int], Optional[Sequence[int]]]],
                     window: WindowConfig, protocol: ProtocolConfig,
                     spec: F.SequenceSpec) -> Arrays:
    """``{user: (item ids, timestamps or None)}`` -> the training chunks as arrays
    (``sequence_*`` ``[n, L + 1]`` int64, ``sequence_length`` ``[n]``, ``user_id`` ``[n]``)."""
    rows = [c for user, (items, timestamps) in user_sequences.items()
            for c in chunking.user_chunks(user, items, timestamps, window, protocol, spec)]
    arrays = {name: np.asarray([c[name] for c in rows], dtype=np.int64).reshape(
        len(rows), spec.chunk_length) for name in F.CHUNK_FEATURES}
    arrays[F.SEQUENCE_LENGTH] = np.asarray([c[F.SEQUENCE_LENGTH] for c in rows], dtype=np.int64)
    arrays[F.USER_ID] = np.asarray([str(c[F.USER_ID]).encode() for c in rows], dtype=object)
    return arrays


def from_interactions(interactions: Iterable[Tuple[str, str, int]],
                      genres: Mapping[str, Sequence[str]],
                      window: WindowConfig = WindowConfig(),
                      protocol: ProtocolConfig = ProtocolConfig(),
                      min_user_interactions: int = 5,
                      max_user_interactions: Optional[int] = None,
                      sequences: Optional[F.SequenceSpec] = None,
                      min_item_interactions: int = 0,
                      kcore_max_rounds: int = 10) -> InMemoryData:
    """Time-ordered ``(user, item, timestamp)`` rows -> :class:`InMemoryData`.

    With ``min_item_interactions`` the users and items are cut to their k-core first
    (``kcore.k_core``, as the Beam pipeline does), then each user's cap applies.

    With ``sequences``, ``splits["train_sequences"]`` holds the training chunks too.

    Rows must already be in time order per user (ties keep input order). Users with fewer than
    ``min_user_interactions`` rows are dropped and the others keep their latest
    ``max_user_interactions`` rows, before the vocabulary is built (as the Beam pipeline does).
    """
    per_user: Dict[str, List[Tuple[str, int]]] = {}
    for user, item, ts in interactions:
        per_user.setdefault(user, []).append((item, ts))
    minimum = max(min_user_interactions, protocol.min_sequence_length)
    per_user = {u: evs for u, evs in per_user.items() if len(evs) >= minimum}
    if min_item_interactions > 0:
        core, _, _, converged = kcore.k_core(
            {u: ([i for i, _ in evs], [t for _, t in evs]) for u, evs in per_user.items()},
            min_item_interactions, minimum, kcore_max_rounds)
        if not converged:
            raise ValueError(f"the k-core did not reach its fixed point in {kcore_max_rounds} "
                             "rounds")
        per_user = {u: list(zip(items, times)) for u, (items, times) in core.items()}
    if max_user_interactions:
        per_user = {u: evs[-max_user_interactions:] for u, evs in per_user.items()}
    counts: Dict[str, int] = {}
    for evs in per_user.values():
        for item, _ in evs:
            counts[item] = counts.get(item, 0) + 1
    vocabulary = Vocabulary.from_counts(counts)
    lookup = vocabulary.lookup()
    sequences_spec = sequences
    sequences = {u: ([lookup[i] for i, _ in evs], [ts for _, ts in evs])
                 for u, evs in per_user.items()}
    splits = windows_to_arrays(sequences, window, protocol)
    if sequences_spec is not None:
        splits[TRAIN_SEQUENCES] = chunks_to_arrays(sequences, window, protocol, sequences_spec)
    return InMemoryData(splits, vocabulary, ItemFeatures.from_genres(vocabulary, genres))


def synthetic_arrays(config: synthetic.SyntheticConfig = synthetic.SyntheticConfig(),
                     window: WindowConfig = WindowConfig(),
                     protocol: ProtocolConfig = ProtocolConfig(),
                     min_user_interactions: int = 5,
                     max_user_interactions: Optional[int] = None,
                     sequences: Optional[F.SequenceSpec] = None) -> InMemoryData:
    """The synthetic drift log (see ``synthetic.py``) as window arrays.

    Example::

        data = synthetic_arrays(SyntheticConfig(num_users=500), WindowConfig(), ProtocolConfig())
        train = data.splits["train"]          # {"history": [n, 50] int64, "target": [n], ...}
        data.num_items, data.item_features.matrix.shape, data.vocabulary.frequencies()
    """
    return from_interactions(synthetic.generate_interactions(config),
                             synthetic.item_genres(config), window, protocol,
                             min_user_interactions, max_user_interactions, sequences)
