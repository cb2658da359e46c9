"""The colorize stage: train a gray -> color network on the prepared set.

Training depends only on the prepared set and the colorize parameters, so changing a VAE parameter re-runs
`vae_color` (cheap: apply the existing colorizer to the new gray images) without retraining the colorizer.

Loss = MSE(color, target) + λ_luma · MSE(luma(color), gray) + λ_colorful · (C(color) − C(target))²
where C is an image's Hasler–Süsstrunk colorfulness (stages.metrics, on the [0,1] scale). The last term is ours:
plain MSE on an ambiguous hue pays least by predicting the average hue, a washed-out sepia; asking each image to
be as colorful as its true color lets the network spend color where it is surest. StackNN trains at batch 64:
at batch 128 it learned nothing in the default epochs. By default (colorize.residual) StackNN adds to the
average color of each position and gray level rather than painting the whole color: its 90 M parameters get
about 60 optimiser steps in a default run, too few to rediscover that average. docs/decisions.md has the
measurements behind all three.
"""
from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import torch

from stages import distributed, judge
from stages import metrics as m
from stages.checkpoints import MODEL, ColorizerConfig, save_model
from stages.colorizers import (AverageColorResidual, ChromaBins, GlobalUNet, LumaBaseline, classify_loss,
                               color_from)
from stages.contract import StageContext, StageError
from stages.luma import exact_luma, luma_of
from stages.models import StackNN, apply_colorizer
from stages.params import ColorizeParams
from stages.prepared_set import fitting_rows, labels_file, open_split
from stages.tag_judge import judged_tags, train_tag_judge
from stages.training import Job, RowSource, fit, resolve_device, write_training_record
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


def evaluate_colorizer(model, gray: torch.Tensor, target: torch.Tensor, exact: bool,
                       condition: torch.Tensor | None = None) -> dict:
    color, unclipped = apply_colorizer(model, gray, exact, condition)
    inside = ((unclipped >= 0) & (unclipped <= 1)).all(1, keepdim=True)  # pixels that clipping left alone
    luma_error_unclipped = (luma_of(unclipped) - gray).pow(2)[inside]
    return {**color_scores(color, gray, target),
            "luma_mse_before_clipping": luma_error_unclipped.mean().item() if luma_error_unclipped.numel() else 0.0}


def color_scores(color: torch.Tensor, gray: torch.Tensor, target: torch.Tensor) -> dict:
    """What the stage reports of any colorizer's (clipped) test colors, the baselines' included."""
    psnr, ssim = m.psnr_ssim(color.cpu().numpy(), target.cpu().numpy())
    colorfulness, true_colorfulness = m.colorfulness(color).mean().item(), m.colorfulness(target).mean().item()
    return {"psnr": psnr, "ssim": ssim, "color_auc": m.color_error_auc(color.cpu().numpy(), target.cpu().numpy()),
            "luma_mse": (luma_of(color) - gray).pow(2).mean().item(),
            "colorfulness_output": colorfulness, "colorfulness_true": true_colorfulness,
            "colorfulness_ratio": colorfulness / max(true_colorfulness, 1e-9)}


def baselines(gray_train: torch.Tensor, color_train: torch.Tensor, gray_test: torch.Tensor) -> dict[str, torch.Tensor]:
    """Test colors of the two colorizers that know only the average color: name -> (B, 3, S, S), clipped.

    "mean image": the mean training face, shifted to each test image's luma (knows where on the face a pixel is).
    "mean per luma": the mean training chroma of each gray level (knows how bright a pixel is). Which is stronger
    depends on the set (aligned faces on a fixed background favour the first), so the stage reports the one
    with the higher test PSNR: the harder bar."""
    mean = color_train.mean(0, keepdim=True).expand(len(gray_test), -1, -1, -1)
    return {"mean image": exact_luma(mean, gray_test).clamp(0, 1),
            "mean per luma": LumaBaseline().fit(gray_train, color_train)(gray_test).clamp(0, 1)}


