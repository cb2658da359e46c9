"""Training a GAN: the non-saturating loss, one alternating step, and a resumable, NaN-guarded loop.

The loss is the chapter's: D minimises BCE(D(x), 1) + BCE(D(G(z)), 0); G minimises BCE(D(G(z)), 1), the
non-saturating form (Goodfellow et al. 2014, section 3), whose gradient does not vanish while D still wins.
Spectral norm in D (Miyato et al. 2018) is the stabiliser, built into the models (stages/gan_models.py).

Speed on a small CPU, as in stages/training.py: the training set is one tensor (or, bigger than memory, rows
read from its file a batch at a time), batches are index slices of a seeded permutation, Adam is fused, and real
and fake images go through D in one forward pass (D has no BatchNorm, so sharing the pass changes nothing but the
number of kernel launches). All randomness comes from one seeded torch.Generator saved with each checkpoint (at
an epoch's end, as often as costs under 5% of the time), so an interrupted run resumes from the last one exactly
as if it had not stopped.

Under torchrun (stages/distributed.py) G and D are each wrapped in DistributedDataParallel and each rank trains on
its own rows of every global batch of `batch_size` real images, with the noise (and fake labels) one process would
draw for those rows, as stages/training.py `fit` does: each rank's mean losses are weighted by its share of the
rows, so the averaged gradients are the one process's. Spectral norm's power-iteration vectors stay identical on
every rank (the same weights iterate them). What still differs with the world size: BatchNorm in the DCGAN
generator normalises each rank's rows alone (on CPU; SyncBatchNorm on CUDA), and the fc discriminator's dropout
draws each rank's masks alone, so the gan stage declares `batch_statistics` and the world size enters its key.
Rank 0 alone writes resume checkpoints; every rank resumes from rank 0's.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import torch
from torch.nn import functional as F

from stages import distributed
from stages.contract import StageContext, StageError
from stages.training import (CHECKPOINT, Noise, RowSource, across_ranks, load_checkpoint, rank_share,
                             save_checkpoint, summed_over_ranks)

_CHECKPOINT_OVERHEAD = 0.05  # at most this fraction of training time goes into writing resume checkpoints
_RESUME_STATE = {"generator", "discriminator", "opt_g", "opt_d", "random", "dropout_random", "history"}
BETAS = (0.5, 0.999)  # DCGAN's Adam momentum (Radford et al. 2016): β1 0.9 oscillates in the two-player game


@dataclass
class GanHistory:
    """Per-epoch means: the two losses and D's mean probability of "real" for real and for generated images."""

    g_loss: list[float] = field(default_factory=list)
    d_loss: list[float] = field(default_factory=list)
    d_real: list[float] = field(default_factory=list)
    d_fake: list[float] = field(default_factory=list)
    seconds: float = 0.0  # training time, summed over interrupted sessions
    images: int = 0  # real training images shown to D
    world_size: int = 1  # processes that trained it (torchrun's WORLD_SIZE)
    global_batch: int = 0  # real images per step, over all processes

    def as_dict(self) -> dict:
        return {"g_loss": self.g_loss, "d_loss": self.d_loss, "d_real": self.d_real, "d_fake": self.d_fake,
                "seconds": self.seconds, "images": self.images, "world_size": self.world_size,
                "global_batch": self.global_batch}


@dataclass
class GanJob:
    generator: torch.nn.Module
    discriminator: torch.nn.Module
    real: RowSource  # (N, C, S, S) training images in [0, 1]; D sees them in [-1, 1], G's range
    labels: torch.Tensor | None  # (N,) class indices for a conditional GAN, else None
    noise_dim: int
    epochs: int
    batch_size: int  # the global batch: per-rank batch x world size
    lr: float
    seed: int
    label: str = "gan"


def adam(model: torch.nn.Module, lr: float) -> torch.optim.Adam:
    try:
        return torch.optim.Adam(model.parameters(), lr=lr, betas=BETAS, fused=True)
    except (RuntimeError, TypeError):  # builds without a fused kernel for this device
        return torch.optim.Adam(model.parameters(), lr=lr, betas=BETAS, foreach=True)


def discriminator_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    return (F.binary_cross_entropy_with_logits(real_logits, torch.ones_like(real_logits))
            + F.binary_cross_entropy_with_logits(fake_logits, torch.zeros_like(fake_logits)))


def generator_loss(fake_logits: torch.Tensor) -> torch.Tensor:
    """Non-saturating: -log D(G(z)) rather than log(1 - D(G(z)))."""
    return F.binary_cross_entropy_with_logits(fake_logits, torch.ones_like(fake_logits))


