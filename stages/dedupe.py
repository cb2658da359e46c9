"""Near-duplicate detection for scraped image sets: a 64-bit perceptual hash nominates pairs (band LSH), and a
comparison of the pairs' pixels confirms them (find_duplicates).

The hash is pHash: the image is area-resampled to 32x32, transformed by a 2-D DCT-II, and the 8x8 lowest
frequencies are thresholded at their median (bit 63 is the DC term, row-major from there). Low frequencies
survive JPEG re-encoding, small resizes and mild blur, so copies of one picture land a few bits apart, while
unrelated pictures average 32 bits apart (and look-alike anime faces rarely come within 8). Resampling and
the DCT are both linear, so they fold into one (8, H) matrix per input size: a stack is two matrix products.

It is meant for the prepared 30x30 gray images: hashing after the shared crop + resize makes copies saved at
different resolutions or qualities agree, and those are the images the models see. (On the 12,000 real faces,
hashing the 96x96 originals instead gave the same distance histogram, so nothing is lost at 30x30.)
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache

import numpy as np

HASH_BITS = 64
_SIDE = 32  # pHash resamples to 32x32 before the DCT...
_LOW = 8  # ...and keeps the 8x8 lowest frequencies
_BLOCK = 256  # images hashed per matrix product: their float copy fits in reused memory (see spool.CHUNK_BYTES)
DEFAULT_MAX_DISTANCE = 4  # see candidate_pairs
DEFAULT_MAX_DIFFERENCE = 16.0  # gray levels; see find_duplicates, and docs/decisions.md for the measurements
_PAIR_CHUNK_VALUES = 2**22  # pixel values compared per chunk of pairs


def perceptual_hash(gray: np.ndarray) -> int:
    """The 64-bit pHash of one (H, W) uint8 gray image."""
    return int(perceptual_hashes(gray[np.newaxis])[0])


def perceptual_hashes(grays: np.ndarray) -> np.ndarray:
    """(N, H, W) uint8 gray images -> (N,) uint64 pHashes, vectorised, in blocks so memory stays small."""
    if grays.ndim != 3:
        raise ValueError(f"expected (N, H, W) gray images, got shape {grays.shape}")
    rows, cols = _low_frequency_basis(grays.shape[1]), _low_frequency_basis(grays.shape[2])
    blocks = [_hash_block(grays[start : start + _BLOCK], rows, cols) for start in range(0, len(grays), _BLOCK)]
    return np.concatenate(blocks) if blocks else np.zeros(0, dtype=np.uint64)


def _hash_block(grays: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    coefficients = rows @ grays.astype(np.float64) @ cols.T  # (N, H, W) -> (N, 8, 8)
    flat = np.round(coefficients.reshape(len(grays), _LOW * _LOW), 6)  # float noise of flat images -> exact 0
    bits = flat > np.median(flat, axis=1, keepdims=True)  # (N, 64) bool, DC first
    return np.packbits(bits, axis=1).view(">u8")[:, 0].astype(np.uint64)


@cache
def _low_frequency_basis(length: int) -> np.ndarray:
    """(8, length): the first 8 DCT-II basis rows of a 32-point signal, composed with area resampling to 32."""
    return _dct_matrix(_SIDE)[:_LOW] @ _area_resampling(length, _SIDE)


def _dct_matrix(n: int) -> np.ndarray:
    """(n, n) orthonormal DCT-II."""
    k, x = np.arange(n)[:, np.newaxis], np.arange(n)[np.newaxis, :]
    basis = np.cos(np.pi * (2 * x + 1) * k / (2 * n)) * np.sqrt(2.0 / n)
    basis[0] /= np.sqrt(2.0)
    return basis


def _area_resampling(source: int, target: int) -> np.ndarray:
    """(target, source): each output sample is the mean of the source interval it covers (antialiased both ways)."""
    edges = np.linspace(0.0, source, target + 1)
    starts, ends = edges[:-1, np.newaxis], edges[1:, np.newaxis]
    pixel = np.arange(source)[np.newaxis, :]
    overlap = np.clip(np.minimum(ends, pixel + 1) - np.maximum(starts, pixel), 0.0, None)
    return overlap / overlap.sum(axis=1, keepdims=True)


@dataclass(frozen=True)
class Duplicates:
    """Which prepared images copy an earlier one: ``mask`` (N,) bool, True for each copy (first occurrences are
    kept); ``original`` (N,) int64, the earlier image each copy repeats (-1 where kept); ``difference`` (N,)
    float32, their pixel difference (see local_differences; 0 where kept)."""

    mask: np.ndarray
    original: np.ndarray
    difference: np.ndarray


def find_duplicates(gray: np.ndarray, max_distance: int = DEFAULT_MAX_DISTANCE,
                    max_difference: float = DEFAULT_MAX_DIFFERENCE) -> Duplicates:
    """Copies among prepared (N, H, W) uint8 gray images: pHash nominates pairs, their pixels confirm them.

    A pHash match alone is not enough: simple images (handwritten digits, flat halves of two colors, tiny
    pictures) sit within a few bits of each other without being copies. A nominated pair counts only if no
    3x3 neighbourhood differs by more than ``max_difference`` gray levels on average (local_differences):
    re-encoding and resampling add small noise everywhere, which the neighbourhood mean mostly cancels, while
    two different drawings, however alike, differ strongly somewhere. Byte-identical images are settled first,
    without hashing, so a set full of identical frames costs no more than one copy.
    """
    if gray.ndim != 3:
        raise ValueError(f"expected (N, H, W) gray images, got shape {gray.shape}")
    count = len(gray)
    original = np.full(count, -1, dtype=np.int64)
    difference = np.zeros(count, dtype=np.float32)
    rows = np.ascontiguousarray(gray).reshape(count, -1)
    _, first, inverse = np.unique(rows.view(np.dtype((np.void, max(rows.shape[1], 1)))), return_index=True,
                                  return_inverse=True)
    first_of = first[inverse.reshape(-1)]
    identical = first_of != np.arange(count)
    original[identical] = first_of[identical]

    distinct = np.sort(first)  # one image of each byte-identical group, in order: "earlier" stays "lower"
    earlier, later = candidate_pairs(perceptual_hashes(gray[distinct]), max_distance)
    earlier, later = distinct[earlier], distinct[later]
    differences = local_differences(gray, earlier, later)
    confirmed = differences <= max_difference
    earlier, later, differences = earlier[confirmed], later[confirmed], differences[confirmed]
    closest_first = np.lexsort((differences, later))  # each copy's closest earlier match leads its run
    runs = later[closest_first]
    leads = closest_first[np.r_[True, runs[1:] != runs[:-1]]] if len(runs) else closest_first
    original[later[leads]] = earlier[leads]
    difference[later[leads]] = differences[leads]
    return Duplicates(original >= 0, original, difference)


def local_differences(gray: np.ndarray, first: np.ndarray, second: np.ndarray) -> np.ndarray:
    """(P,) float32: for each pair of (N, H, W) gray images, the largest absolute difference between their 3x3
    neighbourhood means (edges replicated), in gray levels. Computed in chunks of pairs: memory stays small."""
    result = np.zeros(len(first), dtype=np.float32)
    step = max(1, _PAIR_CHUNK_VALUES // max(gray[0].size, 1)) if len(gray) else 1
    for start in range(0, len(first), step):
        a = gray[first[start:start + step]].astype(np.float32)
        b = gray[second[start:start + step]].astype(np.float32)
        result[start:start + step] = np.abs(_neighbourhood_mean(a - b)).reshape(len(a), -1).max(axis=1)
    return result


def _neighbourhood_mean(images: np.ndarray) -> np.ndarray:
    """(P, H, W) -> the mean of each pixel's 3x3 neighbourhood, edges replicated (linear: blur(a) - blur(b))."""
    padded = np.pad(images, ((0, 0), (1, 1), (1, 1)), mode="edge")
    height, width = images.shape[1:]
    return sum(padded[:, i:i + height, j:j + width] for i in range(3) for j in range(3)) / 9


