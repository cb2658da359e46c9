"""Side-by-side GAN step speed: the gan stage's step against the issue's first probe, and one change at a time.

Why: issue 17's probe ran a small DCGAN at 3-4 steps/s (batch 64, 2 cores). The stage's step differs in four
ways (width 32 rather than 64, real and fake batches in one D pass, channels-last tensors, fused Adam); each row
undoes one of them, so the table says what each is worth. Rows alternate in rounds of ten steps within one run,
so a busy machine slows them alike; each figure is the median round. Data: one random batch in [-1, 1] (speed
does not depend on what the pixels show).
The last line is `ratio: <stage steps/s / probe steps/s>`.

    python bench/train_gan.py [--rounds 5] [--threads 2]
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from stages.gan_models import build_gan  # noqa: E402
from stages.gan_training import BETAS, discriminator_loss, gan_step, generator_loss  # noqa: E402

BATCH, NOISE, SIZE = 64, 64, 30


def step_function(width: int, joint: bool, channels_last: bool, fused: bool):
    torch.manual_seed(0)
    generator, discriminator = build_gan("dcgan", SIZE, 1, NOISE, width)
    if not channels_last:
        generator.to(memory_format=torch.contiguous_format)
        discriminator.to(memory_format=torch.contiguous_format)
    adam = dict(lr=2e-4, betas=BETAS, **({"fused": True} if fused else {"foreach": True}))
    opt_g = torch.optim.Adam(generator.parameters(), **adam)
    opt_d = torch.optim.Adam(discriminator.parameters(), **adam)
    real = torch.rand(BATCH, 1, SIZE, SIZE) * 2 - 1

    def separate_passes():  # the textbook order: D on real, D on fake, then G
        fake = generator(torch.randn(BATCH, NOISE))
        d_loss = discriminator_loss(discriminator(real), discriminator(fake.detach()))
        opt_d.zero_grad(set_to_none=True)
        d_loss.backward()
        opt_d.step()
        g_loss = generator_loss(discriminator(fake))
        opt_g.zero_grad(set_to_none=True)
        g_loss.backward()
        opt_g.step()

    if joint:
        return lambda: gan_step(generator, discriminator, opt_g, opt_d, real, None, torch.randn(BATCH, NOISE), None)
    return separate_passes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)
    rows = {  # label -> (width, joint, channels_last, fused)
        "stage (w32, one D pass, channels-last, fused)": (32, True, True, True),
        "  two D passes": (32, False, True, True),
        "  contiguous tensors": (32, True, False, True),
        "  unfused Adam": (32, True, True, False),
        "  width 64": (64, True, True, True),
        "probe (w64, two passes, contiguous, unfused)": (64, False, False, False),
    }
    steps = {label: step_function(*config) for label, config in rows.items()}
    for step in steps.values():  # warm-up: first calls allocate and pick kernels
        step()
    times = {label: [] for label in rows}
    for _ in range(args.rounds):
        for label, step in steps.items():
            started = time.perf_counter()
            for _ in range(10):
                step()
            times[label].append((time.perf_counter() - started) / 10)
    rates = {label: 1 / statistics.median(t) for label, t in times.items()}
    stage = rates[next(iter(rates))]
    for label, rate in rates.items():
        print(f"{label:48} {rate:6.1f} steps/s  {rate / stage:5.2f}x the stage")
    print(f"ratio: {stage / rates[list(rates)[-1]]:.2f}")


if __name__ == "__main__":
    main()