def read_condition(prepared: Path, column: str) -> tuple[tuple[str, ...], np.ndarray]:
    """labels.csv column -> (its values, sorted; each image's index: value i -> i + 1, no tag -> 0). A cell
    holding several values (a;b) counts as its first."""
    path = labels_file(prepared)
    if path is None:
        raise StageError(f"colorize.condition={column} needs tags, but the prepared set {prepared} has no labels.csv: "
                         "prepare with `pipeline prepare --labels tags.csv`, or leave colorize.condition empty")
    with open(path, newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        if column not in (reader.fieldnames or []):
            columns = ", ".join(c for c in reader.fieldnames or [] if c != "file") or "none"
            raise StageError(f"colorize.condition={column}: {path} has no column {column!r} (its tag columns: "
                             f"{columns}): pick one of them")
        cells = [(row[column] or "").split(";")[0].strip() for row in reader]
    values = tuple(sorted({cell for cell in cells if cell}))
    return values, np.array([values.index(cell) + 1 if cell else 0 for cell in cells], dtype=np.int64)


def tag_accuracy(color_train: torch.Tensor, tags_train: torch.Tensor, tags_test: torch.Tensor,
                 colorized: dict[str, torch.Tensor], values: tuple[str, ...], seed: int) -> tuple[dict, dict]:
    """How often the tag judge (stages.tag_judge), trained on the tagged true-color training faces, reads each
    tagged test face's true tag back from each of `colorized` (name -> its test colors, "true_color" among them):
    (name -> accuracy, {tag value: {name: accuracy, "test_faces": count}})."""
    tagged = tags_train > 0
    reader = train_tag_judge(color_train[tagged], tags_train[tagged] - 1, len(values), seed)
    shown = tags_test > 0
    truth = tags_test[shown] - 1
    hits = {name: judged_tags(reader, color[shown]) == truth for name, color in colorized.items()}
    by_tag = {value: {"test_faces": int((truth == i).sum()),
                      **{name: hit[truth == i].float().mean().item() for name, hit in hits.items()}}
              for i, value in enumerate(values) if (truth == i).any()}
    return {name: hit.float().mean().item() for name, hit in hits.items()}, by_tag


def _objective(model, params: ColorizeParams, class_weights: torch.Tensor | None):
    """(model, noisy gray, clean gray, true color[, tags]) -> (loss, its parts) for this colorizer and loss.

    The objective is handed the model the training loop trains: under torchrun a DistributedDataParallel
    wrapper, which only forwards calls. So the network is called, never `features`; the parameter-free readouts
    (`chroma`, `bins`) are those of `model`, the module it wraps."""
    if params.loss == "classify":
        def objective(trained, noisy, gray, target, *tags):
            loss = classify_loss(trained(noisy, *tags, raw=True), target, model.bins, class_weights)
            return loss, {"cross_entropy": loss.item()}
    elif isinstance(model, GlobalUNet):  # chroma read from the noisy gray, added to the clean one
        def objective(trained, noisy, gray, target, *tags):
            return colorize_loss(color_from(gray, model.chroma(trained(noisy, *tags, raw=True))), target, gray, params)
    elif isinstance(model, AverageColorResidual):  # the average color of the clean gray, the net reads the noisy
        def objective(trained, noisy, gray, target, *tags):
            return colorize_loss(trained(noisy, *tags, clean=gray), target, gray, params)
    else:
        def objective(trained, noisy, gray, target, *tags):
            return colorize_loss(trained(noisy, *tags), target, gray, params)
    return objective


def training_job(model, params: ColorizeParams, train: tuple[RowSource, ...], test: tuple[torch.Tensor, ...],
                 class_weights: torch.Tensor | None = None) -> Job:
    """How the stage trains a colorizer on (gray, color[, tag index]) rows; bench/train_colorize.py times
    exactly this. `class_weights` are the chroma classes' rebalancing weights of the `classify` loss."""
    fitted = fitting_rows(len(train[0]), params.seed)  # the average color's rows
    if isinstance(model, AverageColorResidual):
        model.start_at(*(rows[fitted] for rows in train))
    elif isinstance(model, GlobalUNet) and model.average is not None:
        model.start_at(*(rows[fitted] for rows in train[:2]))
    elif isinstance(model, StackNN):
        model.start_at(train[1][fitted].mean(0))
    objective = _objective(model, params, class_weights)

    def batch_loss(model, x, *rest, noise):
        noisy = x + params.noise_std * noise(*x.shape[1:])
        return objective(model, noisy.clamp(0, 1), x, *rest)

    def evaluate(model):
        total, sums = 0.0, {}
        for part in zip(*(t.split(256) for t in test)):
            loss, stats = objective(model, part[0], *part)
            total += loss.item() * len(part[0])
            for name, value in stats.items():
                sums[name] = sums.get(name, 0.0) + value * len(part[0])
        count = len(test[0])
        return {"loss": total / count, **{f"test_{k}": v / count for k, v in sums.items()}}

    return Job(model=model, train_data=train, batch_loss=batch_loss, evaluate=evaluate, epochs=params.epochs,
               batch_size=params.batch_size, lr=params.lr, seed=params.seed, label="colorize")


def run(params: ColorizeParams, inputs: dict[str, Path], out_dir: Path, context: StageContext) -> dict:
    if params.arch == "stacknn" and params.loss != "mse":
        raise StageError("colorize.loss=classify works with the conv colorizer only: add --set colorize.arch=conv")
    device = resolve_device(context.device)
    gray_train, gray_test, train_index, test_index = open_split(inputs["prepare"], 1, device)
    color_train, color_test, _, _ = open_split(inputs["prepare"], 3, device)
    fitted = fitting_rows(len(train_index), params.seed)  # the rows the statistics and judges are fitted to
    values, tags = (), None
    if params.condition:
        values, tag_np = read_condition(inputs["prepare"], params.condition)
        tags = torch.from_numpy(tag_np).to(device)
    torch.manual_seed(params.seed)
    bins, class_weights = ChromaBins.fit(color_train[fitted]) if params.loss == "classify" else (None, None)
    config = ColorizerConfig(arch=params.arch, size=gray_test.shape[-1], exact_luma=params.exact_luma,
                             classes=len(bins.centers) if bins is not None else 0, condition=params.condition,
                             condition_values=values, residual=params.residual)
    model = config.build().to(device)
    if bins is not None:
        model.bins.load_state_dict(bins.state_dict())
    train, test = (gray_train, color_train), (gray_test, color_test)
    if tags is not None:
        train, test = (*train, tags[train_index]), (*test, tags[test_index])
    history = fit(training_job(model, params, train, test, class_weights), context, device)
    if not distributed.world().main:
        return {}  # rank 0 evaluates, draws and saves: the same model is on every rank
    save_model(out_dir / MODEL, model, config)

    tags_test = tags[test_index] if tags is not None else None
    results = evaluate_colorizer(model, gray_test, color_test, params.exact_luma, tags_test)
    gray_fit, color_fit = gray_train[fitted], color_train[fitted]  # read after training: not held during it
    baseline_colors = baselines(gray_fit, color_fit, gray_test)
    scored = {name: color_scores(colors, gray_test, color_test) for name, colors in baseline_colors.items()}
    baseline = max(scored, key=lambda name: scored[name]["psnr"])
    results["baseline"] = baseline
    for key in ("psnr", "ssim", "color_auc", "colorfulness_ratio"):
        results[f"baseline_{key}"] = scored[baseline][key]
    results["psnr_margin"] = results["psnr"] - results["baseline_psnr"]
    real = color_test[:judge.REAL_IMAGES]
    if len(real) >= judge.MIN_IMAGES:  # can the judge tell colorized faces from their true colors?
        colored_test = apply_colorizer(model, gray_test[:len(real)], params.exact_luma,
                                       None if tags_test is None else tags_test[:len(real)])[0]
        results["c2st"] = judge.realism(colored_test, real, seed=params.seed)["c2st"]
        results["baseline_c2st"] = judge.realism(baseline_colors[baseline][:len(real)], real, seed=params.seed)["c2st"]
    accuracy = None
    if tags is not None and (tags[train_index] > 0).any() and (tags_test > 0).any():
        colorized = {"conditioned": apply_colorizer(model, gray_test, params.exact_luma, tags_test)[0],
                     "no_tag": apply_colorizer(model, gray_test, params.exact_luma, torch.zeros_like(tags_test))[0],
                     "true_color": color_test,
                     "baseline": baseline_colors[baseline]}
        accuracy, by_tag = tag_accuracy(color_fit, tags[train_index][fitted], tags_test, colorized, values,
                                        params.seed)
        results.update({f"{params.condition}_accuracy_{name}": value for name, value in accuracy.items()})
        results[f"{params.condition}_accuracy_by_tag"] = by_tag
    results.update(write_training_record(out_dir, history, model, "colorize loss (MSE terms + colorfulness gap)"
                                         if params.loss == "mse" else "colorize loss (rebalanced cross-entropy)"))
    shown = slice(TEST_GRID)
    colored, _ = apply_colorizer(model, gray_test[shown], params.exact_luma,
                                 tags_test[shown] if tags is not None else None)
    save_grid(torch.cat([gray_test[shown].expand(-1, 3, -1, -1), colored, color_test[shown]]).cpu(),
              len(colored), out_dir / "test_colorized.png")
    margin = results["psnr_margin"]
    verdict = (f"beats the average-color baseline by {margin:.2f} dB" if margin > 0 else
               f"does not beat the average-color baseline ({-margin:.2f} dB below it)")
    results["headline"] = (f"{verdict}: test PSNR {results['psnr']:.2f} dB against {results['baseline_psnr']:.2f} "
                           f"({baseline}), color AuC {results['color_auc']:.1f} against "
                           f"{results['baseline_color_auc']:.1f}, SSIM {results['ssim']:.3f}, luma MSE "
                           f"{results['luma_mse']:.5f}, colorfulness ratio {results['colorfulness_ratio']:.2f}, "
                           + (f"C2ST {results['c2st']:.2f} against {results['baseline_c2st']:.2f}, "
                              if "c2st" in results else "")
                           + (f"{params.condition} read back from {accuracy['conditioned']:.0%} of the colored test "
                              f"faces (true colors {accuracy['true_color']:.0%}, no tag {accuracy['no_tag']:.0%}, "
                              f"baseline {accuracy['baseline']:.0%}), " if accuracy else "")
                           + f"{results['images_per_second']:.0f} img/s")
    return results
