"""Specification of the concepts stage and `pipeline edit`: concept vectors found from tags, checked, and applied.

The fixture plants a difference the VAE must see: 64 flat-colored 24x24 pictures, every other one with a bright
square in its top-left quarter, tagged `square=yes/no` in a labels CSV, plus a `tint` tag unrelated to the pixels
and a `rare` tag on too few images to become a concept. One small VAE (fc, 15 quick epochs on 12x12 images) and
a 1-epoch conv colorizer are trained once; every test reads that folder.
"""
from __future__ import annotations

import csv
import itertools
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from helpers import (GRID_PADDING, assert_one_clear_error_line, cli, decoded_png, grid_cell, grid_size, latest_entry,
                     read_manifest, succeeded)
from stages import concepts as concepts_stage
from stages.concepts import ALPHAS, read_tags, roc_auc
from stages.luma import luma_uint8
from stages.sources import decode_file
from stages.checkpoints import load_vae

SIDE = 12
CELL, PAD = grid_cell(SIDE), GRID_PADDING  # one image's cell in a stages.viz grid, and the gutters
MIN_COUNT, ROWS, LATENT = 5, 4, 4
PARAMS = ("--set", "vae.arch=fc", "--set", f"vae.latent_dim={LATENT}", "--set", "vae.epochs=15",
          "--set", "vae.batch_size=8", "--set", "vae.lr=3e-3", "--set", "vae.beta=1", "--set", "vae.recon=bce",
          "--set", "vae.seed=0", "--set", "vae.channels=1", "--set", "colorize.arch=conv",
          "--set", "colorize.epochs=1", "--set", "colorize.batch_size=32",
          "--set", f"concepts.min_count={MIN_COUNT}", "--set", f"concepts.rows={ROWS}")


def planted_picture(index: int, rng: np.random.Generator) -> Image.Image:
    """A flat color, a small dark blob somewhere, and (even indices) a bright square in the top-left quarter."""
    pixels = np.empty((24, 24, 3), np.uint8)
    pixels[:] = rng.integers(30, 90, 3)
    y, x = rng.integers(4, 16, 2)
    pixels[y:y + 6, x:x + 6] = rng.integers(0, 100, 3)
    if index % 2 == 0:
        pixels[:12, :12] = 250
    return Image.fromarray(pixels)