def gan_step(generator, discriminator, opt_g, opt_d, real, labels, z, fake_labels,
             weight: float = 1.0) -> dict[str, torch.Tensor]:
    """One D update on a real and a generated batch, then one G update through the updated D; returns the batch's
    mean losses and D's mean P(real). `weight` scales both losses' gradients (a rank's share of the global batch
    times the world size, which DistributedDataParallel's averaging divides out again)."""
    batch = len(real)
    fake = generator(z, fake_labels)
    both = torch.cat([real, fake.detach()])  # (2B, C, S, S): one pass through D
    both_labels = None if labels is None else torch.cat([labels, fake_labels])
    logits = discriminator(both, both_labels)
    d_loss = discriminator_loss(logits[:batch], logits[batch:])
    opt_d.zero_grad(set_to_none=True)
    (d_loss * weight).backward()
    opt_d.step()

    g_loss = generator_loss(discriminator(fake, fake_labels))
    opt_g.zero_grad(set_to_none=True)
    (g_loss * weight).backward()
    opt_g.step()
    probabilities = torch.sigmoid(logits.detach())
    return {"g_loss": g_loss.detach(), "d_loss": d_loss.detach(),
            "d_real": probabilities[:batch].mean(), "d_fake": probabilities[batch:].mean()}


def train_gan(job: GanJob, context: StageContext, device: torch.device) -> GanHistory:
    """Train G and D in place for `job.epochs`, resuming from `context.resume_dir` if a checkpoint exists.
    Under torchrun every rank calls this and gets the same networks and history."""
    here = distributed.world()
    generator, discriminator, count = job.generator, job.discriminator, len(job.real)
    g_trained, d_trained = across_ranks(generator, device), across_ranks(discriminator, device)
    opt_g, opt_d = adam(generator, job.lr), adam(discriminator, job.lr)
    random = torch.Generator(device=device).manual_seed(job.seed)
    history = GanHistory()

    checkpoint_path = context.resume_dir / CHECKPOINT
    saved = load_checkpoint(checkpoint_path, device, context.echo, job.label, _RESUME_STATE)
    if saved is not None:
        generator.load_state_dict(saved["generator"])
        discriminator.load_state_dict(saved["discriminator"])
        opt_g.load_state_dict(saved["opt_g"])
        opt_d.load_state_dict(saved["opt_d"])
        random.set_state(saved["random"].cpu() if device.type == "cpu" else saved["random"])
        torch.set_rng_state(saved["dropout_random"].cpu())  # fc's dropout draws from torch's own CPU stream
        history = GanHistory(**saved["history"])
        context.echo(f"{job.label}: resuming from epoch {len(history.g_loss)} of {job.epochs} (checkpoint of an "
                     "interrupted run)")

    classes = getattr(generator, "classes", 0)
    steps_per_epoch = math.ceil(count / job.batch_size)
    last_save, save_cost = time.perf_counter(), 0.0  # the first epoch's end always saves, and times the save
    with context.progress(job.epochs, job.label) as bar:
        bar.advance(len(history.g_loss))
        for epoch in range(len(history.g_loss), job.epochs):
            started = time.perf_counter()
            generator.train()
            discriminator.train()
            order = torch.randperm(count, generator=random, device=device)
            sums = dict.fromkeys(("g_loss", "d_loss", "d_real", "d_fake"), 0.0)  # tensors: no sync per step
            for start in range(0, count, job.batch_size):
                index = order[start:start + job.batch_size]
                rows = here.rows(len(index))
                share = (rows.stop - rows.start) / len(index)  # of the global batch
                z = Noise(len(index), rows, random, device)(job.noise_dim)
                mine = index[rows]
                labels = None if job.labels is None else job.labels[mine]
                fake_labels = None if labels is None else torch.randint(classes, (len(index),), generator=random,
                                                                         device=device)[rows]
                stats = gan_step(g_trained, d_trained, opt_g, opt_d, job.real[mine] * 2 - 1, labels, z, fake_labels,
                                 share * here.size)
                for name, value in stats.items():
                    sums[name] = sums[name] + rank_share(value, share)
            totals = summed_over_ranks({name: float(total) for name, total in sums.items()}, here, device)
            means = {name: total / steps_per_epoch for name, total in totals.items()}
            if not (math.isfinite(means["g_loss"]) and math.isfinite(means["d_loss"])):
                raise StageError(f"{job.label}: a loss became non-finite at epoch {epoch + 1}; training stopped and "
                                 f"nothing was saved. Lower the learning rate (--set {job.label}.lr=...) and run "
                                 "again")
            history.seconds += time.perf_counter() - started
            history.images += count
            for name, mean in means.items():
                getattr(history, name).append(mean)
            bar.advance(1, f"D(real) {history.d_real[-1]:.2f} D(fake) {history.d_fake[-1]:.2f}")
            due = here.main and time.perf_counter() - last_save >= save_cost / _CHECKPOINT_OVERHEAD
            if due and epoch + 1 < job.epochs:
                clock = time.perf_counter()
                save_checkpoint(checkpoint_path, {  # the keys of _RESUME_STATE
                    "generator": generator.state_dict(), "discriminator": discriminator.state_dict(),
                    "opt_g": opt_g.state_dict(), "opt_d": opt_d.state_dict(), "random": random.get_state(),
                    "dropout_random": torch.get_rng_state(), "history": history.as_dict()}, job.label)
                last_save = time.perf_counter()
                save_cost = last_save - clock
    generator.eval()
    discriminator.eval()
    history.world_size, history.global_batch = here.size, job.batch_size
    return history
