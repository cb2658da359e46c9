"""Specification of the colorize and vae_color stages: artifacts, metrics, exact luma and what re-runs when.

Speed: the StackNN colorizer's Linear layers grow with the image side (90 M parameters at 30x30), so everything
here runs on 12x12 faces (about 14 M). One VAE + colorizer is trained once and shared by the read-only tests;
tests that change the cache start from a copy of it. torch runs on one thread (see conftest.py).
"""
from __future__ import annotations

import json
import math
import shutil
from functools import partial
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import Result

import stages.colorize
import stages.metrics
import stages.vae
from helpers import (assert_one_clear_error_line, cli, decoded_png, grid_size, interrupt_fit_after, latest_entry,
                     metrics_of, must_not_run, read_manifest, succeeded)
from stages import viz
from stages.checkpoints import load_colorizer
from stages.luma import exact_luma

SIDE = 12
TEST_IMAGES = 19  # 48 faces with --test-fraction 0.4
PREPARE = ("prepare", "--count", "48", "--size", str(SIDE), "--test-fraction", "0.4")
VAE = ("--set", "vae.arch=fc", "--set", "vae.latent_dim=3", "--set", "vae.epochs=2", "--set", "vae.batch_size=16",
       "--set", "vae.lr=3e-3", "--set", "vae.seed=0")
COLORIZE = ("--set", "colorize.arch=stacknn", "--set", "colorize.epochs=4", "--set", "colorize.batch_size=16",
            "--set", "colorize.lr=1e-3", "--set", "colorize.noise_std=0.05", "--set", "colorize.luma_weight=1",
            "--set", "colorize.colorfulness_weight=0.25", "--set", "colorize.exact_luma=false", "--set", "colorize.seed=0",
            "--set", "colorize.residual=false")  # the seed's network alone, from its own start: the luma tie at work
ONE_EPOCH = ("--set", "colorize.epochs=1")
BT601 = (0.299, 0.587, 0.114)  # written out here, independently of stages.luma


# (width, height) of a stages.viz grid of SIDE x SIDE images, cells scaled as stages.viz scales them
expected_grid_size = partial(grid_size, side=SIDE, target=viz._TARGET_CELL)


def summary_line(result: Result, stage: str) -> str:
    [line] = [line for line in result.output.splitlines() if line.startswith(f"{stage}: ")]
    return line


@pytest.fixture(scope="module")
def trained(prepared, tmp_path_factory) -> tuple[Path, Result]:
    """(outputs, result) of `run --stages vae,colorize` on the shared set; read it, never change it."""
    outputs = tmp_path_factory.mktemp("trained") / "outputs"
    shutil.copytree(prepared, outputs, symlinks=True)
    return outputs, succeeded(cli(outputs, "run", "--stages", "vae,colorize", *VAE, *COLORIZE))


# ----- what a trained colorizer leaves behind ------------------------------------------------------------------------


def test_colorize_writes_model_metrics_history_and_grids(trained):
    outputs, result = trained
    entry = latest_entry(outputs, "colorize")

    assert summary_line(result, "colorize").startswith("colorize: ran")
    assert {"model.pt", "metrics.json", "history.json", "loss.png", "test_colorized.png"} <= {
        p.name for p in entry.iterdir()}
    shown = min(stages.colorize.TEST_GRID, TEST_IMAGES)
    grid = decoded_png(entry / "test_colorized.png")
    assert grid.mode == "RGB" and grid.size == expected_grid_size(3, shown), "rows: gray | colorized | truth"
    assert decoded_png(entry / "loss.png").mode == "RGB"
    saved = torch.load(entry / "model.pt", map_location="cpu", weights_only=True)
    assert {"arch": "stacknn", "size": SIDE, "exact_luma": False}.items() <= saved["config"].items()


