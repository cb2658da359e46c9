"""The prepare stage: any image source -> N square color images, their luma, a seeded split and a preview.

What it writes is listed in stages.prepared_set, which every other stage reads it through. Tags come from the
embedded faces' factors, or else from the --labels CSV.
"""
from __future__ import annotations

import collections
import contextlib
import csv
import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np
from PIL import Image

from stages import faces
from stages.dedupe import Duplicates, find_duplicates
from stages.luma import luma_uint8
from stages import prepared_set as files
from stages.contract import StageContext, StageError
from stages.parallel import WorkerDied, chunked, map_in_order
from stages.params import PrepareParams
from stages.spool import CHUNK_BYTES, RowSpool
from stages.sources import DecodedImage, SourceError, describe_source, folder_files, read_images, resize_square

EMBEDDED_FACES = 20_000  # how many distinct procedural faces `--count all` means for the embedded default
_GENERATOR_VERSION = "faces-1"  # bump when stages/faces.py draws differently
_PREVIEW_COUNT = 32
_DUPLICATES_SHOWN = 16
_EMBEDDED_BATCH = 32  # faces per worker job: ~80 ms of drawing, so the pool's cost per job is noise
_MAX_WARNINGS = 20
_COLOR_SPOOL, _GRAY_SPOOL = ".color.spool", ".gray.spool"  # scratch files in the stage's folder, deleted by run


def fingerprint(params: PrepareParams) -> str:
    """Cheap content fingerprint of what prepare reads from outside the cache: names, sizes and mtimes.

    Re-hashing every image's bytes on each run would cost as much as decoding them; any edit, addition or
    removal changes a size or an mtime, so this is enough to decide whether to rebuild. Byte hashes of the kept
    images are recorded in sources.csv.
    """
    digest = hashlib.sha256()
    if params.source:
        source = Path(params.source)
        try:
            describe_source(source)
        except SourceError as error:
            raise StageError(str(error)) from None
        for name, stat in _listing(source):
            digest.update(f"{name}|{stat.st_size}|{stat.st_mtime_ns}\n".encode())
    else:
        digest.update(_GENERATOR_VERSION.encode())
    if params.labels:
        labels = Path(params.labels)
        if not labels.is_file():
            raise StageError(f"labels file not found: {labels}: check the path given to --labels")
        digest.update(labels.read_bytes())
    return digest.hexdigest()[:16]


def _listing(source: Path) -> list[tuple[str, os.stat_result]]:
    """(relative name, stat) of every file under a folder, or of the one file; a link that leads nowhere (dangling,
    a loop) counts by its own stat, and decoding skips it with the reason."""
    if not source.is_dir():
        return [(source.name, source.stat())]
    return [(name, _stat_of(entry)) for name, entry in folder_files(source)]


def _stat_of(entry: os.DirEntry) -> os.stat_result:
    try:
        return entry.stat()
    except OSError:
        return entry.stat(follow_symlinks=False)


def _embedded_face(index: int, size: int, crop: float) -> tuple[DecodedImage, dict[str, str]]:
    pixels, factors = faces.generate_face(index)
    small = resize_square(pixels, size, crop)
    return DecodedImage(f"face-{index:05d}", hashlib.sha256(pixels.tobytes()).hexdigest(), small, None), factors


def _embedded_images(count: int, size: int, crop: float, workers: int | None,
                     labels: dict[str, dict[str, str]]) -> Iterator[DecodedImage]:
    """The procedural faces, drawn in parallel; their factors land in `labels` as they arrive."""
    batches = chunked(range(count or EMBEDDED_FACES), _EMBEDDED_BATCH)
    for batch in map_in_order(_EmbeddedJob(size, crop), batches, workers or os.cpu_count() or 1):
        for image, factors in batch:
            labels[image.name] = factors
            yield image


class _EmbeddedJob:
    """Picklable `indices -> [(image, factors), ...]` for the worker processes."""

    def __init__(self, size: int, crop: float):
        self.size, self.crop = size, crop

    def __call__(self, indices: list[int]) -> list[tuple[DecodedImage, dict[str, str]]]:
        return [_embedded_face(index, self.size, self.crop) for index in indices]


def _read_label_csv(path: Path) -> tuple[list[str], dict[str, dict[str, str]]]:
    """Tag columns and rows keyed by file name, as written in the CSV (e.g. `faces/2.jpg`)."""
    try:
        with open(path, newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle)
            columns = [c for c in (reader.fieldnames or []) if c != "file"]
            if not reader.fieldnames or "file" not in reader.fieldnames or not columns:
                raise StageError(f"labels file {path} needs a header `file,<tag columns...>`, "
                                 f"got {reader.fieldnames}")
            return columns, {row["file"]: {c: row[c] or "" for c in columns} for row in reader}
    except (OSError, UnicodeDecodeError, csv.Error) as error:
        raise StageError(f"labels file {path} could not be read: {error}") from None


