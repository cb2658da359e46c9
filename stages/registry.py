"""What each stage is, declared once: name, code version, parameters, upstream stages, entry point.

The runner and the cache decide everything else from these declarations. This module imports no torch, so the
tool can plan, key and report without loading a model. `entry` names the function to call as "module:function";
it is imported only when the stage actually runs.

A stage's `run(params, inputs, out_dir, context)` reads only the upstream directories in `inputs`, writes only
into `out_dir`, and returns its metrics as a JSON-able dict; the runner saves them as metrics.json and in the
manifest.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, ContextManager, Protocol

from stages.params import ColorizeParams, ConceptParams, NoParams, PrepareParams, VaeParams


class StageSkipped(Exception):
    """Raised by a stage that has nothing to do for these inputs; its message says why, for the summary."""


class StageError(Exception):
    """A problem the user can fix (bad data, a diverged run); its message is one line saying what and how."""


class Progress(Protocol):
    def advance(self, steps: int = 1, status: str | None = None) -> None: ...


@dataclass(frozen=True)
class StageContext:
    """What the tool hands a stage besides its data: settings that never change results, and ways to talk."""

    device: str  # "cpu" or "cuda"
    workers: int | None  # worker processes for decoding; None = one per core
    resume_dir: Path  # survives an interrupted run of this exact key; the stage keeps checkpoints here
    echo: Callable[[str], None]  # one line to the user (warnings, notes)
    progress: Callable[[int, str], ContextManager[Progress]]  # progress(total_steps, label)


@dataclass(frozen=True)
class StageSpec:
    name: str
    version: int  # bump when the stage's outputs change meaning, so old cache entries stop matching
    params: type
    upstream: tuple[str, ...]
    entry: str
    describe: Callable[[object], str]  # short human-readable prefix of the cache folder name
    summary: str  # one line for the manifest and the report: what the folder holds
    follows: str = ""  # run automatically whenever this other stage runs
    fingerprint: str = ""  # "module:function" fingerprinting files read from outside the cache, if any
    skip_reason: Callable[[dict], str] | None = None  # all stage params -> why this stage has nothing to do, or ""


def _nothing_to_color(all_params: dict) -> str:
    if all_params["vae"].channels == 3:
        return "the VAE trains on color (vae.channels=3), so its outputs need no colorizer"
    return ""


def _describe_prepare(p: PrepareParams) -> str:
    source = re.sub(r"[^A-Za-z0-9_]+", "_", Path(p.source.rstrip("/")).name.split(".")[0]).strip("_") or "embedded"
    crop = "" if p.crop == 1.0 else f"-c{p.crop:g}"
    return f"{source[:24]}-n{p.count or 'all'}-s{p.size}{crop}"


STAGES: tuple[StageSpec, ...] = (
    StageSpec(
        name="prepare", version=1, params=PrepareParams, upstream=(), entry="stages.prepare:run",
        describe=_describe_prepare, fingerprint="stages.prepare:fingerprint",
        summary="the prepared image set: gray and color arrays, the train/test split, sources and a preview grid",
    ),
    StageSpec(
        name="vae", version=3, params=VaeParams, upstream=("prepare",), entry="stages.vae:run",
        describe=lambda p: f"{p.arch}-z{p.latent_dim}-e{p.epochs}" + ("-rgb" if p.channels == 3 else ""),
        summary="a trained VAE: model.pt, metrics, loss curve, reconstructions, samples, interpolations, traversals",
    ),
    StageSpec(
        name="colorize", version=5, params=ColorizeParams, upstream=("prepare",), entry="stages.colorize:run",
        describe=lambda p: f"{p.arch}-e{p.epochs}", skip_reason=_nothing_to_color,
        summary="a trained colorizer (gray -> color) and its test metrics and test grid",
    ),
    StageSpec(
        name="vae_color", version=2, params=NoParams, upstream=("prepare", "vae", "colorize"),
        entry="stages.colorize:colorize_vae_outputs",
        describe=lambda p: "vae-colored", follows="colorize", skip_reason=_nothing_to_color,
        summary="the VAE's samples, interpolations, traversals and reconstructions colored by the colorizer",
    ),
    StageSpec(
        name="concepts", version=2, params=ConceptParams, upstream=("prepare", "vae", "colorize"),
        entry="stages.concepts:run", describe=lambda p: f"min{p.min_count}",
        skip_reason=_nothing_to_color,
        summary="latent concept vectors for the set's tags (hair=blonde, direction=left, ...), their checks and "
                "edit grids",
    ),
)

STAGE_NAMES = tuple(s.name for s in STAGES)


def stage(name: str) -> StageSpec:
    for spec in STAGES:
        if spec.name == name:
            return spec
    raise KeyError(name)
