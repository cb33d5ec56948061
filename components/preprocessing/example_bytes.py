"""Serialized ``tf.train.Example`` s of int64 features, many at once, without a proto each.

The preprocessing writes about one example per training interaction. Building each as a
``tf.train.Example`` (``features.int64_example``) and serializing it cost about 30 microseconds
an example, the largest share of the preprocessing's CPU after the reader. :func:`int64_examples`
writes the protobuf wire format directly for the examples of many users at once (the
preprocessing hands it 128 users' windows): the varints of every value (mostly from a table),
the distinct headers and the users' id entries go into one buffer, and one numpy gather writes
every example. The bytes are equal to ``int64_example(...).SerializeToString(deterministic=True)``
(features in the order that serialization writes map keys; a test compares them on random
values, negative and 64-bit ones included, and per-row users), so outputs do not change.

Wire format used (``tensorflow/core/example/example.proto``, ``feature.proto``)::

    Example   { Features features = 1; }
    Features  { map<string, Feature> feature = 1; }   # entries: key = 1, value = 2
    Feature   { oneof { BytesList bytes_list = 1; FloatList float_list = 2;
                        Int64List int64_list = 3; } }
    Int64List { repeated int64 value = 1 [packed = true]; }
    BytesList { repeated bytes value = 1; }
"""

from __future__ import annotations

import functools
from typing import List, Mapping, Sequence, Tuple, Union

import numpy as np

from t2diff_tf import features as F

_LENGTH_DELIMITED_1 = b"\x0a"  # field 1, wire type 2
_LENGTH_DELIMITED_2 = b"\x12"  # field 2, wire type 2
_LENGTH_DELIMITED_3 = b"\x1a"  # field 3, wire type 2

#: Varints of 0..16383 (the lengths of nearly every piece), looked up instead of computed.
_SMALL_VARINTS = [bytes([n]) if n < 128 else bytes([(n & 0x7F) | 0x80, n >> 7])
                  for n in range(1 << 14)]


def varint(n: int) -> bytes:
    """The base-128 varint of ``n >= 0`` (a length or a non-negative value)."""
    if n < 1 << 14:
        return _SMALL_VARINTS[n]
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _delimited(tag: bytes, payload: bytes) -> bytes:
    return tag + varint(len(payload)) + payload


#: ``_THRESHOLDS[j]`` = 2**(7 (j + 1)): a value at or above it needs more than ``j + 1`` bytes.
_THRESHOLDS = np.array([1 << s for s in range(7, 64, 7)], np.uint64)


def varint_bytes(values: np.ndarray) -> Tuple[bytes, np.ndarray]:
    """The int64 varints of every entry of ``values`` (any shape, any integer dtype; a negative
    value takes 10 bytes, as protobuf writes an int64), concatenated in row-major order.

    Returns ``(data, bounds)``: entry ``i`` (flat index) is ``data[bounds[i]:bounds[i + 1]]``
    (``bounds``: ``[values.size + 1]`` int64).

    Values in ``[_TABLE_LOW, _TABLE_HIGH)`` (ids, lags, sessions, padding: nearly all of them)
    are copied from a table of their varints with one gather; the rest are computed
    (:func:`_computed_varint_bytes`) and written over their places.
    """
    v = np.ascontiguousarray(values, dtype=np.int64).ravel()
    table, table_starts, table_lengths = _varint_table()
    inside = (v >= _TABLE_LOW) & (v < _TABLE_HIGH)
    key = v - _TABLE_LOW
    others = np.flatnonzero(~inside)
    if others.size:
        key[others] = 0
    lengths = table_lengths[key].astype(np.int64)
    if others.size:
        other_data, other_bounds = _computed_varint_bytes(v[others])
        other_lengths = np.diff(other_bounds)
        lengths[others] = other_lengths
    bounds = np.zeros(v.size + 1, np.int64)
    np.cumsum(lengths, out=bounds[1:])
    out = table[_gather_index(table_starts[key], lengths, bounds)]
    if others.size:
        out[np.repeat(bounds[others] - other_bounds[:-1], other_lengths)
            + np.arange(other_bounds[-1])] = np.frombuffer(other_data, np.uint8)
    return out.tobytes(), bounds


def _gather_index(starts: np.ndarray, lengths: np.ndarray, bounds: np.ndarray) -> np.ndarray:
    """The source index of every output byte when piece ``i`` (``lengths[i]`` bytes from
    ``source[starts[i]]``) goes to ``out[bounds[i]:bounds[i + 1]]`` (``bounds`` = running sums
    of ``lengths`` from 0); int32 when it fits, to halve the memory these passes move."""
    dtype = np.int32 if max(int(bounds[-1]), int(starts.max(initial=0))) < 2 ** 31 else np.int64
    return (np.repeat((starts - bounds[:-1]).astype(dtype), lengths)
            + np.arange(bounds[-1], dtype=dtype))


