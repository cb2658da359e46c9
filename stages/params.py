"""Every stage's parameters, with their defaults and meanings, in one torch-free module.

The defaults live here and nowhere else. The CLI lists them (`pipeline params`), the cache hashes them, the stages
read them, and a checkpoint stores them as plain types so a model can be rebuilt without the CLI. Importing this
module must stay cheap: `pipeline --help` and `pipeline status` read it without touching torch.

Field metadata:
  help     one line shown by `pipeline params`
  choices  the allowed values of a string parameter
  min/max  inclusive bounds of a number
  hashed   False for settings that name *where* data is rather than *what* it is (the cache fingerprints the data)

A class may declare `renamed = {old: new}` (a ClassVar): the old name keeps working for one release, with a
one-line deprecation note.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar


def param(default, help: str, **rules):
    return field(default=default, metadata={"help": help, **rules})


@dataclass(frozen=True)
class PrepareParams:
    source: str = param("", "image folder, archive (.zip/.tar[.gz]), .npy/.npz or IDX file; empty = embedded faces",
                        hashed=False)
    labels: str = param("", "CSV of tags (file,<tag columns…>) carried along with the kept images", hashed=False)
    count: int = param(1044, "number of images to keep (0 = all usable images)", min=0)
    size: int = param(30, "side of the square images, in pixels", min=4, max=512)
    crop: float = param(1.0, "central fraction of each (square-cropped) image kept before resizing", min=0.05, max=1.0)
    seed: int = param(0, "seed of the image choice and the train/test split", min=0)
    test_fraction: float = param(0.1, "fraction of the images held out for testing (the stages need a test split)",
                                 min=0.01, max=0.9)
    dedupe: bool = param(True, "drop near-duplicate images (perceptual hash)")


@dataclass(frozen=True)
class VaeParams:
    arch: str = param("conv", "conv: strided-conv encoder/decoder; fc: the reference MLP, layer for layer",
                      choices=("conv", "fc"))
    latent_dim: int = param(32, "size of the latent code z", min=1, max=512)
    width: int = param(16, "channels of the first conv layer, doubling with depth (conv only)", min=1, max=256)
    channels: int = param(1, "1 = train on gray; 3 = train on color directly", choices=(1, 3))
    epochs: int = param(40, "passes over the training split", min=1)
    batch_size: int = param(64, "images per optimiser step, over all torchrun processes", min=1)
    lr: float = param(3e-3, "peak Adam learning rate (one-cycle schedule)", min=0.0)
    beta: float = param(1.0, "weight of the KL term (1 = the true ELBO)", min=0.0)
    recon: str = param("bce", "likelihood: bce (Bernoulli on [0,1]) or mse (Gaussian, unit variance)",
                       choices=("bce", "mse"))
    sampler: str = param("gmm", "where samples.png draws z: prior = N(0, I); gmm = a Gaussian mixture fitted to the "
                         "training codes (both are scored)", choices=("prior", "gmm"))
    seed: int = param(0, "seed of initialisation, batching and noise", min=0)


@dataclass(frozen=True)
class ColorizeParams:
    renamed: ClassVar[dict[str, str]] = {"colourfulness_weight": "colorfulness_weight"}  # old name -> new, one release
    arch: str = param("stacknn", "stacknn: the reference network; conv: small U-Net with a global branch",
                      choices=("stacknn", "conv"))
    loss: str = param("mse", "mse: MSE + colorfulness gap; classify: rebalanced classes of chroma (conv only)",
                      choices=("mse", "classify"))
    condition: str = param("", "tag column of the prepared set's labels.csv the colorizer also reads, e.g. hair; "
                           "empty = none")
    epochs: int = param(4, "passes over the training split", min=1)
    batch_size: int = param(64, "images per optimiser step, over all torchrun processes", min=1)
    lr: float = param(2e-3, "peak Adam learning rate (one-cycle schedule)", min=0.0)
    noise_std: float = param(0.05, "std of Gaussian noise added to the gray input while training ([0,1] scale)",
                             min=0.0)
    luma_weight: float = param(1.0, "weight λ of MSE(luma(output), gray input) in the loss", min=0.0)
    colorfulness_weight: float = param(0.2, "weight of (colorfulness(output) - colorfulness(true))^2 per "
                                        "image: keeps colors vivid; 0 is plain MSE", min=0.0)
    residual: bool = param(True, "the colorizer starts from the average color of each position and gray level "
                           "(fitted on the training split) and learns what it misses; false: the whole color, as "
                           "the seed")
    exact_luma: bool = param(True, "shift each output pixel so its luma equals the gray input exactly")
    seed: int = param(0, "seed of initialisation, batching and noise", min=0)


@dataclass(frozen=True)
class ConceptParams:
    min_count: int = param(20, "fewest tagged training images a tag needs to become a concept", min=2)
    rows: int = param(6, "test faces shown per concept edit grid", min=1, max=32)
    seed: int = param(0, "seed of the landing-check classifier", min=0)


@dataclass(frozen=True)
class NoParams:
    """For stages whose result is fixed by their upstream stages alone."""


@dataclass(frozen=True)
class GanParams:
    arch: str = param("dcgan", "dcgan: upsample+conv generator, strided-conv discriminator; fc: the textbook "
                      "chapter's MLPs", choices=("dcgan", "fc"))
    noise_dim: int = param(64, "size of the generator's noise vector z", min=1, max=512)
    width: int = param(32, "channels of the discriminator's first conv layer, doubling with depth (dcgan only)",
                       min=1, max=256)
    channels: int = param(1, "1 = train on gray; 3 = train on color directly", choices=(1, 3))
    epochs: int = param(200, "passes over the training split", min=1)
    batch_size: int = param(64, "real images per discriminator step, over all torchrun processes", min=1)
    lr: float = param(2e-4, "Adam learning rate of both networks (β1 = 0.5)", min=0.0)
    spectral_norm: bool = param(True, "spectral normalisation of the discriminator's layers (stabiliser)")
    conditional: str = param("", "tag column of labels.csv to condition on (a CGAN: one samples row per value); "
                             "empty = unconditional")
    seed: int = param(0, "seed of initialisation, batching and noise", min=0)
