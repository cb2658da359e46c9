"""Specification of `pipeline run --stages vae`: artifacts, metrics, caching, resume, determinism and user errors.

Speed: one small embedded set (48 faces, 30x30, 19 held out for testing) is prepared once; one 5-epoch VAE is
trained once and shared by the tests that only read it. Tests that change the cache start from a copy of that
folder. torch runs on one thread (see conftest.py).
"""
from __future__ import annotations

import json
import math
import re
import shutil
from dataclasses import asdict
from functools import partial
from pathlib import Path

import numpy as np
import pytest
import torch

import stages.metrics
import stages.vae
from helpers import (assert_one_clear_error_line, cli, decoded_png, grid_size, interrupt_fit_after, latest_entry,
                     interrupted_once, metrics_of, must_not_run, read_manifest, succeeded)
from pipeline.cache import Cache
from stages import viz
from stages.checkpoints import load_vae
from stages.registry import STAGE_NAMES

IMAGE_SIDE = 30
TEST_IMAGES = 19  # 48 faces with --test-fraction 0.4
PREPARE = ("prepare", "--count", "48", "--test-fraction", "0.4")
# Every parameter the tests rely on is set explicitly, so tuning the defaults in stages/params.py changes nothing.
VAE = ("--set", "vae.arch=fc", "--set", "vae.latent_dim=4", "--set", "vae.epochs=5", "--set", "vae.batch_size=16",
       "--set", "vae.lr=3e-3", "--set", "vae.beta=1", "--set", "vae.recon=bce", "--set", "vae.seed=0")
SHORT = ("--set", "vae.epochs=2")  # later --set wins: a 2-epoch variant of VAE
TIMING_METRICS = {"train_seconds", "images_per_second", "headline"}
ARTIFACTS = {"model.pt", "metrics.json", "history.json", "loss.png", "reconstructions.png", "samples.png",
             "interpolation.png", "traversal.png", "reconstructions.npy", "reconstruction_indices.npy",
             "samples.npy", "interpolation.npy", "traversal.npy", "traversal_dims.npy", "traversal_labels.json",
             "manifest.json"}


# ----- helpers --------------------------------------------------------------------------------------------------------


# (width, height) of a stages.viz grid of IMAGE_SIDE x IMAGE_SIDE images, cells scaled as stages.viz scales them
expected_grid_size = partial(grid_size, side=IMAGE_SIDE, target=viz._TARGET_CELL)


def assert_nothing_published(outputs: Path, stage: str = "vae") -> None:
    assert Cache(outputs).entries(stage) == []
    assert not (outputs / stage / "latest").is_symlink()
    assert list((outputs / stage).glob(".staging-*")) == []


def comparable(metrics: dict) -> dict:
    return {k: v for k, v in metrics.items() if k not in TIMING_METRICS}


# ----- shared, read-only results -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def trained(prepared, tmp_path_factory) -> tuple[Path, Path, str]:
    """(outputs, vae entry, run output) of the 5-epoch VAE on the shared set; read it, never change it."""
    outputs = tmp_path_factory.mktemp("trained") / "outputs"
    shutil.copytree(prepared, outputs, symlinks=True)
    result = succeeded(cli(outputs, "run", "--stages", "vae", *VAE))
    return outputs, latest_entry(outputs, "vae"), result.output


def history_of(entry: Path) -> dict:
    return json.loads((entry / "history.json").read_text())


# ----- what a trained VAE leaves behind ------------------------------------------------------------------------------


def test_training_writes_every_artifact(trained):
    _, entry, output = trained

    assert "vae: ran" in output
    assert ARTIFACTS <= {p.name for p in entry.iterdir()}
    assert not (entry / "manifold.png").exists(), "the manifold is drawn only for a 2-D latent space"


