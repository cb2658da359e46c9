"""Specification of `pipeline run --stages gan`: artifacts, opt-in, resume, conditional rows and user errors.

Speed: one small embedded set (48 faces, 19 held out) is prepared once per module; each GAN trains 3 epochs of
a width-4 DCGAN (a few seconds on one thread). torch runs on one thread (see conftest.py).
"""
from __future__ import annotations

import csv
import json
import re

import numpy as np
import pytest
import torch

import stages.gan
from helpers import (assert_one_clear_error_line, decoded_png, grid_size, interrupted_once, latest_entry, metrics_of,
                     succeeded, summary_lines, write_idx)
from pipeline.cli import DEFAULT_STAGES
from pipeline.runner import plan
from stages import viz
from stages.checkpoints import load_generator
from test_sizes_and_colour import strokes

IMAGE_SIDE = 30
PREPARE = ("prepare", "--count", "48", "--test-fraction", "0.4")
# Every parameter the tests rely on is set explicitly, so tuning the defaults in stages/params.py changes nothing.
GAN = ("--set", "gan.arch=dcgan", "--set", "gan.width=4", "--set", "gan.noise_dim=8", "--set", "gan.epochs=3",
       "--set", "gan.batch_size=16", "--set", "gan.lr=2e-4", "--set", "gan.seed=0")
ARTIFACTS = {"model.pt", "metrics.json", "history.json", "loss.png", "samples.png", "interpolation.png",
             "samples.npy", "interpolation.npy", "manifest.json"}


def test_gan_trains_and_writes_every_artifact(prepared, copy_of, pipeline, outputs):
    copy_of(prepared)

    result = succeeded(pipeline("run", "--stages", "gan", *GAN))

    assert set(summary_lines(result)) == {"gan"}, "the GAN needs only the prepared set"
    entry = latest_entry(outputs, "gan")
    assert ARTIFACTS <= {p.name for p in entry.iterdir()}
    history = json.loads((entry / "history.json").read_text())
    for curve in ("g_loss", "d_loss", "d_real", "d_fake"):
        assert len(history[curve]) == 3 and all(np.isfinite(history[curve]))
    assert all(0 < p < 1 for p in history["d_real"] + history["d_fake"])
    samples = np.load(entry / "samples.npy")
    assert samples.shape == (64, 1, IMAGE_SIDE, IMAGE_SIDE) and 0 <= samples.min() and samples.max() <= 1
    assert samples.std(0).mean() > 0, "different noise draws different images"
    assert np.load(entry / "interpolation.npy").shape == (stages.gan.INTERPOLATION_ROWS,
                                                          stages.gan.INTERPOLATION_STEPS, 1, IMAGE_SIDE, IMAGE_SIDE)
    assert decoded_png(entry / "samples.png").size == grid_size(8, 8, IMAGE_SIDE, viz._TARGET_CELL)
    metrics = metrics_of(entry)
    assert metrics["parameters"] > 0 and metrics["discriminator_parameters"] > 0 and metrics["diversity"] > 0
    saved = torch.load(entry / "model.pt", map_location="cpu", weights_only=True)
    generator, config = load_generator(entry / "model.pt", torch.device("cpu"))
    assert set(saved) == {"state_dict", "discriminator", "config"} and config.noise_dim == 8
    with torch.no_grad():
        redrawn = stages.gan.to_unit(generator(torch.zeros(1, 8)))
    assert redrawn.shape == (1, 1, IMAGE_SIDE, IMAGE_SIDE)


def test_gan_is_opt_in_and_not_part_of_the_default_run():
    default_plan = {spec.name for spec in plan(DEFAULT_STAGES.split(","))}

    assert "gan" not in default_plan and "vae" in default_plan
    assert "gan" in {spec.name for spec in plan(["gan"])}


def test_interrupted_gan_resumes_from_its_checkpoint(prepared, copy_of, pipeline, outputs, monkeypatch):
    copy_of(prepared)
    # training is over; the user presses ctrl-C while the grids are drawn
    monkeypatch.setattr(stages.gan, "write_grids", interrupted_once(stages.gan.write_grids))
    first = pipeline("run", "--stages", "gan", *GAN)
    assert first.exit_code == 130, first.output
    [checkpoint] = (outputs / "gan" / ".resume").glob("*/checkpoint.pt")
    saved = torch.load(checkpoint, map_location="cpu", weights_only=True)

    second = succeeded(pipeline("run", "--stages", "gan", *GAN))

    match = re.search(r"resuming from epoch (\d+) of 3", second.output)
    assert match and int(match.group(1)) == len(saved["history"]["g_loss"]) >= 1, second.output
    assert len(json.loads((latest_entry(outputs, "gan") / "history.json").read_text())["g_loss"]) == 3


