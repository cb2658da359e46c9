"""The networks: the reference FC VAE, a convolutional VAE and the reference StackNN colorizer; the conv
colorizer and its chroma classes are in stages.colorizers.

Every model is rebuilt from plain values (`build_vae(arch, size, channels, latent_dim)`), so a checkpoint is a
state_dict plus those values (stages.checkpoints). The helpers at the end apply a trained model in bounded-memory
slices, for every stage that uses one.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn
from torch.nn import functional as F

from stages.colorizers import TAG_CHANNELS, AverageColorResidual, GlobalUNet, with_tag_channels
from stages.luma import exact_luma


class FcVae(nn.Module):
    """The reference network, layer for layer: 900-512-96-25 encoder, mirrored decoder, decoder output as logits."""

    def __init__(self, size: int = 30, channels: int = 1, latent_dim: int = 10):
        super().__init__()
        pixels = size * size * channels
        self.shape = (channels, size, size)
        self.encoder = nn.Sequential(nn.Linear(pixels, 512), nn.ReLU(), nn.Linear(512, 96), nn.ReLU(),
                                     nn.Linear(96, 25))
        self.mu = nn.Linear(25, latent_dim)
        self.logvar = nn.Linear(25, latent_dim)
        self.decoder = nn.Sequential(nn.Linear(latent_dim, 25), nn.ReLU(), nn.Linear(25, 96), nn.ReLU(),
                                     nn.Linear(96, 512), nn.ReLU(), nn.Linear(512, pixels))

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.encoder(x.flatten(1))  # (B, C, S, S) -> (B, C*S*S) -> (B, 25)
        return self.mu(h), self.logvar(h)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.decoder(z).view(-1, *self.shape)  # logits (B, C, S, S)

    def forward(self, x, noise):
        mu, logvar = self.encode(x)
        return self.decode(reparameterize(mu, logvar, noise)), mu, logvar


def down_sizes(size: int) -> list[int]:
    """Spatial sizes of a stride-2 encoder, halving (rounding up) until 4x4 or smaller."""
    sizes = [size]
    while sizes[-1] > 4:
        sizes.append((sizes[-1] + 1) // 2)
    return sizes


class ConvVae(nn.Module):
    """Strided-conv encoder and upsampling decoder, no pooling; adapts to any image size.

    Each downsampling step halves the side (rounding up); the decoder retraces the same sizes exactly, each step a
    nearest-neighbour upsample to the encoder's size followed by a 3x3 conv, so 30 -> 15 -> 8 -> 4 and back.
    Widths double with depth, capped at 256. Upsample + conv rather than transposed convolutions: those left
    per-pixel grain in the samples (uneven kernel overlap), which the colorizer then faithfully kept; this
    decoder's samples are smooth, and its test -ELBO is lower (docs/decisions.md).
    """

    def __init__(self, size: int = 30, channels: int = 1, latent_dim: int = 10, width: int = 16):
        super().__init__()
        self.sizes = down_sizes(size)
        widths = [channels] + [min(width * 2 ** i, 256) for i in range(len(self.sizes) - 1)]
        down = []
        for i, (c_in, c_out) in enumerate(zip(widths[:-1], widths[1:])):
            kernel = 4 if i == 0 else 3  # 4x4 on the input halves an even side exactly: 30 -> 15
            down += [nn.Conv2d(c_in, c_out, kernel, stride=2, padding=1), nn.BatchNorm2d(c_out), nn.LeakyReLU(0.2)]
        self.encoder = nn.Sequential(*down, nn.Flatten())
        self.bottom = (widths[-1], self.sizes[-1], self.sizes[-1])
        flat = widths[-1] * self.sizes[-1] ** 2
        self.mu = nn.Linear(flat, latent_dim)
        self.logvar = nn.Linear(flat, latent_dim)
        self.project = nn.Sequential(nn.Linear(latent_dim, flat), nn.LeakyReLU(0.2))
        up = []
        reversed_widths = widths[::-1]
        for i, (c_in, c_out) in enumerate(zip(reversed_widths[:-1], reversed_widths[1:])):
            target = self.sizes[-2 - i]
            up += [nn.Upsample(size=(target, target), mode="nearest"), nn.Conv2d(c_in, c_out, 3, padding=1)]
            if i < len(reversed_widths) - 2:  # the last layer outputs logits
                up += [nn.BatchNorm2d(c_out), nn.LeakyReLU(0.2)]
        self.decoder = nn.Sequential(*up)
        # oneDNN runs these convolutions without a layout reorder around each one in channels-last (faster; see
        # docs/decisions.md). Flatten and view still read (C, H, W) order, so nothing else changes.
        self.to(memory_format=torch.channels_last)

    def encode(self, x):
        h = self.encoder(x)  # (B, C, S, S) -> (B, W*s*s)
        return self.mu(h), self.logvar(h)

    def decode(self, z):
        return self.decoder(self.project(z).view(-1, *self.bottom))  # logits (B, C, S, S)

    def forward(self, x, noise):
        mu, logvar = self.encode(x)
        return self.decode(reparameterize(mu, logvar, noise)), mu, logvar


def reparameterize(mu: torch.Tensor, logvar: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """z = μ + ε·σ with ε given, so the caller owns the random stream (seeded, resumable)."""
    return mu + noise * torch.exp(0.5 * logvar)


def build_vae(arch: str, size: int, channels: int, latent_dim: int, width: int = 16) -> nn.Module:
    if arch == "fc":
        return FcVae(size=size, channels=channels, latent_dim=latent_dim)
    return ConvVae(size=size, channels=channels, latent_dim=latent_dim, width=width)


class StackNN(nn.Module):
    """The reference colorizer, kept faithfully: upsampling conv, conv, then two plain Linear layers to 3x30x30.

    The two Linear layers have no activation between them, as in the reference; 90 M parameters in all.
    Conditioned on a tag with `conditions` values, it also reads a learned embedding of the tag as input
    channels at every pixel (stages.colorizers.with_tag_channels); otherwise it is the reference's.
    """

    def __init__(self, size: int = 30, conditions: int = 0):
        super().__init__()
        self.size = size
        self.tag_embedding = nn.Embedding(conditions, TAG_CHANNELS) if conditions else None
        inputs = 1 + (TAG_CHANNELS if conditions else 0)
        self.features = nn.Sequential(nn.ConvTranspose2d(inputs, 10, 5, stride=2), nn.ReLU(), nn.Conv2d(10, 5, 5),
                                      nn.ReLU(), nn.Flatten())
        side = (size - 1) * 2 + 5 - 4  # 30 -> 63 -> 59
        self.head = nn.Sequential(nn.Linear(5 * side * side, 4500), nn.Linear(4500, 3 * size * size))

    def forward(self, gray: torch.Tensor, condition: torch.Tensor | None = None) -> torch.Tensor:
        if self.tag_embedding is not None:
            gray = with_tag_channels(gray, self.tag_embedding, condition)  # (B, 1 + E, S, S)
        h = self.features(gray)  # (B, 1[+E], S, S) -> (B, 5*59*59)
        return torch.sigmoid(self.head(h)).view(-1, 3, self.size, self.size)

    @torch.no_grad()
    def start_at(self, mean_color: torch.Tensor) -> None:
        """Make the untrained network output `mean_color` (3, S, S) rather than a flat sigmoid(0) gray.

        A default run makes few optimiser steps; spending the first of them discovering the average face is a
        waste."""
        self.head[-1].bias.copy_(torch.logit(mean_color.clamp(0.01, 0.99)).flatten())


def build_colorizer(arch: str, size: int, classes: int = 0, conditions: int = 0,
                    average_color_start: bool = False) -> nn.Module:
    """StackNN, or the U-Net with a global branch (stages.colorizers) predicting chroma (classes=0) or logits
    over `classes` chroma bins, conditioned on a tag with `conditions` values (0 = not conditioned), starting
    from the average color of each position and gray level if `average_color_start` (StackNN: wrapped in
    AverageColorResidual; the U-Net: built in, see GlobalUNet)."""
    if arch == "stacknn":
        network = StackNN(size, conditions)
        return AverageColorResidual(network, size, conditions) if average_color_start else network
    return GlobalUNet(classes=classes, conditions=conditions, average_color_size=size if average_color_start else 0)


def map_in_slices(function: Callable[[torch.Tensor], torch.Tensor], data: torch.Tensor, slice_size: int = 512):
    """Apply `function` to `data` in slices along dim 0 (bounded memory) and concatenate."""
    return torch.cat([function(data[i:i + slice_size]) for i in range(0, data.shape[0], slice_size)])


def decode_images(vae, z: torch.Tensor) -> torch.Tensor:
    """Latent codes -> images in [0,1] (the decoder's mean), in bounded-memory slices."""
    return torch.sigmoid(map_in_slices(vae.decode, z))


def encode_means(vae, images: torch.Tensor) -> torch.Tensor:
    """Images -> the encoder's means μ, in bounded-memory slices."""
    return map_in_slices(lambda x: vae.encode(x)[0], images)


@torch.no_grad()
def apply_colorizer(colorizer, gray: torch.Tensor, exact: bool,
                    condition: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Color (B, 1, S, S) gray images, with each image's (B,) tag index for a conditioned colorizer; returns
    (clipped color, unclipped color) in [0,1] scale."""
    if condition is None:
        color = map_in_slices(colorizer, gray, 256)
    else:
        color = torch.cat([colorizer(g, c) for g, c in zip(gray.split(256), condition.split(256))])
    if exact:
        color = exact_luma(color, gray)
    return color.clamp(0, 1), color
