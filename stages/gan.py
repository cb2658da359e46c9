"""The GAN stage: train a generator against a discriminator on the prepared faces, then show what it draws.

Reads from the prepare entry: gray.npy or color.npy, split.npz (and labels.csv for `gan.conditional`). Writes
model.pt (generator + discriminator), metrics.json, history.json, loss.png, samples.png (64 samples of a fixed
noise batch, so grids of different runs compare image for image), interpolation.png (rows of 7 steps between two
noise vectors) and samples.npy / interpolation.npy: images in [0, 1], the same contract as the VAE's, so a
colorizer can color either generator's output.
"""
from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import torch

from stages import distributed, judge
from stages.checkpoints import MODEL, GanConfig, save_model
from stages.contract import StageContext, StageError
from stages.gan_training import GanJob, train_gan
from stages.params import GanParams
from stages.prepared_set import labels_file, open_split
from stages.training import resolve_device
from stages.vae_outputs import GeneratedImages, write_generated
from stages.viz import save_grid, save_loss_chart

SAMPLES = 64
INTERPOLATION_ROWS = 6
INTERPOLATION_STEPS = 7
FIXED_NOISE_SEED = 2026  # not the training seed: every run and epoch draws its grid from the same noise
DIVERSITY_FLOOR = 0.25  # samples closer to each other than this fraction of the real faces' spread: collapsed
COVERAGE_FLOOR = 0.05  # fewer real test faces than this with a sample nearby (the judge's coverage): collapsed


