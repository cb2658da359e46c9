"""How the pipeline behaves on a set that does not fit in memory: prepare N embedded faces at 64x64 color, then
one VAE epoch on color (vae.channels=3) with 1 and with 2 processes (`pipeline run --nproc`: torchrun, gloo on
CPU).

Each step runs this checkout's CLI in a child process and prints its wall time, images/s and peak resident
memory (the largest of the command's processes, from wait4). The point is how memory and time behave as the
set grows past memory, not speed: on 2 CPU cores, 2 processes will not be faster than 1.

    python bench/scale.py [--count 200000] [--nproc 1 2] [--device cpu|cuda] [--outputs DIR]
                          [--steps prepare vae] [--resident-bytes B]

`--steps vae --outputs DIR` times the epochs on a set an earlier `--steps prepare --outputs DIR` prepared.
`--resident-bytes` sets PIPELINE_RESIDENT_BYTES for the epochs (0: read every batch from the file, as a set
bigger than the budget is).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from stages.prepared_set import resident_bytes  # noqa: E402

SIZE = 64


def run_measured(command: list[str]) -> tuple[float, float]:
    """(wall seconds, peak RSS in GB of the command's largest process); exits with its stderr if it fails."""
    environment = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    started = time.perf_counter()
    process = subprocess.Popen(command, env=environment, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    stderr = process.stderr.read()
    _, status, usage = os.wait4(process.pid, 0)
    wall = time.perf_counter() - started
    if os.waitstatus_to_exitcode(status) != 0:
        sys.exit(f"failed: {' '.join(command)}\n{stderr.strip()[-600:]}")
    return wall, usage.ru_maxrss / 2**20  # ru_maxrss is in KB on Linux


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "pipeline", *args]


def train_split_note(outputs: Path) -> str:
    """How big the VAE's color training split is as float32, and whether the stage holds it or reads it per batch."""
    train = len(np.load(outputs / "prepare" / "latest" / "split.npz")["train"])
    size = train * SIZE * SIZE * 3 * 4
    where = "held in memory" if size <= resident_bytes() else "read from the file a batch at a time"
    return f"train split {train} images, {size / 1e9:.2f} GB as float32: {where}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=200_000, help="embedded faces to prepare")
    parser.add_argument("--nproc", type=int, nargs="+", default=[1, 2], help="process counts for the VAE epoch")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--outputs", type=Path, help="cache folder (default: a temporary one, removed after)")
    parser.add_argument("--steps", nargs="+", choices=["prepare", "vae"], default=["prepare", "vae"])
    parser.add_argument("--resident-bytes", help="PIPELINE_RESIDENT_BYTES for the epochs (default: unset)")
    args = parser.parse_args()
    if args.resident_bytes is not None:
        os.environ["PIPELINE_RESIDENT_BYTES"] = args.resident_bytes
    outputs = args.outputs or Path(tempfile.mkdtemp(prefix="bench-scale-"))
    try:
        color_gb = args.count * SIZE * SIZE * 3 / 1e9
        if "prepare" in args.steps:
            wall, peak = run_measured(cli("prepare", "--count", str(args.count), "--size", str(SIZE),
                                          "--outputs", str(outputs), "--force"))
            print(f"prepare {args.count} faces at {SIZE}x{SIZE}: {wall:7.1f} s  {args.count / wall:7.0f} images/s  "
                  f"peak RSS {peak:.2f} GB  (color array {color_gb:.2f} GB)", flush=True)
        if "vae" in args.steps:
            print(train_split_note(outputs), flush=True)
        for nproc in args.nproc if "vae" in args.steps else []:
            wall, peak = run_measured(cli("run", "--stages", "vae", "--set", "vae.channels=3", "--set", "vae.epochs=1",
                                          "--nproc", str(nproc), "--device", args.device, "--outputs", str(outputs),
                                          "--force"))
            history = json.loads((outputs / "vae" / "latest" / "history.json").read_text())
            print(f"vae epoch, {nproc} process{'es' if nproc > 1 else ''}: {wall:7.1f} s command, "
                  f"{history['seconds']:7.1f} s epoch  {history['images'] / history['seconds']:7.0f} images/s  "
                  f"peak RSS {peak:.2f} GB (largest process)", flush=True)
    finally:
        if not args.outputs:
            shutil.rmtree(outputs, ignore_errors=True)


if __name__ == "__main__":
    main()
