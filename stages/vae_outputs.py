"""The gray images a VAE entry hands on to be colored, read and written through one set of names.

The VAE stage writes them next to its PNG grids; vae_color colors exactly these, so the colored grids show the
same faces, row for row. Arrays are float32 in [0,1], (..., C, S, S).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

SAMPLES = "samples.npy"  # (N, C, S, S) decodes of z ~ N(0, I)
INTERPOLATION = "interpolation.npy"  # (P, steps + 2, C, S, S): two test faces and the points between them
TRAVERSAL = "traversal.npy"  # (Z, steps, C, S, S): one row per latent dimension, ordered by KL
TRAVERSAL_DIMS = "traversal_dims.npy"  # (Z,) the latent dimension of each traversal row
TRAVERSAL_LABELS = "traversal_labels.json"  # one row label per traversal row ("z3  KL 4.1", "z7  inactive")
RECONSTRUCTIONS = "reconstructions.npy"  # (2, R, C, S, S): test faces, then their reconstructions
RECONSTRUCTION_INDICES = "reconstruction_indices.npy"  # (R,) their indices in the prepared set
MANIFOLD = "manifold.npy"  # (side * side, C, S, S) for a 2-D latent space only


@dataclass
class VaeOutputs:
    samples: np.ndarray
    interpolation: np.ndarray
    traversal: np.ndarray
    traversal_dims: np.ndarray
    traversal_labels: list[str]
    reconstructions: np.ndarray
    reconstruction_indices: np.ndarray
    manifold: np.ndarray | None = None


def write(folder: Path, outputs: VaeOutputs) -> None:
    np.save(folder / SAMPLES, outputs.samples)
    np.save(folder / INTERPOLATION, outputs.interpolation)
    np.save(folder / TRAVERSAL, outputs.traversal)
    np.save(folder / TRAVERSAL_DIMS, outputs.traversal_dims)
    (folder / TRAVERSAL_LABELS).write_text(json.dumps(outputs.traversal_labels), encoding="utf-8")
    np.save(folder / RECONSTRUCTIONS, outputs.reconstructions)
    np.save(folder / RECONSTRUCTION_INDICES, outputs.reconstruction_indices)
    if outputs.manifold is not None:
        np.save(folder / MANIFOLD, outputs.manifold)


def read(folder: Path) -> VaeOutputs:
    manifold = folder / MANIFOLD
    return VaeOutputs(
        samples=np.load(folder / SAMPLES), interpolation=np.load(folder / INTERPOLATION),
        traversal=np.load(folder / TRAVERSAL), traversal_dims=np.load(folder / TRAVERSAL_DIMS),
        traversal_labels=json.loads((folder / TRAVERSAL_LABELS).read_text(encoding="utf-8")),
        reconstructions=np.load(folder / RECONSTRUCTIONS),
        reconstruction_indices=np.load(folder / RECONSTRUCTION_INDICES),
        manifold=np.load(manifold) if manifold.is_file() else None)
