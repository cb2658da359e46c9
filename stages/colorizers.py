"""Colorizers that must beat the average color: the per-luma baseline, a U-Net with a global branch, and
Zhang et al.'s (2016) classification over quantised chroma with class rebalancing and an annealed-mean readout.

Color is split into the gray input and a chroma the network predicts, in BT.601 YCbCr: its Y is exactly our
luma (stages.luma), and RGB is linear in (Y, Cb, Cr), so any predicted chroma added to the gray input has
exactly the input's luma before clipping. That makes the `classify` loss "always combined with exact luma" by
construction, and lets the baseline and both losses share one conversion.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from stages.luma import LUMA_WEIGHTS

_KR, _KG, _KB = LUMA_WEIGHTS
CHROMA_STEP = 0.08  # side of one chroma bin (Cb, Cr span [-0.5, 0.5]): 13 x 13 cells, ~90 in use on faces
REBALANCE_MIX = 0.5  # λ of Zhang et al.: weights ∝ 1 / ((1 - λ)·p̃ + λ/Q)
REBALANCE_SIGMA = 1.25  # Gaussian smoothing of the bin frequencies, in bins (Zhang: σ=5 at their 10-unit bins)
READOUT_TEMPERATURE = 0.38  # Zhang et al.'s annealed mean: between the mean (T=1, sepia) and the mode (T→0, noisy)
LUMA_BINS = 32  # gray levels of the per-luma baseline
TAG_CHANNELS = 8  # width of a conditioned colorizer's learned tag embedding, given to every pixel
MIN_TAG_IMAGES = 8  # training images a tag needs for an average color of its own
CELL_PRIOR = 40.0  # pixels' weight of "nothing more to add" in a (position, gray level) cell's mean


def chroma_of(color: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) RGB -> (B, 2, H, W) BT.601 (Cb, Cr), each in [-0.5, 0.5] for RGB in [0,1]."""
    red, green, blue = color.unbind(1)
    luma = _KR * red + _KG * green + _KB * blue
    return torch.stack([(blue - luma) / (2 * (1 - _KB)), (red - luma) / (2 * (1 - _KR))], 1)


def color_from(gray: torch.Tensor, chroma: torch.Tensor) -> torch.Tensor:
    """(B, 1, H, W) luma + (B, 2, H, W) chroma -> (B, 3, H, W) RGB whose luma is exactly `gray` (not clipped)."""
    luma = gray[:, 0]
    red = luma + 2 * (1 - _KR) * chroma[:, 1]
    blue = luma + 2 * (1 - _KB) * chroma[:, 0]
    green = (luma - _KR * red - _KB * blue) / _KG
    return torch.stack([red, green, blue], 1)


