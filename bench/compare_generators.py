"""VAE vs GAN on one prepared set: train both through the pipeline, then print the comparison as a markdown table.

Why: issue 17 asks whether the textbook chapter's claim ("GAN samples are sharper than the VAE's") holds on the
same faces with the same yardstick (the judge's C2ST, density, coverage and FD against the same real test faces).
This runs `pipeline run --stages vae,gan` on the latest prepared set in OUTPUTS (the VAE with its defaults, the
GAN with --gan-epochs), then, with --conditional TAG, a conditional GAN on that tag column, then the colorizer
(default) that colors both generators' samples (samples_color.png), and prints one row per model: the numbers
come first, the colored grids last, in case time runs out. Entries are cached, so a second call prints the table
without training.
Seconds are training time on this machine under whatever else runs: compare them within one table only.

    pipeline prepare --source /work/shared/data/anime-faces/faces --count all \\
        --labels /work/shared/data/anime-faces/tags.csv --outputs /tmp/faces12k
    OMP_NUM_THREADS=1 python bench/compare_generators.py --outputs /tmp/faces12k --gan-epochs 15 --conditional hair \\
        --set colorize.epochs=1
    # MNIST, once train-images-idx3-ubyte is on disk:
    pipeline prepare --source train-images-idx3-ubyte --size 28 --count all --outputs /tmp/mnist
    OMP_NUM_THREADS=1 python bench/compare_generators.py --outputs /tmp/mnist --gan-epochs 15
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.tables import markdown_table  # noqa: E402

COLUMNS = ("c2st", "density", "coverage", "fd", "test_neg_elbo", "diversity", "train_seconds", "epochs",
           "parameters")


def pipeline_run(outputs: Path, *args: str) -> None:
    environment = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT),
                                                                             os.environ.get("PYTHONPATH")]))}
    subprocess.run([sys.executable, "-m", "pipeline.cli", "run", *args, "--outputs", str(outputs)], check=True,
                   env=environment)


def latest(outputs: Path, stage: str) -> Path:
    return (outputs / stage / "latest").resolve()


def row(name: str, entry: Path) -> tuple:
    metrics = json.loads((entry / "metrics.json").read_text())
    return (name, *(metrics.get(column) for column in COLUMNS), f"{entry.parent.name}/{entry.name}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--outputs", type=Path, required=True, help="cache folder holding the prepared set")
    parser.add_argument("--gan-epochs", type=int, default=200)
    parser.add_argument("--conditional", default="", help="also train a GAN conditioned on this tag column")
    parser.add_argument("--set", action="append", default=[], help="more STAGE.PARAM=VALUE for the first run")
    args = parser.parse_args()
    extra = [item for setting in args.set for item in ("--set", setting)]

    gan = ("--set", f"gan.epochs={args.gan_epochs}", *extra)
    pipeline_run(args.outputs, "--stages", "vae,gan", *gan)
    rows = [row("VAE", latest(args.outputs, "vae")), row("GAN", latest(args.outputs, "gan"))]
    if args.conditional:
        pipeline_run(args.outputs, "--stages", "gan", *gan, "--set", f"gan.conditional={args.conditional}")
        rows.append(row(f"GAN conditional on {args.conditional}", latest(args.outputs, "gan")))
    pipeline_run(args.outputs, "--stages", "vae,gan,colorize", *gan)
    print(markdown_table(("model", *COLUMNS, "entry"), rows))


if __name__ == "__main__":
    main()
