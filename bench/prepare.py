"""Side-by-side speed of preparing an image folder: `pipeline prepare` against a naive one-process PIL loop.

Writes N image-like JPEGs of ``--side`` pixels (smooth random blobs plus grain, not pure noise) to a temporary
folder, or reads a real folder given with ``--source``; warms the page cache so every side reads from memory,
then times, each side best of ``--repeat`` alternating runs:
  naive        for each file: Image.open(p), crop the centre, Lanczos resize to --size, in one process
  naive draft  the same with Image.draft (JPEG scale-on-decode) first: the fastest a plain PIL loop gets
  ours         read_images(folder, size, crop) fully consumed, in this process
  prepare      this checkout's `pipeline prepare --force` end to end (start-up, listing, dedupe, writing the
               set), with dedupe and with --no-dedupe
It ends with ``ratio: X`` lines, X = naive seconds / seconds of the whole command (above 1: ours is faster).
CPU time per image is printed too: unlike wall time it does not depend on what else the machine runs.

    python bench/prepare.py [--count 20000] [--workers N] [--repeat 3]                  96x96 faces to 30x30
    python bench/prepare.py --side 424 --crop center:0.5 --size 64 --count 1500          photos to 64x64
    python bench/prepare.py --source ../shared/data/galaxies/images --crop center:0.5 --size 64
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # before numpy loads, as `pipeline` (cli.main) sets it
import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from stages.sources import read_images  # noqa: E402


def write_jpegs(folder: Path, count: int, side: int, seed: int = 0) -> None:
    """``count`` distinct side x side JPEGs: a bicubic-upsampled 6x6 color field with grain, like a soft photo."""
    rng = np.random.default_rng(seed)
    for index in range(count):
        coarse = Image.fromarray(rng.integers(0, 256, (6, 6, 3), dtype=np.uint8))
        smooth = np.asarray(coarse.resize((side, side), Image.Resampling.BICUBIC), dtype=np.int16)
        grain = rng.integers(-8, 9, (side, side, 1), dtype=np.int16)
        Image.fromarray(np.clip(smooth + grain, 0, 255).astype(np.uint8)).save(folder / f"{index:06d}.jpg", quality=90)


def cpu_seconds() -> float:
    """CPU time of this process and its reaped children (the decode pool, the CLI): what the work costs, whatever
    else runs on the machine."""
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
    print(f"{label:<44} {wall:7.2f} s  {count / wall:7.0f} images/s  {cpu / count * 1e6:5.0f} us CPU/image",
          flush=True)
    return wall


def naive(files: list[Path], size: int, crop: float, draft: bool) -> list[np.ndarray]:
    """The loop a user would write: open, (draft,) crop the centre square's central ``crop``, Lanczos resize."""
    images = []
    for path in files:
        with Image.open(path) as image:
            if draft:
                image.draft("RGB", (int(size / crop), int(size / crop)))
            side = min(image.size) * crop
            left, top = (image.width - side) / 2, (image.height - side) / 2
            box = (left, top, left + side, top + side)
            images.append(np.asarray(image.convert("RGB").resize((size, size), Image.LANCZOS, box=box)))
    return images


def ours(folder: Path, size: int, crop: float, workers: int | None) -> int:
    return sum(item.pixels is not None for item in read_images(folder, size, crop, workers=workers))


def pipeline_prepare(folder: Path, outputs: Path, size: int, crop: float, *extra: str) -> None:
    """This checkout's CLI (not whichever `pipeline` is installed), as a user runs it."""
    command = [sys.executable, "-m", "pipeline.cli", "prepare", "--source", str(folder), "--count", "all",
               "--size", str(size), "--crop", f"center:{crop}", "--force", "--outputs", str(outputs), *extra]
    environment = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    done = subprocess.run(command, capture_output=True, text=True, env=environment)
    if done.returncode != 0:
        sys.exit(f"pipeline prepare failed ({done.returncode}): {done.stderr.strip()[-300:]}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=20_000, help="JPEGs to write (ignored with --source)")
    parser.add_argument("--side", type=int, default=96, help="side of the JPEGs written")
    parser.add_argument("--size", type=int, default=30, help="side of the prepared images")
    parser.add_argument("--crop", default="center:1.0", help="center:F keeps the central fraction F")
    parser.add_argument("--source", type=Path, help="a real folder of images instead of written JPEGs")
    parser.add_argument("--workers", type=int, default=None, help="decode processes (default: all cores)")
    parser.add_argument("--repeat", type=int, default=3, help="alternating runs of each side; the best counts")
    args = parser.parse_args()
    crop = float(args.crop.removeprefix("center:"))
    with tempfile.TemporaryDirectory(prefix="bench-prepare-") as scratch:
        outputs = Path(scratch, "outputs")
        folder = args.source or Path(scratch, "images")
        if not args.source:
            folder.mkdir()
            start = time.perf_counter()
            write_jpegs(folder, args.count, args.side)
            print(f"wrote {args.count} JPEGs of {args.side}x{args.side} in {time.perf_counter() - start:.1f} s")
        files = sorted(path for path in folder.iterdir() if path.suffix.lower() in (".jpg", ".jpeg", ".png"))
        for path in files:
            path.read_bytes()  # warm the page cache: every side reads from memory
        count = len(files)
        sides = {
            "naive": lambda: naive(files, args.size, crop, draft=False),
            "naive draft": lambda: naive(files, args.size, crop, draft=True),
            "ours": lambda: ours(folder, args.size, crop, args.workers),
            "prepare": lambda: pipeline_prepare(folder, outputs, args.size, crop),
            "prepare --no-dedupe": lambda: pipeline_prepare(folder, outputs, args.size, crop, "--no-dedupe"),
        }
        runs: dict[str, list[tuple[float, float]]] = {side: [] for side in sides}
        for _ in range(args.repeat):  # alternate, so a busy spell on the machine hits every side alike
            for side, run in sides.items():
                runs[side].append(timed(run))
        print(f"{count} images -> {args.size}x{args.size}, crop {crop}; best of {args.repeat} alternating runs, "
              f"{os.cpu_count()} cores:")
        naive_seconds = report("naive: open/crop/Lanczos, one process", runs["naive"], count)
        draft_seconds = report("naive with Image.draft, one process", runs["naive draft"], count)
        read_seconds = report(f"ours: read_images(folder, {args.size}, {crop})", runs["ours"], count)
        dedupe_seconds = report("ours: pipeline prepare (end to end)", runs["prepare"], count)
        plain_seconds = report("ours: pipeline prepare --no-dedupe", runs["prepare --no-dedupe"], count)
        print(f"decode ratio: {naive_seconds / read_seconds:.2f}  (naive loop / read_images alone)")
        print(f"draft ratio: {draft_seconds / dedupe_seconds:.2f}  (naive loop with Image.draft / pipeline prepare)")
        print(f"ratio: {naive_seconds / dedupe_seconds:.2f}  (naive_time / our_time for the whole command, dedupe "
              "included; above 1 means ours is faster)")
        print(f"ratio --no-dedupe: {naive_seconds / plain_seconds:.2f}")


if __name__ == "__main__":
    main()
