"""The stage declarations, and nothing else: name, code version, parameters, upstream stages, figures, entry points.

The runner, the cache and the report decide everything from these declarations (the contract they follow is in
stages.contract). This module imports no torch, so the tool can plan, key and report without loading a model.
Adding a stage means a new stage module and one declaration here; nothing in pipeline/ changes.
"""
from __future__ import annotations

import re
from pathlib import Path

from stages.contract import Comparison, Figure, StageSpec
from stages.params import ColorizeParams, ConceptParams, GanParams, NoParams, PrepareParams, VaeParams


def _nothing_to_color(all_params: dict) -> str:
    if all_params["vae"].channels == 3:
        return "the VAE trains on color (vae.channels=3), so its outputs need no colorizer"
    return ""


def _gan_on_color(all_params: dict) -> str:
    if all_params["gan"].channels == 3:
        return "the GAN trains on color (gan.channels=3), so its samples need no colorizer"
    return ""


def _describe_prepare(p: PrepareParams) -> str:
    source = re.sub(r"[^A-Za-z0-9_]+", "_", Path(p.source.rstrip("/")).name.split(".")[0]).strip("_") or "embedded"
    crop = "" if p.crop == 1.0 else f"-c{p.crop:g}"
    return f"{source[:24]}-n{p.count or 'all'}-s{p.size}{crop}"


_LOSS = Figure("loss.png", "train and test loss per epoch")

STAGES: tuple[StageSpec, ...] = (
    StageSpec(
        name="prepare", version=2, params=PrepareParams, upstream=(), run="stages.prepare:run",
        describe=_describe_prepare, fingerprint="stages.prepare:fingerprint",
        figures=(Figure("preview.png", "gray | color pairs of the prepared set"),
                 Figure("duplicates.png", "images dropped as copies: the kept image | its dropped copy")),
        summary="the prepared image set: gray and color arrays, the train/test split, sources and a preview grid",
    ),
    StageSpec(
        name="vae", version=6, params=VaeParams, upstream=("prepare",), run="stages.vae:run",
        distributed=True, batch_statistics=lambda p: p.arch == "conv",
        figures=(Figure("reconstructions.png", "test faces (top) and their reconstructions (bottom)"),
                 Figure("samples.png", "64 decodes of z from vae.sampler (gmm: a mixture fitted to the training "
                                       "codes; prior: N(0, I))"),
                 Figure("interpolation.png", "each row: two test faces and 7 latent points between them"),
                 Figure("traversal.png", "each row: one latent dimension from -3 to 3 (ordered by KL)"),
                 Figure("manifold.png", "the 2-D latent space, 15x15 grid"),
                 _LOSS),
        describe=lambda p: f"{p.arch}-z{p.latent_dim}-e{p.epochs}" + ("-rgb" if p.channels == 3 else ""),
        summary="a trained VAE: model.pt, metrics, loss curve, reconstructions, samples, interpolations, traversals",
    ),
    StageSpec(
        name="colorize", version=10, params=ColorizeParams, upstream=("prepare",), run="stages.colorize:run",
        distributed=True, batch_statistics=lambda p: p.arch == "conv",
        figures=(Figure("test_colorized.png", "test faces: gray input | colorized | true color"), _LOSS),
        describe=lambda p: f"{p.arch}-{p.loss}-e{p.epochs}" + (f"-by-{p.condition}" if p.condition else ""),
        skip_reason=_nothing_to_color,
        summary="a trained colorizer (gray -> color) and its test metrics and test grid",
    ),
    StageSpec(
        name="vae_color", version=4, params=NoParams, upstream=("prepare", "vae", "colorize"),
        run="stages.vae_color:run",
        figures=(Figure("samples_color.png", "the VAE's samples, colorized"),
                 Figure("reconstructions_color.png", "gray | VAE reconstruction | colorized | true color"),
                 Figure("interpolation_color.png", "interpolations, colorized"),
                 Figure("traversal_color.png", "latent traversals, colorized")),
        describe=lambda p: "vae-colored", follows=("colorize",), skip_reason=_nothing_to_color,
        summary="the VAE's samples, interpolations, traversals and reconstructions colored by the colorizer",
    ),
    StageSpec(
        name="concepts", version=4, params=ConceptParams, upstream=("prepare", "vae", "colorize"),
        run="stages.concepts:run", edit="stages.concepts:edit_picture", describe=lambda p: f"min{p.min_count}",
        skip_reason=_nothing_to_color,
        summary="latent concept vectors for the set's tags (hair=blonde, direction=left, ...), their checks and "
                "edit grids",
    ),
    StageSpec(  # opt-in (`--stages gan`): not in the default run
        name="gan", version=3, params=GanParams, upstream=("prepare",), run="stages.gan:run",
        distributed=True, batch_statistics=lambda p: True,  # dcgan: BatchNorm in G; fc: dropout in D, per rank
        figures=(Figure("samples.png", "64 samples of one fixed noise batch (one row per tag value if conditional)"),
                 Figure("interpolation.png", "each row: 7 steps on the line between two noise vectors"),
                 Figure("loss.png", "G and D loss, and D's mean P(real) for real and generated faces, per epoch")),
        describe=lambda p: (f"{p.arch}-w{p.width}-e{p.epochs}" + ("-rgb" if p.channels == 3 else "")
                            + (f"-c{p.conditional}" if p.conditional else "")),
        summary="a trained GAN (generator + discriminator): model.pt, losses, samples, interpolations",
    ),
    StageSpec(  # the vae_color stage's code pointed at the GAN: runs when both gan and colorize do
        name="gan_color", version=1, params=NoParams, upstream=("prepare", "gan", "colorize"),
        run="stages.vae_color:run_gan",
        figures=(Figure("samples_color.png", "the GAN's samples, colorized"),
                 Figure("interpolation_color.png", "interpolations, colorized")),
        describe=lambda p: "gan-colored", follows=("gan", "colorize"), skip_reason=_gan_on_color,
        summary="the GAN's samples and interpolations colored by the colorizer",
    ),
)

COMPARISONS: tuple[Comparison, ...] = (
    Comparison(  # the textbook chapter's claims: GAN samples are sharper, the VAE's latent space better structured
        title="VAE vs GAN", columns=(("vae", "vae_color"), ("gan", "gan_color")),
        side_by_side=(Figure("samples.png", "samples"), Figure("samples_color.png", "samples, colorized")),
        stacked=(Figure("interpolation.png", "interpolations: each row a straight line in latent space"),),
        metrics=("c2st", "coverage", "density", "fd", "test_neg_elbo", "diversity", "train_seconds", "parameters"),
    ),
    Comparison(  # the reference's StackNN against the U-Net, each loss, and the average color they must beat
        title="Colorizers", columns=(("colorize",),), variants=("arch", "loss", "condition"),
        side_by_side=(Figure("test_colorized.png", "test faces: gray | colorized | true color"),), stacked=(),
        metrics=("psnr", "baseline_psnr", "psnr_margin", "ssim", "color_auc", "baseline_color_auc", "c2st",
                 "baseline_c2st", "colorfulness_ratio", "luma_mse", "train_seconds", "parameters"),
    ),
)

STAGE_NAMES = tuple(s.name for s in STAGES)
SOURCE_STAGE = "prepare"  # built by `pipeline prepare`, never by `pipeline run`; every other stage reads from it


def stage(name: str) -> StageSpec:
    for spec in STAGES:
        if spec.name == name:
            return spec
    raise KeyError(name)
