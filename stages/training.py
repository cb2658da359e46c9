"""The training loop both stages share, built for speed on a small CPU and correctness under interruption.

- The whole training set is one tensor on the device; batches are index slices of a seeded permutation, so
  there is no per-item Dataset/DataLoader overhead. A set too big to hold (stages.prepared_set.ImageRows) is
  indexed the same way and reads each batch's rows from its file: the same batches, so the same weights.
- Adam with the fused kernel where the build has it, under a one-cycle schedule (warm-up, then cosine decay),
  which lets the VAE train as well in the same epochs at twice the reference's batch. Those two are where most
  of the speed comes from (docs/decisions.md; StackNN keeps the reference's batch 64).
- Denormals are flushed on CPU: Adam's second moments drift into denormal range and slow every step.
- All randomness (order, noise) comes from one seeded torch.Generator, saved with each checkpoint, so an
  interrupted run resumes exactly where it stopped and the same seed on CPU gives identical results.
- A non-finite loss stops training with a one-line StageError; nothing half-trained is published.
- Under torchrun (stages/distributed.py) the model is wrapped in DistributedDataParallel and each rank trains on
  its own rows of every global batch of ``batch_size`` rows. Every rank draws the same permutation and the
  noise of the whole global batch (``Noise``), and weights its mean loss by its share of the rows, so the
  averaged gradient is exactly the one process's: N ranks train what one does, up to float rounding. BatchNorm
  is synchronised over the ranks on CUDA (SyncBatchNorm); on CPU, which SyncBatchNorm does not support, it
  normalises each rank's rows alone. Rank 0 alone evaluates and writes the resume checkpoints; every rank
  resumes from rank 0's.
"""
from __future__ import annotations

import errno
import json
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

from stages import distributed
from stages.contract import StageContext, StageError
from stages.viz import save_loss_chart

CHECKPOINT = "checkpoint.pt"
_CHECKPOINT_OVERHEAD = 0.1  # at most this fraction of training time goes into writing resume checkpoints
_CHECKPOINT_BYTES_PER_SECOND = 200e6  # a cautious guess at serialise + write speed, replaced by the measured one
_RESUME_STATE = {"model", "optimizer", "schedule", "generator", "train", "test", "elapsed", "extra", "seconds",
                 "images"}
_CHEAP_CHECKPOINT_SECONDS = 0.25  # checkpoints cheaper than this (~50 MB) are written after every epoch


def resolve_device(requested: str) -> torch.device:
    if requested == "cuda" and not torch.cuda.is_available():
        raise StageError("--device cuda was asked for, but torch sees no CUDA GPU: use --device cpu or auto")
    if requested == "auto":
        requested = "cuda" if torch.cuda.is_available() else "cpu"
    if requested == "cpu":
        torch.set_flush_denormal(True)
    return torch.device(requested)


def make_optimizer(model: torch.nn.Module, lr: float) -> torch.optim.Adam:
    try:
        return torch.optim.Adam(model.parameters(), lr=lr, fused=True)
    except (RuntimeError, TypeError):  # builds without a fused kernel for this device
        return torch.optim.Adam(model.parameters(), lr=lr, foreach=True)


def one_cycle(optimizer, lr: float, total_steps: int, warmup: float = 0.15):
    """Warm up from lr/25 to `lr` over the first `warmup` fraction of the steps, then cosine-decay to ~0."""
    return torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=max(total_steps, 1),
                                               pct_start=warmup, anneal_strategy="cos")


@dataclass
class History:
    """Per-epoch mean losses (and any extra per-epoch numbers the stage records)."""

    train: list[float] = field(default_factory=list)
    test: list[float] = field(default_factory=list)
    elapsed: list[float] = field(default_factory=list)  # training seconds when each test value was measured
    extra: dict[str, list[float]] = field(default_factory=dict)
    seconds: float = 0.0  # training time, summed over interrupted sessions
    images: int = 0  # training images processed
    world_size: int = 1  # processes that trained it (torchrun's WORLD_SIZE)
    global_batch: int = 0  # images per optimiser step, over all processes

    def as_dict(self) -> dict:
        return {"train": self.train, "test": self.test, "elapsed": self.elapsed, **self.extra,
                "seconds": self.seconds, "images": self.images, "world_size": self.world_size,
                "global_batch": self.global_batch}


