"""Pictures a person judges a model by: image grids (torchvision's make_grid), labelled rows, a loss chart.

Small images are scaled up with nearest-neighbour before tiling so a 30x30 face is visible in any image viewer
without blurring the pixels the model actually produced.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont
from torch.nn import functional as F
from torchvision.utils import make_grid

from stages.metrics import ACTIVE_KL

_TARGET_CELL = 90  # images are scaled up by an integer factor to about this many pixels


def _upscale(images: torch.Tensor) -> torch.Tensor:
    """(N, C, H, W) in [0,1] -> integer-factor nearest upscale, always 3 channels."""
    factor = max(1, _TARGET_CELL // images.shape[-1])
    if images.shape[1] == 1:
        images = images.expand(-1, 3, -1, -1)
    return F.interpolate(images.float(), scale_factor=factor, mode="nearest") if factor > 1 else images.float()


def grid_image(images: torch.Tensor, columns: int) -> Image.Image:
    """A grid of (N, C, H, W) images in [0,1], `columns` per row, white gutters."""
    grid = make_grid(_upscale(images.clamp(0, 1)), nrow=columns, padding=4, pad_value=1.0)
    return Image.fromarray((grid.permute(1, 2, 0).numpy() * 255 + 0.5).astype(np.uint8))


def save_grid(images: torch.Tensor, columns: int, path: Path, row_labels: list[str] | None = None) -> None:
    image = grid_image(images, columns)
    if row_labels:
        image = _label_rows(image, row_labels)
    image.save(path)


def traversal_labels(order, kl_dims: list[float]) -> list[str]:
    """Row labels of a traversal grid: which latent dimension, and whether it carries information at all."""
    return [f"z{d}  KL {kl_dims[d]:.2f}" if kl_dims[d] > ACTIVE_KL else f"z{d}  inactive" for d in order]


def _label_rows(image: Image.Image, labels: list[str]) -> Image.Image:
    """Add a left margin with one label per grid row (e.g. 'z3  KL 4.1' or 'z7  inactive')."""
    font = ImageFont.load_default()
    margin = 8 + max(int(ImageDraw.Draw(image).textlength(label, font=font)) for label in labels)
    canvas = Image.new("RGB", (image.width + margin, image.height), "white")
    canvas.paste(image, (margin, 0))
    draw = ImageDraw.Draw(canvas)
    row_height = (image.height - 4) / len(labels)
    for i, label in enumerate(labels):
        color = (150, 150, 150) if "inactive" in label else (0, 0, 0)
        draw.text((4, 4 + row_height * (i + 0.5) - 6), label, fill=color, font=font)
    return canvas


def save_loss_chart(curves: dict[str, list[float]], path: Path, title: str) -> None:
    """A small line chart of per-epoch curves, drawn with PIL to avoid a plotting dependency."""
    width, height, left, bottom, top, right = 640, 360, 70, 40, 30, 20
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default()
    values = [v for curve in curves.values() for v in curve if np.isfinite(v)]
    low, high = (min(values), max(values)) if values else (0.0, 1.0)
    high = high if high > low else low + 1.0
    epochs = max((len(c) for c in curves.values()), default=1)
    plot_w, plot_h = width - left - right, height - top - bottom

    def point(epoch: int, value: float) -> tuple[float, float]:
        x = left + plot_w * (epoch / max(epochs - 1, 1))
        return x, top + plot_h * (1 - (value - low) / (high - low))

    draw.rectangle([left, top, left + plot_w, top + plot_h], outline=(180, 180, 180))
    for fraction in (0.0, 0.5, 1.0):
        value = low + (high - low) * fraction
        y = top + plot_h * (1 - fraction)
        draw.text((4, y - 6), f"{value:.4g}", fill=(80, 80, 80), font=font)
    draw.text((left, height - bottom + 12), f"epoch 1 ... {epochs}", fill=(80, 80, 80), font=font)
    draw.text((left, 8), title, fill=(0, 0, 0), font=font)
    colors = [(31, 119, 180), (214, 39, 40), (44, 160, 44), (148, 103, 189)]
    for i, (name, curve) in enumerate(curves.items()):
        points = [point(e, v) for e, v in enumerate(curve) if np.isfinite(v)]
        if len(points) > 1:
            draw.line(points, fill=colors[i % 4], width=2)
        elif points:
            draw.ellipse([points[0][0] - 2, points[0][1] - 2, points[0][0] + 2, points[0][1] + 2], fill=colors[i % 4])
        draw.text((width - right - 120, top + 8 + 14 * i), f"— {name}", fill=colors[i % 4], font=font)
    image.save(path)