class LumaBaseline(nn.Module):
    """The colorizer that ignores everything but each pixel's own gray level: the mean training chroma of pixels
    of that luma (LUMA_BINS bins), added to the gray input. Skin-bright pixels get skin color, dark ones hair or
    outline color, whatever their position or the rest of the face.

    Given the image `size`, it also knows where a pixel is, and paints the mean training chroma of its (position,
    gray level) cell: each position's mean chroma, plus the mean of what remains per gray level, plus the mean
    of what still remains in the cell. Many cells hold few training pixels, so that last part pools the
    3 x 3 neighboring positions and is shrunk toward zero by CELL_PRIOR pixels' weight: a cell with few pixels
    keeps the first two parts. That is the average color StackNN learns the difference from."""

    def __init__(self, bins: int = LUMA_BINS, size: int = 0):
        super().__init__()
        self.register_buffer("chroma", torch.zeros(bins, 2))
        self.register_buffer("position", torch.zeros(2, size, size) if size else None)
        self.register_buffer("cell", torch.zeros(2, size, size, bins) if size else None)

    @torch.no_grad()
    def fit(self, gray: torch.Tensor, color: torch.Tensor) -> LumaBaseline:
        bins = len(self.chroma)
        index = _luma_bin(gray, bins)  # (N, 1, H, W)
        chroma = chroma_of(color)  # (N, 2, H, W)
        if self.position is not None:
            self.position.copy_(chroma.mean(0))
            chroma = chroma - self.position
        flat = chroma.permute(1, 0, 2, 3).flatten(1)  # (2, N*H*W)
        counts = torch.bincount(index.flatten(), minlength=bins).clamp(min=1).to(chroma.dtype)
        for channel in range(2):
            self.chroma[:, channel] = torch.bincount(index.flatten(), flat[channel], minlength=bins) / counts
        if self.cell is not None:
            self.cell.copy_(_cell_means(chroma - self._per_luma(index), index, bins))
        return self

    def forward(self, gray: torch.Tensor) -> torch.Tensor:
        return color_from(gray, self.chroma_at(gray))

    def chroma_at(self, gray: torch.Tensor) -> torch.Tensor:
        """(B, 1, H, W) gray -> (B, 2, H, W) the chroma this baseline paints on it."""
        index = _luma_bin(gray, len(self.chroma))
        chroma = self._per_luma(index)
        if self.position is not None:
            chroma = chroma + self.position + self._per_cell(index)
        return chroma

    def _per_luma(self, index: torch.Tensor) -> torch.Tensor:
        """(B, 1, H, W) luma bins -> (B, 2, H, W) their mean chroma."""
        return self.chroma[index][:, 0].permute(0, 3, 1, 2)

    def _per_cell(self, index: torch.Tensor) -> torch.Tensor:
        """(B, 1, H, W) luma bins -> (B, 2, H, W) the mean chroma of each pixel's (position, luma bin) cell."""
        positions = index[0, 0].numel()
        cell = torch.arange(positions, device=index.device) * len(self.chroma) + index.flatten(1)  # (B, H*W)
        return self.cell.flatten(1)[:, cell].permute(1, 0, 2).view(len(index), 2, *index.shape[-2:])


def _cell_means(chroma: torch.Tensor, index: torch.Tensor, bins: int) -> torch.Tensor:
    """(N, 2, H, W) chroma, (N, 1, H, W) luma bins -> (2, H, W, bins): the shrunk mean chroma of each (position,
    luma bin) cell over the 3 x 3 neighboring positions (see LumaBaseline)."""
    height, width = index.shape[-2:]
    cell = (torch.arange(height * width, device=index.device) * bins + index.flatten(1)).flatten()  # (N*H*W,)
    cells = height * width * bins
    pixels = torch.bincount(cell, minlength=cells).to(chroma.dtype)
    sums = torch.stack([torch.bincount(cell, chroma[:, c].flatten(), minlength=cells) for c in range(2)])

    def pooled(x):  # (C, H*W*bins) -> (C, H, W, bins), summed over each position's 3 x 3 neighbors
        x = x.view(-1, height, width, bins).permute(0, 3, 1, 2).flatten(0, 1)[:, None]  # (C*bins, 1, H, W)
        x = F.conv2d(F.pad(x, (1, 1, 1, 1)), torch.ones(1, 1, 3, 3, dtype=x.dtype, device=x.device))
        return x.view(-1, bins, height, width).permute(0, 2, 3, 1)

    return pooled(sums) / (pooled(pixels[None]) + CELL_PRIOR)


