"""A prepare entry, read and written through one set of names: the contract between prepare and every stage.

Files (plain numpy / CSV / PNG / JSON, nothing pickled):
    color.npy    (N, S, S, 3) uint8
    gray.npy     (N, S, S) uint8, luma of color with the shared BT.601 weights
    split.npz    train, test: int64 indices into the arrays, disjoint, seeded
    sources.csv  index, file, content_hash of every kept image
    labels.csv   file + one column per tag, if any image has tags
    preview.png  gray next to color for the first images
    duplicates.csv  file, duplicate_of, difference of every image dropped as a copy (when dedupe ran)
    duplicates.png  up to 16 dropped copies, each beside the image it copies (when any were dropped)
    dataset.json where the images came from, whether they are the embedded faces, their size, crop and count
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from stages.contract import StageError

if TYPE_CHECKING:
    import torch

COLOR = "color.npy"
GRAY = "gray.npy"
SPLIT = "split.npz"
SOURCES = "sources.csv"
LABELS = "labels.csv"
PREVIEW = "preview.png"
DUPLICATES = "duplicates.csv"
DUPLICATES_GRID = "duplicates.png"
DATASET = "dataset.json"
# Float32 bytes of a set that stages hold whole on the device; a bigger one is read a batch at a time (ImageRows).
# A machine setting, not a result: both ways train the same weights. PIPELINE_RESIDENT_BYTES overrides it.
RESIDENT_BYTES = 2**30
FIT_IMAGES = 20_000  # training images a whole-split statistic or judge is fitted to, at most (fitting_rows)


@dataclass(frozen=True)
class DatasetInfo:
    source: str  # the path given to prepare, or "embedded procedural faces"
    embedded: bool  # the procedural faces, whose tags are exact factors
    size: int  # side of the square images
    crop: float  # central fraction kept before resizing: a new picture must go through the same
    images: int


def write_info(folder: Path, info: DatasetInfo) -> None:
    (folder / DATASET).write_text(json.dumps(info.__dict__, indent=1), encoding="utf-8")


def read_info(folder: Path) -> DatasetInfo:
    try:
        return DatasetInfo(**json.loads((folder / DATASET).read_text(encoding="utf-8")))
    except (OSError, ValueError, TypeError) as error:
        raise StageError(f"the prepared set in {folder} is unreadable ({error}): run `pipeline prepare --force`")


def load_prepared(folder: Path, channels: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(N, C, S, S) float32 images in [0,1] for the requested channels (1 gray, 3 color), and the train/test
    indices. The uint8 file is memory-mapped and scaled in place, so the float array is the only copy made."""
    pixels, train, test = _open(folder, channels)
    return _scaled(pixels), train, test


def open_split(folder: Path, channels: int, device: torch.device, keep: np.ndarray | None = None
               ) -> tuple[torch.Tensor | ImageRows, torch.Tensor, np.ndarray, np.ndarray]:
    """(train, test, train_index, test_index) for the requested channels: test is an (n, C, S, S) float32 tensor
    in [0,1] on `device` (evaluation needs all of it, and it is the small part); train is one too when it fits in
    the resident budget (RESIDENT_BYTES of float32), else ImageRows, which reads its rows from the file a batch at
    a time: the same values, in bounded memory. Both are read as ImageRows read: gathering the test rows through
    the memory map would make the whole file resident, since they lie everywhere in it. `keep`, a boolean mask
    over the set's images, leaves out the training images it marks False (train_index is then the kept ones)."""
    pixels, train_index, test_index = _open(folder, channels)
    if keep is not None:
        train_index = train_index[keep[train_index]]
    train = image_rows(folder, channels, device, train_index)
    if len(train_index) * 4 * math.prod(pixels.shape[1:]) <= resident_bytes():
        train = train[:]
    return train, image_rows(folder, channels, device, test_index)[:], train_index, test_index


def image_rows(folder: Path, channels: int, device, rows: np.ndarray | None = None) -> ImageRows:
    """The images at `rows` (all by default) of the set in `folder`, gray (channels 1) or color (3), read on demand."""
    return ImageRows(folder / (GRAY if channels == 1 else COLOR), device, rows)


