"""Runs stages as a short recipe: plan the order, key each stage, reuse or run it, publish, summarise.

The runner knows stages only through their declarations in `stages.registry`; it imports a stage's code only to
call it. Every stage goes through `run_stage`, so caching, resume folders, manifests and the "why did this
re-run" explanation behave the same for all of them.
"""
from __future__ import annotations

import importlib
import json
import shutil
import platform
import time
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any, Callable

from pipeline import params as params_mod
from pipeline.cache import Cache, Key, explain_change, now
from pipeline.params import UsageError
from stages.registry import STAGE_NAMES, STAGES, StageContext, StageSkipped, StageSpec, stage


@dataclass(frozen=True)
class Settings:
    """How to run, never what: none of these enter a cache key."""

    outputs: Path
    device: str = "cpu"
    workers: int | None = None
    echo: Callable[[str], None] = print
    progress: Callable = None  # progress(total, label) -> context manager with .advance(); see cli.py


@dataclass
class Outcome:
    stage: str
    entry: str
    status: str  # "ran", "cached" or "skipped"
    reason: str = ""
    seconds: float = 0.0
    metrics: dict[str, Any] = field(default_factory=dict)


def _load(reference: str) -> Callable:
    module, _, function = reference.partition(":")
    return getattr(importlib.import_module(module), function)


def plan(tokens: list[str]) -> list[StageSpec]:
    """Requested stage names -> every stage to visit, upstream first (prepare is never run from here)."""
    unknown = [t for t in tokens if t not in STAGE_NAMES or t == "prepare"]
    if unknown:
        runnable = ", ".join(n for n in STAGE_NAMES if n != "prepare")
        raise UsageError(f"unknown stage {', '.join(map(repr, unknown))} in --stages (valid: {runnable}; "
                         "`pipeline prepare` builds the image set)")
    wanted = set(tokens)
    wanted |= {s.name for s in STAGES if s.follows in wanted}
    changed = True
    while changed:
        before = len(wanted)
        for spec in STAGES:
            if spec.name in wanted:
                wanted |= set(spec.upstream)
        changed = len(wanted) != before
    wanted.discard("prepare")
    return [spec for spec in STAGES if spec.name in wanted]


def make_key(spec: StageSpec, stage_params, upstream: dict[str, str]) -> Key:
    fingerprint = _load(spec.fingerprint)(stage_params) if spec.fingerprint else ""
    return Key(stage=spec.name, version=spec.version, params=params_mod.hashed_dict(stage_params),
               upstream=upstream, fingerprint=fingerprint, label=spec.describe(stage_params))