class Noise:
    """Standard normal noise for one global batch, of which this rank's rows: ``noise(*shape)`` is
    (rows, *shape), the same values one process would draw for those rows. Call it in the same order on every
    rank (it advances the shared generator by the whole batch)."""

    def __init__(self, batch: int, rows: slice, generator: torch.Generator, device: torch.device):
        self.batch, self.rows, self.generator, self.device = batch, rows, generator, device

    def __call__(self, *shape: int) -> torch.Tensor:
        return torch.randn(self.batch, *shape, generator=self.generator, device=self.device)[self.rows]


@dataclass
class Job:
    """One training run: the model, its data, and how to compute a batch's loss."""

    model: torch.nn.Module
    # indexed together along dim 0: tensors on the device, or row sources whose [index tensor] is one (ImageRows)
    train_data: tuple[torch.Tensor, ...]
    batch_loss: Callable[..., tuple[torch.Tensor, dict[str, float]]]  # (model, *rows, noise: Noise) -> mean loss, stats
    evaluate: Callable[[torch.nn.Module], dict[str, float]]  # -> {"loss": test loss, ...}, called per epoch
    epochs: int
    batch_size: int  # the global batch: per-rank batch x world size
    lr: float
    seed: int
    label: str
    warmup: float = 0.15  # fraction of the steps spent warming up to the peak lr
    stop: Callable[[History], bool] | None = None  # asked after each evaluation: True ends training there


def save_checkpoint(path: Path, state: dict, label: str) -> None:
    """Write the resume state beside the last good one, then swap it in. If the write fails (a full disk), the
    partial file goes, the last good checkpoint stays, and the user gets one line. torch.save is handed a Python
    file: given a path, its C++ writer reports a full disk as an opaque RuntimeError instead of ENOSPC."""
    temporary = path.with_name(path.name + ".tmp")
    try:
        with open(temporary, "wb") as file:
            torch.save(state, file)
        os.replace(temporary, path)
    except OSError as error:
        temporary.unlink(missing_ok=True)
        if error.errno == errno.ENOSPC:
            raise StageError(f"no space left on device while writing the {label} checkpoint in {path.parent}; "
                             "free space and run again (training resumes from the last checkpoint)") from None
        raise


def load_checkpoint(path: Path, device: torch.device, echo: Callable[[str], None], label: str,
                    required: set[str] = _RESUME_STATE) -> dict | None:
    """The resume state of an interrupted run, or None; an unreadable one (or one without every `required` key)
    is reported, removed, and ignored."""
    if not path.is_file():
        return None
    try:
        saved = torch.load(path, map_location=device, weights_only=True)
        missing = set(required) - set(saved)
        if missing:
            raise KeyError(f"no {', '.join(sorted(missing))}")
        return saved
    except Exception as error:  # a checkpoint we cannot read is worth nothing: start over rather than fail
        echo(f"{label}: ignoring the unreadable resume checkpoint {path} ({type(error).__name__}: {error}); "
             "training starts over")
        path.unlink(missing_ok=True)
        return None


def across_ranks(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """`model` itself in a world of one; under torchrun, `model` wrapped in DistributedDataParallel (gradients
    averaged over the ranks, buffers sent from rank 0 at each forward), its BatchNorm synchronised on CUDA."""
    if distributed.world().size == 1:
        return model
    if device.type == "cuda":
        torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)  # in place: batch statistics over all ranks' rows
    return torch.nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda"
                                                     else None)


