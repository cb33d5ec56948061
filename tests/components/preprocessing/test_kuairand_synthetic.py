"""The KuaiRand-27K-shaped generator: exact size, determinism, skew, sessions, and a CSV the
``csv`` source reads."""

import collections
import csv

import numpy as np

from components.preprocessing import kuairand_synthetic as ks
from components.preprocessing import readers
from components.preprocessing.transforms import PreprocessConfig, run_preprocessing


def read_rows(path):
    with open(path) as f:
        return list(csv.DictReader(f))


def test_full_size_shape_without_writing():
    shape = ks.KuaiRandShape()
    assert shape.users == 25_828 and shape.num_items == 108_025
    lengths = ks.history_lengths(shape)
    assert lengths.sum() == 6_472_851 and lengths.min() >= shape.min_history
    assert 240 < lengths.mean() < 260 and lengths.max() > 10 * np.median(lengths) / 2
    # A larger log has more users with the same history lengths, not longer histories.
    big = ks.history_lengths(ks.KuaiRandShape(rows=20_000_000))
    assert len(big) == round(25_828 * 20_000_000 / 6_472_851)
    assert abs(np.median(big) - np.median(lengths)) < 0.05 * np.median(lengths)


def test_rows_are_exact_deterministic_and_skewed(tmp_path):
    shape = ks.KuaiRandShape(rows=30_000, seed=7)
    a, b = str(tmp_path / "a.csv"), str(tmp_path / "b.csv")
    assert ks.write_csv(shape, a) == 30_000
    ks.write_csv(shape, b)
    with open(a, "rb") as fa, open(b, "rb") as fb:
        assert fa.read() == fb.read()
    other = str(tmp_path / "c.csv")
    ks.write_csv(ks.KuaiRandShape(rows=30_000, seed=8), other)
    assert read_rows(other) != read_rows(a)

    rows = read_rows(a)
    assert len(rows) == 30_000 and set(rows[0]) == {"user", "item", "timestamp"}
    users = collections.Counter(r["user"] for r in rows)
    assert len(users) == shape.users
    items = collections.Counter(r["item"] for r in rows)
    top, = items.most_common(1)
    assert top[1] > 50 * 30_000 / shape.num_items  # Zipf head far above uniform
    assert all(1 <= int(i) <= shape.num_items for i in items)
    # Per user: time order; gaps within a session are seconds to minutes, between sessions
    # half an hour or more, and both kinds occur.
    by_user = collections.defaultdict(list)
    for r in rows:
        by_user[r["user"]].append(int(r["timestamp"]))
    gaps = np.concatenate([np.diff(t) for t in by_user.values()])
    assert (gaps >= 0).all()
    assert ((gaps >= 5) & (gaps < 180)).mean() > 0.8 and (gaps >= 1800).mean() > 0.03


def test_the_csv_source_reads_it(tmp_path):
    path = str(tmp_path / "log.csv")
    ks.write_csv(ks.KuaiRandShape(rows=5_000, num_items=2_000, seed=1), path)
    stats = run_preprocessing(readers.CsvLog(path), str(tmp_path / "out"), PreprocessConfig())
    assert stats["interactions_read"] == 5_000 and stats["rejected"] == 0
    assert stats["accounted"] == 5_000 and stats["examples"]["test"] > 0


def test_follow_probability_makes_the_next_click_predictable_and_keeps_the_rest():
    plain = ks.KuaiRandShape(rows=40_000, num_items=5_000, seed=3)
    follow = ks.KuaiRandShape(rows=40_000, num_items=5_000, seed=3, follow_probability=0.5)
    cdf, item_of_rank = ks.popularity(follow)
    successors = ks.successor_table(follow, cdf, item_of_rank)
    hits, pairs = {0.0: 0, 0.5: 0}, {0.0: 0, 0.5: 0}
    for (u0, items0, times0), (u1, items1, times1) in zip(ks.generate(plain), ks.generate(follow)):
        # Same users, lengths and times: the option moves items only.
        assert u0 == u1 and np.array_equal(times0, times1)
        within = np.diff(times0) < 1800  # consecutive clicks of one session
        for p, items in ((0.0, items0), (0.5, items1)):
            follows = (successors[items[:-1]] == items[1:, None]).any(axis=1)
            hits[p] += int(follows[within].sum())
            pairs[p] += int(within.sum())
    # Without the option a click is a successor by chance only (popular videos are everyone's
    # successors); with 0.5, half the clicks follow and the other half by chance.
    chance = hits[0.0] / pairs[0.0]
    assert chance < 0.2
    assert abs(hits[0.5] / pairs[0.5] - (0.5 + 0.5 * chance)) < 0.03