class AverageColorResidual(nn.Module):
    """A colorizer network that learns only what the average color does not know: its output is the average
    color of each position and gray level (`LumaBaseline` with position, fitted once on the training split and
    then fixed) plus the network's output - 0.5, so a sigmoid network at 0.5 paints exactly that average.

    Color from gray is ambiguous, so the average is a strong start (the baselines the stage reports are two
    halves of it); the network is unchanged and spends its few optimiser steps on the rest. Conditioned on a
    tag with `conditions` values, the average is that of the training images with the image's tag (index 0, no
    tag, and tags with under MIN_TAG_IMAGES images: the average of all), so a known hair color is painted from
    the first step."""

    def __init__(self, net: nn.Module, size: int, conditions: int = 0):
        super().__init__()
        self.net = net
        self.prior = LumaBaseline(size=size)
        self.tag_priors = nn.ModuleList(LumaBaseline(size=size) for _ in range(conditions))

    @torch.no_grad()
    def start_at(self, gray: torch.Tensor, color: torch.Tensor, tags: torch.Tensor | None = None) -> None:
        """Fit the average colors to training (N, 1, S, S) gray, (N, 3, S, S) color [and (N,) tag indices];
        the net starts at 0.5."""
        self.prior.fit(gray, color)
        for index, prior in enumerate(self.tag_priors):
            chosen = tags == index
            if index and int(chosen.sum()) >= MIN_TAG_IMAGES:
                prior.fit(gray[chosen], color[chosen])
            else:
                prior.load_state_dict(self.prior.state_dict())
        self.net.start_at(torch.full_like(color[0], 0.5))

    def average(self, gray: torch.Tensor, condition: torch.Tensor | None = None) -> torch.Tensor:
        """(B, 1, S, S) gray [, (B,) tag indices] -> (B, 3, S, S) the average color the network adds to."""
        if not len(self.tag_priors):
            return self.prior(gray)
        condition = tag_indices(gray, condition)
        color = torch.empty(len(gray), 3, *gray.shape[-2:], dtype=gray.dtype, device=gray.device)
        for index in condition.unique().tolist():
            chosen = condition == index
            color[chosen] = self.tag_priors[index](gray[chosen])
        return color

    def forward(self, gray: torch.Tensor, condition: torch.Tensor | None = None,
                clean: torch.Tensor | None = None) -> torch.Tensor:
        """`clean`: the gray to look the average color up in when `gray` is a noisy copy (training), so the
        network learns the difference from the average it will be added to at test time."""
        network = self.net(gray) if not len(self.tag_priors) else self.net(gray, condition)
        return self.average(gray if clean is None else clean, condition) + network - 0.5


def tag_indices(gray: torch.Tensor, condition: torch.Tensor | None) -> torch.Tensor:
    """The (B,) tag indices of a batch of gray images: `condition`, or index 0 ("no tag") when none is given."""
    if condition is None:
        return torch.zeros(len(gray), dtype=torch.long, device=gray.device)
    return condition


def with_tag_channels(gray: torch.Tensor, embedding: nn.Embedding, condition: torch.Tensor | None) -> torch.Tensor:
    """(B, 1, S, S) gray and (B,) tag indices -> (B, 1 + E, S, S): each image's tag embedding as E more input
    channels, the same at every pixel, so the tag reaches every pixel from the first layer on. No tags given
    reads as index 0, "no tag", which a conditioned colorizer learns from the untagged training images."""
    tag = embedding(tag_indices(gray, condition))[:, :, None, None]  # (B, E, 1, 1)
    tag = tag.expand(-1, -1, *gray.shape[-2:])  # (B, E, S, S)
    return torch.cat([gray, tag.to(gray)], 1)


def _luma_bin(gray: torch.Tensor, bins: int) -> torch.Tensor:
    return (gray * bins).long().clamp(0, bins - 1)


