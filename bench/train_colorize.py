"""Side-by-side colorizer training speed and quality: stages.training.fit against the reference DataLoader loop.

Why: StackNN (90 M parameters, almost all in two Linear layers) is the slow stage. `fit` trains it faster than
the reference loop (whole set as one tensor, index-slice batches, fused Adam under a one-cycle schedule,
denormals flushed) to an equal or better test PSNR in the same epochs; this measures by how much, in one run, so
a busy machine slows both sides alike. At batch 64 on both sides the GEMMs of the 17405x4500 Linear dominate
both steps (ours: 233 ms forward, 474 ms backward, 63 ms fused Adam) and the gain is the reference's ~0.55 s of
unfused Adam: 1.5-1.7x on two cores. Batch 128 is only ~1.2x faster again here (the convolutions and the weight
gradient grow with the batch) and loses the color-for-PSNR trade the default is tuned for; see
stages/colorize.py.

All sides train build_colorizer('stacknn', 30) from the same seeded initialisation on the same faces (the
embedded generator, default 1,044 as `pipeline prepare` makes, 10% held out) for the same epochs:
  reference  DataLoader(TensorDataset(gray, color), batch_size=64, shuffle=True), torch.optim.Adam(lr=1e-3),
             loss MSE(color, target) + MSE(luma(color), gray), N(0, noise_std) noise on the input
  ours       stages.training.fit on stages.colorize.training_job, the stage's own (ColorizeParams batch_size,
             lr, noise_std, luma_weight and colorfulness_weight; output bias started at the mean training color)
  ours, plain MSE   the same with colorfulness_weight 0: the reference's own objective, so its PSNR compares
             the two training loops alone. The default's colorfulness term trades some PSNR for color by design.
Only training is timed (fit's own clock, which leaves out its per-epoch evaluation and checkpoints). All are then
scored on the test faces by stages.colorize.evaluate_colorizer with the stage's default output step (exact luma
on), applied to every side alike. `--also 64:1e-3` adds rows for other batch sizes / peak learning rates of ours.
The last line is `ratio: <our img/s / reference img/s>` at our defaults.

    python bench/train_colorize.py [--images 1044] [--epochs 4] [--prepared DIR] [--also BATCH:LR ...]
"""
from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import trainbench as tb  # noqa: E402  (first: it sets torch's environment before torch loads)
import torch  # noqa: E402
from stages.colorize import evaluate_colorizer, mean_color_psnr, training_job  # noqa: E402
from stages.metrics import colorfulness  # noqa: E402
from stages.luma import luma_of  # noqa: E402
from stages.models import build_colorizer  # noqa: E402
from stages.params import ColorizeParams  # noqa: E402


def main() -> None:
    args = tb.parse_args(__doc__, images=1044, epochs=ColorizeParams.epochs)
    params = ColorizeParams(arch="stacknn", epochs=args.epochs, seed=args.seed)
    gray, gray_test, color, color_test = tb.load(args, 1, 3)

    def build():
        return build_colorizer(params.arch, gray.shape[-1])

    def reference(model):
        def loss(model, x, y):
            out = model(x + params.noise_std * torch.randn_like(x))
            return (out - y).pow(2).mean() + (luma_of(out) - x).pow(2).mean()
        return tb.reference(model, (gray, color), loss, params.epochs, params.seed)

    def ours(batch_size: int, lr: float, colorfulness_weight: float = params.colorfulness_weight):
        side = dataclasses.replace(params, batch_size=batch_size, lr=lr, colorfulness_weight=colorfulness_weight)
        return lambda model: tb.ours(training_job(model, side, (gray, color), (gray_test, color_test)))

    columns = [("psnr", "test PSNR", "{:>9.2f}"), ("ssim", "SSIM", "{:>6.3f}"), ("luma_mse", "luma MSE", "{:>9.5f}"),
               ("colorfulness_output", "colorful", "{:>9.1f}")]
    defaults = (params.batch_size, params.lr)
    sides = tb.our_sides(ours, defaults, args.also)
    sides.insert(1, (f"ours, plain MSE: b{defaults[0]}, colorfulness 0", ours(*defaults, colorfulness_weight=0.0)))
    untrained = mean_color_psnr(color, gray_test, color_test)
    tb.compare(f"StackNN colorizer, {params.epochs} epochs, {len(gray)} train / {len(gray_test)} test faces "
               f"(true colorfulness {colorfulness(color_test).mean():.1f}; with no training, the mean color at each "
               f"face's luma scores {untrained:.2f} dB)", len(gray) * params.epochs, params.seed, build, reference, sides,
               lambda model: evaluate_colorizer(model, gray_test, color_test, params.exact_luma), columns, "psnr",
               lower_better=False)


if __name__ == "__main__":
    main()