def test_colorize_metrics_are_finite(trained):
    outputs, _ = trained
    metrics = metrics_of(latest_entry(outputs, "colorize"))

    for name in ("psnr", "ssim", "luma_mse", "colorfulness_ratio", "luma_mse_before_clipping", "color_auc",
                 "baseline_psnr", "baseline_color_auc", "psnr_margin"):
        assert math.isfinite(metrics[name]), name
    prepared = latest_entry(outputs, "prepare")
    test_color = np.load(prepared / "color.npy")[np.load(prepared / "split.npz")["test"]] / 255
    # the trivial colorizer, a flat mid-gray output, scored as stages.metrics scores: mean of per-image PSNR
    flat_gray_psnr = (10 * np.log10(1 / ((test_color - 0.5) ** 2).mean((1, 2, 3)))).mean()
    assert metrics["psnr"] > flat_gray_psnr, (metrics["psnr"], flat_gray_psnr)
    assert -1 <= metrics["ssim"] <= 1 and metrics["epochs"] == 4
    assert metrics["psnr_margin"] == pytest.approx(metrics["psnr"] - metrics["baseline_psnr"])
    verdict = "beats" if metrics["psnr_margin"] > 0 else "does not beat"
    assert metrics["headline"].startswith(f"{verdict} the average-color baseline")
    assert metrics["baseline"] in ("mean image", "mean per luma")
    assert 0 <= metrics["c2st"] <= 1 and 0 <= metrics["baseline_c2st"] <= 1, "the judge scored both"
    assert 0 <= metrics["luma_mse"] < 1 and metrics["colorfulness_ratio"] >= 0
    assert metrics["epochs"] == 4 and metrics["parameters"] > 0
    assert read_manifest(latest_entry(outputs, "colorize"))["metrics"] == metrics


def test_luma_loss_falls_during_training(trained):
    outputs, _ = trained
    history = json.loads((latest_entry(outputs, "colorize") / "history.json").read_text())

    assert len(history["test_luma_mse"]) == 4
    assert history["test_luma_mse"][-1] < history["test_luma_mse"][0]
    assert history["train_luma_mse"][-1] < history["train_luma_mse"][0]


@pytest.mark.parametrize("name, rows, columns", [
    ("samples_color.png", 8, 8),
    ("interpolation_color.png", stages.vae.INTERPOLATION_PAIRS, stages.vae.INTERPOLATION_STEPS + 2),
    ("reconstructions_color.png", 4, min(stages.vae.RECONSTRUCTIONS, TEST_IMAGES)),
])
def test_vae_outputs_are_colored_into_rgb_grids_of_the_same_layout(trained, name, rows, columns):
    outputs, result = trained
    entry = latest_entry(outputs, "vae_color")

    image = decoded_png(entry / name)

    assert summary_line(result, "vae_color").startswith("vae_color: ran")
    assert image.mode == "RGB"
    assert image.size == expected_grid_size(rows, columns)
    pixels = np.asarray(image).astype(int)
    assert (pixels[..., 0] != pixels[..., 1]).any() or (pixels[..., 1] != pixels[..., 2]).any(), "not gray"


def test_colored_traversal_keeps_one_labelled_row_per_latent_dimension(trained):
    outputs, _ = trained
    entry = latest_entry(outputs, "vae_color")
    grid_width, grid_height = expected_grid_size(3, stages.vae.TRAVERSAL_STEPS)

    image = decoded_png(entry / "traversal_color.png")

    assert image.mode == "RGB" and image.height == grid_height and image.width > grid_width
    assert np.load(entry / "traversal_color.npy").shape == (3, stages.vae.TRAVERSAL_STEPS, 3, SIDE, SIDE)


def test_colored_samples_are_the_vae_samples_in_color(trained):
    outputs, _ = trained
    gray = np.load(latest_entry(outputs, "vae") / "samples.npy")[:, 0]
    color = np.load(latest_entry(outputs, "vae_color") / "samples_color.npy")

    assert color.shape == (len(gray), 3, SIDE, SIDE)
    luma = sum(w * color[:, c] for c, w in enumerate(BT601))
    assert np.abs(luma - gray).mean() < 0.25, "the color follows the gray image's brightness"


# ----- colorfulness, the metric and the loss term ---------------------------------------------------------------------


def test_colorfulness_matches_hasler_and_suesstrunk_by_hand():
    red_green = torch.zeros(1, 3, 2, 2)
    red_green[0, 0, 0], red_green[0, 1, 1] = 1, 1  # top row pure red, bottom row pure green
    # rg = +-255 (std 255), yb = 127.5 everywhere (std 0, mean 127.5): 255 + 0.3 * 127.5
    assert stages.metrics.colorfulness(red_green).item() == pytest.approx(293.25, abs=1e-3)
    assert stages.metrics.colorfulness(torch.full((1, 3, 4, 4), 0.4)).item() < 0.01