def test_conditional_gan_draws_one_row_per_tag_value(prepared, copy_of, pipeline, outputs):
    copy_of(prepared)
    with open(latest_entry(outputs) / "labels.csv", newline="") as handle:
        hair = {row["hair"] for row in csv.DictReader(handle)} - {""}

    succeeded(pipeline("run", "--stages", "gan", *GAN, "--set", "gan.conditional=hair"))

    entry = latest_entry(outputs, "gan")
    assert np.load(entry / "samples.npy").shape[0] == 8 * len(hair)
    assert json.loads((entry / "manifest.json").read_text())["params"]["conditional"] == "hair"


def test_conditional_on_a_missing_column_is_one_clear_line(prepared, copy_of, pipeline):
    copy_of(prepared)

    result = pipeline("run", "--stages", "gan", *GAN, "--set", "gan.conditional=hat")

    assert_one_clear_error_line(result, "hat", "labels.csv", "gan.conditional")


def test_conditional_without_labels_is_one_clear_line(tmp_path, make_folder, pipeline):
    succeeded(pipeline("prepare", "--source", str(make_folder(12)), "--count", "12", "--test-fraction", "0.25"))

    result = pipeline("run", "--stages", "gan", *GAN, "--set", "gan.conditional=hair")

    assert_one_clear_error_line(result, "no labels", "--labels")


VAE_AND_COLORIZER = ("--set", "vae.arch=fc", "--set", "vae.latent_dim=4", "--set", "vae.epochs=2",
                     "--set", "colorize.arch=conv", "--set", "colorize.epochs=1")


def test_colorizer_alone_pulls_in_no_gan_but_with_gan_it_colors_the_gan_samples_too():
    assert "gan" not in {spec.name for spec in plan(["colorize"])}
    assert "gan_color" in {spec.name for spec in plan(["gan", "colorize"])}


@pytest.mark.slow
def test_vae_gan_colorize_run_colors_both_and_puts_them_side_by_side_on_the_page(prepared, copy_of, pipeline,
                                                                                 outputs):
    copy_of(prepared)

    result = succeeded(pipeline("run", "--stages", "vae,gan,colorize", *GAN, *VAE_AND_COLORIZER))

    assert {"vae", "gan", "colorize", "vae_color", "gan_color"} <= set(summary_lines(result))
    gan_entry, colored = latest_entry(outputs, "gan"), latest_entry(outputs, "gan_color")
    color = np.load(colored / "samples_color.npy")
    assert color.shape == (64, 3, IMAGE_SIDE, IMAGE_SIDE)
    luma = (color * np.array([0.299, 0.587, 0.114])[:, None, None]).sum(1, keepdims=True)
    assert np.abs(luma - np.load(gan_entry / "samples.npy")).mean() < 0.02, "exact luma: the GAN's gray, in color"
    page = (outputs / "index.html").read_text()
    section = page[page.index("VAE vs GAN"):]
    vae_entry = latest_entry(outputs, "vae")
    for image in (f"vae/{vae_entry.name}/samples.png", f"gan/{gan_entry.name}/samples.png",
                  f"gan_color/{colored.name}/samples_color.png", f"gan/{gan_entry.name}/interpolation.png"):
        assert f"src='{image}'" in section, image
    assert f"data-key='numbers.test_neg_elbo.vae'" in section
    assert f"data-key='numbers.diversity.gan'" in section


def test_status_of_an_opt_in_stage_says_it_would_run(prepared, copy_of, pipeline):
    copy_of(prepared)

    default, asked = succeeded(pipeline("status")), succeeded(pipeline("status", "--stages", "gan", *GAN))

    assert not re.search(r"^gan\b", default.output, re.MULTILINE)
    assert re.search(r"^gan\s+dcgan-w4-e3-\S+\s+would run", asked.output, re.MULTILINE), asked.output


def test_gan_trains_on_digits_prepared_from_an_idx_file(tmp_path, pipeline, outputs):
    """The MNIST path: `prepare` from an IDX file at 28x28 feeds the gan stage, which the judge scores."""
    write_idx(tmp_path / "train-images-idx3-ubyte", strokes(40))
    succeeded(pipeline("prepare", "--source", str(tmp_path / "train-images-idx3-ubyte"), "--size", "28",
                       "--count", "all", "--no-dedupe", "--test-fraction", "0.4"))

    succeeded(pipeline("run", "--stages", "gan", *GAN))

    entry = latest_entry(outputs, "gan")
    assert np.load(entry / "samples.npy").shape == (64, 1, 28, 28)
    assert decoded_png(entry / "samples.png").size == grid_size(8, 8, 28, viz._TARGET_CELL)
    metrics = metrics_of(entry)
    assert 0.0 <= metrics["c2st"] <= 1.0 and 0.0 <= metrics["coverage"] <= 1.0, "judged against 16 test digits"
