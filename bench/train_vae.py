"""Side-by-side VAE training speed and quality: stages.training.fit against the reference DataLoader loop.

Why: `fit` claims to train the fc VAE several times faster than the reference loop (whole set as one tensor,
index-slice batches, fused Adam, one-cycle schedule, denormals flushed) *and* to reach as good a test -ELBO in the
same epochs. This measures both claims in one run, so a busy machine slows both sides alike. At our batch 128
the step is GEMM-bound (5.8 of 10.6 ms, at this 2-core machine's peak): 2.2-2.5x. Batch 256 runs ~2.65x but
ends 4-12 nats worse than the reference in these 3 epochs, whatever its peak lr (3e-3 to 8e-3), warm-up or
Adam betas.

Both sides train build_vae('fc', 30, 1, 10) from the same seeded initialisation on the same faces (the embedded
generator, 10% held out) for the same epochs, with the same per-batch loss (stages.vae.vae_loss: BCE summed per
image + KL, mean over the batch, fresh N(0, I) noise):
  reference  DataLoader(TensorDataset(x), batch_size=64, shuffle=True), torch.optim.Adam(lr=1e-3), no schedule
  ours       stages.training.fit with a Job built as stages/vae.py's run() builds it, VaeParams batch_size/lr
Only training is timed (fit's own clock, which leaves out its per-epoch evaluation and checkpoints). Both are then
scored by stages.vae.evaluate_model on the first EVAL_IMAGES test faces. `--also 256:3e-3` adds rows for other
batch sizes / peak learning rates of ours. The last line is `ratio: <our img/s / reference img/s>`.

    python bench/train_vae.py [--images 50000] [--epochs 3] [--prepared DIR] [--also BATCH:LR ...]
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import trainbench as tb  # noqa: E402  (first: it sets torch's environment before torch loads)
import torch  # noqa: E402
from stages.models import build_vae  # noqa: E402
from stages.params import VaeParams  # noqa: E402
from stages.training import Job  # noqa: E402
from stages.vae import evaluate_model, test_loss_evaluator, vae_loss  # noqa: E402

EVAL_IMAGES = 2000  # keeps evaluate_model's PSNR/SSIM loop short; the -ELBO itself is cheap


def main() -> None:
    args = tb.parse_args(__doc__, images=50_000, epochs=3)
    params = VaeParams(arch="fc", epochs=args.epochs, seed=args.seed)  # fc whatever the default arch
    train, test = tb.load(args, params.channels)

    def build():
        return build_vae(params.arch, train.shape[-1], params.channels, params.latent_dim)

    def reference(model):
        def loss(model, x):
            return vae_loss(model, x, torch.randn(len(x), params.latent_dim), params.recon, params.beta)[0]
        return tb.reference(model, (train,), loss, params.epochs, params.seed)

    def ours(batch_size: int, lr: float):
        def batch_loss(model, x, noise):
            return vae_loss(model, x, noise(params.latent_dim), params.recon, params.beta)

        def train_ours(model):
            return tb.ours(Job(model=model, train_data=(train,), batch_loss=batch_loss,
                               evaluate=test_loss_evaluator(test, params), epochs=params.epochs, batch_size=batch_size,
                               lr=lr, seed=params.seed, label="vae"))
        return train_ours

    columns = [("test_neg_elbo", "test -ELBO", "{:>10.2f}"), ("test_nll_importance", "IS NLL", "{:>8.2f}"),
               ("test_kl", "KL", "{:>6.2f}"), ("active_dims", "active", "{:>6d}"), ("recon_psnr", "PSNR", "{:>6.2f}")]
    tb.compare(f"fc VAE z{params.latent_dim}, {params.epochs} epochs, {len(train)} train / {len(test)} test faces, "
               f"scored on {min(EVAL_IMAGES, len(test))}", len(train) * params.epochs, params.seed, build, reference,
               tb.our_sides(ours, (params.batch_size, params.lr), args.also),
               lambda model: evaluate_model(model, test[:EVAL_IMAGES], params), columns, "test_neg_elbo",
               lower_better=True)


if __name__ == "__main__":
    main()