@pytest.mark.parametrize("name, rows, columns", [
    ("samples.png", 8, 8),
    ("reconstructions.png", 2, min(stages.vae.RECONSTRUCTIONS, TEST_IMAGES)),
    ("interpolation.png", stages.vae.INTERPOLATION_PAIRS, stages.vae.INTERPOLATION_STEPS + 2),
])
def test_each_grid_decodes_with_the_expected_rows_and_columns(trained, name, rows, columns):
    _, entry, _ = trained

    image = decoded_png(entry / name)

    assert image.mode == "RGB"
    assert image.size == expected_grid_size(rows, columns)
    assert np.asarray(image).std() > 1, f"{name} is blank"


def test_traversal_has_one_labelled_row_per_latent_dimension(trained):
    _, entry, _ = trained
    latent_dim = read_manifest(entry)["params"]["latent_dim"]
    grid_width, grid_height = expected_grid_size(latent_dim, stages.vae.TRAVERSAL_STEPS)

    image = decoded_png(entry / "traversal.png")

    assert image.height == grid_height
    assert image.width > grid_width, "the row labels add a left margin"
    assert np.load(entry / "traversal.npy").shape == (latent_dim, stages.vae.TRAVERSAL_STEPS, 1, 30, 30)
    assert sorted(np.load(entry / "traversal_dims.npy").tolist()) == list(range(latent_dim))


def test_loss_chart_draws_the_train_and_test_curves(trained):
    _, entry, _ = trained

    chart = np.asarray(decoded_png(entry / "loss.png").convert("RGB"))

    for name, color in (("train", (31, 119, 180)), ("test", (214, 39, 40))):  # stages.viz's first two line colors
        drawn = (chart[30:320, 70:620] == color).all(-1).sum()  # inside the plot frame, legend excluded
        assert drawn > 50, f"no {name} curve in the plot area"


def test_arrays_hold_the_images_drawn_in_the_grids(trained):
    _, entry, _ = trained

    samples = np.load(entry / "samples.npy")
    reconstructions = np.load(entry / "reconstructions.npy")
    interpolation = np.load(entry / "interpolation.npy")

    assert samples.shape == (stages.vae.SAMPLES, 1, 30, 30)
    assert reconstructions.shape == (2, min(stages.vae.RECONSTRUCTIONS, TEST_IMAGES), 1, 30, 30)
    assert interpolation.shape == (stages.vae.INTERPOLATION_PAIRS, stages.vae.INTERPOLATION_STEPS + 2, 1, 30, 30)
    for array in (samples, reconstructions, interpolation):
        assert np.isfinite(array).all() and array.min() >= 0 and array.max() <= 1


def test_metrics_are_finite_and_in_range(trained):
    _, entry, _ = trained
    latent_dim = read_manifest(entry)["params"]["latent_dim"]

    metrics = metrics_of(entry)

    for name in ("test_neg_elbo", "test_nll_importance", "recon_psnr", "recon_ssim", "test_kl"):
        assert math.isfinite(metrics[name]), name
    assert metrics["neg_elbo_excess"] > 0, "no decoder beats the pixels' own entropy"
    assert metrics["test_nll_importance"] <= metrics["test_neg_elbo"] + 1, "the importance-sampled bound is tighter"
    assert -1 <= metrics["recon_ssim"] <= 1
    assert len(metrics["kl_per_dim"]) == latent_dim
    assert all(math.isfinite(v) and v >= 0 for v in metrics["kl_per_dim"])
    assert 0 <= metrics["active_dims"] <= latent_dim
    assert metrics["epochs"] == 5


def test_both_samplers_are_judged_against_the_same_real_test_faces(trained, prepared):
    _, entry, _ = trained
    test_count = len(np.load(latest_entry(prepared, "prepare") / "split.npz")["test"])

    metrics = metrics_of(entry)

    assert set(metrics["realism"]) == {"prior", "gmm"}
    for scores in metrics["realism"].values():
        assert scores["n"] == test_count, "every real test face (up to 1,000) is a judge's reference"
        assert 0 <= scores["c2st"] <= 1 and 0 <= scores["coverage"] <= 1 and scores["fd"] >= 0
    configured = read_manifest(entry)["params"]["sampler"]
    assert metrics["c2st"] == metrics["realism"][configured]["c2st"], "the headline numbers are samples.png's"
    assert "components" in metrics["gmm_fit"]


