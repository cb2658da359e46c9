"""Read images from a folder, an archive, an array file or MNIST IDX files as small square RGB arrays.

``read_images`` raises SourceError before yielding anything when the source is unusable as a whole, then
streams one ``DecodedImage`` per image in a stable order; a bad image comes back skipped, with a reason, and
never stops the run. Memory stays bounded: folders and archives go through a process pool fed by a bounded
window, arrays are memory-mapped or streamed in chunks, and only the small results are ever kept."""

from __future__ import annotations

import gzip
import hashlib
import io
import itertools
import math
import errno
import os
import re
import stat
import tarfile
import warnings
import zipfile
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import lru_cache, partial
from pathlib import Path, PurePosixPath
from typing import NamedTuple

import numpy as np
import simplejpeg
from PIL import Image, ImageOps, UnidentifiedImageError

from stages.parallel import chunked, map_in_order

IMAGE_EXTENSIONS: tuple[str, ...] = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")

_SUFFIX_KINDS = {"zip": (".zip",), "npy": (".npy",), "npz": (".npz",),
                 "tar": (".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tbz2", ".tar.xz", ".txz")}
_IDX_NAME = re.compile(r"images[-.]idx3-ubyte(\.gz)?$")
_IDX_MAGIC = 0x00000803
_NPY_MAGIC = b"\x93NUMPY"
_MAX_MEMBER_BYTES = 256 * 2**20  # a file or archive member bigger than this is no image we can use: never read it
_ARRAY_CHUNK_BYTES = 16 * 2**20
_MAX_BATCH = 256  # images per batch sent to a worker: the pool's cost per batch is about a millisecond
_ARCHIVE_BATCH = 16  # archive batches carry the members' bytes: keep them small
_REDUCING_GAP = 3  # box-reduce large images to no less than this multiple of the final crop side


class SourceError(Exception):
    """The source as a whole cannot be read; the message is one line naming the path, the problem and the fix."""


@dataclass(frozen=True)
class DecodedImage:
    """One source item: ``pixels`` (size, size, 3) uint8, or None with a ``skip_reason``. ``content_hash`` is the
    sha256 of the item's bytes (file, archive member or array item), "" only when they could not be read."""

    name: str
    content_hash: str
    pixels: np.ndarray | None
    skip_reason: str | None


class _Task(NamedTuple):
    """Work for a decode worker: a folder file (the worker reads it) or archive bytes, maybe refused already.
    Tasks cross processes as plain tuples: pickled dataclasses and Paths cost as much as a small decode."""

    name: str
    path: str | None = None
    data: bytes | None = None
    refusal: str | None = None  # decided by the reader (unsafe or unreadable member): passed through in order


class _DecodedBatch(NamedTuple):
    """A batch's results with all pixels in one array: one pickled array per batch, not one per image."""

    names: list[str]
    content_hashes: list[str]
    skip_reasons: list[str | None]
    pixels: np.ndarray  # (B, size, size, 3) uint8, zeros where skipped

    def items(self) -> Iterator[DecodedImage]:
        for name, digest, reason, pixels in zip(self.names, self.content_hashes, self.skip_reasons, self.pixels):
            yield DecodedImage(name, digest, None if reason else pixels, reason)  # a view: prepare keeps them all


class _Undecodable(Exception):
    """An image that cannot be decoded; the message is the skip reason."""


class _Unreadable(Exception):
    """A folder file that is not read at all; the message is the skip reason."""


def describe_source(path: Path) -> str:
    """The source kind: "folder", "zip", "tar", "npy", "npz" or "idx"; SourceError if missing or unsupported."""
    if not path.exists():
        raise SourceError(f"source not found: {path}: check the path given to --source")
    if path.is_dir():
        return "folder"
    if not path.is_file():
        raise SourceError(f"{path} is not a regular file or a folder: point --source at a folder, archive or array "
                          "of images")
    name = path.name.lower()
    for kind, suffixes in _SUFFIX_KINDS.items():
        if name.endswith(suffixes):
            return kind
    if _IDX_NAME.search(name):
        return "idx"
    raise SourceError(f"unsupported source {path}: point --source at a folder of images, a .zip/.tar/.tar.gz/.tgz "
                      "archive, a .npy/.npz image array or an MNIST *-images-idx3-ubyte[.gz] file")