def test_colorfulness_term_pulls_a_washed_out_output_towards_vivid():
    generator = torch.Generator().manual_seed(0)
    target = torch.rand(4, 3, 12, 12, generator=generator)
    gray = sum(w * target[:, c:c + 1] for c, w in enumerate(BT601))
    washed = (gray + 0.3 * (target - gray)).expand(-1, 3, -1, -1).clone()  # true hues, a third of the color
    params = stages.colorize.ColorizeParams(colorfulness_weight=0.25)

    def colorfulness_after_a_step(loss_of):
        output = washed.clone().requires_grad_()
        loss_of(output).backward()
        return stages.metrics.colorfulness(output.detach() - 0.5 * output.grad).mean().item()

    with_term = colorfulness_after_a_step(lambda out: stages.colorize.colorize_loss(out, target, gray, params)[0])
    mse_only = colorfulness_after_a_step(lambda out: (out - target).pow(2).mean())
    start = stages.metrics.colorfulness(washed).mean().item()
    assert with_term > mse_only > start, "the term adds a push towards vivid color on top of MSE's"
    flat = gray.expand(-1, 3, -1, -1).clone().requires_grad_()
    stages.colorize.colorize_loss(flat, target, gray, params)[0].backward()
    assert torch.isfinite(flat.grad).all(), "a perfectly gray output (colorfulness 0) still has a gradient"


# ----- exact luma ------------------------------------------------------------------------------------------------------


def test_mean_image_baseline_is_exact_only_where_every_image_has_the_mean_color():
    rng = np.random.default_rng(0)
    train = torch.from_numpy(rng.uniform(0.2, 0.8, (6, 3, SIDE, SIDE)).astype(np.float32))
    train_gray = sum(w * train[:, c:c + 1] for c, w in enumerate(BT601))
    mean = train.mean(0, keepdim=True)
    luma_of_mean = sum(w * mean[:, c:c + 1] for c, w in enumerate(BT601))
    same = mean.repeat(2, 1, 1, 1)
    colors = stages.colorize.baselines(train_gray, train, luma_of_mean.repeat(2, 1, 1, 1))["mean image"]
    assert stages.metrics.psnr_ssim(colors.numpy(), same.numpy())[0] > 60

    different = torch.from_numpy(rng.uniform(0, 1, (2, 3, SIDE, SIDE)).astype(np.float32))
    gray = sum(w * different[:, c:c + 1] for c, w in enumerate(BT601))
    colors = stages.colorize.baselines(train_gray, train, gray)["mean image"]
    baseline = stages.metrics.psnr_ssim(colors.numpy(), different.numpy())[0]
    shifted = (mean + gray - sum(w * mean[:, c:c + 1] for c, w in enumerate(BT601))).clamp(0, 1)
    by_hand = np.mean([10 * math.log10(1 / float((s - d).pow(2).mean())) for s, d in zip(shifted, different)])
    assert baseline == pytest.approx(by_hand, abs=1e-3) and baseline < 30


def test_exact_luma_shift_makes_luma_equal_gray_before_clipping():
    generator = torch.Generator().manual_seed(0)
    color = torch.rand(8, 3, 12, 12, generator=generator) * 1.4 - 0.2  # some channels outside [0,1]
    gray = torch.rand(8, 1, 12, 12, generator=generator)

    shifted = exact_luma(color, gray)

    luma = sum(w * shifted[:, c:c + 1] for c, w in enumerate(BT601))
    assert shifted.shape == color.shape
    assert (luma - gray).abs().max().item() <= 1e-6
    chroma_before = color - color.mean(1, keepdim=True)
    chroma_after = shifted - shifted.mean(1, keepdim=True)
    assert torch.allclose(chroma_before, chroma_after, atol=1e-6), "all three channels move by the same amount"


def test_exact_luma_option_makes_the_colorizer_keep_the_gray_levels(trained, copy_of, pipeline, outputs, monkeypatch):
    copy_of(trained[0])
    plain = metrics_of(latest_entry(outputs, "colorize"))
    monkeypatch.setattr(stages.vae, "run", must_not_run("vae"))

    result = succeeded(pipeline("run", "--stages", "colorize", *VAE, *COLORIZE, *ONE_EPOCH,
                                "--set", "colorize.exact_luma=true"))

    metrics = metrics_of(latest_entry(outputs, "colorize"))
    assert "colorize.exact_luma False -> True" in summary_line(result, "colorize")
    assert metrics["luma_mse_before_clipping"] <= 1e-6
    assert plain["luma_mse_before_clipping"] > 1e-4, "without the option the luma is only learned, not exact"