def fit(job: Job, context: StageContext, device: torch.device) -> History:
    """Train `job.model` in place for `job.epochs`, resuming from `context.resume_dir` if a checkpoint exists.
    Under torchrun every rank calls this; only rank 0's History holds the evaluations."""
    here = distributed.world()
    model, count = job.model, len(job.train_data[0])
    trained = across_ranks(model, device)
    steps_per_epoch = math.ceil(count / job.batch_size)
    optimizer = make_optimizer(model, job.lr)
    schedule = one_cycle(optimizer, job.lr, job.epochs * steps_per_epoch, job.warmup)
    generator = torch.Generator(device=device).manual_seed(job.seed)
    history, first_epoch = History(), 0

    checkpoint_path = context.resume_dir / CHECKPOINT
    saved = load_checkpoint(checkpoint_path, device, context.echo, job.label)
    if saved is not None:
        model.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        schedule.load_state_dict(saved["schedule"])
        generator.set_state(saved["generator"].cpu() if device.type == "cpu" else saved["generator"])
        history = History(saved["train"], saved["test"], saved["elapsed"], saved["extra"], saved["seconds"],
                          saved["images"])
        first_epoch = len(history.train)
        context.echo(f"{job.label}: resuming from epoch {first_epoch} of {job.epochs} (checkpoint of an "
                     "interrupted run)")

    # Until the first save is timed, guess its cost from the bytes to write (weights + two Adam moments), so a
    # big model's first checkpoint does not land after epoch 1 of a short run.
    state_bytes = 3 * sum(p.numel() * p.element_size() for p in model.parameters())
    last_save, save_cost = time.perf_counter(), state_bytes / _CHECKPOINT_BYTES_PER_SECOND
    with context.progress(job.epochs, job.label) as bar:
        bar.advance(first_epoch)
        for epoch in range(first_epoch, job.epochs):
            started = time.perf_counter()
            model.train()
            sums: dict[str, float] = {"loss": 0.0}
            order = torch.randperm(count, generator=generator, device=device)
            for start in range(0, count, job.batch_size):
                index = order[start:start + job.batch_size]
                rows = here.rows(len(index))
                share = (rows.stop - rows.start) / len(index)  # of the global batch: weights this rank's mean
                noise = Noise(len(index), rows, generator, device)
                loss, stats = job.batch_loss(trained, *(t[index[rows]] for t in job.train_data), noise=noise)
                if rows.start == rows.stop:  # a last batch with fewer rows than ranks left this rank none: it
                    loss, stats = loss.nan_to_num(0.0), {}  # still joins the step (DDP), adding nothing
                if not torch.isfinite(loss):
                    raise StageError(f"{job.label}: the loss became {loss.item()} at epoch {epoch + 1}; training "
                                     "stopped and nothing was saved. Lower the learning rate (--set "
                                     f"{job.label}.lr=...) and run again")
                optimizer.zero_grad(set_to_none=True)
                (loss * (share * here.size)).backward()  # DDP averages over ranks: the global batch's mean
                optimizer.step()
                schedule.step()
                for name, value in {"loss": loss.item(), **stats}.items():
                    sums[name] = sums.get(name, 0.0) + value * share * len(index)
            sums = summed_over_ranks(sums, here, device)
            history.seconds += time.perf_counter() - started
            history.images += count
            if not here.main:
                continue
            model.eval()
            with torch.no_grad():
                evaluation = job.evaluate(model)
            history.train.append(sums.pop("loss") / count)
            history.test.append(evaluation.pop("loss"))
            history.elapsed.append(history.seconds)
            for name, value in {**{f"train_{k}": v / count for k, v in sums.items()}, **evaluation}.items():
                history.extra.setdefault(name, []).append(value)
            bar.advance(1, f"train {history.train[-1]:.4g} test {history.test[-1]:.4g}")
            if job.stop is not None and job.stop(history):
                break

            cheap = save_cost < _CHEAP_CHECKPOINT_SECONDS  # then every epoch: resume exactly where it stopped
            due = cheap or time.perf_counter() - last_save >= save_cost / _CHECKPOINT_OVERHEAD
            if due and epoch + 1 < job.epochs:
                clock = time.perf_counter()
                save_checkpoint(checkpoint_path, {
                    "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                    "schedule": schedule.state_dict(), "generator": generator.get_state(),
                    "train": history.train, "test": history.test, "elapsed": history.elapsed,
                    "extra": history.extra,
                    "seconds": history.seconds, "images": history.images}, job.label)
                last_save = time.perf_counter()
                save_cost = last_save - clock
    model.eval()
    history.world_size, history.global_batch = here.size, job.batch_size
    return history


def summed_over_ranks(sums: dict[str, float], here: distributed.World, device: torch.device) -> dict[str, float]:
    """An epoch's per-rank sums of the batch statistics, added up over the ranks (every rank gets the total)."""
    if here.size == 1:
        return sums
    totals = torch.tensor(list(sums.values()), dtype=torch.float64, device=device)  # nccl reduces GPU tensors only
    torch.distributed.all_reduce(totals)
    return dict(zip(sums, totals.tolist()))


def write_training_record(out_dir: Path, history: History, model: torch.nn.Module, title: str) -> dict:
    """history.json and loss.png, and the training facts every stage reports (time, speed, size)."""
    (out_dir / "history.json").write_text(json.dumps(history.as_dict(), indent=1))
    save_loss_chart({"train": history.train, "test": history.test}, out_dir / "loss.png", title)
    return {"train_seconds": round(history.seconds, 2), "epochs": len(history.train),
            "images_per_second": round(history.images / max(history.seconds, 1e-9), 1),
            "parameters": sum(p.numel() for p in model.parameters()),
            "world_size": history.world_size, "global_batch": history.global_batch}

