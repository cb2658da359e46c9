"""Numbers that back the eye: ELBO and importance-sampled NLL in nats, PSNR/SSIM, colorfulness.

Likelihoods are per image, in nats, summed over pixels. For the Bernoulli (BCE) likelihood on continuous gray,
the best possible reconstruction term is the pixels' own binary entropy (`bce_entropy_floor`), so we report
-ELBO together with its excess over that floor: the excess is what a better model can shrink.
"""
from __future__ import annotations

import math
from collections.abc import Iterable

import numpy as np
import torch
from skimage.color import rgb2lab
from skimage.metrics import peak_signal_noise_ratio, structural_similarity
from torch.nn import functional as F

MSE_SIGMA = 0.1  # fixed std of the Gaussian likelihood of `recon=mse`, on the [0,1] scale
ACTIVE_KL = 0.01  # nats: a latent dimension whose mean KL is below this carries no information


def reconstruction_nll(logits: torch.Tensor, target: torch.Tensor, recon: str) -> torch.Tensor:
    """-log p(x|z) per image, in nats: (B, C, H, W) decoder logits and targets in [0,1] -> (B,)."""
    if recon == "bce":
        return F.binary_cross_entropy_with_logits(logits, target, reduction="none").flatten(1).sum(1)
    squared = (torch.sigmoid(logits) - target).pow(2).flatten(1).sum(1)
    pixels = target[0].numel()
    return squared / (2 * MSE_SIGMA ** 2) + pixels * math.log(math.sqrt(2 * math.pi) * MSE_SIGMA)


def kl_per_dimension(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(q(z|x) || N(0, I)) for each image and latent dimension: (B, Z)."""
    return 0.5 * (mu.pow(2) + logvar.exp() - 1 - logvar)


def bce_entropy_floor(images: torch.Tensor) -> float:
    """Mean over images of the summed binary entropy of their pixels: the lowest BCE any decoder can reach.
    Computed 512 images at a time: its temporaries, each the size of the images, would otherwise multiply a big
    test split's memory."""
    return torch.cat([_summed_binary_entropy(some) for some in images.split(512)]).mean().item()


def _summed_binary_entropy(images: torch.Tensor) -> torch.Tensor:
    p = images.clamp(1e-6, 1 - 1e-6)
    return -(p * p.log() + (1 - p) * (1 - p).log()).flatten(1).sum(1)


@torch.no_grad()
def importance_sampled_nll(model, images: torch.Tensor, recon: str, samples: int, generator) -> float:
    """log p(x) ≈ logmeanexp_k [log p(x|z_k) + log p(z_k) - log q(z_k|x)], z_k ~ q(z|x); mean -log p(x) in nats."""
    estimates = []
    for x in images.split(50):
        mu, logvar = model.encode(x)
        std = torch.exp(0.5 * logvar)
        log_weights = []
        for _ in range(samples):
            noise = torch.randn(mu.shape, generator=generator, device=mu.device)
            z = mu + std * noise
            log_px_z = -reconstruction_nll(model.decode(z), x, recon)
            log_pz = -0.5 * (z.pow(2) + math.log(2 * math.pi)).sum(1)
            log_qz = -0.5 * (noise.pow(2) + logvar + math.log(2 * math.pi)).sum(1)
            log_weights.append(log_px_z + log_pz - log_qz)
        stacked = torch.stack(log_weights)  # (K, B)
        estimates.append(-(torch.logsumexp(stacked, 0) - math.log(samples)))
    return torch.cat(estimates).mean().item()


def _to_hwc(images: np.ndarray) -> np.ndarray:
    """(N, C, H, W) float [0,1] -> (N, H, W, C)."""
    return np.ascontiguousarray(np.transpose(images, (0, 2, 3, 1)))


def psnr_ssim(output: np.ndarray, target: np.ndarray) -> tuple[float, float]:
    """Mean PSNR (dB) and SSIM over images; (N, C, H, W) floats in [0,1]."""
    return mean_psnr_ssim([(output, target)])


def mean_psnr_ssim(pairs: Iterable[tuple[np.ndarray, np.ndarray]]) -> tuple[float, float]:
    """Mean PSNR (dB) and SSIM over the images of every (output, target) pair of (N, C, H, W) float arrays in
    [0,1], so a big test split can be scored a slice at a time: the same means as one call on all of it."""
    psnr, ssim = [], []
    for output, target in pairs:
        output, target = _to_hwc(output), _to_hwc(target)
        channel_axis = -1 if output.shape[-1] == 3 else None
        for out, ref in zip(output, target):
            if channel_axis is None:
                out, ref = out[..., 0], ref[..., 0]
            with np.errstate(divide="ignore"):  # an exact match is an infinite PSNR, handled below
                psnr.append(peak_signal_noise_ratio(ref, out, data_range=1.0))
            ssim.append(structural_similarity(ref, out, data_range=1.0, channel_axis=channel_axis,
                                              win_size=min(7, min(ref.shape[:2]) // 2 * 2 - 1)))
    finite_psnr = [p for p in psnr if math.isfinite(p)] or [100.0]
    return float(np.mean(finite_psnr)), float(np.mean(ssim))


def colorfulness(images: torch.Tensor) -> torch.Tensor:
    """Hasler & Süsstrunk (2003) colorfulness per image: (N, 3, H, W) in [0,1] -> (N,), on the 0-255 scale.

    Differentiable (the colorizer's loss matches it), so the metric and the training target are one formula."""
    rgb = images.flatten(2) * 255
    rg = rgb[:, 0] - rgb[:, 1]
    yb = 0.5 * (rgb[:, 0] + rgb[:, 1]) - rgb[:, 2]
    tiny = 1e-6  # keeps the square roots' gradients finite for a perfectly gray image
    spread = (rg.var(1, correction=0) + yb.var(1, correction=0) + tiny).sqrt()
    mean = (rg.mean(1) ** 2 + yb.mean(1) ** 2 + tiny).sqrt()
    return spread + 0.3 * mean


COLOR_AUC_MAX_ERROR = 150.0  # Zhang et al. 2016 sweep ab-error thresholds from 0 to 150


def color_error_auc(output: np.ndarray, target: np.ndarray, max_error: float = COLOR_AUC_MAX_ERROR) -> float:
    """Zhang et al. (2016) per-pixel color error AuC, in percent: (N, 3, H, W) floats in [0,1] -> 0..100.

    The fraction of pixels whose ab error (CIE Lab, skimage.color) is at most t, integrated over t in
    [0, max_error] and divided by max_error. That integral has a closed form, the mean over pixels of
    1 - min(error, max_error) / max_error, so no threshold grid is needed: a perfect colorizer scores 100."""
    ab_out = rgb2lab(_to_hwc(output).astype(np.float64))[..., 1:]
    ab_true = rgb2lab(_to_hwc(target).astype(np.float64))[..., 1:]
    error = np.sqrt(((ab_out - ab_true) ** 2).sum(-1))
    return float(100 * (1 - np.minimum(error, max_error) / max_error).mean())


def train_pixel_classifier(images: torch.Tensor, labels: torch.Tensor, classes: int, seed: int) -> torch.nn.Module:
    """Multinomial logistic regression on pixels: a simple, independent judge of what an image shows."""
    torch.manual_seed(seed)
    model = torch.nn.Linear(images[0].numel(), classes).to(images.device)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2, weight_decay=1e-4)
    flat = images.flatten(1)
    for _ in range(150):
        loss = F.cross_entropy(model(flat), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model.eval()
