"""The GAN networks: the textbook chapter's fully connected pair and a small DCGAN, for any square image size.

Both generators map a noise vector z ~ N(0, I) (optionally with a one-hot class) to images in [-1, 1] (tanh);
both discriminators map an image (optionally with a one-hot class) to one logit, so the sigmoid of the chapter
lives in the loss (binary_cross_entropy_with_logits: the same maths, without log(0) when D is sure).

Every model is rebuilt from plain values (`build_gan(arch, size, channels, noise_dim, width, classes)`), so a
checkpoint is two state_dicts plus those values and loads with `torch.load(..., weights_only=True)`.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm

from stages.models import down_sizes


def _conditioned(z_or_x: torch.Tensor, labels: torch.Tensor | None, classes: int) -> torch.Tensor:
    """Append the one-hot class to a flat input: (B, F) -> (B, F + classes); unchanged when unconditional."""
    if not classes:
        return z_or_x
    return torch.cat([z_or_x, nn.functional.one_hot(labels, classes).to(z_or_x.dtype)], 1)


class FcGenerator(nn.Module):
    """The chapter's generator: z -> 256 -> 512 -> 1024 -> pixels, LeakyReLU(0.2) between, tanh at the end.

    The chapter leaves the layer sizes to its code; these are the widths of the MNIST GAN that code and most
    PyTorch tutorials use (doubling towards the image, mirrored by the discriminator), kept for 30x30 because a
    900-pixel face is about as large as a 784-pixel digit."""

    def __init__(self, size: int = 30, channels: int = 1, noise_dim: int = 64, classes: int = 0):
        super().__init__()
        self.shape, self.classes = (channels, size, size), classes
        self.net = nn.Sequential(
            nn.Linear(noise_dim + classes, 256), nn.LeakyReLU(0.2),
            nn.Linear(256, 512), nn.LeakyReLU(0.2),
            nn.Linear(512, 1024), nn.LeakyReLU(0.2),
            nn.Linear(1024, channels * size * size), nn.Tanh())

    def forward(self, z: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        return self.net(_conditioned(z, labels, self.classes)).view(-1, *self.shape)  # (B, Z) -> (B, C, S, S)


class FcDiscriminator(nn.Module):
    """The chapter's discriminator: pixels -> 1024 -> 512 -> 256 -> 1 logit, LeakyReLU(0.2) and dropout 0.3."""

    def __init__(self, size: int = 30, channels: int = 1, classes: int = 0, spectral: bool = False):
        super().__init__()
        self.classes = classes
        norm = spectral_norm if spectral else (lambda layer: layer)
        self.net = nn.Sequential(
            norm(nn.Linear(channels * size * size + classes, 1024)), nn.LeakyReLU(0.2), nn.Dropout(0.3),
            norm(nn.Linear(1024, 512)), nn.LeakyReLU(0.2), nn.Dropout(0.3),
            norm(nn.Linear(512, 256)), nn.LeakyReLU(0.2), nn.Dropout(0.3),
            norm(nn.Linear(256, 1)))

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        return self.net(_conditioned(x.flatten(1), labels, self.classes)).squeeze(1)  # (B, C, S, S) -> (B,)


class DcGenerator(nn.Module):
    """DCGAN generator sized for any side: project z to 4x4 (or the smallest stride-2 size), then per step a
    nearest upsample to the next size and a 3x3 conv with BatchNorm and ReLU, 4 -> 8 -> 15 -> 30 for 30x30.

    Upsample + conv rather than DCGAN's transposed convolutions: those cannot hit 15 and 30 from 4 with one
    kernel, and they leave a checkerboard (the VAE's decoder in stages/models.py dropped them for that grain).
    Widths halve towards the image from `width * 2**(steps-1)`."""

    def __init__(self, size: int = 30, channels: int = 1, noise_dim: int = 64, width: int = 32, classes: int = 0):
        super().__init__()
        self.classes = classes
        sizes = down_sizes(size)[::-1]  # e.g. [4, 8, 15, 30]
        widths = [min(width * 2 ** i, 512) for i in range(len(sizes) - 1)][::-1]  # e.g. [128, 64, 32]
        self.bottom = (widths[0], sizes[0], sizes[0])
        self.project = nn.Sequential(nn.Linear(noise_dim + classes, widths[0] * sizes[0] ** 2, bias=False),
                                     nn.Unflatten(1, self.bottom), nn.BatchNorm2d(widths[0]), nn.ReLU())
        layers = []
        for c_in, c_out, target in zip(widths, widths[1:] + [channels], sizes[1:]):
            layers += [nn.Upsample(size=(target, target), mode="nearest"),
                       nn.Conv2d(c_in, c_out, 3, padding=1, bias=c_out == channels)]
            layers += [nn.Tanh()] if c_out == channels else [nn.BatchNorm2d(c_out), nn.ReLU()]
        self.net = nn.Sequential(*layers)
        self.to(memory_format=torch.channels_last)  # oneDNN convolutions without layout reorders, as ConvVae

    def forward(self, z: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        h = self.project(_conditioned(z, labels, self.classes))  # (B, Z) -> (B, W, 4, 4)
        return self.net(h.contiguous(memory_format=torch.channels_last))  # -> (B, C, S, S)


class DcDiscriminator(nn.Module):
    """DCGAN discriminator: stride-2 convs 30 -> 15 -> 8 -> 4 with LeakyReLU(0.2), then one linear logit.

    No BatchNorm: with spectral norm (the default) each layer is 1-Lipschitz already, and without batch statistics
    a real batch and a fake batch can share one forward pass. A class enters as extra constant input planes."""

    def __init__(self, size: int = 30, channels: int = 1, width: int = 32, classes: int = 0, spectral: bool = True):
        super().__init__()
        self.classes = classes
        norm = spectral_norm if spectral else (lambda layer: layer)
        sizes = down_sizes(size)
        widths = [channels + classes] + [min(width * 2 ** i, 512) for i in range(len(sizes) - 1)]
        layers = []
        for i, (c_in, c_out) in enumerate(zip(widths[:-1], widths[1:])):
            kernel = 4 if i == 0 else 3  # 4x4 halves an even side exactly, as in ConvVae's encoder
            layers += [norm(nn.Conv2d(c_in, c_out, kernel, stride=2, padding=1)), nn.LeakyReLU(0.2)]
        self.net = nn.Sequential(*layers, nn.Flatten(), norm(nn.Linear(widths[-1] * sizes[-1] ** 2, 1)))
        self.to(memory_format=torch.channels_last)

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        if self.classes:
            planes = nn.functional.one_hot(labels, self.classes).to(x.dtype)[:, :, None, None]
            x = torch.cat([x, planes.expand(-1, -1, *x.shape[-2:])], 1)  # (B, C + K, S, S)
        return self.net(x.contiguous(memory_format=torch.channels_last)).squeeze(1)  # -> (B,)


def build_gan(arch: str, size: int, channels: int, noise_dim: int, width: int = 32, classes: int = 0,
              spectral: bool = True) -> tuple[nn.Module, nn.Module]:
    """(generator, discriminator) for `arch` "fc" (the chapter's) or "dcgan"."""
    if arch == "fc":
        return (FcGenerator(size, channels, noise_dim, classes),
                FcDiscriminator(size, channels, classes, spectral))
    return (DcGenerator(size, channels, noise_dim, width, classes),
            DcDiscriminator(size, channels, width, classes, spectral))