def test_manifest_records_params_and_metrics(trained):
    _, entry, _ = trained

    manifest = read_manifest(entry)

    assert {"arch": "fc", "latent_dim": 4, "channels": 1, "epochs": 5, "batch_size": 16, "lr": 3e-3, "beta": 1.0,
            "recon": "bce", "seed": 0}.items() <= manifest["params"].items()
    assert manifest["metrics"] == metrics_of(entry)
    assert manifest["complete"] is True


def test_training_loss_decreases_over_five_epochs(trained):
    _, entry, _ = trained

    history = history_of(entry)

    assert len(history["train"]) == len(history["test"]) == 5
    assert history["train"][-1] < history["train"][0]
    assert history["test"][-1] < history["test"][0]


def test_model_loads_without_unpickling_and_rebuilds_a_decoder(trained):
    _, entry, _ = trained

    saved = torch.load(entry / "model.pt", map_location="cpu", weights_only=True)
    model, config = load_vae(entry / "model.pt", torch.device("cpu"))

    assert asdict(config) == saved["config"]
    assert (config.arch, config.size, config.channels, config.latent_dim) == ("fc", 30, 1, 4)
    with torch.no_grad():
        images = torch.sigmoid(model.decode(torch.zeros(3, 4)))
    assert images.shape == (3, 1, 30, 30)


def test_same_seed_on_cpu_gives_identical_results(trained, prepared, copy_of, pipeline, outputs):
    _, first, _ = trained
    copy_of(prepared)

    succeeded(pipeline("run", "--stages", "vae", *VAE))
    second = latest_entry(outputs, "vae")

    assert comparable(metrics_of(second)) == comparable(metrics_of(first))
    assert history_of(second)["train"] == history_of(first)["train"]
    a = torch.load(first / "model.pt", weights_only=True)["state_dict"]
    b = torch.load(second / "model.pt", weights_only=True)["state_dict"]
    assert all(torch.equal(a[name], b[name]) for name in a)


# ----- the cache ------------------------------------------------------------------------------------------------------


def test_rerun_with_same_params_is_a_cache_hit_and_does_not_train(trained, copy_of, pipeline, outputs, monkeypatch):
    _, entry, _ = trained
    copy_of(trained[0])

    monkeypatch.setattr(stages.vae, "run", must_not_run("the vae stage"))
    result = succeeded(pipeline("run", "--stages", "vae", *VAE))

    assert f"vae: cached (key {entry.name})" in result.output
    assert "vae: ran" not in result.output


def test_changed_latent_dim_is_a_miss_that_names_the_parameter(trained, copy_of, pipeline, outputs):
    copy_of(trained[0])

    result = succeeded(pipeline("run", "--stages", "vae", *VAE, *SHORT, "--set", "vae.latent_dim=3"))

    ran = [line for line in result.output.splitlines() if line.startswith("vae: ran")]
    assert len(ran) == 1 and "vae.latent_dim 4 -> 3" in ran[0], result.output
    assert read_manifest(latest_entry(outputs, "vae"))["params"]["latent_dim"] == 3
    assert len(Cache(outputs).entries("vae")) == 2, "the old entry stays cached"


# ----- interruption and resume ---------------------------------------------------------------------------------------