def fitting_rows(count: int, seed: int) -> slice | np.ndarray:
    """Which of a training split's `count` rows a whole-split statistic or judge is fitted to (the average color,
    the baselines, the chroma bins, pixel classifiers): all of them, as a slice (a resident tensor gives a view),
    up to FIT_IMAGES; above that a seeded sample of FIT_IMAGES, in ascending order. Such fits take their rows at
    once, and a split bigger than memory cannot be held; FIT_IMAGES estimate a mean color or fit a linear judge
    as well as the whole split would, so every set up to that size fits on all of its rows, as before."""
    if count <= FIT_IMAGES:
        return slice(None)
    return np.sort(np.random.default_rng(seed).choice(count, FIT_IMAGES, replace=False))


def resident_bytes() -> int:
    value = os.environ.get("PIPELINE_RESIDENT_BYTES", "")
    try:
        return int(value) if value else RESIDENT_BYTES
    except ValueError:
        raise StageError(f"PIPELINE_RESIDENT_BYTES={value!r} is not a number of bytes: set it to an integer "
                         "(0 streams every set) or unset it") from None


def _open(folder: Path, channels: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The (N, C, S, S) uint8 view of the memory-mapped file, and the train/test indices."""
    try:
        if channels == 1:
            pixels = np.load(folder / GRAY, mmap_mode="r", allow_pickle=False)[:, None]
        else:
            pixels = np.load(folder / COLOR, mmap_mode="r", allow_pickle=False).transpose(0, 3, 1, 2)
        split = np.load(folder / SPLIT, allow_pickle=False)
        train, test = split["train"], split["test"]
    except (OSError, KeyError, ValueError) as error:
        raise StageError(f"the prepared set in {folder} is unreadable ({error}): run `pipeline prepare --force`")
    if len(test) == 0:
        raise StageError("the prepared set has no test images: run `pipeline prepare --test-fraction 0.1`")
    return pixels, train, test


def _scaled(pixels: np.ndarray) -> np.ndarray:
    """uint8 (N, C, S, S) -> float32 in [0,1]: the one conversion, so streamed rows equal resident ones bit for bit."""
    scaled = np.ascontiguousarray(pixels, dtype=np.float32)
    scaled /= 255.0
    return scaled


class ImageRows:
    """Some rows of a prepared image file, read on demand: ``rows[index]`` (an index tensor, array or slice into
    these rows) is an (n, C, S, S) float32 tensor on the device, the values ``load_prepared`` holds for them.

    Rows are read with positioned reads in ascending file order, not through the memory map: every page a map
    touches counts in the process's resident memory, so an epoch over a map would end with the whole file
    resident, which a set larger than memory must not do. The page cache still keeps what fits."""

    def __init__(self, path: Path, device, rows: np.ndarray | None = None):
        mapped = np.load(path, mmap_mode="r", allow_pickle=False)  # for its header only: shape, where rows start
        if not mapped.flags.c_contiguous or mapped.dtype != np.uint8:
            raise StageError(f"{path} is not a C-order uint8 array: run `pipeline prepare --force`")
        self._offset, self._stored = mapped.offset, mapped.shape  # (N, S, S) gray or (N, S, S, 3) color
        self._row_bytes = int(np.prod(self._stored[1:]))
        self._rows = np.arange(self._stored[0]) if rows is None else np.asarray(rows)
        self.device = device
        self._descriptor = os.open(path, os.O_RDONLY)

    def __del__(self) -> None:
        if hasattr(self, "_descriptor"):
            os.close(self._descriptor)

    @property
    def shape(self) -> tuple[int, ...]:
        side = self._stored[1]
        return (len(self._rows), 1 if len(self._stored) == 3 else 3, side, side)

    def __len__(self) -> int:
        return len(self._rows)

    def __getitem__(self, index):
        import torch

        wanted = self._rows[index.cpu().numpy() if isinstance(index, torch.Tensor) else index]  # file rows
        pixels = np.empty((len(wanted), self._row_bytes), np.uint8)
        for slot in np.argsort(wanted, kind="stable"):  # ascending: the disk and the page cache read ahead
            start = self._offset + int(wanted[slot]) * self._row_bytes
            pixels[slot] = np.frombuffer(os.pread(self._descriptor, self._row_bytes, start), np.uint8)
        pixels = pixels.reshape(len(wanted), *self._stored[1:])
        pixels = pixels[:, None] if len(self._stored) == 3 else pixels.transpose(0, 3, 1, 2)  # (n, C, S, S)
        return torch.from_numpy(_scaled(pixels)).to(self.device)


def labels_file(folder: Path) -> Path | None:
    """The set's tag table (file,<tag columns...>), or None if no image has tags."""
    path = folder / LABELS
    return path if path.is_file() else None
