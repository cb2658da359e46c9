"""The VAE table of issue 15: the seed's FC VAE, the previous default and the current default, side by side.

For each `--prepared DIR` (a `pipeline prepare` entry), the VAE stage itself (stages.vae.run) trains three models
on the same split, in one process, one after the other:

  seed FC VAE      vae.arch=fc, sampled from the prior (the reference experiment's network)
  previous default the defaults before issue 15 part 3 (PREVIOUS_DEFAULT below), passed explicitly
  new default      VaeParams() as they are now

and prints one markdown table per set. Rows: seed FC (prior), previous default (prior), new default (prior),
new default (gmm); the gmm row is the new default's own second sampler, not another model, so its -ELBO, active
dims, PSNR and seconds repeat the prior row's. Columns: test -ELBO, excess over the BCE entropy floor, active
latent dims, reconstruction PSNR, and the realism judge's C2ST, density, coverage and Frechet distance
(stages.judge) against the same real test faces, and training seconds. Each model's entry folder (samples.png,
reconstructions.png, loss.png, history.json, metrics.json) is kept under --out to be looked at side by side.

Seconds are only comparable within one run of this script on an otherwise quiet machine.

    python bench/compare_vaes.py --prepared outputs/prepare/latest [--prepared DIR ...] [--out /tmp/compare_vaes]
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.tables import markdown_table  # noqa: E402
from stages.contract import StageContext  # noqa: E402
from stages.params import VaeParams  # noqa: E402
from stages.vae import run  # noqa: E402

PREVIOUS_DEFAULT = dict(arch="conv", latent_dim=10, width=16, epochs=30, batch_size=128, lr=3e-3)
MODELS = {  # label -> parameters over VaeParams()
    "seed FC VAE": dict(arch="fc", sampler="prior"),
    "previous default": dict(PREVIOUS_DEFAULT, sampler="prior"),
    "new default": {},
}
ROWS = (("seed FC VAE", "prior"), ("previous default", "prior"), ("new default", "prior"), ("new default", "gmm"))
COLUMNS = ("test -ELBO", "excess", "active dims", "PSNR dB", "C2ST", "density", "coverage", "FD", "train s")


class _Silent:
    def advance(self, steps: int = 1, status: str | None = None) -> None:
        pass


def train(params: VaeParams, prepared: Path, out_dir: Path) -> dict:
    """One run of the VAE stage into `out_dir` (a fresh folder), its metrics."""
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as resume:
        context = StageContext(device="cpu", workers=1, resume_dir=Path(resume), echo=print,
                               progress=lambda total, label: contextlib.nullcontext(_Silent()))
        metrics = run(params, {"prepare": prepared}, out_dir, context)
    (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=1))
    return metrics


def row(label: str, sampler: str, metrics: dict) -> tuple:
    realism = metrics.get("realism", {}).get(sampler, {})
    c2st = f"{realism.get('c2st', float('nan')):.2f} ± {realism.get('c2st_std', float('nan')):.2f}"
    return (f"{label} ({sampler})", metrics["test_neg_elbo"], metrics.get("neg_elbo_excess"), metrics["active_dims"],
            metrics["recon_psnr"], c2st, realism.get("density"), realism.get("coverage"), realism.get("fd"),
            metrics["train_seconds"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prepared", type=Path, action="append", required=True, help="a `pipeline prepare` entry")
    parser.add_argument("--out", type=Path, default=Path(tempfile.gettempdir()) / "compare_vaes")
    args = parser.parse_args()
    for prepared in args.prepared:
        prepared = prepared.resolve()
        results = {}
        for label, changes in MODELS.items():
            params = dataclasses.replace(VaeParams(), **changes)
            results[label] = train(params, prepared, args.out / prepared.name / label.replace(" ", "-"))
            print(f"{prepared.name}: {label} trained in {results[label]['train_seconds']:.1f} s", flush=True)
        n = results["new default"].get("realism", {}).get("prior", {}).get("n", 0)
        print(f"\n### {prepared.name} (entropy floor {results['new default'].get('entropy_floor', float('nan')):.1f} "
              f"nats; judge: {n} samples against {n} real test faces)\n")
        print(markdown_table(("model (sampler)", *COLUMNS),
                             (row(label, sampler, results[label]) for label, sampler in ROWS)))
        print(f"\nsamples.png of each model: {args.out / prepared.name}/*/samples.png\n", flush=True)


if __name__ == "__main__":
    main()