def _match_labels(names: list[str], rows: dict[str, dict[str, str]]) -> list[dict[str, str] | None]:
    """Tags for each kept image: the CSV may name files relative to another root, so match on path suffixes."""
    by_suffix: dict[str, dict[str, str]] = {}
    for file, tags in rows.items():
        parts = Path(file).parts
        for start in range(len(parts)):
            by_suffix.setdefault("/".join(parts[start:]), tags)
    matched = []
    for name in names:
        parts = Path(name).parts
        matched.append(next((by_suffix[s] for s in ("/".join(parts[i:]) for i in range(len(parts)))
                             if s in by_suffix), None))
    return matched


@dataclass
class _Collected:
    """What prepare keeps of every decoded image: pixels spooled to disk, names and hashes in memory."""

    color: RowSpool  # (S, S, 3) uint8 rows
    gray: RowSpool  # (S, S) uint8 rows, luma of color
    names: list[str] = field(default_factory=list)
    content_hashes: list[str] = field(default_factory=list)
    skipped: collections.Counter[str] = field(default_factory=collections.Counter)

    def add(self, images: list[DecodedImage]) -> None:
        color = np.stack([image.pixels for image in images])
        self.color.append(color)
        self.gray.append(luma_uint8(color))
        self.names += [image.name for image in images]
        self.content_hashes += [image.content_hash for image in images]


def _collect(images: Iterator[DecodedImage], collected: _Collected, context: StageContext, total: int | None,
             label: str) -> None:
    """Stream the decoded images into the spools a chunk at a time, warning (a bounded number of times) about
    skipped ones: only one chunk of pixels is ever in memory."""
    chunk: list[DecodedImage] = []
    with context.progress(total or 0, label) as bar:
        for image in images:
            bar.advance(1)
            if image.pixels is None:
                collected.skipped[image.skip_reason] += 1
                if collected.skipped.total() <= _MAX_WARNINGS:
                    context.echo(f"warning: skipped {image.name}: {image.skip_reason}")
                continue
            chunk.append(image)
            if len(chunk) * collected.color.row_bytes >= CHUNK_BYTES:
                collected.add(chunk)
                chunk = []
    if chunk:
        collected.add(chunk)
    hidden = collected.skipped.total() - _MAX_WARNINGS
    if hidden > 0:
        context.echo(f"warning: ... and {hidden} more skipped files (counts by reason in the manifest)")


def _preview(gray_path: Path, color_path: Path, path: Path) -> None:
    """Pairs of (gray | color) of the first 32 images, read back from the written arrays (memory-mapped)."""
    gray, color = np.load(gray_path, mmap_mode="r"), np.load(color_path, mmap_mode="r")
    count = min(len(gray), _PREVIEW_COUNT)
    _pairs_image(np.repeat(gray[:count, ..., np.newaxis], 3, axis=3), color[:count], path)


