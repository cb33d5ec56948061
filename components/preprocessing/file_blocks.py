"""Reading one large text file in parallel: byte-range blocks whose lines keep their true line
numbers.

An uncompressed file larger than ``block_bytes`` is cut into blocks of ``block_bytes``; a gzip
file cannot be entered in the middle and stays one block. A block owns the lines that *start* in
its byte range ``[start, end)`` (a line crossing the end belongs to the block where it starts, as
Beam's ``ReadFromText`` splits). Every line is read by exactly one block.

Line numbers (dead letters name them) need the number of lines before a block, which only the
bytes before it can tell. They are computed from byte offsets in two parallel passes instead of
one serial read of the whole file: first every block but the last of each file counts its
``\\n`` bytes (:func:`count_newlines`, a ``bytes.count`` over the range, several hundred MB/s),
then each block reads its lines starting from the number the counts before it give
(:func:`block_lines`). The cost is one extra read of the file's bytes (cheap next to parsing);
the gain is that parsing, the expensive part, runs on every worker.
"""

from __future__ import annotations

import dataclasses
from typing import Dict, Iterator, List, Mapping, Sequence, Tuple

from components.preprocessing import filesystem
from components.preprocessing.input_files import (Line, chunk_lines, file_chunks, is_gzip,
                                                  raw_chunks, raw_lines)

BLOCK_BYTES = 64 << 20
_CHUNK = 1 << 20

BlockKey = Tuple[int, int]


@dataclasses.dataclass(frozen=True)
class Block:
    """Bytes ``[start, end)`` of the ``file_index``-th input file (``end`` -1: to the end of
    the file); ``index`` is its place in the file, ``last`` whether it is the file's last."""

    file_index: int
    path: str
    index: int
    start: int
    end: int
    last: bool

    @property
    def key(self) -> BlockKey:
        return self.file_index, self.index


def plan_blocks(files: Sequence[str], block_bytes: int = BLOCK_BYTES) -> List[Block]:
    """The blocks of ``files``: gzip files whole, others cut every ``block_bytes``."""
    if block_bytes < 1:
        raise ValueError(f"block_bytes must be >= 1, got {block_bytes}")
    blocks = []
    for file_index, path in enumerate(files):
        size = filesystem.size(path)
        if is_gzip(path) or size <= block_bytes:
            blocks.append(Block(file_index, path, 0, 0, -1, True))
            continue
        starts = list(range(0, size, block_bytes))
        for index, start in enumerate(starts):
            last = index == len(starts) - 1
            blocks.append(Block(file_index, path, index, start,
                                -1 if last else start + block_bytes, last))
    return blocks


def count_newlines(block: Block) -> int:
    """The number of ``\\n`` bytes in the block's byte range."""
    n = 0
    with filesystem.open_binary(block.path) as f:
        f.seek(block.start)
        left = None if block.end < 0 else block.end - block.start
        while left is None or left > 0:
            chunk = f.read(_CHUNK if left is None else min(_CHUNK, left))
            if not chunk:
                break
            n += chunk.count(b"\n")
            if left is not None:
                left -= len(chunk)
    return n


def lines_before(block: Block, newlines: Mapping[BlockKey, int]) -> int:
    """``\\n`` bytes in the file before the block: the sum over the file's earlier blocks."""
    return sum(newlines[(block.file_index, i)] for i in range(block.index))


def block_chunks(block: Block, newlines: Mapping[BlockKey, int]) -> Iterator[Tuple[int, bytes]]:
    """The raw bytes of the lines the block owns, in pieces of whole lines (about
    ``_CHUNK`` bytes each; the file's last line maybe without its ``\n``), each with the
    1-based number of its first line in the whole file.

    ``newlines`` holds :func:`count_newlines` of the file's earlier blocks (unused for a
    file's first block).

    Raises:
      InputError: ``path:line``: the file cannot be read further.
    """
    if block.start == 0 and block.last:
        yield from file_chunks(block.path)  # a whole file (gzip, or small)
        return
    number = 1
    with filesystem.open_binary(block.path) as f:
        position = block.start
        if block.start > 0:
            number = lines_before(block, newlines) + 1
            f.seek(block.start - 1)
            if f.read(1) != b"\n":
                # The line under way at ``start`` belongs to an earlier block: skip past its
                # ``\n`` (one more newline before the first line of this block).
                for raw in raw_lines(f, block.start, -1, _CHUNK):
                    position += len(raw)
                    number += 1
                    break
        f.seek(position)
        for data in raw_chunks(f, position, block.end, _CHUNK):
            yield number, data
            number += data.count(b"\n")


def block_lines(block: Block, newlines: Mapping[BlockKey, int]) -> Iterator[Line]:
    """The decoded lines the block owns, numbered as in the whole file (1-based)."""
    for number, data in block_chunks(block, newlines):
        yield from chunk_lines(number, data)


def newline_counts(blocks: Sequence[Block]) -> Dict[BlockKey, int]:
    """:func:`count_newlines` of every block but each file's last, in one process (tests and
    tools; the pipeline counts them in parallel)."""
    return {b.key: count_newlines(b) for b in blocks if not b.last}