# ----- what re-runs when ------------------------------------------------------------------------------------------------


def test_changed_vae_param_reuses_colorizer(trained, copy_of, pipeline, outputs, monkeypatch):
    copy_of(trained[0])
    colorizer = latest_entry(outputs, "colorize")
    monkeypatch.setattr(stages.colorize, "run", must_not_run("the colorizer"))

    result = succeeded(pipeline("run", "--stages", "vae,colorize", *VAE, *COLORIZE, "--set", "vae.latent_dim=2"))

    assert summary_line(result, "vae").startswith("vae: ran")
    assert "vae.latent_dim 3 -> 2" in summary_line(result, "vae")
    assert summary_line(result, "colorize").startswith(f"colorize: cached (key {colorizer.name})")
    assert summary_line(result, "vae_color").startswith("vae_color: ran")
    assert "vae changed" in summary_line(result, "vae_color")
    colored = np.load(latest_entry(outputs, "vae_color") / "traversal_color.npy")
    assert colored.shape[0] == 2, "the new VAE's two latent dimensions were colored"


def test_changed_colorize_param_retrains_colorizer_and_reuses_vae(trained, copy_of, pipeline, outputs, monkeypatch):
    copy_of(trained[0])
    vae = latest_entry(outputs, "vae")
    monkeypatch.setattr(stages.vae, "run", must_not_run("the VAE"))

    result = succeeded(pipeline("run", "--stages", "vae,colorize", *VAE, *COLORIZE, *ONE_EPOCH,
                                "--set", "colorize.noise_std=0.1"))

    assert summary_line(result, "vae").startswith(f"vae: cached (key {vae.name})")
    assert summary_line(result, "colorize").startswith("colorize: ran")
    assert "colorize.noise_std 0.05 -> 0.1" in summary_line(result, "colorize")
    assert summary_line(result, "vae_color").startswith("vae_color: ran")
    assert read_manifest(latest_entry(outputs, "colorize"))["params"]["noise_std"] == 0.1


@pytest.mark.slow
def test_colorize_alone_trains_the_missing_vae_first(prepared, copy_of, pipeline, outputs):
    """vae_color follows colorize and needs a VAE, so asking for colorize alone trains the VAE too."""
    copy_of(prepared)

    result = succeeded(pipeline("run", "--stages", "colorize", *VAE, *COLORIZE, *ONE_EPOCH))

    stages_in_order = [line.split(":")[0] for line in result.output.splitlines()
                       if line.split(":")[0] in ("vae", "colorize", "vae_color") and ": ran" in line]
    assert stages_in_order == ["vae", "colorize", "vae_color"], result.output
    for stage in ("vae", "colorize", "vae_color"):
        assert (latest_entry(outputs, stage) / "manifest.json").is_file()


@pytest.mark.slow
def test_interrupted_colorizer_resumes_where_it_stopped(prepared, copy_of, pipeline, outputs, monkeypatch):
    copy_of(prepared)
    conv = (*COLORIZE, "--set", "colorize.arch=conv")  # a small model: a resume checkpoint after every epoch
    monkeypatch.setattr(stages.colorize, "fit", interrupt_fit_after(stages.colorize.fit, epochs=2))
    assert pipeline("run", "--stages", "colorize", *VAE, *conv).exit_code == 130
    monkeypatch.undo()
    [checkpoint] = (outputs / "colorize" / ".resume").glob("*/checkpoint.pt")
    saved = torch.load(checkpoint, map_location="cpu", weights_only=True)
    assert not (outputs / "colorize" / "latest").exists()

    resumed = succeeded(pipeline("run", "--stages", "colorize", *VAE, *conv))

    assert "colorize: resuming from epoch 2 of 4" in resumed.output
    assert "\ncolorize: ran" in resumed.output
    history = json.loads((latest_entry(outputs, "colorize") / "history.json").read_text())
    assert history["train"][:2] == saved["train"] and len(history["train"]) == 4
    assert not checkpoint.parent.exists(), "publishing removes the resume checkpoint"


