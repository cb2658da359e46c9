"""What bench/train_vae.py and bench/train_colorize.py share: their faces, the MLPerf-style protocol (time to a
quality target), the two training loops (the reference DataLoader loop and ours, stages.training.fit) and the
report.

The protocol. The reference side trains the seed's way for a schedule long enough that its test metric has
flattened; its final test metric is the target and its training time is T_ref. Each of our sides trains with
`fit`, is scored on the same test images after every epoch and stops at the first score that reaches the target;
T_ours is its training time up to that point. Evaluation is excluded from both clocks. The headline is
T_ref / T_ours for the "closed" side (same network, loss and initialisation as the reference; batch, learning
rate, schedule and epochs free). An "open" side (the stage's own defaults) is printed too, but is not the
headline.

The faces are the embedded generator's (generate_face -> resize_square(30) -> luma_uint8), drawn in parallel once
and cached in the temp folder in `pipeline prepare`'s layout (gray.npy, color.npy, split.npz; `--test-images` of
them held out, 10% unless a bench says otherwise), so both scripts read them, or a real `--prepared DIR`, through
stages.prepared_set.load_prepared. The target is one point of the reference's curve, so the test set must be
large enough that where that point falls in the test sample's noise does not decide the ratio."""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import math
import multiprocessing
import os
import resource
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Callable

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")  # before torch loads, as `pipeline` (cli.main) sets it

import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch.utils.data import DataLoader, TensorDataset  # noqa: E402

from stages.faces import generate_face  # noqa: E402
from stages.luma import luma_uint8  # noqa: E402
from stages.contract import StageContext  # noqa: E402
from stages.sources import resize_square  # noqa: E402
from stages.training import Job, fit, resolve_device  # noqa: E402
from stages.prepared_set import load_prepared  # noqa: E402

SIZE, TEST_FRACTION, REFERENCE_BATCH = 30, 0.1, 64
FLAT_FRACTION = 0.2  # the reference has flattened when its last 20% of epochs gain less than the bench's threshold


@dataclass(frozen=True)
class Recipe:
    """How a `fit` side trains: batch size, peak lr of the one-cycle schedule, its warm-up fraction, epochs."""

    batch_size: int
    lr: float
    epochs: int
    warmup: float = 0.15

    def __str__(self) -> str:
        return f"fit b{self.batch_size}, one-cycle lr {self.lr:g} warm-up {self.warmup:g}, {self.epochs} epochs"

    def job_fields(self) -> dict:
        """The stages.training.Job fields this recipe sets."""
        return {"batch_size": self.batch_size, "lr": self.lr, "epochs": self.epochs, "warmup": self.warmup}