def _pairs_image(left: np.ndarray, right: np.ndarray, path: Path) -> None:
    """(N, S, S, 3) pairs side by side, 8 pairs a row, scaled up by a whole factor to about 90 px (30x30 faces 3x,
    photos from 64 px as they are), PNG at the fastest compression: at photo sizes the default level took longer
    than deduplicating the set."""
    count, size, columns, gap = len(left), left.shape[1], 8, 2
    rows = -(-count // columns)
    canvas = np.full((rows * (size + gap) + gap, columns * (2 * size + gap) + gap, 3), 255, np.uint8)
    for i in range(count):
        top, left_edge = gap + (i // columns) * (size + gap), gap + (i % columns) * (2 * size + gap)
        canvas[top:top + size, left_edge:left_edge + size] = left[i]
        canvas[top:top + size, left_edge + size:left_edge + 2 * size] = right[i]
    image, scale = Image.fromarray(canvas), max(1, round(90 / size))
    image.resize((image.width * scale, image.height * scale), Image.NEAREST).save(path, compress_level=1)


def _write_duplicates(out_dir: Path, duplicates: Duplicates, names: list[str], color: RowSpool) -> None:
    """duplicates.csv lists every dropped copy; duplicates.png shows the first 16, each after the image it copies."""
    dropped = np.flatnonzero(duplicates.mask)
    with open(out_dir / files.DUPLICATES, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["file", "duplicate_of", "difference"])
        writer.writerows((names[i], names[duplicates.original[i]], f"{duplicates.difference[i]:.2f}")
                         for i in dropped)
    if len(dropped):
        shown = dropped[:_DUPLICATES_SHOWN]
        _pairs_image(_spooled_rows(color, duplicates.original[shown]), _spooled_rows(color, shown),
                     out_dir / files.DUPLICATES_GRID)


def _spooled_rows(spool: RowSpool, indices: np.ndarray) -> np.ndarray:
    """The spooled rows at `indices`, in that order (repeats allowed)."""
    unique, inverse = np.unique(indices, return_inverse=True)
    return np.concatenate(list(spool.chunks(unique)))[inverse]


def _write_labels(path: Path, names: list[str], tags: list[dict[str, str] | None]) -> list[str]:
    columns = sorted({c for t in tags if t for c in t})
    if not columns:
        return []
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["file", *columns])
        for name, tag in zip(names, tags):
            writer.writerow([name, *((tag or {}).get(c, "") for c in columns)])
    return columns


def run(params: PrepareParams, inputs: dict[str, Path], out_dir: Path, context: StageContext) -> dict:
    labels: dict[str, dict[str, str]] = {}
    if params.source:
        try:
            images = read_images(Path(params.source), params.size, params.crop, context.workers)
        except SourceError as error:
            raise StageError(str(error)) from None
        origin = params.source
    else:
        images = _embedded_images(params.count, params.size, params.crop, context.workers, labels)
        origin = "embedded procedural faces"
    side = params.size
    with RowSpool(out_dir / _COLOR_SPOOL, (side, side, 3), np.uint8) as color, \
            RowSpool(out_dir / _GRAY_SPOOL, (side, side), np.uint8) as gray:
        collected = _Collected(color, gray)
        try:
            with contextlib.closing(images):  # an interrupt stops the decode pool here, not at interpreter exit
                _collect(images, collected, context,
                         None if params.source else (params.count or EMBEDDED_FACES),
                         "decoding images" if params.source else "drawing faces")
        except WorkerDied as error:
            raise StageError(str(error)) from None
        skipped = collected.skipped
        kept = len(collected.names)
        duplicates = np.zeros(kept, bool)
        # The embedded faces are distinct by construction; a perceptual hash would only confuse look-alike cartoons.
        if params.dedupe and params.source and kept:  # the gray set (a third of the color one) is read back whole
            found = find_duplicates(np.concatenate(list(gray.chunks())))
            _write_duplicates(out_dir, found, collected.names, color)
            duplicates = found.mask
        usable = np.flatnonzero(~duplicates)
        if params.count and len(usable) < params.count:
            raise StageError(f"only {len(usable)} usable images in {origin} ({skipped.total()} skipped, "
                             f"{int(duplicates.sum())} duplicates), fewer than --count {params.count}: "
                             f"use --count {len(usable)} or --count all")
        if len(usable) < 2:
            raise StageError(f"{origin} has {len(usable)} usable image(s): need at least 2 to train and test")
        rng = np.random.default_rng(params.seed)
        chosen = np.sort(rng.choice(usable, params.count, replace=False)) if params.count else usable
        color.save(out_dir / files.COLOR, chosen)
        gray.save(out_dir / files.GRAY, chosen)
    names = [collected.names[i] for i in chosen]

    order = rng.permutation(len(chosen))
    test_count = int(round(len(chosen) * params.test_fraction))
    if params.test_fraction > 0:
        test_count = min(max(test_count, 1), len(chosen) - 1)
    np.savez(out_dir / files.SPLIT, train=np.sort(order[test_count:]), test=np.sort(order[:test_count]))
    with open(out_dir / files.SOURCES, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["index", "file", "content_hash"])
        writer.writerows((i, collected.names[k], collected.content_hashes[k]) for i, k in enumerate(chosen))
    if params.labels:
        columns, rows = _read_label_csv(Path(params.labels))
        tags = _match_labels(names, rows)
    else:
        tags = [labels.get(name) for name in names]
    tag_columns = _write_labels(out_dir / files.LABELS, names, tags)
    _preview(out_dir / files.GRAY, out_dir / files.COLOR, out_dir / files.PREVIEW)
    files.write_info(out_dir, files.DatasetInfo(source=origin, embedded=not params.source, size=params.size,
                                                crop=params.crop, images=len(chosen)))

    counts = {"read": kept + skipped.total(), "skipped": skipped.total(),
              "skipped_by_reason": dict(skipped), "duplicates": int(duplicates.sum()), "kept": len(chosen),
              "train": len(chosen) - test_count, "test": test_count,
              "labelled": sum(1 for t in tags if t), "label_columns": tag_columns}
    headline = (f"{counts['read']} read, {counts['skipped']} skipped, {counts['duplicates']} duplicates dropped, "
                f"{counts['kept']} kept ({counts['train']} train / {counts['test']} test) from {origin}")
    return {**counts, "source": origin, "headline": headline}
