"""k-core filtering: every kept item has at least ``min_item`` interactions and every kept user at
least ``min_user``, applied round by round to a fixed point (the usual "5-core").

One round drops, from every user's sequence, the items with fewer than ``min_item`` interactions
over all kept users, then drops the users left with fewer than ``min_user``. Dropping users lowers
item counts, so rounds repeat until nothing changes. The Beam pipeline unrolls up to
``max_rounds`` rounds (a Beam graph is static) and checks afterwards that the last one changed
nothing; the in-memory path runs the same :func:`filter_round` to the same fixed point.
"""

from __future__ import annotations

from typing import Dict, List, Mapping, NamedTuple, Optional, Sequence, Tuple

FILTERED_ITEM_TOO_RARE = "item_below_min_interactions"


class RoundResult(NamedTuple):
    """What one round did to one user: the kept sequence (``None``: user dropped), the number of
    interactions of rare items removed, and, for a dropped user, the interactions left."""

    items: Optional[List]
    timestamps: Optional[List]
    rare_interactions: int
    dropped_user_interactions: int


def filter_round(items: Sequence, timestamps: Optional[Sequence], counts: Mapping[object, int],
                 min_item: int, min_user: int) -> RoundResult:
    """One k-core round for one user (see the module docstring)."""
    keep = [j for j, item in enumerate(items) if counts.get(item, 0) >= min_item]
    rare = len(items) - len(keep)
    kept_items = [items[j] for j in keep]
    kept_times = None if timestamps is None else [timestamps[j] for j in keep]
    if len(kept_items) < min_user:
        return RoundResult(None, None, rare, len(kept_items))
    return RoundResult(kept_items, kept_times, rare, 0)


def item_counts(sequences: Mapping[str, Tuple[Sequence, Optional[Sequence]]]) -> Dict[object, int]:
    counts: Dict[object, int] = {}
    for items, _ in sequences.values():
        for item in items:
            counts[item] = counts.get(item, 0) + 1
    return counts


def is_core(counts: Mapping[object, int], min_item: int) -> bool:
    """Whether every counted item has at least ``min_item`` interactions."""
    return all(n >= min_item for n in counts.values())


def k_core(sequences: Mapping[str, Tuple[Sequence, Optional[Sequence]]], min_item: int,
           min_user: int, max_rounds: int
           ) -> Tuple[Dict[str, Tuple[List, Optional[List]]], Dict[str, int], int, bool]:
    """The in-memory k-core of ``{user: (items, timestamps or None)}``.

    Returns:
      ``(kept sequences, {"rare_item_interactions", "dropped_user_interactions",
      "dropped_users"}, rounds run, converged)``.
    """
    current = {u: (list(i), None if t is None else list(t)) for u, (i, t) in sequences.items()}
    totals = {"rare_item_interactions": 0, "dropped_user_interactions": 0, "dropped_users": 0}
    for round_index in range(max_rounds):
        counts = item_counts(current)
        if is_core(counts, min_item):
            return current, totals, round_index, True
        next_round = {}
        for user, (items, timestamps) in current.items():
            result = filter_round(items, timestamps, counts, min_item, min_user)
            totals["rare_item_interactions"] += result.rare_interactions
            if result.items is None:
                totals["dropped_user_interactions"] += result.dropped_user_interactions
                totals["dropped_users"] += 1
            else:
                next_round[user] = (result.items, result.timestamps)
        current = next_round
    return current, totals, max_rounds, is_core(item_counts(current), min_item)
