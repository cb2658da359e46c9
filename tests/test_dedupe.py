"""Specification of stages.dedupe: copies of a picture are flagged after the first, different pictures never, however
simple (digit strokes, flat halves, tiny images)."""

import io

import numpy as np
from PIL import Image, ImageDraw

from stages.dedupe import (DEFAULT_MAX_DIFFERENCE, DEFAULT_MAX_DISTANCE, candidate_pairs, find_duplicates,
                           local_differences, perceptual_hash, perceptual_hashes)
from stages.sources import resize_square


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


def stroke(seed: int, side: int = 28) -> np.ndarray:
    """A handwritten-one-like antialiased stroke, MNIST-sized: position, slant, length and thickness vary."""
    rng = np.random.default_rng(seed)
    big = Image.new("L", (side * 4, side * 4), 0)
    centre, half = side * 2 + rng.normal(0, 6, 2), side * 4 * rng.uniform(0.28, 0.38)
    slant = rng.normal(0, 0.25) * half
    ImageDraw.Draw(big).line([(centre[0] - slant, centre[1] - half), (centre[0] + slant, centre[1] + half)],
                             fill=255, width=int(rng.uniform(6, 14)))
    return np.asarray(big.resize((side, side), Image.Resampling.BOX))


def flagged(images) -> list[bool]:
    return find_duplicates(np.stack(images)).mask.tolist()


def test_hash_is_a_64_bit_int_and_matches_the_stacked_version():
    grays = np.stack([gray30(picture(seed)) for seed in range(3)])

    hashes = perceptual_hashes(grays)

    assert hashes.dtype == np.uint64
    assert [perceptual_hash(gray) for gray in grays] == [int(h) for h in hashes]
    assert all(0 <= int(h) < 2**64 for h in hashes)


def test_exact_and_reencoded_resized_copies_are_flagged_after_the_first():
    original = picture(0)
    images = [original, picture(1), original.copy(), reencoded(original, quality=70, side=90), picture(2)]

    found = find_duplicates(np.stack([gray30(image) for image in images]))

    assert found.mask.tolist() == [False, False, True, True, False]
    assert found.original.tolist() == [-1, -1, 0, 0, -1]
    assert found.difference[2] == 0 and 0 < found.difference[3] <= DEFAULT_MAX_DIFFERENCE


def test_the_first_occurrence_is_kept_whichever_comes_first():
    copy, original = reencoded(picture(5), quality=70, side=90), picture(5)

    assert flagged([gray30(copy), gray30(original)]) == [False, True]


def test_different_pictures_are_not_flagged():
    assert not any(flagged([gray30(picture(seed)) for seed in range(200)]))


def test_flat_frames_hash_alike_whatever_their_brightness():
    flats = np.stack([np.full((30, 30), value, np.uint8) for value in (5, 90, 250)])

    assert len(set(perceptual_hashes(flats).tolist())) == 1


def test_flat_halves_and_tiny_images_are_not_copies_of_a_flat_image():
    """pHash puts these within 4 bits of a flat frame (a 1x1 picture prepared at 30x30); the pixels tell them apart."""
    flat_pixel = resize_square(np.full((1, 1, 3), 128, np.uint8), 30)[..., 0]
    halves = []
    for dark, light in [(0, 255), (40, 200), (90, 160)]:
        left_right, top_bottom = np.full((30, 30), dark, np.uint8), np.full((30, 30), dark, np.uint8)
        left_right[:, 15:] = light
        top_bottom[15:, :] = light
        halves += [left_right, top_bottom]
    tiny = [resize_square(np.random.default_rng(seed).integers(0, 256, (2, 2, 3), dtype=np.uint8), 30)[..., 1]
            for seed in range(4)]
    images = [flat_pixel, *halves, *tiny]

    earlier, _ = candidate_pairs(perceptual_hashes(np.stack(images)))
    assert (earlier == 0).sum() >= 4  # nominated by the hash...

    assert flagged(images) == [False] * len(images)  # ...refused by the pixels


def test_distinct_digit_strokes_are_kept_though_the_hash_nominates_most_of_them():
    strokes = [stroke(seed) for seed in range(300)]
    assert len({image.tobytes() for image in strokes}) == 300

    _, later = candidate_pairs(perceptual_hashes(np.stack(strokes)))
    assert len(np.unique(later)) > 100  # the hash alone would drop every one of these

    assert not any(flagged(strokes))


def test_byte_identical_copies_of_a_simple_image_are_still_dropped():
    found = find_duplicates(np.stack([stroke(1), stroke(2), stroke(1), stroke(1)]))

    assert found.mask.tolist() == [False, False, True, True]
    assert found.original.tolist() == [-1, -1, 0, 0]


def test_local_difference_is_the_largest_3x3_mean_difference():
    pair = np.zeros((2, 9, 9), np.uint8)
    pair[1, 4, 4] = 90  # each neighbourhood around this pixel differs by 90 / 9
    pair[1, 0, 0] = 27  # a corner pixel is counted 4 times in its replicated-edge neighbourhood

    assert local_differences(pair, np.array([0]), np.array([1])).tolist() == [4 * 27 / 9]  # > 90 / 9


def test_threshold_is_inclusive_and_exact():
    base = np.uint64(0x0123_4567_89AB_CDEF)
    near = base ^ np.uint64(((1 << DEFAULT_MAX_DISTANCE) - 1) << 20)  # exactly the threshold apart
    far = base ^ np.uint64(((1 << DEFAULT_MAX_DISTANCE + 1) - 1) << 40)  # one bit more

    earlier, later = candidate_pairs(np.array([base, near, far], dtype=np.uint64))  # at the default threshold

    assert list(zip(earlier.tolist(), later.tolist())) == [(0, 1)]


def test_a_thousand_identical_frames_are_settled_as_copies_of_the_first():
    found = find_duplicates(np.zeros((1000, 30, 30), np.uint8))

    assert found.mask.sum() == 999 and (found.original[1:] == 0).all()


def test_200k_hashes_nominate_exactly_the_planted_near_duplicates():
    rng = np.random.default_rng(0)
    hashes = rng.integers(0, 2**64, 200_000, dtype=np.uint64)
    copies = rng.choice(np.arange(100_000, 200_000), 500, replace=False)
    sources = rng.choice(np.arange(0, 100_000), 500, replace=False)
    for index, source in zip(copies, sources):  # each a copy, 0 to 4 bits off, of an untouched earlier hash
        flips = rng.choice(64, rng.integers(0, 5), replace=False)
        hashes[index] = hashes[source] ^ np.uint64(sum(1 << int(bit) for bit in flips))

    earlier, later = candidate_pairs(hashes)

    assert sorted(zip(earlier.tolist(), later.tolist())) == sorted(zip(sources.tolist(), copies.tolist()))
