"""Specification of stages.dedupe: copies of a picture are flagged after the first, different pictures never."""

import io

import numpy as np
from PIL import Image

from stages.dedupe import DEFAULT_MAX_DISTANCE, duplicate_mask, perceptual_hash, perceptual_hashes


def picture(seed: int, side: int = 96) -> Image.Image:
    """A smooth, image-like RGB picture with some fine texture, different for each seed."""
    rng = np.random.default_rng(seed)
    coarse = Image.fromarray(rng.integers(0, 256, (6, 6, 3), dtype=np.uint8)).resize((side, side), Image.Resampling.BICUBIC)
    texture = rng.normal(0, 6, (side, side, 3))
    return Image.fromarray(np.clip(np.asarray(coarse) + texture, 0, 255).astype(np.uint8))


def gray30(image: Image.Image) -> np.ndarray:
    """The prepared form the hash is meant for: 30x30 gray."""
    return np.asarray(image.convert("L").resize((30, 30), Image.Resampling.LANCZOS))


def reencoded(image: Image.Image, quality: int, side: int) -> Image.Image:
    buffer = io.BytesIO()
    image.resize((side, side), Image.Resampling.LANCZOS).save(buffer, "JPEG", quality=quality)
    return Image.open(io.BytesIO(buffer.getvalue()))


def test_hash_is_a_64_bit_int_and_matches_the_stacked_version():
    grays = np.stack([gray30(picture(seed)) for seed in range(3)])

    hashes = perceptual_hashes(grays)

    assert hashes.dtype == np.uint64
    assert [perceptual_hash(gray) for gray in grays] == [int(h) for h in hashes]
    assert all(0 <= int(h) < 2**64 for h in hashes)


def test_exact_and_reencoded_resized_copies_are_flagged_after_the_first():
    original = picture(0)
    images = [original, picture(1), original.copy(), reencoded(original, quality=70, side=90), picture(2)]

    mask = duplicate_mask(perceptual_hashes(np.stack([gray30(image) for image in images])))

    assert mask.tolist() == [False, False, True, True, False]


def test_the_first_occurrence_is_kept_whichever_comes_first():
    copy, original = reencoded(picture(5), quality=70, side=90), picture(5)

    mask = duplicate_mask(perceptual_hashes(np.stack([gray30(copy), gray30(original)])))

    assert mask.tolist() == [False, True]


def test_different_pictures_are_not_flagged():
    hashes = perceptual_hashes(np.stack([gray30(picture(seed)) for seed in range(200)]))

    assert not duplicate_mask(hashes).any()


def test_flat_frames_hash_alike_whatever_their_brightness():
    flats = np.stack([np.full((30, 30), value, np.uint8) for value in (5, 90, 250)])

    assert len(set(perceptual_hashes(flats).tolist())) == 1


def test_threshold_is_inclusive_and_exact():
    base = np.uint64(0x0123_4567_89AB_CDEF)
    near = base ^ np.uint64(((1 << DEFAULT_MAX_DISTANCE) - 1) << 20)  # exactly the threshold apart
    far = base ^ np.uint64(((1 << DEFAULT_MAX_DISTANCE + 1) - 1) << 40)  # one bit more

    mask = duplicate_mask(np.array([base, near, far], dtype=np.uint64))  # at the default threshold

    assert mask.tolist() == [False, True, False]


def test_200k_hashes_find_exactly_the_planted_near_duplicates():
    rng = np.random.default_rng(0)
    hashes = rng.integers(0, 2**64, 200_000, dtype=np.uint64)
    hashes[:1000] = hashes[0]  # a block of identical hashes (blank frames) must stay cheap
    copies = rng.choice(np.arange(100_000, 200_000), 500, replace=False)
    for index in copies:  # each a copy, 0 to 4 bits off, of an untouched earlier hash
        flips = rng.choice(64, rng.integers(0, 5), replace=False)
        hashes[index] = hashes[rng.integers(1000, 100_000)] ^ np.uint64(sum(1 << int(bit) for bit in flips))

    mask = duplicate_mask(hashes)

    assert mask[copies].all() and mask[1:1000].all() and not mask[0]
    assert mask.sum() == 500 + 999  # random 64-bit hashes are never within 4 bits by chance
