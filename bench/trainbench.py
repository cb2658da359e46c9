"""What bench/train_vae.py and bench/train_colorize.py share: their faces, the two training loops (ours through
stages.training.fit, the reference DataLoader loop) and the side-by-side table.

The faces are the embedded generator's (generate_face -> resize_square(30) -> luma_uint8), drawn in parallel once
and cached in the temp folder in `pipeline prepare`'s layout (gray.npy, color.npy, split.npz with 10% test), so
both scripts read them, or a real `--prepared DIR`, through stages.prepared_set.load_prepared."""
from __future__ import annotations

import argparse
import contextlib
import multiprocessing
import os
import resource
import shutil
import sys
import tempfile
import time
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


def parse_args(doc: str, images: int, epochs: int) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--images", type=int, default=images, help="faces generated (10%% held out for testing)")
    parser.add_argument("--epochs", type=int, default=epochs, help="epochs, the same for every side")
    parser.add_argument("--prepared", type=Path, help="a `pipeline prepare` output folder (then --images is ignored)")
    parser.add_argument("--seed", type=int, default=0, help="seed of init, batching and noise (split fixed)")
    parser.add_argument("--also", action="append", default=[], metavar="BATCH:LR",
                        type=lambda spec: (int(spec.split(":")[0]), float(spec.split(":")[1])),
                        help="also train ours with this batch size and peak lr (repeatable), to tune the defaults")
    return parser.parse_args()


def _face(index: int) -> np.ndarray:
    return resize_square(generate_face(index)[0], SIZE)


def faces(count: int) -> Path:
    """A prepared-layout folder of `count` embedded faces, generated once and then reused from the temp folder."""
    folder = Path(tempfile.gettempdir(), f"bench-faces-s{SIZE}-n{count}")
    if (folder / "split.npz").is_file():
        print(f"faces: {count} cached in {folder}")
        return folder
    start = time.perf_counter()
    with multiprocessing.get_context("fork").Pool(os.cpu_count()) as pool:
        color = np.stack(pool.map(_face, range(count), chunksize=64))
    order = np.random.default_rng(0).permutation(count)
    test_count = min(max(int(round(count * TEST_FRACTION)), 1), count - 1)
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
    folder, tensors = args.prepared or faces(args.images), []
    for count in channels:
        images, train, test = load_prepared(folder, count)
        tensors += [torch.from_numpy(images[train]), torch.from_numpy(images[test])]
    return tensors


def ours(job: Job) -> float:
    """Train with our loop (fresh resume folder, so nothing resumes); seconds of training, evaluation excluded."""
    device = resolve_device("cpu")  # as the stages do: this also flushes denormals, part of our loop
    with tempfile.TemporaryDirectory(prefix="bench-resume-") as resume:
        quiet = contextlib.nullcontext(SimpleNamespace(advance=lambda *_: None))  # a progress bar showing nothing
        context = StageContext(device="cpu", workers=None, resume_dir=Path(resume), echo=print,
                               progress=lambda total, label: quiet)
        return fit(job, context, device).seconds


def reference(model: torch.nn.Module, data: tuple[torch.Tensor, ...], loss, epochs: int, seed: int) -> float:
    """The reference loop: DataLoader(TensorDataset) batch 64 shuffled, default Adam, no schedule; seconds."""
    torch.set_flush_denormal(False)  # the reference does not flush denormals (resolve_device turned it on)
    loader = DataLoader(TensorDataset(*data), batch_size=REFERENCE_BATCH, shuffle=True)
    optimizer = torch.optim.Adam(model.parameters())
    torch.manual_seed(seed)
    start = time.perf_counter()
    for _ in range(epochs):
        for batch in loader:
            value = loss(model, *batch)
            optimizer.zero_grad()
            value.backward()
            optimizer.step()
    seconds = time.perf_counter() - start
    model.eval()
    return seconds


def cpu_seconds() -> tuple[float, float]:
    """(CPU seconds all cores have been busy since boot, CPU seconds of this process): what else ran, from the gap."""
    ticks = [int(v) for v in Path("/proc/stat").read_text().split(maxsplit=11)[1:9]]
    own = resource.getrusage(resource.RUSAGE_SELF)
    return (sum(ticks) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK"), own.ru_utime + own.ru_stime


def our_sides(ours, defaults: tuple[int, float], also: list[tuple[int, float]]) -> list[tuple[str, Callable]]:
    """(label, train) for ours(*defaults), then ours(*each of --also): the rows `compare` trains after the reference."""
    return [(f"ours: fit b{b}, one-cycle lr {lr:g}" + (" (defaults)" if i == 0 else ""), ours(b, lr))
            for i, (b, lr) in enumerate([defaults, *also])]


def compare(title: str, images: int, seed: int, build, reference, ours: list[tuple[str, Callable]], evaluate,
            columns, metric: str, lower_better: bool):
    """Train the reference and each of `ours` (the first is our defaults) from the same seeded init, evaluate each,
    print a row per side (columns: [(evaluate(model) key, header, format)]), then the verdict and the ratio."""
    sides = [(f"reference: DataLoader b{REFERENCE_BATCH}, Adam lr 1e-3", reference), *ours]
    print(f"{title}; {images} training images per side, {os.cpu_count()} cores, {torch.get_num_threads()} threads")
    print(f"{'side':<46} {'train s':>8} {'img/s':>8} " + " ".join(f"{h:>{len(f.format(0))}}" for _, h, f in columns))
    rows, (busy, own), clock = [], cpu_seconds(), time.perf_counter()
    for label, train in sides:
        torch.manual_seed(seed)
        model = build()
        seconds = train(model)
        with torch.no_grad():
            result = evaluate(model)
        del model  # before the next side builds its own: StackNN and its Adam state take 1.4 GB
        rows.append((images / seconds, result[metric]))
        print(f"{label:<46} {seconds:8.1f} {images / seconds:8.0f} " + " ".join(f.format(result[k]) for k, _, f in
                                                                              columns), flush=True)
    (ref_speed, ref_metric), (our_speed, _) = rows[:2]
    (busy_end, own_end), elapsed = cpu_seconds(), time.perf_counter() - clock
    others = (busy_end - busy - (own_end - own)) / elapsed
    print(f"other processes kept {others:.1f} of {os.cpu_count()} cores busy on average during this run" +
          (": torch's threads then wait on each other, which slows many small steps (batch 64) most, so compare "
           "runs with care" if others > 0.25 else ""))
    for (label, _), (_, our_metric) in zip(sides[1:], rows[1:]):
        worse = our_metric > ref_metric if lower_better else our_metric < ref_metric
        print(f"{metric}: {label} {our_metric:.3f} vs reference {ref_metric:.3f}: "
              + ("WORSE at equal epochs" if worse else "equal or better"))
    print(f"ratio: {our_speed / ref_speed:.2f}")
