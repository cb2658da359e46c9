"""The vae_color stage: color exactly the gray images a VAE entry handed on, with a trained colorizer.

Reads the VAE's outputs (stages.vae_outputs) and both models' configs (stages.checkpoints), the colorizer's
weights, and the prepared set's true colors for the reconstructed test faces. Cheap: nothing is trained, so a
changed VAE re-runs only this, not the colorizer.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from stages import metrics as m
from stages import vae_outputs
from stages.checkpoints import MODEL, VaeConfig, load_colorizer, read_config
from stages.contract import StageContext, StageError
from stages.luma import luma_of
from stages.models import apply_colorizer
from stages.params import NoParams
from stages.prepared_set import load_prepared
from stages.training import resolve_device
from stages.viz import save_grid


def _color_array(model, gray: np.ndarray, exact: bool, device) -> torch.Tensor:
    """(..., 1, S, S) gray array -> (..., 3, S, S) color tensor, keeping the leading shape."""
    lead = gray.shape[:-3]
    flat = torch.from_numpy(np.ascontiguousarray(gray, dtype=np.float32)).to(device).reshape(-1, *gray.shape[-3:])
    return apply_colorizer(model, flat, exact)[0].reshape(*lead, 3, *gray.shape[-2:]).cpu()


def run(params: NoParams, inputs: dict[str, Path], out_dir: Path, context: StageContext) -> dict:
    vae_dir = inputs["vae"]
    vae_config = read_config(vae_dir / MODEL, VaeConfig)
    device = resolve_device(context.device)
    model, config = load_colorizer(inputs["colorize"] / MODEL, device)
    if vae_config.size != config.size:
        raise StageError(f"the colorizer works on {config.size}px images but the VAE on {vae_config.size}px: "
                         "re-run both on one prepared set")
    gray = vae_outputs.read(vae_dir)

    samples = _color_array(model, gray.samples, config.exact_luma, device)
    save_grid(samples, 8, out_dir / "samples_color.png")
    interpolation = _color_array(model, gray.interpolation, config.exact_luma, device)
    save_grid(interpolation.flatten(0, 1), interpolation.shape[1], out_dir / "interpolation_color.png")
    traversal = _color_array(model, gray.traversal, config.exact_luma, device)
    save_grid(traversal.flatten(0, 1), traversal.shape[1], out_dir / "traversal_color.png", gray.traversal_labels)
    originals, reconstructions = gray.reconstructions
    colored = _color_array(model, reconstructions, config.exact_luma, device)
    truth = torch.from_numpy(load_prepared(inputs["prepare"], 3)[0][gray.reconstruction_indices])
    rows = [torch.from_numpy(originals).expand(-1, 3, -1, -1), torch.from_numpy(reconstructions).expand(-1, 3, -1, -1),
            colored, truth]
    save_grid(torch.cat(rows), len(truth), out_dir / "reconstructions_color.png")
    for name, array in (("samples", samples), ("interpolation", interpolation), ("traversal", traversal),
                        ("reconstructions", colored)):
        np.save(out_dir / f"{name}_color.npy", array.numpy())

    colorfulness = m.colorfulness(samples).mean().item()
    sample_luma_mse = (luma_of(samples) - torch.from_numpy(gray.samples)).pow(2).mean().item()
    return {"samples_colorfulness": colorfulness, "samples_luma_mse": sample_luma_mse,
            "headline": f"colored the VAE's outputs: samples colorfulness {colorfulness:.1f}, "
                        f"luma MSE {sample_luma_mse:.5f}"}