class ChromaBins(nn.Module):
    """The quantised chroma plane: bin centers in use, each training pixel's class, and rebalancing weights.

    Only bins that training pixels fall in become classes; a chroma outside them goes to the nearest class.
    The centers are a buffer, so a saved colorizer carries its own readout."""

    def __init__(self, classes: int, step: float = CHROMA_STEP):
        super().__init__()
        self.step = step
        self.side = round(1 / step) + 1
        self.register_buffer("centers", torch.zeros(classes, 2))  # (Q, 2) chroma of each class
        self.register_buffer("cell_class", torch.zeros(self.side * self.side, dtype=torch.long))

    @classmethod
    def fit(cls, color: torch.Tensor, step: float = CHROMA_STEP) -> tuple[ChromaBins, torch.Tensor]:
        """Bins from training colors (N, 3, H, W); returns them and the rebalancing weight of each class (Q,)."""
        side = round(1 / step) + 1
        cells = _chroma_cell(chroma_of(color), step, side)
        frequency = torch.bincount(cells.flatten(), minlength=side * side).to(color.dtype)
        used = frequency.nonzero()[:, 0]
        bins = cls(len(used), step).to(color.device)
        grid = torch.stack(torch.meshgrid(torch.arange(side), torch.arange(side), indexing="ij"), -1).flatten(0, 1)
        grid_chroma = (grid.to(color) * step - 0.5)  # (side*side, 2): center chroma of every cell
        bins.centers.copy_(grid_chroma[used])
        bins.cell_class.copy_(torch.cdist(grid_chroma, bins.centers).argmin(1))
        smoothed = _smooth(frequency.view(side, side), REBALANCE_SIGMA).flatten()[used]
        smoothed = smoothed / smoothed.sum()
        weights = 1 / ((1 - REBALANCE_MIX) * smoothed + REBALANCE_MIX / len(used))
        probability = frequency[used] / frequency[used].sum()
        return bins, weights / (probability * weights).sum()  # normalised so the expected weight is 1

    def classes(self, color: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) RGB -> (B, H, W) class of each pixel's chroma."""
        return self.cell_class[_chroma_cell(chroma_of(color), self.step, self.side)]

    def near(self, chroma: torch.Tensor, spread: float = CHROMA_STEP) -> torch.Tensor:
        """(B, 2, H, W) chroma -> (B, Q, H, W) logits of a Gaussian of std `spread` around it over the classes:
        the distribution of a network that knows nothing more than that chroma."""
        centers = self.centers[:, :, None, None]  # (Q, 2, 1, 1): a 1 x 1 convolution's weights
        distance = (chroma.pow(2).sum(1, keepdim=True) - 2 * F.conv2d(chroma, centers)
                    + centers.pow(2).sum(1)[None])  # (B, Q, H, W): |chroma - center|² per class
        return -distance / (2 * spread ** 2)

    def readout(self, logits: torch.Tensor, temperature: float = READOUT_TEMPERATURE) -> torch.Tensor:
        """(B, Q, H, W) logits -> (B, 2, H, W) chroma: the annealed mean of the class distribution."""
        weights = torch.softmax(logits / temperature, 1)
        return torch.einsum("bqhw,qc->bchw", weights, self.centers)


def _chroma_cell(chroma: torch.Tensor, step: float, side: int) -> torch.Tensor:
    """(B, 2, H, W) chroma -> (B, H, W) index of its grid cell (row = Cb, column = Cr)."""
    cell = torch.round((chroma + 0.5) / step).long().clamp(0, side - 1)
    return cell[:, 0] * side + cell[:, 1]


def _smooth(grid: torch.Tensor, sigma: float) -> torch.Tensor:
    radius = int(3 * sigma + 0.5)
    x = torch.arange(-radius, radius + 1, dtype=grid.dtype, device=grid.device)
    kernel = torch.exp(-x ** 2 / (2 * sigma ** 2))
    kernel = kernel / kernel.sum()
    out = F.conv2d(grid[None, None], kernel.view(1, 1, 1, -1), padding=(0, radius))
    return F.conv2d(out, kernel.view(1, 1, -1, 1), padding=(radius, 0))[0, 0]


def _block(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1), nn.BatchNorm2d(c_out), nn.ReLU(),
                         nn.Conv2d(c_out, c_out, 3, padding=1), nn.BatchNorm2d(c_out), nn.ReLU())


