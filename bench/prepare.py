"""Side-by-side speed of reading an image folder: stages.sources.read_images against the naive one-process loop.

Writes N image-like 96x96 JPEGs (smooth random blobs plus grain, not pure noise) to a temporary folder, warms
the page cache so both sides read from memory, then times:
  ours   read_images(folder, 30) fully consumed, and ``pipeline prepare --force`` end to end when installed
  naive  for each file: Image.open(p).convert("RGB").resize((30, 30)) into a list of arrays, in one process
each side best of ``--repeat`` alternating runs. It prints ``decode ratio: X`` for read_images alone and ends
with ``ratio: X`` where X = naive seconds / seconds of the whole `pipeline prepare` command (above 1: ours is
faster). CPU time per image is printed too: unlike wall time it does not depend on what else the machine runs.

    python bench/prepare.py [--count 20000] [--workers N] [--repeat 3]
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from stages.sources import read_images  # noqa: E402

SIDE, TARGET = 96, 30


def write_jpegs(folder: Path, count: int, seed: int = 0) -> None:
    """``count`` distinct 96x96 JPEGs: a bicubic-upsampled 6x6 color field with grain, like a soft photo."""
    rng = np.random.default_rng(seed)
    for index in range(count):
        coarse = Image.fromarray(rng.integers(0, 256, (6, 6, 3), dtype=np.uint8))
        smooth = np.asarray(coarse.resize((SIDE, SIDE), Image.Resampling.BICUBIC), dtype=np.int16)
        grain = rng.integers(-8, 9, (SIDE, SIDE, 1), dtype=np.int16)
        Image.fromarray(np.clip(smooth + grain, 0, 255).astype(np.uint8)).save(folder / f"{index:06d}.jpg", quality=90)


def cpu_seconds() -> float:
    """CPU time of this process and its reaped children (the decode pool): what the work costs, whatever else
    runs on the machine."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def timed(run) -> tuple[float, float]:
    """(wall seconds, CPU seconds) of one call."""
    wall, cpu = time.perf_counter(), cpu_seconds()
    run()
    return time.perf_counter() - wall, cpu_seconds() - cpu


def report(label: str, runs: list[tuple[float, float]], count: int) -> float:
    """Print the best of ``runs`` (least wall time, as timeit does: the others were slowed by something else)."""
    wall, cpu = min(runs)
    print(f"{label:<46} {wall:7.2f} s  {count / wall:7.0f} images/s  {cpu / count * 1e6:5.0f} us CPU/image",
          flush=True)
    return wall


def naive(folder: Path) -> list[np.ndarray]:
    return [np.asarray(Image.open(path).convert("RGB").resize((TARGET, TARGET))) for path in sorted(folder.iterdir())]


def ours(folder: Path, workers: int | None) -> int:
    return sum(item.pixels is not None for item in read_images(folder, TARGET, workers=workers))


def pipeline_prepare(folder: Path, outputs: Path) -> None:
    command = ["pipeline", "prepare", "--source", str(folder), "--count", "all", "--force", "--outputs", str(outputs)]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        print(f"  pipeline prepare failed ({done.returncode}): {done.stderr.strip()[-300:]}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=20_000)
    parser.add_argument("--workers", type=int, default=None, help="decode processes (default: all cores)")
    parser.add_argument("--repeat", type=int, default=3, help="alternating runs of each side; the best counts")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-prepare-") as scratch:
        folder, outputs = Path(scratch, "images"), Path(scratch, "outputs")
        folder.mkdir()
        start = time.perf_counter()
        write_jpegs(folder, args.count)
        print(f"wrote {args.count} JPEGs of {SIDE}x{SIDE} in {time.perf_counter() - start:.1f} s")
        for path in folder.iterdir():
            path.read_bytes()  # warm the page cache: both sides read from memory
        sides = {"naive": lambda: naive(folder), "ours": lambda: ours(folder, args.workers)}
        if shutil.which("pipeline"):
            sides["end to end"] = lambda: pipeline_prepare(folder, outputs)
        runs: dict[str, list[tuple[float, float]]] = {side: [] for side in sides}
        for _ in range(args.repeat):  # alternate, so a busy spell on the machine hits every side alike
            for side, run in sides.items():
                runs[side].append(timed(run))
        print(f"best of {args.repeat} alternating runs, {os.cpu_count()} cores:")
        naive_seconds = report("naive: open/convert/resize, one process", runs["naive"], args.count)
        our_seconds = report(f"ours: read_images(folder, {TARGET})", runs["ours"], args.count)
        print(f"decode ratio: {naive_seconds / our_seconds:.2f}  (naive loop / read_images alone)")
        if "end to end" in runs:
            end_to_end = report("ours: pipeline prepare --count all (end to end)", runs["end to end"], args.count)
            print(f"ratio: {naive_seconds / end_to_end:.2f}  (naive_time / our_time for the whole command: start-up, "
                  "listing, dedupe and writing the set included; above 1 means ours is faster)")
        else:
            print(f"ratio: {naive_seconds / our_seconds:.2f}  (the pipeline command is not on PATH: read_images "
                  "alone, not the whole command)")


if __name__ == "__main__":
    main()
