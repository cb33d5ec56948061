"""A synthetic click log with the shape of KuaiRand-27K, written as a CSV the ``csv`` source reads.

KuaiRand-27K (the T2Diff paper's large data set) has 25,828 users, 108,025 videos and about
6.47M clicks in the main tab over about a month. This generator reproduces that shape, not its
content:

- **Users and rows.** ``rows`` clicks over ``round(25,828 * rows / 6,472,851)`` users (so a larger
  log has more users, each with the same history-length distribution: what one user's history
  needs in memory does not grow with the log). History lengths are log-normal (mean about 250
  clicks, ``history_sigma`` 1.0: a few users have thousands), at least ``min_history``, and add up
  to ``rows`` exactly.
- **Items.** ``num_items`` videos (108,025) with Zipf popularity (``zipf_exponent`` 1.0) over a
  seeded random order of the ids, so an id says nothing about popularity.
- **Sequence** (``follow_probability``, 0 by default). Each video has ``successors`` (8) videos
  drawn once from the popularity law; within a session, a click follows the previous one with
  probability ``follow_probability`` (a uniform pick among the previous video's successors) and
  is drawn from popularity otherwise. With 0 every click is an independent popularity draw, so no
  model can beat popularity on the log (the whole-pipeline quality figure is then popularity's);
  with, say, 0.5, the next click is half the time one of 8 videos the last one determines, which a
  sequence model can learn: the pipeline's quality becomes a model check. The logs of the
  recorded preprocessing benchmarks use 0 (their bytes are unchanged by the option).
- **Time.** Clicks come in sessions: a session has a geometric number of clicks (mean
  ``mean_session_clicks``), clicks 5 s to 3 min apart, and sessions start 30 min to 2 days after
  the previous one ended; users start at a random moment of the first week. Timestamps are
  integer seconds.

Output: ``user,item,timestamp`` with a header (the ``csv`` source's default columns), users in
order, each user's clicks in time order. Users are generated and written one at a time, so memory
stays at one user's history whatever ``rows`` is. Everything depends only on ``seed``: the same
arguments write the same bytes.

    python -m components.preprocessing.kuairand_synthetic --rows 6472851 --output kuairand27k.csv
    t2diff preprocess --source csv --input kuairand27k.csv --output outputs/kuairand27k
"""

from __future__ import annotations

import argparse
import dataclasses
import gzip
import os
import sys
from typing import Iterator, Tuple

import numpy as np

KUAIRAND_27K_USERS = 25_828
KUAIRAND_27K_ITEMS = 108_025
KUAIRAND_27K_CLICKS = 6_472_851
START_TIMESTAMP = 1_649_376_000  # 2022-04-08T00:00:00Z, KuaiRand's first day
HEADER = "user,item,timestamp\n"


@dataclasses.dataclass(frozen=True)
class KuaiRandShape:
    """Size and statistics of the synthetic log (defaults: KuaiRand-27K's size).

    Attributes:
      rows: number of clicks written (exactly).
      num_users: users; ``None`` scales KuaiRand-27K's 25,828 users with ``rows``.
      num_items: videos in the catalogue.
      zipf_exponent: popularity skew (item of popularity rank ``r`` has weight ``r**-s``).
      history_sigma: sigma of the log-normal history lengths.
      min_history: the shortest history.
      mean_session_clicks: mean clicks per session (geometric).
      follow_probability: probability that a click within a session is one of the previous
        click's successors instead of a popularity draw (0: clicks are independent).
      successors: successors per video.
      seed: the only source of randomness.
    """

    rows: int = KUAIRAND_27K_CLICKS
    num_users: int = 0
    num_items: int = KUAIRAND_27K_ITEMS
    zipf_exponent: float = 1.0
    history_sigma: float = 1.0
    min_history: int = 5
    mean_session_clicks: float = 12.0
    follow_probability: float = 0.0
    successors: int = 8
    seed: int = 0

    def __post_init__(self):
        if self.rows < 1 or self.num_items < 1 or self.num_users < 0:
            raise ValueError("rows and num_items must be >= 1 and num_users >= 0")
        if self.users * self.min_history > self.rows:
            raise ValueError(f"{self.users} users of >= {self.min_history} clicks need more than "
                             f"{self.rows} rows")
        if self.mean_session_clicks < 1:
            raise ValueError("mean_session_clicks must be >= 1")
        if not 0.0 <= self.follow_probability <= 1.0 or self.successors < 1:
            raise ValueError("follow_probability must be in [0, 1] and successors >= 1")

    @property
    def users(self) -> int:
        if self.num_users:
            return self.num_users
        return max(1, round(KUAIRAND_27K_USERS * self.rows / KUAIRAND_27K_CLICKS))


def history_lengths(shape: KuaiRandShape) -> np.ndarray:
    """``[users]`` int64 clicks per user, log-normal, each >= ``min_history``, summing to
    ``rows``."""
    rng = np.random.default_rng([shape.seed, 0])
    users = shape.users
    raw = rng.lognormal(0.0, shape.history_sigma, size=users)
    spare = shape.rows - users * shape.min_history
    extra = np.floor(raw / raw.sum() * spare).astype(np.int64)
    # Hand out what flooring left, one click each to the users with the largest remainders.
    remainder = raw / raw.sum() * spare - extra
    left = spare - int(extra.sum())
    extra[np.argsort(-remainder, kind="stable")[:left]] += 1
    return extra + shape.min_history