@pytest.mark.slow
def test_conv_colorizer_trains_with_far_fewer_parameters(trained, copy_of, pipeline, outputs):
    copy_of(trained[0])
    stacknn = metrics_of(latest_entry(outputs, "colorize"))

    succeeded(pipeline("run", "--stages", "colorize", *VAE, *COLORIZE, *ONE_EPOCH, "--set", "colorize.arch=conv"))

    entry = latest_entry(outputs, "colorize")
    conv = metrics_of(entry)
    assert read_manifest(entry)["params"]["arch"] == "conv"
    assert math.isfinite(conv["psnr"]) and math.isfinite(conv["luma_mse"])
    assert conv["parameters"] * 10 < stacknn["parameters"]
    assert decoded_png(entry / "test_colorized.png").size == expected_grid_size(
        3, min(stages.colorize.TEST_GRID, TEST_IMAGES))
    model, config = load_colorizer(entry / "model.pt", torch.device("cpu"))
    with torch.no_grad():
        assert model(torch.rand(2, 1, SIDE, SIDE)).shape == (2, 3, SIDE, SIDE)


# ----- the classify loss and conditioning on a tag ---------------------------------------------------------------------


@pytest.mark.parametrize("colorizer", [("colorize.residual=true",),
                                       ("colorize.arch=conv", "colorize.loss=classify")], ids=["stacknn", "conv"])
def test_hair_conditioned_colorizer_reports_tag_accuracy_and_colors_samples_per_hair(
        trained, copy_of, pipeline, outputs, colorizer):
    copy_of(trained[0])

    succeeded(pipeline("run", "--stages", "colorize", *VAE, *COLORIZE, *ONE_EPOCH,
                       *(arg for s in (*colorizer, "colorize.condition=hair") for arg in ("--set", s))))

    metrics = metrics_of(latest_entry(outputs, "colorize"))
    for name in ("conditioned", "no_tag", "true_color", "baseline"):
        assert 0 <= metrics[f"hair_accuracy_{name}"] <= 1, name
    by_tag = metrics["hair_accuracy_by_tag"]
    assert sum(row["test_faces"] for row in by_tag.values()) == TEST_IMAGES, "every test face has a hair tag"
    assert "hair read back from" in metrics["headline"]
    _, config = load_colorizer(latest_entry(outputs, "colorize") / "model.pt", torch.device("cpu"))
    assert config.condition == "hair" and len(config.condition_values) >= 2 and set(by_tag) <= set(
        config.condition_values)
    if config.arch == "conv":
        assert config.classes > 1
        assert metrics["luma_mse_before_clipping"] <= 1e-6, "chroma added to the gray input keeps its luma exactly"
    grid = decoded_png(latest_entry(outputs, "vae_color") / "samples_by_hair.png")
    assert grid.size[1] == expected_grid_size(len(config.condition_values) + 1, 8)[1], "a row per hair, and no tag"


@pytest.mark.parametrize("setting, mentions", [
    (("colorize.condition=nosuchtag",), ("colorize.condition=nosuchtag", "labels.csv", "hair")),
    (("colorize.arch=stacknn", "colorize.loss=classify"), ("colorize.arch=conv",)),
])
def test_a_colorizer_setting_that_cannot_work_is_one_clear_line(trained, copy_of, pipeline, setting, mentions):
    copy_of(trained[0])
    conv = () if "colorize.arch=stacknn" in setting else ("--set", "colorize.arch=conv")

    result = pipeline("run", "--stages", "colorize", *VAE, *COLORIZE, *ONE_EPOCH, *conv,
                      *(arg for s in setting for arg in ("--set", s)))

    assert_one_clear_error_line(result, *mentions)


def test_condition_on_a_set_without_labels_is_one_clear_line(make_folder, pipeline):
    succeeded(pipeline("prepare", "--source", make_folder(12), "--count", "all", "--size", str(SIDE),
                       "--test-fraction", "0.25"))

    result = pipeline("run", "--stages", "colorize", *VAE, *COLORIZE, *ONE_EPOCH, "--set", "colorize.arch=conv",
                      "--set", "colorize.condition=hair")

    assert_one_clear_error_line(result, "colorize.condition=hair", "no labels.csv", "--labels")
