"""Image arrays bigger than memory: rows appended to a scratch file as they are decoded, then written out as a
plain ``.npy`` holding a chosen subset of them, in order.

``prepare`` learns which images it keeps (duplicates, ``--count``) only once all of them are decoded, so it
spools every row, then copies the chosen ones. Both passes go through ordinary file reads and writes a chunk at
a time: a memory map would count every page it touched in the process's resident memory, which is what a
200,000-image set must not do. The ``.npy`` files this writes are what ``np.load(path, mmap_mode="r")`` opens.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

# Rows read or written at once. Big enough for full-speed I/O; small, because a chunk's arrays are made afresh
# each time, and memory the allocator hands back and reuses costs nothing, while fresh pages cost a page fault
# each: 16 MB chunks made `prepare` of 1,500 photos 0.1 s slower (docs/decisions.md).
CHUNK_BYTES = 2 * 2**20


class RowSpool:
    """Equal-shaped rows appended to a scratch file; ``save`` writes a subset as ``.npy``; ``close`` deletes it."""

    def __init__(self, scratch: Path, row_shape: tuple[int, ...], dtype: np.dtype | type):
        self.scratch, self.row_shape, self.dtype = Path(scratch), tuple(row_shape), np.dtype(dtype)
        self.row_bytes = self.dtype.itemsize * math.prod(self.row_shape)
        self.rows = 0
        self._file = open(self.scratch, "w+b")

    def __enter__(self) -> RowSpool:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def append(self, rows: np.ndarray) -> None:
        if rows.shape[1:] != self.row_shape or rows.dtype != self.dtype:
            raise ValueError(f"rows of shape {rows.shape[1:]} {rows.dtype}, spool holds {self.row_shape} {self.dtype}")
        self._file.write(np.ascontiguousarray(rows).data)
        self.rows += len(rows)

    def chunks(self, indices: np.ndarray | None = None):
        """The spooled rows (or only ``indices``, sorted ascending) in order, as arrays of at most CHUNK_BYTES."""
        self._file.flush()
        per_chunk = max(1, CHUNK_BYTES // self.row_bytes)
        for start in range(0, self.rows, per_chunk):
            stop = min(start + per_chunk, self.rows)
            if indices is not None:
                wanted = indices[np.searchsorted(indices, start):np.searchsorted(indices, stop)] - start
                if not len(wanted):
                    continue
            self._file.seek(start * self.row_bytes)
            block = np.frombuffer(self._file.read((stop - start) * self.row_bytes), self.dtype)
            block = block.reshape(stop - start, *self.row_shape)
            yield block if indices is None else block[wanted]

    def save(self, path: Path, indices: np.ndarray | None = None) -> None:
        """Write the rows at ``indices`` (sorted, unique; all rows if None) to ``path`` as a C-order ``.npy``."""
        count = self.rows if indices is None else len(indices)
        header = {"descr": np.lib.format.dtype_to_descr(self.dtype), "fortran_order": False,
                  "shape": (count, *self.row_shape)}
        with open(path, "wb") as out:
            np.lib.format.write_array_header_1_0(out, header)
            for block in self.chunks(indices):
                out.write(np.ascontiguousarray(block).data)

    def close(self) -> None:
        self._file.close()
        self.scratch.unlink(missing_ok=True)