def test_interrupted_run_publishes_nothing_and_the_next_run_resumes(prepared, copy_of, pipeline, outputs,
                                                                     monkeypatch):
    copy_of(prepared)
    # training is over; the user presses ctrl-C while the test split is evaluated
    monkeypatch.setattr(stages.vae, "evaluate_model", interrupted_once(stages.vae.evaluate_model))
    first = pipeline("run", "--stages", "vae", *VAE)

    assert first.exit_code == 130, first.output
    assert "interrupted" in first.output and "Traceback" not in first.output
    assert_nothing_published(outputs)
    [checkpoint] = (outputs / "vae" / ".resume").glob("*/checkpoint.pt")
    saved = torch.load(checkpoint, map_location="cpu", weights_only=True)
    assert 1 <= len(saved["train"]) < 5

    second = succeeded(pipeline("run", "--stages", "vae", *VAE))

    match = re.search(r"resuming from epoch (\d+) of 5", second.output)
    assert match and int(match.group(1)) == len(saved["train"]), second.output
    entry = latest_entry(outputs, "vae")
    assert len(history_of(entry)["train"]) == len(history_of(entry)["test"]) == 5
    assert not checkpoint.parent.exists(), "publishing removes the resume checkpoint"


def test_resumed_run_matches_an_uninterrupted_one(trained, prepared, copy_of, pipeline, outputs, monkeypatch):
    _, uninterrupted, _ = trained
    copy_of(prepared)
    monkeypatch.setattr(stages.vae, "fit", interrupt_fit_after(stages.vae.fit, epochs=2))
    assert pipeline("run", "--stages", "vae", *VAE).exit_code == 130
    monkeypatch.undo()

    resumed = succeeded(pipeline("run", "--stages", "vae", *VAE))

    assert "resuming from epoch" in resumed.output
    entry = latest_entry(outputs, "vae")
    assert history_of(entry)["train"] == history_of(uninterrupted)["train"]
    assert comparable(metrics_of(entry)) == comparable(metrics_of(uninterrupted))


# ----- other configurations ------------------------------------------------------------------------------------------


def test_two_dimensional_latent_space_draws_a_15_by_15_manifold(prepared, copy_of, pipeline, outputs):
    copy_of(prepared)

    succeeded(pipeline("run", "--stages", "vae", *VAE, *SHORT, "--set", "vae.latent_dim=2"))

    entry = latest_entry(outputs, "vae")
    side = stages.vae.MANIFOLD_SIDE
    assert side == 15
    assert decoded_png(entry / "manifold.png").size == expected_grid_size(side, side)
    assert np.load(entry / "manifold.npy").shape == (side * side, 1, 30, 30)


def test_conv_architecture_trains_and_writes_the_same_artifacts(trained, prepared, copy_of, pipeline, outputs):
    _, fc_entry, _ = trained
    copy_of(prepared)

    succeeded(pipeline("run", "--stages", "vae", *VAE, *SHORT, "--set", "vae.arch=conv"))

    entry = latest_entry(outputs, "vae")
    assert read_manifest(entry)["params"]["arch"] == "conv"
    assert {p.name for p in entry.iterdir()} == {p.name for p in fc_entry.iterdir()}
    assert decoded_png(entry / "samples.png").size == expected_grid_size(8, 8)
    assert math.isfinite(metrics_of(entry)["test_neg_elbo"])
    model, _ = load_vae(entry / "model.pt", torch.device("cpu"))
    assert type(model).__name__ == "ConvVae"


def test_tiny_odd_test_split_still_writes_every_grid(pipeline, outputs):
    """48 faces at the default test fraction leave 5 test images: fewer than the 6 interpolation pairs."""
    succeeded(pipeline("prepare", "--count", "48", "--size", "12"))
    test_images = len(np.load(latest_entry(outputs) / "split.npz")["test"])
    assert test_images < 2 * stages.vae.INTERPOLATION_PAIRS and test_images % 2 == 1

    succeeded(pipeline("run", "--stages", "vae", *VAE, *SHORT))

    entry = latest_entry(outputs, "vae")
    pairs = test_images // 2
    assert np.load(entry / "interpolation.npy").shape[:2] == (pairs, stages.vae.INTERPOLATION_STEPS + 2)
    assert decoded_png(entry / "interpolation.png").size == expected_grid_size(
        pairs, stages.vae.INTERPOLATION_STEPS + 2, side=12)
    assert decoded_png(entry / "reconstructions.png").size == expected_grid_size(2, test_images, side=12)


# ----- user mistakes: one line, non-zero exit, nothing published -----------------------------------------------------


