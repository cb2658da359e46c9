"""The colorize stage: train a gray -> color network on the prepared set.

Training depends only on the prepared set and the colorize parameters, so changing a VAE parameter re-runs
`vae_color` (cheap: apply the existing colorizer to the new gray images) without retraining the colorizer.

Loss = MSE(color, target) + λ_luma · MSE(luma(color), gray) + λ_colorful · (C(color) − C(target))²
where C is an image's Hasler–Süsstrunk colorfulness (stages.metrics, on the [0,1] scale). The last term is ours:
plain MSE on an ambiguous hue (is that mid-gray hair red, blue or purple?) pays least by predicting the average
hue, a washed-out sepia. Asking each image to be as colorful as its true color, rather than each pixel as
saturated, lets the network spend color where it is surest. On the default data (4 epochs, batch 64) weight 0.2
bought the colorfulness ratio 0.43 -> 0.72 for 0.47 dB of PSNR; a per-pixel saturation term cost twice that.

Batch 64 at peak lr 2e-3 (60 steps in 4 epochs), not 128 at 3e-3 (32 steps): with the larger steps StackNN's
training loss stayed at the mean image's (0.12) and plain MSE scored what the mean training color plus
exact_luma scores (18.79 against 18.80 dB): the network had learned nothing. At batch 64 the loss falls to
0.053 by epoch 4 and hair, eyes and backgrounds take different hues by content. Batch 128 at lr 1e-3 does learn
(plain MSE 18.92 dB) but trades color worse: weight 0.2 gave ratio 0.76 at -0.86 dB, 0.15 gave 0.67 at -0.54 dB,
where batch 64 gives 0.72 at -0.47 dB; and it ran only ~1.2x faster per image.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from stages import distributed
from stages import metrics as m
from stages.checkpoints import MODEL, ColorizerConfig, save_model
from stages.contract import StageContext
from stages.luma import exact_luma, luma_of
from stages.models import StackNN, apply_colorizer, map_in_slices
from stages.params import ColorizeParams
from stages.prepared_set import load_prepared
from stages.training import Job, fit, resolve_device, write_training_record
from stages.viz import save_grid

TEST_GRID = 16


def colorize_loss(color, target, gray, params: ColorizeParams):
    """The training objective, with its parts for the history; `gray` is the clean luma of the target."""
    color_mse = (color - target).pow(2).mean()
    luma_mse = (luma_of(color) - gray).pow(2).mean()
    colorfulness_gap = ((m.colorfulness(color) - m.colorfulness(target)) / 255).pow(2).mean()
    loss = color_mse + params.luma_weight * luma_mse + params.colorfulness_weight * colorfulness_gap
    return loss, {"color_mse": color_mse.item(), "luma_mse": luma_mse.item(),
                  "colorfulness_gap": colorfulness_gap.item()}


def evaluate_colorizer(model, gray: torch.Tensor, target: torch.Tensor, exact: bool) -> dict:
    color, unclipped = apply_colorizer(model, gray, exact)
    psnr, ssim = m.psnr_ssim(color.cpu().numpy(), target.cpu().numpy())
    inside = ((unclipped >= 0) & (unclipped <= 1)).all(1, keepdim=True)  # pixels that clipping left alone
    luma_error_unclipped = (luma_of(unclipped) - gray).pow(2)[inside]
    return {
        "psnr": psnr, "ssim": ssim,
        "luma_mse": (luma_of(color) - gray).pow(2).mean().item(),
        "luma_mse_before_clipping": luma_error_unclipped.mean().item() if luma_error_unclipped.numel() else 0.0,
        "colorfulness_output": m.colorfulness(color).mean().item(),
        "colorfulness_true": m.colorfulness(target).mean().item(),
    }


def mean_color_psnr(train_color: torch.Tensor, test_gray: torch.Tensor, test_color: torch.Tensor) -> float:
    """Test PSNR of the colorizer that ignores its input: the mean training color with each test image's luma put
    in by exact_luma. A plain-MSE colorizer (colorfulness_weight 0) that does not beat it has learned nothing, as
    StackNN once did at too few steps; the colorful default trades about 0.5 dB for color, so it may not."""
    mean = train_color.mean(0, keepdim=True).expand(len(test_gray), -1, -1, -1)
    color = exact_luma(mean, test_gray).clamp(0, 1)
    return m.psnr_ssim(color.cpu().numpy(), test_color.cpu().numpy())[0]


def training_job(model, params: ColorizeParams, train: tuple[torch.Tensor, torch.Tensor],
                 test: tuple[torch.Tensor, torch.Tensor]) -> Job:
    """How the stage trains a colorizer on (gray, color) pairs; bench/train_colorize.py times exactly this."""
    (gray, color), (gray_test, color_test) = train, test
    if isinstance(model, StackNN):
        model.start_at(color.mean(0))

    def batch_loss(model, x, y, noise):
        noisy = x + params.noise_std * noise(*x.shape[1:])
        return colorize_loss(model(noisy.clamp(0, 1)), y, x, params)

    def evaluate(model):
        loss, stats = colorize_loss(map_in_slices(model, gray_test, 256), color_test, gray_test, params)
        return {"loss": loss.item(), **{f"test_{k}": v for k, v in stats.items()}}

    return Job(model=model, train_data=(gray, color), batch_loss=batch_loss, evaluate=evaluate, epochs=params.epochs,
               batch_size=params.batch_size, lr=params.lr, seed=params.seed, label="colorize")


def run(params: ColorizeParams, inputs: dict[str, Path], out_dir: Path, context: StageContext) -> dict:
    device = resolve_device(context.device)
    gray_np, train_index, test_index = load_prepared(inputs["prepare"], 1)
    color_np, _, _ = load_prepared(inputs["prepare"], 3)
    gray, color = torch.from_numpy(gray_np).to(device), torch.from_numpy(color_np).to(device)
    torch.manual_seed(params.seed)
    config = ColorizerConfig(arch=params.arch, size=gray.shape[-1], exact_luma=params.exact_luma)
    model = config.build().to(device)
    gray_train, color_train = gray[train_index], color[train_index]
    gray_test, color_test = gray[test_index], color[test_index]
    job = training_job(model, params, (gray_train, color_train), (gray_test, color_test))
    history = fit(job, context, device)
    if not distributed.world().main:
        return {}  # rank 0 evaluates, draws and saves: the same model is on every rank
    save_model(out_dir / MODEL, model, config)

    results = evaluate_colorizer(model, gray_test, color_test, params.exact_luma)
    results["colorfulness_ratio"] = results["colorfulness_output"] / max(results["colorfulness_true"], 1e-9)
    results["mean_color_psnr"] = mean_color_psnr(color_train, gray_test, color_test)
    results.update(write_training_record(out_dir, history, model, "colorize loss (MSE terms + colorfulness gap)"))
    shown = test_index[:TEST_GRID]
    colored, _ = apply_colorizer(model, gray[shown], params.exact_luma)
    save_grid(torch.cat([gray[shown].expand(-1, 3, -1, -1), colored, color[shown]]).cpu(), len(shown),
              out_dir / "test_colorized.png")
    results["headline"] = (f"test PSNR {results['psnr']:.2f} dB, SSIM {results['ssim']:.3f}, luma MSE "
                           f"{results['luma_mse']:.5f}, colorfulness ratio {results['colorfulness_ratio']:.2f}, "
                           f"{results['images_per_second']:.0f} img/s")
    return results

