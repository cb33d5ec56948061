"""A deterministic synthetic interaction log: the embedded default data set.

Items are grouped into ``num_clusters`` clusters laid out on a ring. Every user has a drift
velocity ``v`` (a whole number of clusters, sign included) and, inside a session, moves ``v``
clusters along the ring every ``dwell`` behaviours; each session starts at a random cluster.
Within a cluster, items follow a Zipf popularity. With probability ``noise`` a behaviour is a
uniformly random item instead.

So the next item's cluster is predictable from the drift between recent behaviours (the structure
T2Diff's drift preparation models), not from the bag of past items: a mean-pooled history tells
where a user has been but not which way they are moving.

Timestamps: behaviours inside a session are 30 s to 5 min apart and sessions are 2 h to 3 days
apart, so both the last-k and the 30-minute time-gap session rules find the sessions.
"""

from __future__ import annotations

import dataclasses
from typing import Dict, Iterator, List, Tuple

import numpy as np

# (user, item, timestamp seconds) -- raw ids are strings, as every reader produces them.
RawInteraction = Tuple[str, str, int]

START_TIMESTAMP = 1_704_067_200  # 2024-01-01T00:00:00Z


@dataclasses.dataclass(frozen=True)
class SyntheticConfig:
    """Size and structure of the synthetic log (defaults: about 60K interactions)."""

    num_users: int = 1500
    num_items: int = 1000
    num_clusters: int = 20
    min_sessions: int = 3
    max_sessions: int = 8
    min_session_length: int = 4
    max_session_length: int = 10
    velocities: Tuple[int, ...] = (-2, -1, 1, 2)
    dwell: int = 1
    noise: float = 0.1
    zipf_exponent: float = 1.0
    seed: int = 0

    def __post_init__(self):
        if self.num_items < self.num_clusters:
            raise ValueError("num_items must be >= num_clusters")
        if not 1 <= self.min_sessions <= self.max_sessions:
            raise ValueError("need 1 <= min_sessions <= max_sessions")
        if not 1 <= self.min_session_length <= self.max_session_length:
            raise ValueError("need 1 <= min_session_length <= max_session_length")
        if not 0.0 <= self.noise <= 1.0:
            raise ValueError("noise must be in [0, 1]")
        if self.dwell < 1:
            raise ValueError("dwell must be >= 1")


def item_cluster(item_index: int, config: SyntheticConfig) -> int:
    """The cluster of item ``item_index`` (0-based): items are dealt round-robin."""
    return item_index % config.num_clusters


def _cluster_members(config: SyntheticConfig) -> List[np.ndarray]:
    return [np.arange(c, config.num_items, config.num_clusters)
            for c in range(config.num_clusters)]


def _zipf_probs(size: int, exponent: float) -> np.ndarray:
    weights = 1.0 / np.arange(1, size + 1) ** exponent
    return weights / weights.sum()


def user_interactions(user_index: int, config: SyntheticConfig) -> List[RawInteraction]:
    """The time-ordered log of one user; depends only on ``(config, user_index)``."""
    rng = np.random.default_rng([config.seed, user_index])
    members = _cluster_members(config)
    cdfs = [np.cumsum(_zipf_probs(len(m), config.zipf_exponent)) for m in members]
    velocity = int(rng.choice(config.velocities))
    user = str(user_index + 1)
    timestamp = START_TIMESTAMP + int(rng.integers(0, 7 * 86400))
    out: List[RawInteraction] = []
    for _ in range(int(rng.integers(config.min_sessions, config.max_sessions + 1))):
        cluster = int(rng.integers(config.num_clusters))
        length = int(rng.integers(config.min_session_length, config.max_session_length + 1))
        for step in range(length):
            if step and step % config.dwell == 0:
                cluster = (cluster + velocity) % config.num_clusters
            if rng.random() < config.noise:
                item = int(rng.integers(config.num_items))
            else:
                rank = min(int(np.searchsorted(cdfs[cluster], rng.random())),
                           len(members[cluster]) - 1)
                item = int(members[cluster][rank])
            out.append((user, str(item + 1), timestamp))
            timestamp += int(rng.integers(30, 300))
        timestamp += int(rng.integers(2 * 3600, 3 * 86400))
    return out


def generate_interactions(config: SyntheticConfig) -> Iterator[RawInteraction]:
    """Every user's log, users in order."""
    for user_index in range(config.num_users):
        yield from user_interactions(user_index, config)


def item_genres(config: SyntheticConfig) -> Dict[str, List[str]]:
    """Side features: each item's cluster, as a one-element genre list (raw item id -> genres)."""
    return {str(i + 1): [f"cluster_{item_cluster(i, config):03d}"]
            for i in range(config.num_items)}
