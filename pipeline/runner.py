"""Runs stages as a short recipe: plan the order, key each stage, reuse or run it, publish, summarise.

The runner knows stages only through their declarations in `stages.registry`; it imports a stage's code only to
call it. Every stage goes through `run_stage`, so caching, resume folders, manifests and the "why did this
re-run" explanation behave the same for all of them.
"""
from __future__ import annotations

import contextlib
import importlib
import json
import shutil
import platform
import tempfile
import time
from dataclasses import dataclass, field, replace
from importlib import metadata
from pathlib import Path
from typing import Any, Callable

from pipeline import params as params_mod
from pipeline.cache import LATEST, MANIFEST, Cache, Key, Manifest, explain_change, now
from pipeline.params import UsageError
from stages.contract import StageContext, StageSkipped, StageSpec
from stages import distributed, registry
from stages.registry import SOURCE_STAGE


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
    """Requested stage names -> every stage to visit, upstream first (the source stage is never run from here)."""
    names = [spec.name for spec in registry.STAGES]
    unknown = [t for t in tokens if t not in names or t == SOURCE_STAGE]
    if unknown:
        runnable = ", ".join(n for n in names if n != SOURCE_STAGE)
        raise UsageError(f"unknown stage {', '.join(map(repr, unknown))} in --stages (valid: {runnable}; "
                         f"`pipeline {SOURCE_STAGE}` builds the image set)")
    wanted = set(tokens)
    wanted |= {s.name for s in registry.STAGES if s.follows and set(s.follows) <= wanted}
    changed = True
    while changed:
        before = len(wanted)
        for spec in registry.STAGES:
            if spec.name in wanted:
                wanted |= set(spec.upstream)
        changed = len(wanted) != before
    wanted.discard(SOURCE_STAGE)
    return [spec for spec in registry.STAGES if spec.name in wanted]


def make_key(spec: StageSpec, stage_params, upstream: dict[str, str]) -> Key:
    """The stage's key. The torchrun world size is left out (N ranks train exactly what one process does),
    except for a model with batch statistics, whose N ranks each normalise over their own rows."""
    fingerprint = _load(spec.fingerprint)(stage_params) if spec.fingerprint else ""
    params = params_mod.hashed_dict(stage_params)
    world = distributed.world()
    if world.size > 1 and spec.batch_statistics is not None and spec.batch_statistics(stage_params):
        params["world_size"] = world.size
    return Key(stage=spec.name, version=spec.version, params=params, upstream=upstream, fingerprint=fingerprint,
               label=spec.describe(stage_params))


