"""The vae_color and gan_color stages: color exactly the gray images a generator entry handed on.

One run function for both declarations: the generator is the upstream stage other than prepare and colorize.
Reads its outputs (stages.vae_outputs: samples and interpolations from any generator, plus a VAE's traversals
and reconstructions), the colorizer's config and weights (stages.checkpoints), and the prepared set's true colors
for the reconstructed test faces. Cheap: nothing is trained, so a changed generator re-runs only this.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from stages import metrics as m
from stages import vae_outputs
from stages.checkpoints import MODEL, load_colorizer
from stages.contract import Figure, StageContext, StageError, write_figures
from stages.luma import luma_of
from stages.models import apply_colorizer
from stages.params import NoParams
from stages.prepared_set import image_rows
from stages.training import resolve_device
from stages.viz import save_grid


SAMPLES_PER_TAG = 8  # generated samples in each row of samples_by_<tag>.png


def _color_array(model, gray: np.ndarray, exact: bool, device, tag: int | None = None) -> torch.Tensor:
    """(..., 1, S, S) gray array -> (..., 3, S, S) color tensor, keeping the leading shape; `tag` is the tag index
    a conditioned colorizer is given for every image."""
    lead = gray.shape[:-3]
    flat = torch.from_numpy(np.ascontiguousarray(gray, dtype=np.float32)).to(device).reshape(-1, *gray.shape[-3:])
    condition = None if tag is None else torch.full((len(flat),), tag, dtype=torch.long, device=device)
    return apply_colorizer(model, flat, exact, condition)[0].reshape(*lead, 3, *gray.shape[-2:]).cpu()


def save_samples_by_tag(model, config, samples: np.ndarray, out_dir: Path, device) -> None:
    """The same generated samples colored once per value of the colorizer's tag, one row per value (row 0: no tag)."""
    shown = samples[:SAMPLES_PER_TAG]
    tags = range(len(config.condition_values) + 1)
    rows = [_color_array(model, shown, config.exact_luma, device, tag) for tag in tags]
    name = f"samples_by_{config.condition}.png"
    save_grid(torch.cat(rows), len(shown), out_dir / name,
              [f"{config.condition}: no tag"] + [f"{config.condition}={v}" for v in config.condition_values])
    write_figures(out_dir, [Figure(name, f"the same samples colored as each {config.condition} tag value")])


def run(params: NoParams, inputs: dict[str, Path], out_dir: Path, context: StageContext) -> dict:
    generator = next(name for name in inputs if name not in ("prepare", "colorize"))
    generator_dir = inputs[generator]
    device = resolve_device(context.device)
    model, config = load_colorizer(inputs["colorize"] / MODEL, device)
    generated = vae_outputs.read_generated(generator_dir)
    size = generated.samples.shape[-1]
    if size != config.size:
        raise StageError(f"the colorizer works on {config.size}px images but the {generator} on {size}px: "
                         "re-run both on one prepared set")

    samples = _color_array(model, generated.samples, config.exact_luma, device)
    save_grid(samples, 8, out_dir / "samples_color.png")
    if config.condition:
        save_samples_by_tag(model, config, generated.samples, out_dir, device)
    interpolation = _color_array(model, generated.interpolation, config.exact_luma, device)
    save_grid(interpolation.flatten(0, 1), interpolation.shape[1], out_dir / "interpolation_color.png")
    np.save(out_dir / "samples_color.npy", samples.numpy())
    np.save(out_dir / "interpolation_color.npy", interpolation.numpy())
    colorfulness = m.colorfulness(samples).mean().item()
    sample_luma_mse = (luma_of(samples) - torch.from_numpy(generated.samples)).pow(2).mean().item()
    results = {"samples_colorfulness": colorfulness, "samples_luma_mse": sample_luma_mse,
               "headline": f"colored the {generator}'s outputs: samples colorfulness {colorfulness:.1f}, "
                           f"luma MSE {sample_luma_mse:.5f}"}
    if vae_outputs.has_vae_outputs(generator_dir):
        _color_vae_extras(model, config.exact_luma, vae_outputs.read(generator_dir), inputs["prepare"], device,
                          out_dir)
    return results


def _color_vae_extras(model, exact: bool, gray: vae_outputs.VaeOutputs, prepared: Path, device, out_dir: Path):
    """A VAE's latent traversals and its test reconstructions next to their true colors."""
    traversal = _color_array(model, gray.traversal, exact, device)
    save_grid(traversal.flatten(0, 1), traversal.shape[1], out_dir / "traversal_color.png", gray.traversal_labels)
    originals, reconstructions = gray.reconstructions
    colored = _color_array(model, reconstructions, exact, device)
    truth = image_rows(prepared, 3, "cpu", gray.reconstruction_indices)[:]
    rows = [torch.from_numpy(originals).expand(-1, 3, -1, -1), torch.from_numpy(reconstructions).expand(-1, 3, -1, -1),
            colored, truth]
    save_grid(torch.cat(rows), len(truth), out_dir / "reconstructions_color.png")
    np.save(out_dir / "traversal_color.npy", traversal.numpy())
    np.save(out_dir / "reconstructions_color.npy", colored.numpy())


def run_gan(params: NoParams, inputs: dict[str, Path], out_dir: Path, context: StageContext) -> dict:
    """gan_color's entry point: the same coloring; each stage declares its own, so each can be replaced alone."""
    return run(params, inputs, out_dir, context)