#: The values whose varints :func:`varint_bytes` looks up (about 8 MB of table).
_TABLE_LOW, _TABLE_HIGH = -(1 << 10), 1 << 21


@functools.lru_cache(maxsize=None)
def _varint_table() -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(bytes, starts, lengths)``: value ``_TABLE_LOW + i``'s varint is
    ``bytes[starts[i]:starts[i] + lengths[i]]``."""
    data, bounds = _computed_varint_bytes(np.arange(_TABLE_LOW, _TABLE_HIGH, dtype=np.int64))
    return (np.frombuffer(data, np.uint8), bounds[:-1].astype(np.int64),
            np.diff(bounds).astype(np.uint8))


def _computed_varint_bytes(values: np.ndarray) -> Tuple[bytes, np.ndarray]:
    """:func:`varint_bytes` computed value by value with numpy (no table): grouped by varint
    length, so work is proportional to the bytes written."""
    v = np.ascontiguousarray(values, dtype=np.int64).view(np.uint64).ravel()
    nbytes = np.searchsorted(_THRESHOLDS, v, side="right") + 1
    bounds = np.zeros(v.size + 1, np.int64)
    np.cumsum(nbytes, out=bounds[1:])
    out = np.empty(int(bounds[-1]), np.uint8)
    for length in np.flatnonzero(np.bincount(nbytes)).tolist():
        at = np.flatnonzero(nbytes == length)
        chosen = v[at]
        shifts = np.arange(0, 7 * length, 7, dtype=np.uint64)
        groups = ((chosen[:, None] >> shifts) & np.uint64(0x7F)).astype(np.uint8)
        groups[:, :-1] |= 0x80  # the continuation bit on all but the last byte
        out[bounds[at][:, None] + np.arange(length)] = groups
    return out.tobytes(), bounds


@functools.lru_cache(maxsize=None)
def _entry_prefix(name: str) -> bytes:
    """A map entry's bytes up to its value's length: ``0a len key 12``."""
    return _delimited(_LENGTH_DELIMITED_1, name.encode()) + _LENGTH_DELIMITED_2


def _map_key_order(name: str) -> List[int]:
    """The order of map keys in protobuf's deterministic serialization (upb): by bytes, and a
    key before any key it is a prefix of ("history_time_lag" before "history")."""
    return list(name.encode()) + [256]


def int64_examples(features: Mapping[str, np.ndarray],
                   user_id: Union[str, Sequence[str]]) -> List[bytes]:
    """Serialized examples, one per row: ``features`` maps a name to ``[rows]`` (one int64
    each) or ``[rows, length]`` (an int64 list each); every example also holds its user's id
    as the ``features.USER_ID`` bytes feature: ``user_id`` is one id for every row, or one id
    per row (many users' windows in one call).

    Equal, byte for byte, to ``features.int64_example({name: row's value}, row's user id)
    .SerializeToString(deterministic=True)`` for every row.

    Every example is assembled with numpy, not by a Python loop over its features: the
    varints of all values, the few distinct feature headers (they depend only on the packed
    length) and the users' id entries are laid out in one source buffer, each example is a
    fixed sequence of pieces of it (``[rows, pieces]`` starts and lengths), and one gather
    writes every example's bytes; the only per-row Python step is slicing the result.
    """
    if F.USER_ID in features:
        raise ValueError(f"{F.USER_ID!r} is the bytes feature; pass it as user_id")
    names = sorted(list(features) + [F.USER_ID], key=_map_key_order)
    value_names = [name for name in names if name != F.USER_ID]
    columns = []
    for name in value_names:
        values = np.asarray(features[name])
        columns.append(values[:, None] if values.ndim == 1 else values)
    rows = columns[0].shape[0] if columns else 0
    for name, values in zip(value_names, columns):
        if values.ndim != 2 or values.shape[0] != rows:
            raise ValueError(f"feature {name!r} has shape {values.shape}; expected [{rows}] "
                             f"or [{rows}, length]")
    if isinstance(user_id, str):
        users, user_of_row = [user_id], np.zeros(rows, np.int64)
    else:
        if len(user_id) != rows:
            raise ValueError(f"{len(user_id)} user ids for {rows} rows")
        users = list(dict.fromkeys(user_id))
        number = {user: n for n, user in enumerate(users)}
        user_of_row = np.fromiter(map(number.__getitem__, user_id), np.int64, rows)
    if rows == 0:
        return []

    # The varints of every value of every row: row r's values of feature k are
    # data[starts[r, k]:starts[r, k + 1]].
    data, bounds = varint_bytes(np.concatenate(columns, axis=1))
    width = sum(c.shape[1] for c in columns)
    first_column = np.cumsum([0] + [c.shape[1] for c in columns])
    starts = bounds[np.arange(rows)[:, None] * width + first_column]       # [rows, K + 1]
    packed = np.diff(starts, axis=1)                                       # [rows, K]

    # The source buffer: the outer tag, every distinct feature header, every user's id entry,
    # the examples' length varints, then the values' varints.
    pool: List[bytes] = [_LENGTH_DELIMITED_1]
    header_piece = np.empty_like(packed)                     # [rows, K] index into ``pool``
    for k, name in enumerate(value_names):
        lengths, inverse = np.unique(packed[:, k], return_inverse=True)
        header_piece[:, k] = len(pool) + inverse.reshape(-1)
        prefix = _entry_prefix(name)
        pool += [_feature_header(prefix, n) for n in lengths.tolist()]
    user_piece = len(pool) + user_of_row                                   # [rows]
    pool += [_user_entry(user) for user in users]
    pool_lengths = np.fromiter(map(len, pool), np.int64, len(pool))
    pool_starts = np.concatenate([[0], np.cumsum(pool_lengths)[:-1]])

    sizes = pool_lengths[header_piece].sum(axis=1) + packed.sum(axis=1) + pool_lengths[user_piece]
    size_data, size_bounds = varint_bytes(sizes)
    size_base = int(pool_lengths.sum())
    data_base = size_base + len(size_data)
    source = np.frombuffer(b"".join(pool) + size_data + data, np.uint8)

    # Each row's pieces in order: tag, length, then per map key its header and values (the
    # user id entry in its key's place).
    piece_starts = [np.zeros(rows, np.int64), size_base + size_bounds[:-1]]
    piece_lengths = [np.ones(rows, np.int64), np.diff(size_bounds)]
    user_at = names.index(F.USER_ID)
    for k in range(len(value_names) + 1):
        if k == user_at:
            piece_starts.append(pool_starts[user_piece])
            piece_lengths.append(pool_lengths[user_piece])
        if k == len(value_names):
            break
        piece_starts += [pool_starts[header_piece[:, k]], data_base + starts[:, k]]
        piece_lengths += [pool_lengths[header_piece[:, k]], packed[:, k]]
    piece_starts = np.stack(piece_starts, axis=1).ravel()                  # [rows * pieces]
    piece_lengths = np.stack(piece_lengths, axis=1).ravel()
    out_bounds = np.concatenate([[0], np.cumsum(piece_lengths)])
    written = source[_gather_index(piece_starts, piece_lengths, out_bounds)].tobytes()
    row_ends = np.cumsum(piece_lengths.reshape(rows, -1).sum(axis=1)).tolist()
    return [written[a:b] for a, b in zip([0] + row_ends[:-1], row_ends)]


def _user_entry(user_id: str) -> bytes:
    """The ``features.USER_ID`` map entry of one user: a BytesList of its id."""
    bytes_list = _delimited(_LENGTH_DELIMITED_1, _delimited(_LENGTH_DELIMITED_1,
                                                              str(user_id).encode()))
    return _delimited(_LENGTH_DELIMITED_1,
                      _entry_prefix(F.USER_ID) + varint(len(bytes_list)) + bytes_list)


@functools.lru_cache(maxsize=1 << 16)
def _feature_header(entry_prefix: bytes, packed_length: int) -> bytes:
    """A map entry's bytes before its Int64List's packed varints (``packed_length`` bytes;
    they depend on nothing else, so they are cached):
    ``0a len [0a len key 12 len [1a len [0a len]]]``; an empty list has no packed field, but
    the Feature still holds the (empty) Int64List."""
    int64_list_header = (_LENGTH_DELIMITED_1 + varint(packed_length)) if packed_length else b""
    list_length = len(int64_list_header) + packed_length
    feature_header = _LENGTH_DELIMITED_3 + varint(list_length) + int64_list_header
    feature_length = len(feature_header) - len(int64_list_header) + list_length
    entry_length = len(entry_prefix) + len(varint(feature_length)) + feature_length
    return (_LENGTH_DELIMITED_1 + varint(entry_length) + entry_prefix + varint(feature_length)
            + feature_header)