@pytest.fixture(scope="module")
def planted(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("planted")
    folder = root / "squares"
    folder.mkdir()
    rng = np.random.default_rng(0)
    with open(root / "tags.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["file", "square", "tint", "rare"])
        for i in range(64):
            planted_picture(i, rng).save(folder / f"{i}.png")
            writer.writerow([f"squares/{i}.png", "yes" if i % 2 == 0 else "no", rng.choice(["red", "blue"]),
                             "x" if i < 3 else ""])
    outputs = root / "outputs"
    succeeded(cli(outputs, "prepare", "--source", folder, "--labels", root / "tags.csv", "--count", "all",
                  "--size", SIDE, "--test-fraction", "0.3", "--no-dedupe"))
    result = succeeded(cli(outputs, "run", "--stages", "vae,colorize,concepts", *PARAMS))
    entry = latest_entry(outputs, "concepts")
    return {"root": root, "folder": folder, "outputs": outputs, "output": result.output, "entry": entry,
            "table": json.loads((entry / "concepts.json").read_text()),
            "saved": np.load(entry / "concepts.npz", allow_pickle=False)}


def prepared_tags(planted) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray]:
    prepared = latest_entry(planted["outputs"], "prepare")
    split = np.load(prepared / "split.npz")
    return read_tags(prepared / "labels.csv"), split["train"], split["test"]


# ----- the concept vectors -------------------------------------------------------------------------------------------


def test_concepts_stage_ran_after_colorize_and_says_how_many_concepts(planted):
    assert "concepts: ran" in planted["output"]
    assert "4 concepts" in planted["output"]


def test_one_vector_of_the_latent_size_per_tag_with_enough_training_images(planted):
    saved, table = planted["saved"], planted["table"]

    assert list(saved["names"]) == sorted(table) == ["square=no", "square=yes", "tint=blue", "tint=red"]
    assert saved["vectors"].shape == (4, LATENT) and saved["vectors"].dtype == np.float32
    assert np.isfinite(saved["vectors"]).all() and (np.linalg.norm(saved["vectors"], axis=1) > 0).all()
    assert "rare=x" not in table, f"3 tagged images is below min_count={MIN_COUNT}"


def test_counts_are_those_of_the_tags_in_the_train_and_test_splits(planted):
    masks, train, test = prepared_tags(planted)

    for name, facts in planted["table"].items():
        assert facts["train_tagged"] == masks[name][train].sum()
        assert facts["train_untagged"] == len(train) - masks[name][train].sum()
        assert facts["test_tagged"] == masks[name][test].sum()
    assert list(planted["saved"]["train_tagged"]) == [planted["table"][n]["train_tagged"]
                                                       for n in planted["saved"]["names"]]


def test_vector_is_the_mean_code_of_tagged_minus_untagged_training_images_and_auc_is_its_test_separation(planted):
    masks, train, test = prepared_tags(planted)
    prepared = latest_entry(planted["outputs"], "prepare")
    vae, _ = load_vae(latest_entry(planted["outputs"], "vae") / "model.pt", torch.device("cpu"))
    gray = torch.from_numpy(np.load(prepared / "gray.npy")[:, None].astype(np.float32) / 255)
    with torch.no_grad():
        mu = vae.encode(gray)[0].numpy()

    for name, vector in zip(planted["saved"]["names"], planted["saved"]["vectors"]):
        tagged = masks[name]
        expected = mu[train][tagged[train]].mean(0) - mu[train][~tagged[train]].mean(0)
        assert np.allclose(vector, expected, atol=1e-5), name
        auc = roc_auc(mu[test] @ expected, tagged[test])
        assert planted["table"][name]["test_auc"] == pytest.approx(auc, abs=1e-6), name


def test_every_auc_is_finite_and_in_the_unit_interval(planted):
    _, _, test = prepared_tags(planted)

    for name, facts in planted["table"].items():
        assert 0 < facts["test_tagged"] < len(test), f"{name}: both kinds among the test images"
        assert np.isfinite(facts["test_auc"]) and 0.0 <= facts["test_auc"] <= 1.0, (name, facts["test_auc"])
        assert np.isfinite(facts["edit_consistency"])


def test_the_planted_square_separates_test_images_and_an_unrelated_tag_does_not(planted):
    table = planted["table"]

    assert table["square=yes"]["test_auc"] > 0.9
    assert table["square=no"]["test_auc"] > 0.9, "the opposite tag separates as well, in its own direction"
    assert table["tint=red"]["test_auc"] < 0.9 and table["tint=blue"]["test_auc"] < 0.9
    vectors = dict(zip(planted["saved"]["names"], planted["saved"]["vectors"]))
    assert np.dot(vectors["square=yes"], vectors["square=no"]) < 0, "yes and no point opposite ways"


def test_each_concept_has_a_gray_and_a_color_edit_grid_that_decode(planted):
    masks, _, test = prepared_tags(planted)

    for name, facts in planted["table"].items():
        rows = min(ROWS, int((~masks[name][test]).sum()))
        gray = decoded_png(planted["entry"] / facts["grid"])
        color = decoded_png(planted["entry"] / facts["grid_color"])
        assert facts["grid"] == f"concept_{concepts_stage.file_stem(name)}.png"
        for image in (gray, color):
            assert image.mode == "RGB" and image.size == grid_size(rows, len(ALPHAS), SIDE), (name, image.size)
        gray_pixels, color_pixels = np.asarray(gray).astype(int), np.asarray(color).astype(int)
        assert (gray_pixels[..., 0] == gray_pixels[..., 1]).all() and (gray_pixels[..., 1] == gray_pixels[..., 2]).all()
        assert np.abs(color_pixels[..., 0] - color_pixels[..., 2]).max() > 0, "the color grid is colored"
        assert gray_pixels.std() > 1, "not blank"


def test_concepts_manifest_records_the_vae_and_colorizer_it_was_built_from(planted):
    manifest = read_manifest(planted["entry"])

    assert manifest["inputs"]["upstream"] == {
        stage_name: latest_entry(planted["outputs"], stage_name).name for stage_name in ("prepare", "vae", "colorize")}
    assert manifest["metrics"]["concepts"] == 4
    assert "landing" not in json.dumps(planted["table"]), "the landing check is for the embedded faces only"


# ----- roc_auc -------------------------------------------------------------------------------------------------------


def brute_force_auc(scores: np.ndarray, positive: np.ndarray) -> float:
    """P(score of a positive > score of a negative) + P(tie) / 2, over every pair."""
    pairs = list(itertools.product(scores[positive], scores[~positive]))
    return sum(1.0 if p > n else 0.5 if p == n else 0.0 for p, n in pairs) / len(pairs)


@pytest.mark.parametrize("seed", range(8))
def test_roc_auc_equals_the_pairwise_count_with_ties_counting_half(seed):
    rng = np.random.default_rng(seed)
    size = int(rng.integers(2, 40))
    scores = rng.integers(0, 5, size).astype(float)  # few distinct values: many ties
    positive = rng.random(size) < 0.4
    positive[:2] = [True, False]

    assert roc_auc(scores, positive) == pytest.approx(brute_force_auc(scores, positive), abs=1e-12)


@pytest.mark.parametrize("scores, positive, expected", [
    ([0.1, 0.2, 0.8, 0.9], [False, False, True, True], 1.0),
    ([0.1, 0.2, 0.8, 0.9], [True, True, False, False], 0.0),
    ([3.0, 3.0, 3.0, 3.0], [True, False, True, False], 0.5),
    ([1.0, 2.0, 2.0, 3.0], [False, True, False, True], 0.875),
    ([-5.0, 1e9, 0.0], [False, True, False], 1.0),
])
def test_roc_auc_on_hand_checked_cases(scores, positive, expected):
    assert roc_auc(np.array(scores), np.array(positive)) == pytest.approx(expected)


# ----- pipeline edit -------------------------------------------------------------------------------------------------


def panels(path: Path) -> list[np.ndarray]:
    strip = np.asarray(decoded_png(path)).astype(float)
    return [strip[PAD:PAD + CELL, PAD + k * (CELL + PAD):PAD + k * (CELL + PAD) + CELL] for k in range(4)]


def test_edit_writes_a_strip_of_input_reconstruction_edited_and_colored(planted, tmp_path):
    picture = planted["folder"] / "1.png"  # no square
    output = tmp_path / "out.png"

    result = succeeded(cli(planted["outputs"], "edit", picture, "--concept", "square=yes", "--amount", "1.5",
                           "-o", output))

    assert f"wrote {output}" in result.output
    strip = decoded_png(output)
    assert strip.mode == "RGB" and strip.size == grid_size(1, 4, SIDE)
    given, reconstruction, edited, colored = panels(output)
    luma = luma_uint8(decode_file(picture, SIDE)).astype(float)
    assert np.array_equal(given[..., 0], np.kron(luma, np.ones((CELL // SIDE, CELL // SIDE))))
    for panel in (given, reconstruction, edited):
        assert (panel[..., 0] == panel[..., 2]).all(), "the first three panels are gray"
    assert np.abs(colored[..., 0] - colored[..., 2]).max() > 0, "the last panel is colored"


def test_edit_toward_square_brightens_the_corner_where_the_square_would_be(planted, tmp_path):
    output = tmp_path / "out.png"

    succeeded(cli(planted["outputs"], "edit", planted["folder"] / "3.png", "--concept", "square=yes",
                  "--amount", "1.5", "-o", output))

    _, reconstruction, edited, _ = panels(output)
    corner, rest = np.s_[:CELL // 2, :CELL // 2], np.s_[CELL // 2:, CELL // 2:]
    corner_gain = edited[corner].mean() - reconstruction[corner].mean()
    rest_change = edited[rest].mean() - reconstruction[rest].mean()
    assert corner_gain > 0 and corner_gain > abs(rest_change), (corner_gain, rest_change)


def test_edit_with_an_unknown_concept_lists_the_available_ones(planted, tmp_path):
    output = tmp_path / "out.png"

    result = cli(planted["outputs"], "edit", planted["folder"] / "1.png", "--concept", "hair=blonde", "-o", output)

    assert_one_clear_error_line(result, "unknown concept hair=blonde",
                                "available: square=no, square=yes, tint=blue, tint=red")
    assert not output.exists()


def text_file(folder: Path) -> Path:
    (folder / "notes.png").write_text("not a picture")
    return folder / "notes.png"


@pytest.mark.parametrize("make_picture, mention", [
    (text_file, "notes.png cannot be used"),
    (lambda folder: folder / "missing.png", "missing.png"),
    (lambda folder: folder, "check the path"),
])
def test_edit_of_something_that_is_not_a_picture_fails_in_one_line(planted, tmp_path, make_picture, mention):
    picture = make_picture(tmp_path)
    output = tmp_path / "out.png"

    result = cli(planted["outputs"], "edit", picture, "--concept", "square=yes", "-o", output)

    assert_one_clear_error_line(result, mention)
    assert not output.exists()


def test_edit_concept_without_a_value_is_a_usage_error_saying_how_to_write_it(planted, tmp_path):
    result = cli(planted["outputs"], "edit", planted["folder"] / "1.png", "--concept", "square", "-o",
                 tmp_path / "out.png")

    assert result.exit_code == 2
    assert_one_clear_error_line(result, "'square'", "TAG=VALUE")


def test_edit_before_any_concepts_exist_says_how_to_make_them(tmp_path, planted):
    result = cli(tmp_path / "empty", "edit", planted["folder"] / "1.png", "--concept", "square=yes")

    assert_one_clear_error_line(result, "no concepts entry", "pipeline run")