def test_diverging_loss_stops_with_one_line_and_publishes_nothing(prepared, copy_of, pipeline, outputs):
    copy_of(prepared)

    result = pipeline("run", "--stages", "vae", *VAE, *SHORT, "--set", "vae.lr=1e30")

    assert_one_clear_error_line(result, "vae.lr", last_line=False)
    assert_nothing_published(outputs)


def test_nan_loss_is_caught_however_it_arises(prepared, copy_of, pipeline, outputs, monkeypatch):
    copy_of(prepared)
    real_loss = stages.vae.vae_loss

    def nan_loss(*args, **kwargs):
        loss, stats = real_loss(*args, **kwargs)
        return loss * float("nan"), stats

    monkeypatch.setattr(stages.vae, "vae_loss", nan_loss)
    result = pipeline("run", "--stages", "vae", *VAE, *SHORT)

    assert_one_clear_error_line(result, "nan", "epoch 1", last_line=False)
    assert_nothing_published(outputs)


def test_running_before_prepare_says_to_run_prepare(pipeline, outputs):
    result = pipeline("run", "--stages", "vae", *VAE)

    assert_one_clear_error_line(result, "pipeline prepare", last_line=False)
    assert not (outputs / "vae").exists()


def test_unknown_stage_lists_the_valid_ones(prepared, copy_of, pipeline, outputs):
    copy_of(prepared)

    result = pipeline("run", "--stages", "vae,paint", *VAE)

    line = assert_one_clear_error_line(result, "'paint'", last_line=False)
    assert all(name in line for name in STAGE_NAMES if name != "prepare"), line
    assert not (outputs / "vae").exists()


@pytest.mark.parametrize("assignment, mention", [
    ("vae.latent_dim=0", "vae.latent_dim"),
    ("vae.nope=1", "vae.nope"),
    ("vae.latent_dim=abc", "vae.latent_dim"),
])
def test_bad_parameter_fails_in_one_line_before_any_work(prepared, copy_of, pipeline, outputs, assignment, mention,
                                                         monkeypatch):
    copy_of(prepared)
    monkeypatch.setattr(stages.vae, "run", lambda *a, **k: pytest.fail("the stage started"))

    result = pipeline("run", "--stages", "vae", *VAE, "--set", assignment)

    assert_one_clear_error_line(result, mention, last_line=False)
    assert not (outputs / "vae").exists()


# ----- parameters from a TOML file -----------------------------------------------------------------------------------


def test_config_file_is_used_and_set_wins_over_it(prepared, copy_of, pipeline, outputs, tmp_path):
    copy_of(prepared)
    config = tmp_path / "vae.toml"
    config.write_text("[vae]\nlatent_dim = 3\nepochs = 1\nbatch_size = 16\nbeta = 0.5\n")

    succeeded(pipeline("run", "--stages", "vae", "--config", config, "--set", "vae.latent_dim=5"))

    params = read_manifest(latest_entry(outputs, "vae"))["params"]
    assert params["latent_dim"] == 5, "--set wins over the config file"
    assert (params["epochs"], params["batch_size"], params["beta"]) == (1, 16, 0.5), "the config file was used"


def test_psnr_and_ssim_scored_a_slice_at_a_time_equal_one_pass():
    """The VAE scores its test reconstructions in slices, so a big split's decoded copies are never all held."""
    rng = np.random.default_rng(0)
    target = rng.uniform(0, 1, (7, 3, 12, 12)).astype(np.float32)
    output = np.clip(target + rng.normal(0, 0.1, target.shape), 0, 1).astype(np.float32)
    output[4] = target[4]  # an exact match: an infinite PSNR, which the mean leaves out
    whole = stages.metrics.psnr_ssim(output, target)
    sliced = stages.metrics.mean_psnr_ssim((output[i:i + 3], target[i:i + 3]) for i in range(0, 7, 3))
    assert sliced == pytest.approx(whole, rel=1e-12)
    assert 15 < whole[0] < 30 and 0 < whole[1] < 1
