"""The colorizers against the average color they must beat, on one prepared set: a markdown table.

Runs `pipeline run --stages colorize` once per colorizer (StackNN, conv with each loss, and StackNN and conv
classify conditioned on a tag column if --condition is given) on the prepared set already in --outputs, then
prints one row per colorizer and one for the baseline, read back from each entry's metrics.json and
manifest.json (the seconds are the stage's own, as the report shows them). Entries already cached are reused, not re-timed.

    python -m pipeline.cli prepare --source DIR --count all [--labels tags.csv] --outputs OUT
    python bench/compare_colorizers.py --outputs OUT [--condition hair] [--set colorize.epochs=8 ...]
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.tables import markdown_table  # noqa: E402

VARIANTS = {"stacknn": ("colorize.arch=stacknn",),
            "conv mse": ("colorize.arch=conv", "colorize.loss=mse"),
            "conv classify": ("colorize.arch=conv", "colorize.loss=classify")}
COLUMNS = ("PSNR", "baseline PSNR", "margin", "SSIM", "AuC", "baseline AuC", "C2ST", "baseline C2ST",
           "colorfulness ratio", "luma MSE", "tag accuracy", "tag accuracy, no tag given", "true colors' tag accuracy",
           "seconds")


def run_colorize(outputs: Path, settings: tuple[str, ...]) -> Path:
    """The colorize entry the pipeline publishes (or finds cached) for these settings."""
    command = [sys.executable, "-m", "pipeline.cli", "run", "--stages", "colorize", "--outputs", str(outputs)]
    for setting in settings:
        command += ["--set", setting]
    subprocess.run(command, cwd=ROOT, check=True)
    return (outputs / "colorize" / "latest").resolve()


def row(metrics: dict, seconds: float, condition: str) -> tuple:
    accuracy = [metrics.get(f"{condition}_accuracy_{name}") if condition else None
                for name in ("conditioned", "no_tag", "true_color")]
    return (metrics["psnr"], metrics["baseline_psnr"], metrics["psnr_margin"], metrics["ssim"],
            metrics["color_auc"], metrics["baseline_color_auc"], metrics.get("c2st"), metrics.get("baseline_c2st"),
            metrics["colorfulness_ratio"], metrics["luma_mse"], *accuracy, seconds)


def baseline_row(metrics: dict, condition: str) -> tuple:
    accuracy = metrics.get(f"{condition}_accuracy_baseline") if condition else None
    return (metrics["baseline_psnr"], None, 0.0, metrics["baseline_ssim"], metrics["baseline_color_auc"], None,
            metrics.get("baseline_c2st"), None, metrics["baseline_colorfulness_ratio"], 0.0, accuracy, None, None, None)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--outputs", type=Path, required=True, help="cache folder holding a prepared set")
    parser.add_argument("--condition", default="", help="also run stacknn and conv classify conditioned on this "
                        "tag column")
    parser.add_argument("--set", action="append", default=[], help="extra setting (any stage) for every row")
    parser.add_argument("--only", action="append", default=[], help="run only these rows (names as printed)")
    args = parser.parse_args()
    variants = dict(VARIANTS)
    if args.condition:
        for name in ("stacknn", "conv classify"):
            variants[f"{name}, {args.condition} known"] = (*VARIANTS[name], f"colorize.condition={args.condition}")
    rows, last = {}, None
    for name, settings in variants.items():
        if args.only and name not in args.only:
            continue
        entry = run_colorize(args.outputs, (*settings, *args.set))
        last = json.loads((entry / "metrics.json").read_text())
        seconds = json.loads((entry / "manifest.json").read_text())["seconds"]
        rows[name] = row(last, seconds, args.condition if "known" in name else "")
    if last is None:
        return
    rows[f"baseline ({last['baseline']})"] = baseline_row(last, args.condition)
    print(f"\n{args.outputs}\n")
    print(markdown_table(("colorizer", *COLUMNS), ((name, *values) for name, values in rows.items())))


if __name__ == "__main__":
    main()
