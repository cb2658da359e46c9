"""Behaviour of the built-in procedural face set (stages/faces.py)."""

import numpy as np
import pytest
from PIL import Image

from stages import faces
from stages.faces import FACE_SIZE, FACTORS, face_factors, generate_face

N_SCAN = 160  # indices rendered by the pixel-level tests


@pytest.fixture(scope="module")
def rendered():
    return [generate_face(i) for i in range(N_SCAN)]


def test_shape_dtype_and_labels(rendered):
    img, f = rendered[0]
    assert img.shape == (FACE_SIZE, FACE_SIZE, 3) and img.dtype == np.uint8
    assert set(f) == set(FACTORS)
    for name, value in f.items():
        assert value in FACTORS[name]


def test_required_factor_values_exist():
    assert {"black", "brown", "blonde", "red", "pink", "blue", "silver", "green", "purple"} <= set(FACTORS["hair"])
    assert set(FACTORS["hair_length"]) == {"short", "medium", "long"}
    assert set(FACTORS["direction"]) == {"left", "front", "right"}
    assert len(FACTORS["eyes"]) >= 5 and len(FACTORS["skin"]) >= 3
    assert len(FACTORS["fringe"]) >= 3 and len(FACTORS["mouth"]) >= 3
    assert len(FACTORS["background"]) >= 3


def test_deterministic_and_labels_match(rendered):
    for i in (0, 7, 12345):
        a, fa = generate_face(i)
        b, fb = generate_face(i)
        assert a.tobytes() == b.tobytes() and fa == fb
        assert face_factors(i) == fa
    assert rendered[3][0].tobytes() == generate_face(3)[0].tobytes()


def test_different_indices_differ(rendered):
    hashes = {img.tobytes() for img, _ in rendered}
    assert len(hashes) == len(rendered)


def test_negative_index_rejected():
    with pytest.raises(ValueError):
        generate_face(-1)


def test_every_factor_value_appears_roughly_uniformly():
    labels = [face_factors(i) for i in range(600)]
    for name, values in FACTORS.items():
        counts = {v: sum(f[name] == v for f in labels) for v in values}
        expected = 600 / len(values)
        assert min(counts.values()) > 0.5 * expected, (name, counts)
        assert max(counts.values()) < 1.6 * expected, (name, counts)


def test_factors_are_independent_of_each_other():
    labels = [face_factors(i) for i in range(1200)]
    blonde = [f for f in labels if f["hair"] == "blonde"]
    share_left = sum(f["direction"] == "left" for f in blonde) / len(blonde)
    assert 0.2 < share_left < 0.47  # ~1/3 if hair and direction are independent


def _top_of_head(img):
    # Rows 7..13 around the centre are always the hair cap (head is near-centred, top cropped).
    return img[7:14, 36:60].reshape(-1, 3).astype(float).mean(axis=0)


def test_hair_color_visible_in_pixels(rendered):
    seen = {"blonde": 0, "blue": 0, "green": 0}
    for img, f in rendered:
        r, g, b = _top_of_head(img)
        if f["hair"] == "blonde":
            assert (r + g) / 2 - b > 40, (f, r, g, b)
        elif f["hair"] == "blue":
            assert b - r > 40 and b - g > 30, (f, r, g, b)
        elif f["hair"] == "green":
            assert g - r > 30 and g - b > 30, (f, r, g, b)
        else:
            continue
        seen[f["hair"]] += 1
    assert min(seen.values()) >= 5, seen


def test_dark_hair_darker_than_silver(rendered):
    luma = {"black": [], "silver": []}
    for img, f in rendered:
        if f["hair"] in luma:
            luma[f["hair"]].append(_top_of_head(img).mean())
    assert luma["black"] and luma["silver"]
    assert max(luma["black"]) + 40 < min(luma["silver"])


def _skin_centre_x(img, f):
    skin = np.array(faces._SKIN[f["skin"]])
    mask = np.abs(img.astype(int) - skin).max(axis=-1) <= 30
    assert mask.sum() > 300, f  # the face is large and skin-colored
    return np.nonzero(mask)[1].mean()


def test_direction_moves_face_mass(rendered):
    """'left' = face turned towards the image's left: skin mass sits further left."""
    xs = {"left": [], "front": [], "right": []}
    for img, f in rendered:
        xs[f["direction"]].append(_skin_centre_x(img, f))
    mean = {k: float(np.mean(v)) for k, v in xs.items()}
    assert min(len(v) for v in xs.values()) >= 20
    assert mean["left"] < mean["front"] < mean["right"], mean
    assert mean["right"] - mean["left"] > 3.0, mean


def test_not_flat_at_30x30(rendered):
    for img, f in rendered[:60]:
        small = Image.fromarray(img).resize((30, 30), Image.BOX)
        luma = np.asarray(small.convert("L"), dtype=float)
        assert luma.std() > 15, f
        color = np.asarray(small, dtype=float)
        assert np.abs(color[..., 0] - color[..., 2]).mean() > 5  # not grey either