class GlobalUNet(nn.Module):
    """A two-level U-Net whose bottleneck also sees the whole face (Iizuka et al. 2016), and optionally a tag.

    The global branch average-pools the bottleneck into one vector, mixes it (with a one-hot tag, if
    conditioned) through a small MLP and adds it to every bottleneck position, so a pixel's color can depend on
    the whole face (hair hue is one choice for the whole head). A conditioned network also reads a learned
    embedding of the tag as input channels at every pixel (`with_tag_channels`). The head predicts chroma: two
    values (`mse`) or logits over the chroma bins (`classify`, read out by `bins`). Either way the output's luma
    is the gray input exactly (see the module docstring).

    Given the image `average_color_size`, the network starts from the average color StackNN starts from (the
    chroma of `LumaBaseline` with position, fitted by `start_at`): it reads that chroma as two more input
    channels, and its zero-initialised head predicts only the difference from it: an `mse` head a chroma added to
    it, a `classify` head logits added to a Gaussian around it (`ChromaBins.near`). So the untrained network
    paints exactly the average, and where it stays unsure it stays there, the baseline it must not fall under.
    """

    def __init__(self, classes: int = 0, conditions: int = 0, width: int = 32, average_color_size: int = 0):
        super().__init__()
        self.conditions = conditions
        self.tag_embedding = nn.Embedding(conditions, TAG_CHANNELS) if conditions else None
        self.average = LumaBaseline(size=average_color_size) if average_color_size else None
        inputs = 1 + (TAG_CHANNELS if conditions else 0) + (2 if average_color_size else 0)
        self.inner = _block(inputs, width)
        self.down = _block(width, 2 * width)
        self.bottom = _block(2 * width, 4 * width)
        self.global_mix = nn.Sequential(nn.Linear(4 * width + conditions, 4 * width), nn.ReLU(),
                                        nn.Linear(4 * width, 4 * width))
        self.up2 = _block(6 * width, 2 * width)
        self.up1 = _block(3 * width, width)
        self.head = nn.Conv2d(width, classes or 2, 1)
        self.bins = ChromaBins(classes) if classes else None
        if self.average is not None:
            nn.init.zeros_(self.head.weight)
            nn.init.zeros_(self.head.bias)
        self.to(memory_format=torch.channels_last)  # oneDNN runs these convolutions without layout reorders

    @torch.no_grad()
    def start_at(self, gray: torch.Tensor, color: torch.Tensor) -> None:
        """Fit the average color to training (N, 1, S, S) gray and (N, 3, S, S) color."""
        self.average.fit(gray, color)

    def features(self, gray: torch.Tensor, condition: torch.Tensor | None = None) -> torch.Tensor:
        """(B, 1, S, S) gray [, (B,) tag index] -> (B, 2 or Q, S, S) chroma or class logits. A conditioned
        network given no tags reads them as index 0, "no tag", which it learned from untagged training images."""
        size = gray.shape[-2:]
        x = gray if not self.conditions else with_tag_channels(gray, self.tag_embedding, condition)  # (B, 1[+E], S, S)
        start = self.average.chroma_at(gray) if self.average is not None else None  # (B, 2, S, S)
        if start is not None:
            x = torch.cat([x, start.to(memory_format=torch.channels_last)], 1)  # (B, 1[+E]+2, S, S)
        a = self.inner(x)  # (B, W, S, S)
        b = self.down(F.max_pool2d(a, 2, ceil_mode=True))  # (B, 2W, S/2, S/2)
        c = self.bottom(F.max_pool2d(b, 2, ceil_mode=True))  # (B, 4W, S/4, S/4)
        pooled = c.mean((2, 3))  # (B, 4W)
        if self.conditions:
            condition = tag_indices(gray, condition)
            pooled = torch.cat([pooled, F.one_hot(condition, self.conditions).to(pooled)], 1)
        c = c + self.global_mix(pooled)[:, :, None, None]
        b = self.up2(torch.cat([b, F.interpolate(c, size=b.shape[-2:], mode="nearest")], 1))
        a = self.up1(torch.cat([a, F.interpolate(b, size=size, mode="nearest")], 1))
        if self.bins is not None:
            return self.head(a) if start is None else self.head(a) + self.bins.near(start)
        change = 0.5 * torch.tanh(self.head(a))
        return change if start is None else start + change

    def chroma(self, features: torch.Tensor) -> torch.Tensor:
        """The network's raw output (`features`) -> (B, 2, S, S) chroma."""
        return self.bins.readout(features) if self.bins is not None else features

    def forward(self, gray: torch.Tensor, condition: torch.Tensor | None = None, raw: bool = False) -> torch.Tensor:
        """Color of the gray input; `raw=True`: the raw output (`features`: chroma or logits) instead. The
        training objective asks for the raw output through the call, not through `features`, so that under
        torchrun the call goes through DistributedDataParallel's forward, which its gradient averaging needs."""
        features = self.features(gray, condition)
        return features if raw else color_from(gray, self.chroma(features))


def classify_loss(logits: torch.Tensor, target: torch.Tensor, bins: ChromaBins, weights: torch.Tensor):
    """Zhang et al.'s rebalanced per-pixel cross-entropy over chroma classes: (B, Q, H, W) logits, (B, 3, H, W)
    true color. Each pixel's term is weighted by its true class's weight, so rare (vivid) colors count more."""
    classes = bins.classes(target)  # (B, H, W)
    return (F.cross_entropy(logits, classes, reduction="none") * weights[classes]).mean()