def candidate_pairs(hashes: np.ndarray, max_distance: int = DEFAULT_MAX_DISTANCE) -> tuple[np.ndarray, np.ndarray]:
    """Every pair (earlier, later) of indices whose hashes lie within ``max_distance`` bits, each pair once.

    Band LSH by the pigeonhole principle: split the 64 bits into ``max_distance + 1`` bands; two hashes at most
    ``max_distance`` apart agree exactly on at least one band, so only pairs sharing a band value are verified.
    Hashes repeated k times give k(k-1)/2 pairs: callers remove byte-identical images first. The default of 4
    bits keeps nearly every re-encoded or resized copy of a real face in reach (docs/decisions.md).
    """
    if not 0 <= max_distance < HASH_BITS:
        raise ValueError(f"max_distance must be in [0, {HASH_BITS}), got {max_distance}")
    hashes = np.asarray(hashes, dtype=np.uint64)
    found = [_pairs_within_band(hashes, band, max_distance) for band in _bands(max_distance + 1)]
    codes = np.unique(np.concatenate([earlier * len(hashes) + later for earlier, later in found]))
    return codes // max(len(hashes), 1), codes % max(len(hashes), 1)


def _bands(count: int) -> list[tuple[int, int]]:
    """(shift, width) of ``count`` near-equal contiguous bit bands covering all 64 bits."""
    edges = np.linspace(0, HASH_BITS, count + 1).round().astype(int)
    return [(int(low), int(high - low)) for low, high in zip(edges[:-1], edges[1:])]


def _pairs_within_band(hashes: np.ndarray, band: tuple[int, int], max_distance: int) -> tuple[np.ndarray, np.ndarray]:
    """(earlier, later) of every pair that agrees on ``band`` and lies within ``max_distance`` bits."""
    shift, width = band
    keys = (hashes >> np.uint64(shift)) & np.uint64((1 << width) - 1)
    order = np.argsort(keys, kind="stable")  # equal keys stay in index order: the earlier item comes first
    sorted_keys = keys[order]
    starts = np.flatnonzero(sorted_keys[:-1] == sorted_keys[1:])  # positions whose next neighbour shares the key
    earlier, later = [np.zeros(0, np.int64)], [np.zeros(0, np.int64)]
    gap = 1
    while len(starts):
        first, second = order[starts], order[starts + gap]
        near = np.bitwise_count(hashes[first] ^ hashes[second]) <= max_distance
        earlier.append(first[near])
        later.append(second[near])
        gap += 1
        starts = starts[starts + gap < len(keys)]
        starts = starts[sorted_keys[starts] == sorted_keys[starts + gap]]
    return np.concatenate(earlier).astype(np.int64), np.concatenate(later).astype(np.int64)