def popularity(shape: KuaiRandShape) -> Tuple[np.ndarray, np.ndarray]:
    """``(cdf [num_items] float64, item_of_rank [num_items] int64)``: the Zipf CDF over
    popularity ranks and the (1-based) item id at each rank."""
    rng = np.random.default_rng([shape.seed, 1])
    weights = 1.0 / np.arange(1, shape.num_items + 1) ** shape.zipf_exponent
    cdf = np.cumsum(weights / weights.sum())
    return cdf, rng.permutation(shape.num_items) + 1


def successor_table(shape: KuaiRandShape, cdf: np.ndarray,
                    item_of_rank: np.ndarray) -> np.ndarray:
    """``[num_items + 1, successors]`` int64: row ``i`` the successors of item id ``i`` (row 0
    unused), drawn from the popularity law."""
    rng = np.random.default_rng([shape.seed, 3])
    draws = rng.random((shape.num_items + 1, shape.successors))
    ranks = np.minimum(np.searchsorted(cdf, draws), shape.num_items - 1)
    return item_of_rank[ranks]


def user_clicks(user_index: int, length: int, cdf: np.ndarray, item_of_rank: np.ndarray,
                shape: KuaiRandShape, successors: np.ndarray = None
                ) -> Tuple[np.ndarray, np.ndarray]:
    """``(items [length], timestamps [length])`` of one user, in time order; depends only on
    ``(shape, user_index, length)``. ``successors`` (:func:`successor_table`) is needed when
    ``shape.follow_probability`` > 0."""
    rng = np.random.default_rng([shape.seed, 2, user_index])
    ranks = np.minimum(np.searchsorted(cdf, rng.random(length)), shape.num_items - 1)
    items = item_of_rank[ranks]
    # Gap before each click: within a session 5 s - 3 min; a new session (probability
    # 1 / mean_session_clicks) starts 30 min - 2 days after the last click.
    new_session = rng.random(length) < 1.0 / shape.mean_session_clicks
    gaps = np.where(new_session, rng.integers(1800, 2 * 86400, length),
                    rng.integers(5, 180, length))
    gaps[0] = rng.integers(0, 7 * 86400)
    if shape.follow_probability > 0:
        # Drawn after everything above, so that 0 writes the bytes it always wrote.
        follow = rng.random(length) < shape.follow_probability
        follow &= ~new_session
        follow[0] = False
        pick = rng.integers(0, shape.successors, length)
        items = items.copy()
        for t in np.flatnonzero(follow).tolist():  # each click depends on the one before
            items[t] = successors[items[t - 1], pick[t]]
    return items, START_TIMESTAMP + np.cumsum(gaps)


def generate(shape: KuaiRandShape) -> Iterator[Tuple[str, np.ndarray, np.ndarray]]:
    """``(user id, items, timestamps)`` per user, users in order (user ids ``"1"``...)."""
    lengths = history_lengths(shape)
    cdf, item_of_rank = popularity(shape)
    successors = (successor_table(shape, cdf, item_of_rank) if shape.follow_probability > 0
                  else None)
    for index, length in enumerate(lengths):
        items, timestamps = user_clicks(index, int(length), cdf, item_of_rank, shape, successors)
        yield str(index + 1), items, timestamps


def write_csv(shape: KuaiRandShape, path: str) -> int:
    """Writes the log to ``path`` (gzipped when it ends in ``.gz``); returns the rows written."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    opener = gzip.open if path.endswith(".gz") else open
    rows = 0
    with opener(path, "wt", encoding="utf-8", newline="") as f:
        f.write(HEADER)
        for user, items, timestamps in generate(shape):
            prefix = user + ","
            f.write("".join(f"{prefix}{i},{t}\n" for i, t in zip(items.tolist(),
                                                                   timestamps.tolist())))
            rows += len(items)
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=KUAIRAND_27K_CLICKS, help="clicks to write")
    parser.add_argument("--users", type=int, default=0,
                        help="users (0: KuaiRand-27K's users scaled with --rows)")
    parser.add_argument("--items", type=int, default=KUAIRAND_27K_ITEMS, help="videos")
    parser.add_argument("--zipf-exponent", type=float, default=1.0, help="popularity skew")
    parser.add_argument("--follow-probability", type=float, default=0.0,
                        help="probability that a click within a session is one of the previous "
                             "video's successors (0: independent popularity draws)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", required=True, help="CSV path (.gz to gzip)")
    args = parser.parse_args(argv)
    try:
        shape = KuaiRandShape(rows=args.rows, num_users=args.users, num_items=args.items,
                              zipf_exponent=args.zipf_exponent,
                              follow_probability=args.follow_probability, seed=args.seed)
    except ValueError as e:
        print(f"kuairand_synthetic: error: {e}", file=sys.stderr)
        return 2
    rows = write_csv(shape, args.output)
    print(f"wrote {rows:,} clicks of {shape.users:,} users over {shape.num_items:,} items to "
          f"{args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