def read_images(path: Path, size: int, crop: float = 1.0, workers: int | None = None) -> Iterator[DecodedImage]:
    """Every image of the source as a ``size`` x ``size`` RGB item, in a stable order, streamed.

    Raises SourceError before returning (not on first iteration) when the source cannot be used at all.
    ``crop`` keeps the central fraction of the centre square (1.0 keeps all of it).
    """
    if not 0.0 < crop <= 1.0:
        raise ValueError(f"crop must be in (0, 1], got {crop}")
    path = Path(path)
    kind = describe_source(path)
    if kind in _ARRAY_READERS:
        items = _non_empty(_ARRAY_READERS[kind](path), path, "the array is empty")
        return (_decode_array_item(name, item, size, crop) for name, item in items)
    workers = workers or os.cpu_count() or 1
    looked_for = f"looked for {', '.join(IMAGE_EXTENSIONS)}" + (", recursively" if kind == "folder" else "")
    if kind == "folder":
        files = _image_files(path)
        tasks: Iterator[_Task] = _non_empty(iter(files), path, looked_for)
        batch_size = max(1, min(_MAX_BATCH, len(files) // (workers * 4)))  # big batches, yet all workers busy
    else:
        tasks, batch_size = _non_empty(_ARCHIVE_READERS[kind](path), path, looked_for), _ARCHIVE_BATCH
    batches = map_in_order(partial(_decode_batch, size=size, crop=crop), chunked(tasks, batch_size), workers)
    return (item for batch in batches for item in batch.items())


def resize_square(rgb: np.ndarray, size: int, crop: float = 1.0) -> np.ndarray:
    """(H, W), (H, W, 1) or (H, W, 3) uint8 -> (size, size, 3) uint8: the crop + resize every source goes through.

    The central ``crop`` fraction of the centre square, resampled by Lanczos-3 widened by the shrink factor (so it
    antialiases) as Pillow's LANCZOS, but as two cached matrix products: a third of Pillow's time at this size,
    and nothing clipped between the passes."""
    height, width = rgb.shape[:2]
    side = min(height, width) * crop
    (row_span, rows), (col_span, cols) = _lanczos_matrix(height, side, size), _lanczos_matrix(width, side, size)
    window = rgb[row_span, col_span]  # only the pixels some weight reaches: a quarter of them at crop 0.5
    planes = window.reshape(*window.shape[:2], -1).astype(np.float32).transpose(2, 0, 1)  # (C, h, w)
    resampled = rows @ planes @ cols.T  # (C, h, w) -> (C, size, size)
    pixels = np.clip(np.rint(resampled), 0, 255).astype(np.uint8).transpose(1, 2, 0)
    return np.repeat(pixels, 3, axis=2) if pixels.shape[2] == 1 else pixels


def decode_file(path: Path, size: int, crop: float = 1.0) -> np.ndarray:
    """One picture file -> (size, size, 3) uint8, exactly as a folder source decodes it; SourceError if unusable."""
    if not Path(path).is_file():
        raise SourceError(f"picture not found: {path}: check the path")
    batch = _decode_batch([_Task(str(path), path=str(path))], size, crop)
    if batch.skip_reasons[0] is not None:
        raise SourceError(f"{path} cannot be used: {batch.skip_reasons[0]}: give a JPEG, PNG, WebP, BMP, GIF or "
                          "TIFF picture")
    return batch.pixels[0]


@lru_cache(maxsize=256)
def _lanczos_matrix(length: int, side: float, size: int) -> tuple[slice, np.ndarray]:
    """Weights resampling the centred span of ``side`` pixels (of ``length``) to ``size`` samples: the slice of
    input pixels any weight reaches, and the (size, that many) matrix. A centre crop never touches the rest."""
    scale = side / size
    stretch = max(scale, 1.0)
    centres = (length - side) / 2 + (np.arange(size) + 0.5) * scale
    distance = (np.arange(length) + 0.5 - centres[:, np.newaxis]) / stretch
    weights = np.sinc(distance) * np.sinc(distance / 3) * (np.abs(distance) < 3)
    reached = np.flatnonzero(weights.any(axis=0))
    span = slice(int(reached[0]), int(reached[-1]) + 1)
    return span, np.ascontiguousarray(weights[:, span] / weights.sum(axis=1, keepdims=True)).astype(np.float32)


def _decode_batch(tasks: list[_Task], size: int, crop: float) -> _DecodedBatch:
    """Runs in a worker (or in-process with one worker): decodes a batch, decompression-bomb warnings as errors."""
    batch = _DecodedBatch([task.name for task in tasks], [], [], np.zeros((len(tasks), size, size, 3), np.uint8))
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        for task, pixels in zip(tasks, batch.pixels):
            digest, reason = _decode_task(task, size, crop, pixels)
            batch.content_hashes.append(digest)
            batch.skip_reasons.append(reason)
    return batch


def _decode_task(task: _Task, size: int, crop: float, pixels: np.ndarray) -> tuple[str, str | None]:
    """Read (folder items), hash, decode into ``pixels``: (content hash, skip reason). Never raises for bad input."""
    try:
        data = task.data if task.path is None else _read_regular_file(task.path)
    except _Unreadable as error:
        return "", str(error)
    digest = "" if data is None else hashlib.sha256(data).hexdigest()
    if task.refusal is not None:
        return digest, task.refusal
    try:
        pixels[...] = _decode_image(data, size, crop)
    except _Undecodable as error:
        return digest, str(error)
    return digest, None


_FILE_KINDS = {stat.S_IFIFO: "a named pipe", stat.S_IFCHR: "a character device", stat.S_IFBLK: "a block device",
               stat.S_IFSOCK: "a socket", stat.S_IFDIR: "a folder"}


def _read_regular_file(path: str) -> bytes:
    """The bytes of a regular file, symlinks followed to their end, never more than the member size limit.

    Opened without blocking, so a named pipe answers at once instead of waiting for a writer; the type and size
    come from the open file itself, so a device (a link to /dev/zero) or a huge sparse file is refused before
    one byte is read. Read with os.read, sized by fstat: a buffered read sized by the limit costs as much as the
    read itself (a 256 MB buffer made and shrunk per file), 20 us of a photo's 400 us."""
    try:
        descriptor = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except OSError as error:
        raise _Unreadable(f"unreadable file ({_open_failure(path, error)})") from None
    try:
        info = os.fstat(descriptor)
        if not stat.S_ISREG(info.st_mode):
            raise _Unreadable(f"not a regular file ({_FILE_KINDS.get(stat.S_IFMT(info.st_mode), 'a special file')})")
        if info.st_size > _MAX_MEMBER_BYTES:
            raise _too_large()
        return _read_to_end(descriptor, info.st_size)
    except OSError as error:
        raise _Unreadable(f"unreadable file ({error.strerror or error})") from None
    finally:
        os.close(descriptor)


def _read_to_end(descriptor: int, expected: int) -> bytes:
    """All bytes from ``descriptor``: one read when the file still has the size fstat gave (a short read of a
    regular file is its end); more if it grew since (or reports no size, as /proc does), up to the limit."""
    data = os.read(descriptor, expected + 1)
    if len(data) <= expected:
        return data
    parts, total = [data], len(data)
    while total <= _MAX_MEMBER_BYTES and (part := os.read(descriptor, min(2**20, _MAX_MEMBER_BYTES + 1 - total))):
        parts.append(part)
        total += len(part)
    if total > _MAX_MEMBER_BYTES:
        raise _too_large()
    return b"".join(parts)


def _too_large() -> _Unreadable:
    return _Unreadable(f"file larger than {_bytes_in_words(_MAX_MEMBER_BYTES)}")


def _open_failure(path: str, error: OSError) -> str:
    if error.errno == errno.ELOOP:
        return "symlink loop"
    if error.errno == errno.ENOENT and os.path.islink(path):
        return "broken symlink: its target is missing"
    return error.strerror or str(error)


def _bytes_in_words(count: int) -> str:
    return f"{count // 2**20} MiB" if count % 2**20 == 0 else f"{count} bytes"


def _decode_image(data: bytes, size: int, crop: float) -> np.ndarray:
    """Encoded bytes -> (size, size, 3) uint8; raises _Undecodable with the reason."""
    if not data:
        raise _Undecodable("empty file")
    needed = math.ceil(size / crop)
    fast = _plain_jpeg(data, needed)
    if fast is not None:
        if _box_factor(min(fast.shape[:2]), size, crop) >= 2:
            fast = np.asarray(_box_reduced(Image.fromarray(fast), size, crop))
        return resize_square(fast, size, crop)
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.draft("RGB", (needed, needed))  # JPEG only: DCT-downscale, never below the crop's size
            if "exif" in image.info:
                image = ImageOps.exif_transpose(image)  # camera photos: upright before cropping
            rgb = _box_reduced(_to_rgb(image), size, crop)
    except UnidentifiedImageError:
        raise _Undecodable("not an image") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):  # the warning: see _decode_batch
        raise _Undecodable(f"larger than the decompression-bomb limit ({Image.MAX_IMAGE_PIXELS} pixels)") from None
    except (OSError, SyntaxError, EOFError, ValueError, IndexError, TypeError, zlib.error):
        raise _Undecodable("truncated or corrupt image") from None
    return resize_square(np.asarray(rgb), size, crop)


def _plain_jpeg(data: bytes, needed: int) -> np.ndarray | None:
    """A plain YCbCr or gray JPEG decoded by libjpeg-turbo (simplejpeg), DCT-scaled by eighths to no less than
    ``needed`` on either side; None for everything else, which Pillow decodes.

    Why not Pillow for these too: on a 96x96 face Pillow spends as long parsing the JPEG's markers in Python as
    libjpeg-turbo spends decoding it, and its draft mode only scales by 1/2, 1/4 or 1/8. This halves the CPU
    time of `prepare` per image. Left to Pillow: EXIF-tagged photos (orientation), CMYK/YCCK color, anything
    over the decompression-bomb limit, and anything libjpeg-turbo warns about (truncated, corrupt), so that
    every skip reason and conversion stays Pillow's."""
    if not data.startswith(b"\xff\xd8") or data.find(b"Exif\x00\x00", 0, 65536) >= 0:  # no slice copy
        return None
    try:
        height, width, color, _ = simplejpeg.decode_jpeg_header(data)
        if color not in ("YCbCr", "Gray") or height * width > Image.MAX_IMAGE_PIXELS:
            return None
        return simplejpeg.decode_jpeg(data, colorspace="RGB", min_height=needed, min_width=needed, strict=True)
    except ValueError:
        return None


def _box_reduced(image: Image.Image, size: int, crop: float) -> Image.Image:
    """Big images that draft mode could not shrink, box-averaged by an integer factor to >= 3x the crop's output
    side: the final Lanczos would keep nothing more, and it would need a float copy of every pixel."""
    factor = _box_factor(min(image.size), size, crop)
    return image.reduce(factor) if factor >= 2 else image


def _box_factor(short_side: int, size: int, crop: float) -> int:
    return int(short_side * crop / (size * _REDUCING_GAP))


def _to_rgb(image: Image.Image) -> Image.Image:
    """Any PIL mode -> RGB: transparency composited on white, 16-bit scaled (not clipped), float read as [0, 1]."""
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in image.info:
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    if image.mode.startswith("I"):
        wide = np.asarray(image).astype(np.float64)
        gray = np.clip(np.rint(wide / 257.0), 0, 255).astype(np.uint8)  # 0..65535 -> 0..255
        return Image.fromarray(gray).convert("RGB")
    if image.mode == "F":
        return Image.fromarray(_float_to_uint8(np.asarray(image))).convert("RGB")
    try:
        return image.convert("RGB")
    except ValueError:
        raise _Undecodable(f"unsupported color mode {image.mode}") from None


def _float_to_uint8(values: np.ndarray) -> np.ndarray:
    """Floats meant to lie in [0, 1] -> uint8 (out-of-range values are clipped)."""
    return np.rint(np.clip(values, 0.0, 1.0) * 255.0).astype(np.uint8)


def _non_empty(items: Iterator, path: Path, looked_for: str) -> Iterator:
    """``items`` unchanged, but SourceError now (not on first use) if there is nothing in it."""
    first = next(items, None)
    if first is None:
        raise SourceError(f"no images found in {path} ({looked_for}): point --source at a folder, archive or "
                          "array of images")
    return itertools.chain([first], items)


def _is_image_name(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTENSIONS)


def folder_files(folder: Path) -> list[tuple[str, os.DirEntry]]:
    """(relative posix name, entry) of every file under ``folder``, recursively, sorted by name so the order never
    depends on the disk. Symlinked folders are not followed (as os.walk). scandir, not walk + join + stat: one
    pass, and the entry caches its stat for the cache fingerprint."""
    found, folders = [], [(os.fspath(folder), "")]
    while folders:
        directory, prefix = folders.pop()
        with os.scandir(directory) as entries:
            for entry in entries:
                if entry.is_dir(follow_symlinks=False):
                    folders.append((entry.path, f"{prefix}{entry.name}/"))
                elif not (entry.is_symlink() and _links_to_folder(entry)):
                    found.append((prefix + entry.name, entry))
    return sorted(found, key=lambda item: item[0])


def _links_to_folder(link: os.DirEntry) -> bool:
    try:
        return link.is_dir()
    except OSError:  # a loop: a file name that leads nowhere, which decoding skips with the reason
        return False


def _image_files(folder: Path) -> list[_Task]:
    return [_Task(name, path=entry.path) for name, entry in folder_files(folder) if _is_image_name(name)]


def _unsafe_member(name: str) -> bool:
    """Zip-slip: absolute names, drive letters or '..' would escape a destination if ever unpacked."""
    posix = PurePosixPath(name.replace("\\", "/"))
    return posix.is_absolute() or ".." in posix.parts or re.match(r"^[A-Za-z]:", name) is not None


def _member_task(name: str, size: int, read: Callable[[], bytes]) -> _Task:
    """An archive member as a task; unsafe, oversized or unreadable members come refused (bytes never decoded)."""
    if size > _MAX_MEMBER_BYTES:
        return _Task(name, refusal=f"archive member larger than {_bytes_in_words(_MAX_MEMBER_BYTES)}")
    try:
        data = read()
    except (OSError, EOFError, RuntimeError, NotImplementedError, zlib.error, zipfile.BadZipFile, tarfile.TarError):
        return _Task(name, refusal="unreadable archive member")
    if _unsafe_member(name):
        return _Task(name, data=data, refusal="refused: absolute or '..' path in archive")
    return _Task(name, data=data)


def _open_zip(path: Path, fix: str) -> zipfile.ZipFile:
    try:
        return zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as error:
        raise SourceError(f"cannot read {path} as a zip archive ({error}): {fix}") from None


def _zip_tasks(path: Path) -> Iterator[_Task]:
    """Image members of a zip archive in archive order, read in memory (never unpacked)."""
    with _open_zip(path, "check the file is a complete .zip") as archive:
        for info in archive.infolist():
            if not info.is_dir() and _is_image_name(info.filename):
                yield _member_task(info.filename, info.file_size, partial(archive.read, info))


def _tar_tasks(path: Path) -> Iterator[_Task]:
    """Image members of a (compressed) tar archive, streamed in archive order; links are ignored, never followed."""
    try:
        archive = tarfile.open(path, "r|*")
    except (tarfile.TarError, OSError, EOFError, zlib.error) as error:
        raise SourceError(f"cannot read tar archive {path} ({error}): check the file is a complete tar") from None
    with archive:
        try:
            for member in archive:
                if member.isfile() and _is_image_name(member.name):
                    name = member.name.removeprefix("./")
                    yield _member_task(name, member.size, archive.extractfile(member).read)
        except (tarfile.TarError, OSError, EOFError, zlib.error):
            yield _Task(f"{path.name}[rest]", refusal="archive is truncated or corrupt from here on")


_ARCHIVE_READERS: dict[str, Callable[[Path], Iterator[_Task]]] = {"zip": _zip_tasks, "tar": _tar_tasks}


_ArrayItem = tuple[str, np.ndarray | str]  # (name, image) or (name, why it is missing)


def _decode_array_item(name: str, item: np.ndarray | str, size: int, crop: float) -> DecodedImage:
    """An (H, W[, 1|3]) uint8 or [0, 1] float item -> DecodedImage; bad values are skipped, not raised."""
    if isinstance(item, str):
        return DecodedImage(name, "", None, item)
    digest = hashlib.sha256(np.ascontiguousarray(item).tobytes()).hexdigest()
    if item.dtype.kind == "f":
        if not np.all(np.isfinite(item)):
            return DecodedImage(name, digest, None, "non-finite values")
        if item.min() < 0.0 or item.max() > 1.0:
            return DecodedImage(name, digest, None, "float values outside [0, 1]")
        item = _float_to_uint8(item)
    return DecodedImage(name, digest, resize_square(item, size, crop), None)


def _check_image_stack(path: Path, shape: tuple[int, ...], dtype: np.dtype) -> None:
    if len(shape) == 3 and shape[2] in (3, 4):
        raise SourceError(f"{path}: array of shape {shape} looks like one color image, not a stack: add a leading "
                          "axis, (N, H, W, C), e.g. numpy.save(path, image[numpy.newaxis])")
    is_stack = (len(shape) == 3 or (len(shape) == 4 and shape[3] in (1, 3))) and min(shape[1:3]) > 0
    if not is_stack or not (dtype == np.uint8 or dtype.kind == "f"):
        raise SourceError(f"{path}: array of shape {shape} and dtype {dtype} is not an image stack: "
                          "save (N, H, W) or (N, H, W, 3) as uint8, or float in [0, 1]")


def _npy_items(path: Path) -> Iterator[_ArrayItem]:
    """Items of a .npy file, memory-mapped so only the item being resized is in memory."""
    with open(path, "rb") as file:
        if file.read(len(_NPY_MAGIC)) != _NPY_MAGIC:
            raise SourceError(f"{path} is not a NumPy array file (no .npy header): save the images with numpy.save")
    try:
        array = np.load(path, mmap_mode="r", allow_pickle=False)
    except ValueError as error:
        if "allow_pickle" in str(error):
            raise SourceError(f"{path} holds Python objects, which are never unpickled: save a uint8 or float image "
                              "array with numpy.save") from None
        raise SourceError(f"cannot read {path} as a numpy array ({error}): re-save it with numpy.save") from None
    except OSError as error:
        raise SourceError(f"cannot read {path} as a numpy array ({error}): re-save it with numpy.save") from None
    _check_image_stack(path, array.shape, array.dtype)
    for index in range(len(array)):
        yield f"{path.name}[{index}]", array[index]


def _npz_items(path: Path) -> Iterator[_ArrayItem]:
    """Items of the ``images`` (else ``x``, else first) array of a .npz, streamed out of the zip in chunks."""
    with _open_zip(path, "re-save it with numpy.savez") as archive:
        members = [name for name in archive.namelist() if name.endswith(".npy")]
        chosen = next((m for m in ("images.npy", "x.npy") if m in members), members[0] if members else None)
        if chosen is None:
            raise SourceError(f"{path} holds no arrays: save the images with numpy.savez(path, images=array)")
        with archive.open(chosen) as stream:
            version = np.lib.format.read_magic(stream)
            header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            shape, fortran_order, dtype = header(stream)
            _check_image_stack(path, shape, dtype)
            if fortran_order:
                raise SourceError(f"{path}: array is in Fortran order: re-save it with numpy.ascontiguousarray")
            yield from _stream_items(stream, dtype, shape, path.name)


def _idx_items(path: Path) -> Iterator[_ArrayItem]:
    """Items of an MNIST IDX image file (plain or .gz): magic 0x00000803, then big-endian uint32 N, rows, cols."""
    opener = gzip.open if path.name.lower().endswith(".gz") else open
    with opener(path, "rb") as stream:
        try:
            header = stream.read(16)
        except (OSError, EOFError) as error:
            raise SourceError(f"cannot read {path} ({error}): check the file is complete") from None
        if len(header) < 16 or int.from_bytes(header[:4], "big") != _IDX_MAGIC:
            raise SourceError(f"{path} is not an IDX image file (magic 0x00000803): use the *-images-idx3-ubyte file")
        shape = tuple(int.from_bytes(header[i : i + 4], "big") for i in (4, 8, 12))  # (N, rows, cols)
        _check_image_stack(path, shape, np.dtype(np.uint8))
        yield from _stream_items(stream, np.dtype(np.uint8), shape, path.name)


def _stream_items(stream: io.IOBase, dtype: np.dtype, shape: tuple[int, ...], label: str) -> Iterator[_ArrayItem]:
    """Rows of a C-order array read from ``stream`` a chunk at a time; a short file ends with one skipped entry."""
    count, item_shape = shape[0], shape[1:]
    item_bytes = dtype.itemsize * math.prod(item_shape)
    per_chunk = max(1, _ARRAY_CHUNK_BYTES // item_bytes)
    done = 0
    while done < count:
        wanted = min(per_chunk, count - done)
        try:
            buffer = stream.read(wanted * item_bytes)
        except (OSError, EOFError, zlib.error, zipfile.BadZipFile):
            buffer = b""
        got = len(buffer) // item_bytes
        block = np.frombuffer(buffer, dtype, count=got * math.prod(item_shape)).reshape(got, *item_shape)
        for offset, item in enumerate(block):
            yield f"{label}[{done + offset}]", item
        done += got
        if got < wanted:
            yield f"{label}[{done}:{count}]", f"truncated array file: {count - done} of {count} items missing"
            return


_ARRAY_READERS: dict[str, Callable[[Path], Iterator[_ArrayItem]]] = {"npy": _npy_items, "npz": _npz_items,
                                                                       "idx": _idx_items}
