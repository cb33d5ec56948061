"""UserRowColumns and UserRowBatcher: what the per-user grouping carries and holds."""

import pickle
import random
import sys

import numpy as np

from components.preprocessing.records import (Event, UserRowBatcher, UserRowColumns,
                                             pack_positions)


def _random_rows(rng, n, untimed=False):
    # Few distinct times and lines, so that ties on every key but the last are common.
    return [(None if untimed else rng.randrange(3),
             (rng.randrange(2), rng.randrange(4), rng.randrange(3)), f"i{rng.randrange(50)}")
            for _ in range(n)]


def _reference_order(rows):
    """The tuple rule the columns replace: time (None as 0), then file, line, position;
    stable; timestamps None when any row has none."""
    ordered = sorted(rows, key=lambda r: (r[0] if r[0] is not None else 0, r[1]))
    times = None if any(r[0] is None for r in rows) else [r[0] for r in ordered]
    return [r[2] for r in ordered], times


def test_ordered_matches_the_tuple_rule_with_ties_and_missing_times():
    rng = random.Random(0)
    for trial in range(200):
        rows = _random_rows(rng, rng.randrange(1, 40), untimed=trial % 5 == 0)
        if trial % 7 == 0 and rows:  # one untimed row among timed ones
            rows[0] = (None,) + rows[0][1:]
        assert UserRowColumns.from_rows(rows).ordered() == _reference_order(rows)


def test_positions_beyond_the_packed_range_order_the_same():
    """A row whose file, line or position does not fit the packed int64 turns the columns wide;
    ordering, rows, concatenation (packed with wide, both ways) and pickling are unchanged."""
    rng = random.Random(2)
    big = [(1 << 16) + 1, (1 << 32) + 5, (1 << 15) + 3]

    def rows_with_big_parts(n):
        rows = _random_rows(rng, n)
        for i in rng.sample(range(n), k=max(1, n // 4)):
            t, order, item = rows[i]
            part = rng.randrange(3)
            order = tuple(big[part] + rng.randrange(2) if j == part else v
                          for j, v in enumerate(order))
            rows[i] = (t, order, item)
        return rows

    for _ in range(50):
        packed, wide = _random_rows(rng, rng.randrange(1, 30)), rows_with_big_parts(
            rng.randrange(1, 30))
        columns = UserRowColumns.from_rows(wide)
        assert columns.wide and columns.rows() == wide
        assert columns.ordered() == _reference_order(wide)
        assert not UserRowColumns.from_rows(packed).wide
        for a, b in ((packed, wide), (wide, packed)):
            merged = UserRowColumns.from_rows(a).extend(UserRowColumns.from_rows(b))
            assert merged.wide and merged.rows() == a + b
            assert merged.ordered() == _reference_order(a + b)
            assert pickle.loads(pickle.dumps(merged)).rows() == a + b


def test_extend_concatenates_and_pickling_round_trips():
    rng = random.Random(1)
    a, b = _random_rows(rng, 17), _random_rows(rng, 5, untimed=True)
    merged = UserRowColumns.from_rows(a).extend(UserRowColumns.from_rows(b))
    assert len(merged) == 22
    assert merged.rows() == a + b
    assert merged.ordered() == _reference_order(a + b)
    clone = pickle.loads(pickle.dumps(merged))
    assert clone == merged and clone.rows() == a + b and clone.untimed == 5
    assert UserRowColumns().ordered() == ([], [])


def test_columns_hold_a_row_in_about_24_bytes():
    """1,000 rows over 10 shared item ids: timestamps, packed positions and item references
    take about 24 bytes a row (tuples of Python objects took about 250)."""
    batcher = UserRowBatcher()
    for i in range(1000):
        # A fresh string per row, as a parser produces; the batcher shares equal ids.
        list(batcher.add(Event("u", "item%d" % (i % 10), 1_600_000_000 + i, (0, i, 0))))
    (user, rows), = list(batcher.flush())
    assert user == "u" and len(rows) == 1000
    assert len({id(item) for item in rows.items}) == 10
    held = (sys.getsizeof(rows.timestamps) + sys.getsizeof(rows.order)
            + sys.getsizeof(rows.items))
    assert not rows.wide
    assert held / 1000 < 32
    assert len(pickle.dumps(rows)) / 1000 < 24


def test_batcher_flushes_at_max_rows_and_loses_nothing():
    batcher = UserRowBatcher(max_rows=7)
    events = [Event(f"u{i % 3}", f"x{i}", i, (0, i, 0)) for i in range(20)]
    out = []
    for e in events:
        out.extend(batcher.add(e))
    assert len(out) == 6  # two flushes of 7 rows, three users each
    out.extend(batcher.flush())
    got = {}
    for user, rows in out:
        got.setdefault(user, []).extend(rows.rows())
    assert got == {u: [(e.timestamp, e.order, e.item) for e in events if e.user == u]
                   for u in ("u0", "u1", "u2")}


def test_rows_added_as_packed_columns_order_as_rows_added_one_by_one():
    """``extend_packed`` (the Arrow reader's path) on plain and on already-wide columns, with
    and without time: the same order as the same rows appended as tuples."""
    rng = random.Random(3)
    for wide_first, timed in ((False, True), (True, True), (False, False), (True, False)):
        rows = [(rng.choice([5, 5, 9, 1]) if timed else None, (1, rng.randrange(1000), 0),
                 f"i{k}") for k in range(200)]
        first = (7 if timed else None, (1 << 16, 3, 0), "wide") if wide_first else None
        reference, columns = UserRowColumns(), UserRowColumns()
        if first:
            reference.append(*first)
            columns.append(*first)
            assert columns.wide
        for row in rows:
            reference.append(*row)
        lines = np.array([order[1] for _, order, _ in rows], np.int64)
        columns.extend_packed(np.array([t for t, _, _ in rows], np.int64) if timed else None,
                              pack_positions(1, lines), [item for _, _, item in rows])
        assert columns.ordered() == reference.ordered()
        assert columns.rows() == reference.rows()
    assert pack_positions(1 << 16, np.array([1])) is None
    assert pack_positions(0, np.array([1 << 32])) is None
