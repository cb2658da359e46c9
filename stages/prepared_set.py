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
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from stages.contract import StageError

COLOR = "color.npy"
GRAY = "gray.npy"
SPLIT = "split.npz"
SOURCES = "sources.csv"
LABELS = "labels.csv"
PREVIEW = "preview.png"
DUPLICATES = "duplicates.csv"
DUPLICATES_GRID = "duplicates.png"
DATASET = "dataset.json"


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
    try:
        if channels == 1:
            images = np.load(folder / GRAY, mmap_mode="r", allow_pickle=False)[:, None]
        else:
            images = np.load(folder / COLOR, mmap_mode="r", allow_pickle=False).transpose(0, 3, 1, 2)
        split = np.load(folder / SPLIT, allow_pickle=False)
        train, test = split["train"], split["test"]
    except (OSError, KeyError, ValueError) as error:
        raise StageError(f"the prepared set in {folder} is unreadable ({error}): run `pipeline prepare --force`")
    if len(test) == 0:
        raise StageError("the prepared set has no test images: run `pipeline prepare --test-fraction 0.1`")
    scaled = np.ascontiguousarray(images, dtype=np.float32)
    scaled /= 255.0
    return scaled, train, test


def labels_file(folder: Path) -> Path | None:
    """The set's tag table (file,<tag columns...>), or None if no image has tags."""
    path = folder / LABELS
    return path if path.is_file() else None
