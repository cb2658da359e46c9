"""Time to the reference's quality for the StackNN colorizer: stages.training.fit against the seed's DataLoader loop.

Why: StackNN (90 M parameters, almost all in two Linear layers) is the slow stage, and its step is bound by the
same GEMMs on both sides, so what a user can gain is in how few and how cheap the steps to the reference's
quality are. As MLPerf Training measures:
  reference  build_colorizer('stacknn', 30), DataLoader(TensorDataset(gray, color), batch_size=64, shuffle=True),
             torch.optim.Adam(lr=1e-3), no schedule, loss MSE(color, target) + MSE(luma(color), gray) with
             N(0, noise_std) noise on the input, for --reference-epochs (long enough that its test PSNR has
             flattened: its last 20% of epochs gain < 0.1 dB, checked and printed). Its final test PSNR is the
             target, its training time T_ref.
  closed     the same network, initialisation and loss (no exact luma, no colorfulness term, no output bias
             started at the mean color), trained by stages.training.fit with its own batch, peak lr, warm-up and
             epochs (--batch, --lr, --warmup, --epochs). StackNN's test PSNR rises by about as much per
             optimiser step whatever the peak lr, the schedule or the batch from 32 to 64, so the default recipe
             buys cheap steps: batch 32 (a step costs less than the reference's batch-64 step, and fit's fused
             Adam, tensor batches and flushed denormals make it cheaper still), over enough epochs to pass the
             target.
             T_ours = its training time until the test PSNR after an epoch first reaches the target.
  open       the colorize stage's own training (stages.colorize.training_job on the network ColorizerConfig
             builds from ColorizeParams: colorfulness term, average-color residual start), scored after its
             exact-luma output step as the stage scores it: printed, not the headline. Its colorfulness term
             trades PSNR for color by design, so it may never reach a plain-MSE target.
The test PSNR is stages.colorize.evaluate_colorizer's on the raw output (exact luma off, so the closed sides are
scored on what they learned), the same for every side; evaluation is off both clocks. The last line is
`ratio: <T_ref / T_ours (closed)>`; the images per second ratio of the old bench is printed above it.

The data: 570 embedded faces by default, 270 to train on and 300 held out. The reference's test PSNR rises
with every optimiser step for far longer than 10 minutes of its steps on ~1,000 training faces; on 270 it levels
off after about 400 steps (80-90 epochs), so the default 90 reference epochs reach the flat part and the whole
bench fits in 10 minutes on 2 quiet cores. The test set is large because the target is the reference's last
point: on 30 test faces that point wobbled by 0.1-0.2 dB from epoch to epoch, enough to move the ratio from 0 to
8 between seeds. (Not larger: each evaluation is a StackNN forward pass over the whole test set, after every
epoch of every side, and 1,000 faces would take the bench past 10 minutes.) `--images`, `--test-images` or
`--prepared` measure other sets (then raise --reference-epochs until the flattening line says yes).

    python bench/train_colorize.py [--images 570 --test-images 300] [--prepared DIR] [--seed 0] [--reference-epochs N]
                                   [--batch B --lr LR --warmup W --epochs E] [--no-open]
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import trainbench as tb  # noqa: E402  (first: it sets torch's environment before torch loads)
import torch  # noqa: E402
from stages.checkpoints import ColorizerConfig  # noqa: E402
from stages.colorize import baselines, evaluate_colorizer, training_job  # noqa: E402
from stages.metrics import psnr_ssim  # noqa: E402
from stages.luma import luma_of  # noqa: E402
from stages.models import build_colorizer  # noqa: E402
from stages.params import ColorizeParams  # noqa: E402
from stages.training import Job  # noqa: E402

CLOSED = tb.Recipe(batch_size=32, lr=1.5e-3, epochs=40, warmup=0.15)
PSNR = tb.Metric("test PSNR", "dB", lower_better=False, flat=0.1)


def main() -> None:
    args = tb.parse_args(__doc__, images=570, reference_epochs=90, closed=CLOSED, test_images=300)
    params = ColorizeParams(arch="stacknn", seed=args.seed)
    gray, gray_test, color, color_test = tb.load(args, 1, 3)

    def score(model, exact: bool = False) -> float:
        return evaluate_colorizer(model, gray_test, color_test, exact)["psnr"]

    def loss(model, x, y, noise):
        out = model(x + params.noise_std * noise)
        return (out - y).pow(2).mean() + (luma_of(out) - x).pow(2).mean()

    def build():
        return build_colorizer(params.arch, gray.shape[-1])

    def reference():
        return tb.reference(build(), (gray, color), lambda model, x, y: loss(model, x, y, torch.randn_like(x)),
                            args.reference_epochs, params.seed, score)

    def closed(stop):
        def batch_loss(model, x, y, noise):
            return loss(model, x, y, noise(*x.shape[1:])), {}

        recipe = args.closed
        job = Job(model=build(), train_data=(gray, color), batch_loss=batch_loss,
                  evaluate=lambda model: {"loss": score(model)}, seed=params.seed, label="colorize",
                  **recipe.job_fields())
        return tb.ours(f"StackNN, {recipe}", job, score, stop)

    def stage_defaults(stop):
        recipe = tb.Recipe(params.batch_size, params.lr, params.epochs)
        config = ColorizerConfig(arch=params.arch, size=gray.shape[-1], exact_luma=params.exact_luma,
                                 residual=params.residual)  # the network the stage builds, average-color start included
        job = training_job(config.build(), params, (gray, color), (gray_test, color_test))
        start = "average-color residual, " if params.residual else ""
        return tb.ours(f"stage defaults: StackNN ({start}colorfulness {params.colorfulness_weight:g}, exact luma), "
                       f"{recipe}", job, lambda model: score(model, params.exact_luma), stop)

    untrained = psnr_ssim(baselines(gray, color, gray_test)["mean image"].numpy(), color_test.numpy())[0]
    tb.compare(f"StackNN colorizer: {len(gray)} train / {len(gray_test)} test faces (with no training, the mean "
               f"color at each face's luma scores {untrained:.2f} dB)", params.seed, reference,
               [closed] if args.no_open else [closed, stage_defaults], PSNR)


if __name__ == "__main__":
    main()
