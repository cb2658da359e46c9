"""Specification of other image sizes, color training, MNIST-style IDX input and centre crops, end to end.

Each scenario is one small run: 40 colored shapes at 64x64 through a color conv VAE; 60 strokes in an IDX file
at 28x28 through a 2-D VAE; a handful of framed pictures prepared with and without a centre crop.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

import stages.vae
from helpers import cli, decoded_png, grid_size, latest_entry, read_manifest, shapes_picture, succeeded, write_idx
from stages.checkpoints import load_vae
from stages.models import decode_images

COLOR_VAE = ("--set", "vae.channels=3", "--set", "vae.arch=conv", "--set", "vae.latent_dim=4",
              "--set", "vae.epochs=2", "--set", "vae.batch_size=16", "--set", "vae.seed=0")


# ----- 64x64 color ---------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def color_run(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("color")
    folder = root / "shapes"
    folder.mkdir()
    for i in range(40):
        shapes_picture(i, side=80).save(folder / f"{i}.png")
    outputs = root / "outputs"
    succeeded(cli(outputs, "prepare", "--source", folder, "--count", "all", "--size", "64", "--no-dedupe"))
    first = succeeded(cli(outputs, "run", "--stages", "vae", *COLOR_VAE))
    both = succeeded(cli(outputs, "run", "--stages", "vae,colorize,concepts", *COLOR_VAE))
    return {"outputs": outputs, "first": first.output, "both": both.output, "entry": latest_entry(outputs, "vae"),
            "test": len(np.load(latest_entry(outputs) / "split.npz")["test"])}


@pytest.mark.slow
def test_color_vae_trains_on_64px_rgb_and_says_so_in_its_folder_name(color_run):
    entry = color_run["entry"]

    assert "vae: ran" in color_run["first"]
    assert entry.name.startswith("conv-z4-e2-rgb-")
    config = torch.load(entry / "model.pt", map_location="cpu", weights_only=True)["config"]
    assert (config["size"], config["channels"], config["arch"]) == (64, 3, "conv")
    assert np.load(entry / "samples.npy").shape == (stages.vae.SAMPLES, 3, 64, 64)
    assert np.load(entry / "reconstructions.npy").shape == (2, min(stages.vae.RECONSTRUCTIONS, color_run["test"]),
                                                           3, 64, 64)


@pytest.mark.slow
@pytest.mark.parametrize("name, rows, columns", [
    ("samples.png", 8, 8),
    ("reconstructions.png", 2, None),
    ("interpolation.png", None, stages.vae.INTERPOLATION_STEPS + 2),
])
def test_color_grids_are_rgb_with_64px_cells(color_run, name, rows, columns):
    test = color_run["test"]
    rows = rows or max(1, min(stages.vae.INTERPOLATION_PAIRS, test // 2))
    columns = columns or min(stages.vae.RECONSTRUCTIONS, test)

    image = decoded_png(color_run["entry"] / name)

    assert image.mode == "RGB"
    assert image.size == grid_size(rows, columns, 64), "64 px images are drawn 1:1, not scaled down"
    pixels = np.asarray(image).astype(int)
    assert max(np.abs(pixels[..., 0] - pixels[..., 1]).max(), np.abs(pixels[..., 1] - pixels[..., 2]).max()) > 2, \
        f"{name} is gray: a color VAE draws color"


@pytest.mark.slow
def test_decoded_samples_have_distinct_channels(color_run):
    # the decoder's colors, over the whole latent space (the prior), not only where the few training codes are
    model, _ = load_vae(color_run["entry"] / "model.pt", torch.device("cpu"))
    z = torch.randn(64, model.mu.out_features, generator=torch.Generator().manual_seed(0))
    samples = decode_images(model, z).detach().numpy()

    assert np.abs(samples[:, 0] - samples[:, 2]).mean() > 0.01


@pytest.mark.slow
def test_asking_for_colorize_with_a_color_vae_explains_why_it_is_skipped(color_run):
    outputs, lines = color_run["outputs"], color_run["both"].splitlines()

    assert any(line.startswith(f"vae: cached (key {color_run['entry'].name})") for line in lines), lines
    for stage_name in ("colorize", "vae_color", "concepts"):
        skipped = [line for line in lines if line.startswith(f"{stage_name}: skipped (")]
        assert len(skipped) == 1 and "vae.channels=3" in skipped[0], lines
        assert not (outputs / stage_name / "latest").exists(), f"nothing was built for {stage_name}"


# ----- IDX, 28x28, 2-D latent space ----------------------------------------------------------------------------------


def strokes(count: int) -> np.ndarray:
    """(count, 28, 28) uint8: one white line each, at seeded random positions on black."""
    rng = np.random.default_rng(0)
    images = []
    for _ in range(count):
        picture = Image.new("L", (28, 28), 0)
        start, end = (tuple(int(v) for v in rng.integers(3, 25, 2)) for _ in range(2))
        ImageDraw.Draw(picture).line([start, end], fill=255, width=3)
        images.append(np.asarray(picture))
    return np.stack(images)


@pytest.fixture(scope="module")
def idx_run(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("idx")
    images = strokes(60)
    write_idx(root / "train-images-idx3-ubyte", images)
    outputs = root / "outputs"
    succeeded(cli(outputs, "prepare", "--source", root / "train-images-idx3-ubyte", "--size", "28",
                  "--count", "all", "--no-dedupe"))
    succeeded(cli(outputs, "run", "--stages", "vae", "--set", "vae.latent_dim=2", "--set", "vae.arch=fc",
                  "--set", "vae.epochs=2", "--set", "vae.batch_size=16", "--set", "vae.channels=1"))
    return {"outputs": outputs, "images": images}


def test_idx_file_is_prepared_pixel_for_pixel_at_its_own_size(idx_run):
    prepared = latest_entry(idx_run["outputs"])

    gray = np.load(prepared / "gray.npy")
    color = np.load(prepared / "color.npy")
    assert gray.shape == (60, 28, 28)
    assert np.abs(gray.astype(int) - idx_run["images"]).max() <= 1, "28 -> 28 keeps every pixel"
    assert (color[..., 0] == color[..., 2]).all(), "a gray source stays gray in color.npy"
    assert read_manifest(prepared)["metrics"]["kept"] == 60


def test_two_dimensional_vae_on_idx_draws_a_15_by_15_manifold(idx_run):
    entry = latest_entry(idx_run["outputs"], "vae")
    side = stages.vae.MANIFOLD_SIDE

    assert side == 15
    assert decoded_png(entry / "manifold.png").size == grid_size(side, side, 28)
    assert np.load(entry / "manifold.npy").shape == (side * side, 1, 28, 28)
    assert entry.name.startswith("fc-z2-e2-")


# ----- centre crop and cache keys ------------------------------------------------------------------------------------

BORDER, CENTRES = (20, 40, 200), [(220, 30, 30), (30, 200, 40), (240, 220, 20), (250, 250, 250)]


@pytest.fixture(scope="module")
def framed(tmp_path_factory) -> Path:
    """Pictures 80x60 (not square): a blue frame around a central 44x44 square of one other color each.

    center:0.5 keeps the central 30x30 of the 60x60 centre square, 7 px inside the colored square on each side:
    more than the reach of the resampling filter at --size 15 (a 2x shrink), so no frame color bleeds in."""
    folder = tmp_path_factory.mktemp("crop") / "framed"
    folder.mkdir()
    for i, centre in enumerate(CENTRES):
        picture = Image.new("RGB", (80, 60), BORDER)
        picture.paste(centre, (18, 8, 62, 52))
        picture.save(folder / f"{i}.png")
    return folder


def prepared_with(outputs: Path, folder: Path, *options: str) -> Path:
    succeeded(cli(outputs, "prepare", "--source", folder, "--count", "all", "--no-dedupe", *options))
    return latest_entry(outputs)


def near(pixels: np.ndarray, color) -> np.ndarray:
    return (np.abs(pixels.astype(int) - np.array(color)) <= 12).all(-1)


def test_centre_crop_keeps_the_centre_and_drops_the_frame(framed, tmp_path):
    cropped = prepared_with(tmp_path / "outputs", framed, "--size", "15", "--crop", "center:0.5")
    whole = prepared_with(tmp_path / "outputs", framed, "--size", "15")

    cropped_pixels, whole_pixels = np.load(cropped / "color.npy"), np.load(whole / "color.npy")
    assert not near(cropped_pixels, BORDER).any(), "no pixel of the frame survives the crop"
    for i, centre in enumerate(CENTRES):
        assert near(cropped_pixels[i], centre).all(), "the crop is the centre color throughout"
        assert near(whole_pixels[i], BORDER).any() and near(whole_pixels[i], centre).any(), "uncropped: both"
    assert read_manifest(cropped)["params"]["crop"] == 0.5


def test_every_size_and_crop_gets_its_own_readable_cache_key_and_so_does_everything_downstream(framed, tmp_path):
    outputs = tmp_path / "outputs"
    variants = [("--size", "10"), ("--size", "16"), ("--size", "10", "--crop", "center:0.5"),
                ("--size", "10", "--crop", "center:0.75")]
    names, vae_keys = [], []

    for options in variants:
        names.append(prepared_with(outputs, framed, *options).name)
        status = succeeded(cli(outputs, "status")).output
        vae_keys.append(next(line.split()[1] for line in status.splitlines() if line.startswith("vae ")))

    assert [name.rsplit("-", 1)[0] for name in names] == [
        "framed-nall-s10", "framed-nall-s16", "framed-nall-s10-c0.5", "framed-nall-s10-c0.75"]
    assert len(set(names)) == len(set(vae_keys)) == len(variants), (names, vae_keys)
    assert len({name.rsplit("-", 1)[1] for name in names}) == len(variants), "the hashes differ too"
