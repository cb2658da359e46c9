"""Time to the reference's quality for the VAE: stages.training.fit against the seed's DataLoader loop.

Why: a user wants a model as good as the reference's, sooner; images per second at an equal number of epochs
hides what a schedule buys (and the step itself is GEMM-bound on both sides). So, as MLPerf Training measures:
  reference  build_vae('fc', 30, 1, 10), DataLoader(TensorDataset(x), batch_size=64, shuffle=True),
             torch.optim.Adam(lr=1e-3), no schedule, for --reference-epochs (long enough that its test -ELBO has
             flattened: its last 20% of epochs gain < 1 nat, checked and printed). Its final test -ELBO is the
             target, its training time T_ref.
  closed     the same network, initialisation and loss (stages.vae.vae_loss: BCE summed per image + KL, mean over
             the batch, fresh N(0, I) noise), trained by stages.training.fit with its own batch, peak lr, warm-up
             and epochs (--batch, --lr, --warmup, --epochs; the defaults are the recipe this bench is tuned to).
             T_ours = its training time until the test -ELBO after an epoch first reaches the target.
  open       the VAE stage's defaults (VaeParams: conv VAE, its batch, lr and epochs): printed, not the headline.
The test -ELBO is stages.vae's per-epoch test loss (all test faces, one fixed noise draw), the same function for
every side; evaluation is off both clocks. The last line is `ratio: <T_ref / T_ours (closed)>`; the images per
second ratio of the old bench is printed above it.

    python bench/train_vae.py [--images 20000] [--prepared DIR] [--seed 0] [--reference-epochs N]
                              [--batch B --lr LR --warmup W --epochs E] [--no-open]
"""
from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import trainbench as tb  # noqa: E402  (first: it sets torch's environment before torch loads)
import torch  # noqa: E402
from stages.models import build_vae  # noqa: E402
from stages.params import VaeParams  # noqa: E402
from stages.training import Job  # noqa: E402
from stages.vae import test_loss_evaluator, vae_loss  # noqa: E402

CLOSED = tb.Recipe(batch_size=128, lr=3e-3, epochs=26, warmup=0.15)
SEED_LATENT_DIM = 10  # the seed's FC VAE, whatever the stage's default latent size
NEG_ELBO = tb.Metric("test -ELBO", "nats", lower_better=True, flat=1.0)


def main() -> None:
    args = tb.parse_args(__doc__, images=20_000, reference_epochs=36, closed=CLOSED)
    open_params = VaeParams(seed=args.seed)
    params = dataclasses.replace(open_params, arch="fc", latent_dim=SEED_LATENT_DIM)  # the seed's network
    train, test = tb.load(args, params.channels)

    def build(vae: VaeParams):
        return build_vae(vae.arch, train.shape[-1], vae.channels, vae.latent_dim, vae.width)

    def scorer(vae: VaeParams):
        evaluate = test_loss_evaluator(test, vae)
        return evaluate, lambda model: evaluate(model)["loss"]

    def reference():
        def loss(model, x):
            return vae_loss(model, x, torch.randn(len(x), params.latent_dim), params.recon, params.beta)[0]
        return tb.reference(build(params), (train,), loss, args.reference_epochs, params.seed, scorer(params)[1])

    def side(label: str, vae: VaeParams, recipe: tb.Recipe):
        def batch_loss(model, x, noise):
            return vae_loss(model, x, noise(vae.latent_dim), vae.recon, vae.beta)

        def train_side(stop):
            evaluate, score = scorer(vae)
            job = Job(model=build(vae), train_data=(train,), batch_loss=batch_loss, evaluate=evaluate,
                      seed=vae.seed, label="vae", **recipe.job_fields())
            return tb.ours(label, job, score, stop)
        return train_side

    sides = [side(f"fc VAE, {args.closed}", params, args.closed)]
    if not args.no_open:
        recipe = tb.Recipe(open_params.batch_size, open_params.lr, open_params.epochs)
        sides.append(side(f"stage defaults: {open_params.arch} VAE z{open_params.latent_dim}, {recipe}", open_params,
                          recipe))
    tb.compare(f"VAE z{params.latent_dim}: {len(train)} train / {len(test)} test faces", params.seed, reference,
               sides, NEG_ELBO)


if __name__ == "__main__":
    main()
