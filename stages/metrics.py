"""Numbers that back the eye: ELBO and importance-sampled NLL in nats, PSNR/SSIM, colorfulness.

Likelihoods are per image, in nats, summed over pixels. For the Bernoulli (BCE) likelihood on continuous gray,
the best possible reconstruction term is the pixels' own binary entropy (`bce_entropy_floor`), so we report
-ELBO together with its excess over that floor: the excess is what a better model can shrink.
"""
from __future__ import annotations

import math

import numpy as np
import torch
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
    """Mean over images of the summed binary entropy of their pixels: the lowest BCE any decoder can reach."""
    p = images.clamp(1e-6, 1 - 1e-6)
    entropy = -(p * p.log() + (1 - p) * (1 - p).log())
    return entropy.flatten(1).sum(1).mean().item()


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
    output, target = _to_hwc(output), _to_hwc(target)
    channel_axis = -1 if output.shape[-1] == 3 else None
    psnr, ssim = [], []
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