def parse_args(doc: str, images: int, reference_epochs: int, closed: Recipe,
               test_images: int | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--images", type=int, default=images, help="faces generated, test faces included")
    parser.add_argument("--test-images", type=int, default=test_images,
                        help="of those, held out for testing (default: 10%%)")
    parser.add_argument("--prepared", type=Path, help="a `pipeline prepare` output folder (then --images is ignored)")
    parser.add_argument("--seed", type=int, default=0, help="seed of init, batching and noise (split fixed)")
    parser.add_argument("--reference-epochs", type=int, default=reference_epochs,
                        help="the reference's schedule: long enough that its test metric flattens")
    parser.add_argument("--batch", type=int, default=closed.batch_size, help="the closed side's batch size")
    parser.add_argument("--lr", type=float, default=closed.lr, help="the closed side's peak learning rate")
    parser.add_argument("--epochs", type=int, default=closed.epochs, help="the closed side's schedule length")
    parser.add_argument("--warmup", type=float, default=closed.warmup, help="the closed side's warm-up fraction")
    parser.add_argument("--no-open", action="store_true", help="skip the open side (the stage defaults)")
    args = parser.parse_args()
    args.closed = Recipe(args.batch, args.lr, args.epochs, args.warmup)
    return args


def _face(index: int) -> np.ndarray:
    return resize_square(generate_face(index)[0], SIZE)


def faces(count: int, test_count: int | None) -> Path:
    """A prepared-layout folder of `count` embedded faces, `test_count` of them (default 10%) held out, generated
    once and then reused from the temp folder."""
    if test_count is None:
        test_count = int(round(count * TEST_FRACTION))
    test_count = min(max(test_count, 1), count - 1)
    folder = Path(tempfile.gettempdir(), f"bench-faces-s{SIZE}-n{count}-t{test_count}")
    if (folder / "split.npz").is_file():
        print(f"faces: {count} ({test_count} for testing) cached in {folder}")
        return folder
    start = time.perf_counter()
    with multiprocessing.get_context("fork").Pool(os.cpu_count()) as pool:
        color = np.stack(pool.map(_face, range(count), chunksize=64))
    order = np.random.default_rng(0).permutation(count)
    scratch = Path(tempfile.mkdtemp(prefix=folder.name + ".", dir=folder.parent))
    np.save(scratch / "color.npy", color)
    np.save(scratch / "gray.npy", luma_uint8(color))
    np.savez(scratch / "split.npz", train=np.sort(order[test_count:]), test=np.sort(order[:test_count]))
    try:
        os.replace(scratch, folder)  # atomic: an interrupted or concurrent run never leaves half a cache
    except OSError:
        shutil.rmtree(scratch, ignore_errors=True)
    print(f"faces: generated {count} in {time.perf_counter() - start:.1f} s, cached in {folder}")
    return folder


def load(args: argparse.Namespace, *channels: int) -> list[torch.Tensor]:
    """train, test float tensors in [0,1], (N, C, 30, 30), for each C in `channels` (1 gray, 3 color)."""
    folder, tensors = args.prepared or faces(args.images, args.test_images), []
    for count in channels:
        images, train, test = load_prepared(folder, count)
        tensors += [torch.from_numpy(images[train]), torch.from_numpy(images[test])]
    return tensors


@dataclass
class Curve:
    """One side's (training seconds, test metric) after each epoch, and how many images it trained on."""

    label: str
    points: list[tuple[float, float]]
    images: int


@dataclass(frozen=True)
class Metric:
    """The test metric a bench compares sides by: which way is better, and when the reference has flattened."""

    name: str
    unit: str
    lower_better: bool
    flat: float  # what the reference's last 20% of epochs may gain at most, in `unit`

    def reached(self, value: float, target: float) -> bool:
        return value <= target if self.lower_better else value >= target

    def gain(self, before: float, after: float) -> float:
        return before - after if self.lower_better else after - before


def reference(model: torch.nn.Module, data: tuple[torch.Tensor, ...], loss, epochs: int, seed: int,
              score: Callable[[torch.nn.Module], float]) -> Curve:
    """The seed's loop: DataLoader(TensorDataset) batch 64 shuffled, default Adam (lr 1e-3), no schedule; scored
    after each epoch, off the clock."""
    torch.set_flush_denormal(False)  # the reference does not flush denormals (resolve_device turned it on)
    loader = DataLoader(TensorDataset(*data), batch_size=REFERENCE_BATCH, shuffle=True)
    optimizer = torch.optim.Adam(model.parameters())
    torch.manual_seed(seed)
    seconds, points = 0.0, []
    for _ in range(epochs):
        start = time.perf_counter()
        model.train()
        for batch in loader:
            value = loss(model, *batch)
            optimizer.zero_grad()
            value.backward()
            optimizer.step()
        seconds += time.perf_counter() - start
        model.eval()
        with torch.no_grad():
            points.append((seconds, score(model)))
    return Curve(f"reference: DataLoader b{REFERENCE_BATCH}, Adam lr 1e-3, {epochs} epochs", points,
                 epochs * len(data[0]))


def ours(label: str, job: Job, score: Callable[[torch.nn.Module], float], stop: Callable[[float], bool]) -> Curve:
    """Train with `fit` (fresh resume folder, so nothing resumes), scored by `score` after each epoch (fit keeps
    evaluation off its clock) and stopped at the first score for which `stop` is true."""
    job = dataclasses.replace(job, evaluate=lambda model: {"loss": score(model)},
                              stop=lambda history: stop(history.test[-1]))
    device = resolve_device("cpu")  # as the stages do: this also flushes denormals, part of our loop
    with tempfile.TemporaryDirectory(prefix="bench-resume-") as resume:
        quiet = contextlib.nullcontext(SimpleNamespace(advance=lambda *_: None))  # a progress bar showing nothing
        context = StageContext(device="cpu", workers=None, resume_dir=Path(resume), echo=print,
                               progress=lambda total, label: quiet)
        history = fit(job, context, device)
    return Curve(label, list(zip(history.elapsed, history.test)), history.images)


def cpu_seconds() -> tuple[float, float]:
    """(CPU seconds all cores have been busy since boot, CPU seconds of this process): what else ran, from the gap."""
    ticks = [int(v) for v in Path("/proc/stat").read_text().split(maxsplit=11)[1:9]]
    own = resource.getrusage(resource.RUSAGE_SELF)
    return (sum(ticks) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK"), own.ru_utime + own.ru_stime


def time_to(curve: Curve, target: float, metric: Metric) -> float | None:
    """Training seconds at the first point whose metric reaches `target`, or None if none does."""
    return next((seconds for seconds, value in curve.points if metric.reached(value, target)), None)


def compare(title: str, seed: int, train_reference: Callable[[], Curve],
            sides: list[Callable[[Callable[[float], bool]], Curve]], metric: Metric) -> None:
    """Train the reference, then each of `sides` (train(stop) -> Curve; the first is the closed side), each after
    seeding torch with `seed`, so each builds its network from the same initialisation as the reference; print
    every curve, the target and its flattening check, each side's time to the target, the images per second
    ratio, and last `ratio: T_ref / T_closed`. Each side's model is freed before the next is built (StackNN and
    its Adam state take 1.4 GB)."""
    print(f"{title}; seed {seed}, {os.cpu_count()} cores, {torch.get_num_threads()} threads", flush=True)
    (busy, own), clock = cpu_seconds(), time.perf_counter()
    torch.manual_seed(seed)
    ref = train_reference()
    t_ref, target = ref.points[-1]
    epochs, last = len(ref.points), max(1, round(FLAT_FRACTION * len(ref.points)))
    gained = metric.gain(ref.points[-1 - last][1], target) if last < epochs else math.inf
    flat = gained < metric.flat
    print(f"{ref.label}: {t_ref:.1f} s, {ref.images / t_ref:.0f} img/s; target = its final {metric.name} "
          f"{target:.3f} {metric.unit}", flush=True)
    print(f"flattened: {'yes' if flat else 'NO'}: its last {last} of {epochs} epochs gained {gained:.3f} "
          f"{metric.unit} ({'<' if flat else 'not <'} {metric.flat:g})"
          + ("" if flat else "; give it more --reference-epochs"), flush=True)
    curves = [ref]
    for train in sides:
        torch.manual_seed(seed)
        curves.append(train(lambda value: metric.reached(value, target)))
        print(f"{curves[-1].label}: {curves[-1].points[-1][0]:.1f} s to its last point", flush=True)

    print(f"\ncurves: (training seconds, {metric.name}) after each epoch; evaluation is off the clock")
    print(f"{'epoch':>5}  " + "  ".join(f"{name:>18}" for name in ["reference", "closed", "open"][:len(curves)]))
    for epoch in range(max(len(c.points) for c in curves)):
        cells = [f"{c.points[epoch][0]:7.1f} s {c.points[epoch][1]:9.3f}" if epoch < len(c.points) else ""
                 for c in curves]
        print(f"{epoch + 1:>5}  " + "  ".join(f"{cell:>18}" for cell in cells))

    (busy_end, own_end), elapsed = cpu_seconds(), time.perf_counter() - clock
    others = (busy_end - busy - (own_end - own)) / elapsed
    print(f"\nother processes kept {others:.1f} of {os.cpu_count()} cores busy on average during this run" +
          (": torch's threads then wait on each other, which slows many small steps (batch 64) most, so compare "
           "runs with care" if others > 0.25 else ""))
    closed = curves[1]
    ref_speed, closed_speed = ref.images / t_ref, closed.images / closed.points[-1][0]
    print(f"images per second: closed {closed_speed:.0f} / reference {ref_speed:.0f} = "
          f"{closed_speed / ref_speed:.2f} (the old bench's ratio, at the closed side's batch)")
    ratios = []
    for kind, curve in zip(["closed", "open"], curves[1:]):
        seconds = time_to(curve, target, metric)
        ratios.append(t_ref / seconds if seconds else 0.0)
        best = (min if metric.lower_better else max)(value for _, value in curve.points)
        print(f"{kind}: {curve.label}: " + (f"reached {target:.3f} after {seconds:.1f} s: T_ref / T_{kind} = "
                                            f"{t_ref:.1f} / {seconds:.1f} = {ratios[-1]:.2f}" if seconds else
                                            f"target not reached (best {best:.3f}): ratio 0"))
    print(f"ratio: {ratios[0]:.2f}")