def _versions() -> dict[str, str]:
    found = {"python": platform.python_version()}
    for package in ("torch", "numpy", "pillow", "face-pipeline"):
        try:
            found[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            found[package] = "not installed"
    return found


def run_stage(cache: Cache, spec: StageSpec, stage_params, upstream_dirs: dict[str, Path],
              settings: Settings, force: bool, damaged: str = "") -> Outcome:
    """Reuse the cached entry of this key, or run the stage into a staging folder and publish it whole.

    Before the stage runs, every upstream file is checked against the content hash its manifest records:
    DamagedEntry if one differs. ``damaged`` (why) says the cached entry of this key must not be trusted.
    Under torchrun, rank 0 decides and the other ranks of a distributed stage follow its answer."""
    here = distributed.world()
    key = make_key(spec, stage_params, {name: path.name for name, path in upstream_dirs.items()})
    cached = None if damaged or not here.main else cache.lookup(key)
    if spec.distributed:
        cached = distributed.from_main(cached)  # every rank trains, or none does
    if cached is not None and not force:
        if here.main:
            cache.point_latest(spec.name, key.entry)
        return Outcome(spec.name, key.entry, "cached", metrics=cached.metrics)

    reason = "--force" if cached is not None else damaged or _why_run(cache, key)
    for name, folder in upstream_dirs.items():  # every byte this stage will read, as it was published
        _, problem = cache.inspect(folder, verify=True) if here.main else (None, "")
        if problem:
            raise DamagedEntry(name, folder, problem)
    # Only rank 0 writes to the cache; the other ranks of a torchrun job train into a scratch folder of their own.
    staging = cache.staging_dir(key) if here.main else Path(tempfile.mkdtemp(prefix=f"{spec.name}-rank{here.rank}-"))
    context = StageContext(device=settings.device, workers=settings.workers,
                           resume_dir=cache.resume_dir(key, create=here.main), echo=settings.echo,
                           progress=settings.progress)
    started, clock = now(), time.perf_counter()
    try:
        metrics = _load(spec.run)(stage_params, upstream_dirs, staging, context) or {}
    except StageSkipped as skipped:
        cache.discard(staging)
        return Outcome(spec.name, key.entry, "skipped", reason=str(skipped))
    except BaseException:
        cache.discard(staging)  # nothing half-written is ever published; resume checkpoints stay
        raise
    seconds = time.perf_counter() - clock
    if not here.main:
        cache.discard(staging)
        return Outcome(spec.name, key.entry, "ran", reason=reason, seconds=seconds)
    (staging / "metrics.json").write_text(json.dumps(metrics, indent=1) + "\n", encoding="utf-8")
    manifest = Manifest(
        stage=spec.name, entry=key.entry, summary=spec.summary, version=spec.version,
        params=params_mod.as_dict(stage_params), key_params=key.params, upstream=key.upstream,
        fingerprint=key.fingerprint, versions=_versions(), started=started, finished=now(),
        seconds=round(seconds, 2), reason=reason, metrics=metrics)
    cache.publish(key, staging, manifest)
    cache.point_latest(spec.name, key.entry)
    return Outcome(spec.name, key.entry, "ran", reason=reason, seconds=seconds, metrics=metrics)


class DamagedEntry(Exception):
    """An upstream entry whose files no longer match its manifest; run_pipeline recomputes it."""

    def __init__(self, stage: str, folder: Path, problem: str):
        super().__init__(f"{stage}/{folder.name}: {problem}")
        self.stage, self.folder, self.problem = stage, folder, problem


def _why_run(cache: Cache, key) -> str:
    """Why `key` has to run: its own entry is damaged, or what changed since the stage's latest entry."""
    _, problem = cache.inspect(cache.entry_dir(key.stage, key.entry))
    return problem or explain_change(cache.latest(key.stage), key)


def _recompute(cache: Cache, damaged: DamagedEntry, settings: Settings) -> Path:
    """Run a damaged entry's stage again with the parameters and inputs its manifest records; its new folder."""
    spec = registry.stage(damaged.stage)
    text = (damaged.folder / MANIFEST).read_text(encoding="utf-8")
    recorded = Manifest.from_json(text)
    stage_params = params_mod.build(spec.params, spec.name, recorded.params)
    upstream = {name: cache.entry_dir(name, entry) for name, entry in recorded.upstream.items()}
    settings.echo(f"{damaged}: recomputing it")
    while True:
        try:
            outcome = run_stage(cache, spec, stage_params, upstream, settings, force=False, damaged=damaged.problem)
            return cache.entry_dir(spec.name, outcome.entry)
        except DamagedEntry as further_up:
            upstream[further_up.stage] = _recompute(cache, further_up, settings)


def source_entry(cache: Cache) -> Path:
    latest, problem = cache.inspect(cache.root / SOURCE_STAGE / LATEST)
    if problem:
        raise UsageError(f"the latest prepared image set in {cache.root} cannot be used ({problem}): run the same "
                         f"`pipeline {SOURCE_STAGE}` again to rebuild it")
    if latest is None:
        raise UsageError(f"no prepared image set in {cache.root}: run `pipeline {SOURCE_STAGE}` first "
                         f"(or `pipeline {SOURCE_STAGE} --source DIR` for your own images)")
    return cache.entry_dir(SOURCE_STAGE, latest.entry)


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
    here = distributed.world()
    settings = replace(settings, device=distributed.join(settings.device))
    # Under torchrun, rank 0 holds the lock and writes; the others read what it publishes, in step with it.
    with cache.locked(settings.echo) if here.main else contextlib.nullcontext():
        if here.main:
            cache.sweep_staging()
        published = {SOURCE_STAGE: source_entry(cache)}
        for spec in specs:
            skip = _skip_reason(spec, all_params, published)
            if skip:
                outcomes.append(Outcome(spec.name, "", "skipped", reason=skip))
                continue
            outcome = None
            while here.main or spec.distributed:
                try:
                    outcome = run_stage(cache, spec, all_params[spec.name], {n: published[n] for n in spec.upstream},
                                        settings, force=force and spec.name in tokens)
                    break
                except DamagedEntry as damaged:
                    if here.size > 1:  # the other ranks cannot follow rank 0 into another stage's re-run
                        raise UsageError(f"{damaged}: run `pipeline run` once in a single process to recompute it, "
                                         "then torchrun again") from None
                    published[damaged.stage] = _recompute(cache, damaged, settings)
            outcome = distributed.from_main(outcome)  # sent once rank 0 has published: all ranks go on alike
            outcomes.append(outcome)
            if outcome.status != "skipped":
                published[spec.name] = cache.entry_dir(spec.name, outcome.entry)
    distributed.leave()
    return outcomes


def run_source(source_params, settings: Settings, force: bool) -> Outcome:
    """`pipeline prepare`: build (or reuse) the source stage's entry, which every `pipeline run` reads."""
    cache = Cache(settings.outputs)
    with cache.locked(settings.echo):
        cache.sweep_staging()
        return run_stage(cache, registry.stage(SOURCE_STAGE), source_params, {}, settings, force)


@dataclass
class StageStatus:
    stage: str
    entry: str
    cached: bool
    reason: str  # why it would run (or why it would be skipped); "" when cached
    skipped: bool = False  # run would skip this stage (e.g. nothing to color for a color VAE)


def status(all_params: dict[str, Any], outputs: Path, tokens: list[str]) -> list[StageStatus]:
    """The key each stage `run --stages tokens` visits would get with these settings, whether it is cached, and if
    not, why it would run.

    Keys are computed, never trained: each stage's entry name follows from its parameters and its upstream
    entry names, so the whole chain can be predicted from the latest prepared set.
    """
    cache = Cache(outputs)
    latest_source = cache.latest(SOURCE_STAGE)
    if latest_source is None:
        return [StageStatus(SOURCE_STAGE, "", False, f"no prepared set: run `pipeline {SOURCE_STAGE}`")]
    entries = {SOURCE_STAGE: latest_source.entry}
    report = [StageStatus(SOURCE_STAGE, latest_source.entry, True, "")]
    for spec in plan(tokens):
        skip = _skip_reason(spec, all_params, entries)
        if skip:  # no key, nothing to run
            report.append(StageStatus(spec.name, "", False, skip, skipped=True))
            continue
        key = make_key(spec, all_params[spec.name], {name: entries[name] for name in spec.upstream})
        entries[spec.name] = key.entry
        cached = cache.lookup(key) is not None
        report.append(StageStatus(spec.name, key.entry, cached, "" if cached else _why_run(cache, key)))
    return report


@dataclass(frozen=True)
class Verified:
    stage: str
    entry: str
    problem: str  # why the entry is damaged; "" when it is sound
    hashed: bool  # False for an entry published before content hashes were recorded: only its sizes were checked


def verify(outputs: Path) -> list[Verified]:
    """`pipeline status --verify`: every entry folder, each file's content
    hash checked against its manifest. The next command that needs a damaged entry recomputes it. An entry
    published before content hashes were recorded has only its sizes checked, and says so."""
    cache = Cache(outputs)
    found = []
    for spec in registry.STAGES:
        folder = cache.root / spec.name
        if not folder.is_dir():
            continue
        for path in sorted(folder.iterdir()):
            if not path.name.startswith(".") and path.name != LATEST and path.is_dir() and not path.is_symlink():
                manifest, problem = cache.inspect(path, verify=True)
                hashed = manifest is None or bool(manifest.hashes) or not manifest.files
                found.append(Verified(spec.name, path.name, problem, hashed))
    return found


@dataclass
class Removal:
    stage: str
    entry: str
    bytes: int


def clean(outputs: Path, keep: int, dry_run: bool = False,
          echo: Callable[[str], None] = print) -> list[Removal]:
    """Remove all but the `keep` newest entries of each stage, never one that a kept downstream entry reads.

    Stages are visited downstream first, so by the time a stage is cleaned, every entry still depending on it
    is known. The entry each stage's `latest` points at is always kept.
    """
    cache = Cache(outputs)
    removed: list[Removal] = []
    needed: dict[str, set[str]] = {}
    with cache.locked(echo):  # says, as run does, whom it waits for
        for spec in reversed(registry.STAGES):
            entries = cache.entries(spec.name)
            latest = cache.latest(spec.name)
            kept = {m.entry for m in entries[:keep]} | needed.get(spec.name, set())
            if latest is not None:
                kept.add(latest.entry)
            for manifest in entries:
                if manifest.entry in kept:
                    for upstream, entry in manifest.upstream.items():
                        needed.setdefault(upstream, set()).add(entry)
                    continue
                removed.append(Removal(spec.name, manifest.entry, sum(manifest.files.values())))
                if not dry_run:
                    shutil.rmtree(cache.entry_dir(spec.name, manifest.entry))
    return removed


def edit(picture: Path, edits: list[tuple[str, float]], output: Path, settings: Settings) -> None:
    """`pipeline edit`: the stage that declares an edit entry point edits a user's picture with its latest entry.

    The entry point gets that entry and the upstream entries it was built from, by stage name."""
    spec = next((s for s in registry.STAGES if s.edit), None)
    if spec is None:
        raise UsageError("no stage declares an edit entry point, so `pipeline edit` has nothing to edit with")
    cache = Cache(settings.outputs)
    latest = cache.latest(spec.name)
    if latest is None:
        raise UsageError(f"no {spec.name} entry in {cache.root} to edit with: run `pipeline run --stages "
                         f"{spec.name}` first")
    inputs = {name: cache.entry_dir(name, entry) for name, entry in latest.upstream.items()}
    inputs[spec.name] = cache.entry_dir(spec.name, latest.entry)
    _load(spec.edit)(picture, inputs, edits, output, settings.device)