def read_classes(prepared: Path, column: str) -> tuple[np.ndarray, list[str]]:
    """One tag column of the set's labels -> (class index per image, -1 where untagged; the sorted class names).

    A cell holding several values ("red;blue") counts as its first one."""
    labels_csv = labels_file(prepared)
    if labels_csv is None:
        raise StageError(f"gan.conditional={column} needs labels, but the prepared set has no labels.csv: run "
                         "`pipeline prepare --labels tags.csv`, or leave gan.conditional empty")
    with open(labels_csv, newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    if not rows or column not in rows[0]:
        columns = ", ".join(c for c in (rows[0] if rows else {}) if c != "file") or "none"
        raise StageError(f"gan.conditional={column}: {labels_csv} has no column {column!r} (its tag columns: "
                         f"{columns}); pick one with --set gan.conditional=<column>")
    values = [(row[column] or "").split(";")[0].strip() for row in rows]
    names = sorted({v for v in values if v})
    index = {name: i for i, name in enumerate(names)}
    return np.array([index.get(v, -1) for v in values]), names


def to_unit(images: torch.Tensor) -> torch.Tensor:
    """Generator output in [-1, 1] -> images in [0, 1]."""
    return ((images + 1) / 2).clamp(0, 1)


def diversity(samples: torch.Tensor, real: torch.Tensor) -> float:
    """Mean pairwise distance between samples over the same between real images: ~1 for a generator that
    spreads like the data, 0 for one that draws a single image whatever its noise."""
    spread = lambda x: torch.pdist(x.flatten(1)).mean()
    return (spread(samples) / spread(real).clamp_min(1e-8)).item()


def collapse_warning(diversity_ratio: float, coverage: float | None = None) -> str:
    """One line for the summary and the report when the generator has collapsed onto few images, else "": its
    samples are near-identical, or they cover almost none of the real test faces (the judge's coverage)."""
    if diversity_ratio < DIVERSITY_FLOOR:
        return (f"mode collapse: the samples are near-identical (their spread is {diversity_ratio:.2f} of the real "
                "faces'); try another gan.seed, a lower gan.lr, or more gan.epochs")
    if coverage is not None and coverage < COVERAGE_FLOOR:
        return (f"mode collapse: the samples cover only {coverage:.0%} of the real test faces; try another gan.seed, "
                "a lower gan.lr, or more gan.epochs")
    return ""


@torch.no_grad()
def judged(generator, noise_dim: int, classes: list[str], real: torch.Tensor, seed: int) -> dict:
    """The judge's realism numbers of as many fresh samples as there are real test faces (random tags, if any)."""
    random = torch.Generator(device=real.device).manual_seed(seed + 1)
    z = torch.randn(len(real), noise_dim, generator=random, device=real.device)
    labels = (torch.randint(len(classes), (len(real),), generator=random, device=real.device) if classes
              else None)
    return judge.realism(to_unit(generator(z, labels)), real, seed=seed)


@torch.no_grad()
def write_grids(generator, noise_dim: int, classes: list[str], device: torch.device, out_dir: Path) -> torch.Tensor:
    """samples.png and interpolation.png from fixed noise, and their arrays for coloring (stages.vae_outputs);
    returns the samples in [0, 1]."""
    random = torch.Generator(device=device).manual_seed(FIXED_NOISE_SEED)
    z = torch.randn(SAMPLES, noise_dim, generator=random, device=device)
    columns, labels, row_labels = 8, None, None
    if classes:  # one row per class value, the same noise in every row
        labels = torch.arange(len(classes), device=device).repeat_interleave(columns)
        z = z[:columns].repeat(len(classes), 1)
        row_labels = classes
    samples = to_unit(generator(z, labels))
    save_grid(samples.cpu(), columns, out_dir / "samples.png", row_labels)

    ends = torch.randn(INTERPOLATION_ROWS, 2, noise_dim, generator=random, device=device)
    weights = torch.linspace(0, 1, INTERPOLATION_STEPS, device=device).view(1, -1, 1)
    path = ends[:, :1] + weights * (ends[:, 1:] - ends[:, :1])  # (rows, steps, Z)
    path_labels = None
    if classes:
        path_labels = (torch.arange(INTERPOLATION_ROWS, device=device) % len(classes)).repeat_interleave(
            INTERPOLATION_STEPS)
    between = to_unit(generator(path.flatten(0, 1), path_labels))
    save_grid(between.cpu(), INTERPOLATION_STEPS, out_dir / "interpolation.png")
    rows = between.view(INTERPOLATION_ROWS, INTERPOLATION_STEPS, *between.shape[1:])
    write_generated(out_dir, GeneratedImages(samples.cpu().numpy(), rows.cpu().numpy()))
    return samples


def run(params: GanParams, inputs: dict[str, Path], out_dir: Path, context: StageContext) -> dict:
    device = resolve_device(context.device)
    classes: list[str] = []
    class_of = None
    if params.conditional:
        class_of, classes = read_classes(inputs["prepare"], params.conditional)
    tagged = None if class_of is None else class_of >= 0  # untagged faces cannot be conditioned on
    train, test, train_index, _ = open_split(inputs["prepare"], params.channels, device, keep=tagged)
    labels = None if class_of is None else torch.from_numpy(class_of[train_index]).to(device)
    if len(train_index) == 0:
        raise StageError("the prepared set has no training images to train the GAN on: prepare more images")
    size = test.shape[-1]
    config = GanConfig(params.arch, size, params.channels, params.noise_dim, params.width, tuple(classes),
                       params.spectral_norm)
    torch.manual_seed(params.seed)
    generator, discriminator = (network.to(device) for network in config.build_pair())
    job = GanJob(generator, discriminator, train, labels, params.noise_dim, params.epochs,
                 params.batch_size, params.lr, params.seed)
    history = train_gan(job, context, device)
    if not distributed.world().main:
        return {}  # rank 0 evaluates, draws and saves: the same networks are on every rank

    save_model(out_dir / MODEL, generator, config, discriminator=discriminator)
    (out_dir / "history.json").write_text(json.dumps(history.as_dict(), indent=1))
    save_loss_chart({"G loss": history.g_loss, "D loss": history.d_loss, "D(real)": history.d_real,
                     "D(fake)": history.d_fake}, out_dir / "loss.png", "GAN losses and D's mean P(real) per epoch")
    samples = write_grids(generator, params.noise_dim, classes, device, out_dir)

    spread = diversity(samples, test)
    results = {"diversity": spread, "train_seconds": round(history.seconds, 2), "epochs": len(history.g_loss),
               "images_per_second": round(history.images / max(history.seconds, 1e-9), 1),
               "parameters": sum(p.numel() for p in generator.parameters()),
               "discriminator_parameters": sum(p.numel() for p in discriminator.parameters()),
               "final_d_real": history.d_real[-1], "final_d_fake": history.d_fake[-1],
               "world_size": history.world_size, "global_batch": history.global_batch}
    real = test[:judge.REAL_IMAGES]
    if len(real) >= judge.MIN_IMAGES:
        realism = judged(generator, params.noise_dim, classes, real, params.seed)
        results.update(c2st=realism["c2st"], c2st_std=realism["c2st_std"], density=realism["density"],
                       coverage=realism["coverage"], fd=realism["fd"])
    warning = collapse_warning(spread, results.get("coverage"))
    if warning:
        results["warning"] = warning
        context.echo(f"gan: {warning}")
    results["headline"] = warning or (f"D(real) {history.d_real[-1]:.2f}, D(fake) {history.d_fake[-1]:.2f}, "
                                      f"sample diversity {spread:.2f} of the real faces', "
                                      + (f"C2ST {results['c2st']:.2f}, coverage {results['coverage']:.2f}, "
                                         if "c2st" in results else "") +
                                      f"{results['images_per_second']:.0f} img/s")
    return results