def _versions() -> dict[str, str]:
    found = {"python": platform.python_version()}
    for package in ("torch", "numpy", "pillow", "face-pipeline"):
        try:
            found[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            found[package] = "not installed"
    return found


def run_stage(cache: Cache, spec: StageSpec, stage_params, upstream_dirs: dict[str, Path],
              settings: Settings, force: bool) -> Outcome:
    """Reuse the cached entry of this key, or run the stage into a staging folder and publish it whole."""
    key = make_key(spec, stage_params, {name: path.name for name, path in upstream_dirs.items()})
    cached = cache.lookup(key)
    if cached is not None and not force:
        cache.point_latest(spec.name, key.entry)
        return Outcome(spec.name, key.entry, "cached", metrics=cached.get("metrics", {}))

    reason = "--force" if cached is not None else explain_change(cache.latest(spec.name), key)
    staging = cache.staging_dir(key)
    context = StageContext(device=settings.device, workers=settings.workers, resume_dir=cache.resume_dir(key),
                           echo=settings.echo, progress=settings.progress)
    started, clock = now(), time.perf_counter()
    try:
        metrics = _load(spec.entry)(stage_params, upstream_dirs, staging, context) or {}
    except StageSkipped as skipped:
        cache.discard(staging)
        return Outcome(spec.name, key.entry, "skipped", reason=str(skipped))
    except BaseException:
        cache.discard(staging)  # nothing half-written is ever published; resume checkpoints stay
        raise
    seconds = time.perf_counter() - clock
    (staging / "metrics.json").write_text(json.dumps(metrics, indent=1) + "\n", encoding="utf-8")
    manifest = {
        "stage": spec.name, "entry": key.entry, "summary": spec.summary, "version": spec.version,
        "params": params_mod.as_dict(stage_params), "key_params": key.params,
        "inputs": {"upstream": key.upstream, "fingerprint": key.fingerprint},
        "versions": _versions(), "started": started, "finished": now(), "seconds": round(seconds, 2),
        "reason": reason, "metrics": metrics,
    }
    cache.publish(key, staging, manifest)
    cache.point_latest(spec.name, key.entry)
    return Outcome(spec.name, key.entry, "ran", reason=reason, seconds=seconds, metrics=metrics)


def prepared_entry(cache: Cache) -> Path:
    latest = cache.latest("prepare")
    if latest is None:
        raise UsageError(f"no prepared image set in {cache.root}: run `pipeline prepare` first "
                         "(or `pipeline prepare --source DIR` for your own images)")
    return cache.entry_dir("prepare", latest["entry"])


def _skip_reason(spec: StageSpec, all_params: dict[str, Any], available: dict[str, Any]) -> str:
    """Why `spec` has nothing to do, given the stages available upstream ("" if it runs); run and status share it."""
    if spec.skip_reason and (reason := spec.skip_reason(all_params)):
        return reason
    missing = [name for name in spec.upstream if name not in available]
    return f"needs {', '.join(missing)}" if missing else ""


def run_pipeline(tokens: list[str], all_params: dict[str, Any], settings: Settings, force: bool) -> list[Outcome]:
    """`pipeline run`: every planned stage in order, each reading its upstream stages' published folders."""
    cache = Cache(settings.outputs)
    specs = plan(tokens)
    outcomes: list[Outcome] = []
    with cache.locked(settings.echo):
        cache.sweep_staging()
        published = {"prepare": prepared_entry(cache)}
        for spec in specs:
            skip = _skip_reason(spec, all_params, published)
            if skip:
                outcomes.append(Outcome(spec.name, "", "skipped", reason=skip))
                continue
            outcome = run_stage(cache, spec, all_params[spec.name], {n: published[n] for n in spec.upstream},
                                settings, force=force and spec.name in tokens)
            outcomes.append(outcome)
            if outcome.status != "skipped":
                published[spec.name] = cache.entry_dir(spec.name, outcome.entry)
    return outcomes


def run_prepare(prepare_params, settings: Settings, force: bool) -> Outcome:
    cache = Cache(settings.outputs)
    with cache.locked(settings.echo):
        cache.sweep_staging()
        return run_stage(cache, stage("prepare"), prepare_params, {}, settings, force)



@dataclass
class StageStatus:
    stage: str
    entry: str
    cached: bool
    reason: str  # why it would run (or why it would be skipped); "" when cached
    skipped: bool = False  # run would skip this stage (e.g. nothing to color for a color VAE)


def status(all_params: dict[str, Any], outputs: Path) -> list[StageStatus]:
    """The key each stage would get with these settings, whether it is cached, and if not, why it would run.

    Keys are computed, never trained: each stage's entry name follows from its parameters and its upstream
    entry names, so the whole chain can be predicted from the latest prepared set.
    """
    cache = Cache(outputs)
    latest_prepare = cache.latest("prepare")
    if latest_prepare is None:
        return [StageStatus("prepare", "", False, "no prepared set: run `pipeline prepare`")]
    entries = {"prepare": latest_prepare["entry"]}
    report = [StageStatus("prepare", latest_prepare["entry"], True, "")]
    for spec in plan([s.name for s in STAGES if s.name != "prepare"]):
        skip = _skip_reason(spec, all_params, entries)
        if skip:  # no key, nothing to run
            report.append(StageStatus(spec.name, "", False, skip, skipped=True))
            continue
        key = make_key(spec, all_params[spec.name], {name: entries[name] for name in spec.upstream})
        entries[spec.name] = key.entry
        cached = cache.lookup(key) is not None
        report.append(StageStatus(spec.name, key.entry, cached,
                                  "" if cached else explain_change(cache.latest(spec.name), key)))
    return report


@dataclass
class Removal:
    stage: str
    entry: str
    bytes: int


def clean(outputs: Path, keep: int, dry_run: bool = False) -> list[Removal]:
    """Remove all but the `keep` newest entries of each stage, never one that a kept downstream entry reads.

    Stages are visited downstream first, so by the time a stage is cleaned, every entry still depending on it
    is known. The entry each stage's `latest` points at is always kept.
    """
    cache = Cache(outputs)
    removed: list[Removal] = []
    needed: dict[str, set[str]] = {}
    with cache.locked(lambda message: None):
        for spec in reversed(STAGES):
            entries = cache.entries(spec.name)
            latest = cache.latest(spec.name)
            kept = {m["entry"] for m in entries[:keep]} | needed.get(spec.name, set())
            if latest is not None:
                kept.add(latest["entry"])
            for manifest in entries:
                if manifest["entry"] in kept:
                    for upstream, entry in manifest.get("inputs", {}).get("upstream", {}).items():
                        needed.setdefault(upstream, set()).add(entry)
                    continue
                size = sum(manifest.get("files", {}).values())
                removed.append(Removal(spec.name, manifest["entry"], size))
                if not dry_run:
                    shutil.rmtree(cache.entry_dir(spec.name, manifest["entry"]))
    return removed


def edit(picture: Path, edits: list[tuple[str, float]], output: Path, settings: Settings) -> None:
    """`pipeline edit`: apply concept vectors to a user's picture with the latest concepts entry and its inputs."""
    cache = Cache(settings.outputs)
    concepts = cache.latest("concepts")
    if concepts is None:
        raise UsageError(f"no concept vectors in {cache.root}: run `pipeline run --stages vae,colorize,concepts` "
                         "on a labelled set first")
    inputs = {name: cache.entry_dir(name, entry) for name, entry in concepts["inputs"]["upstream"].items()}
    inputs["concepts"] = cache.entry_dir("concepts", concepts["entry"])
    _load("stages.concepts:edit_picture")(picture, inputs, edits, output, settings.device)
