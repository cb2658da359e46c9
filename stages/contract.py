"""What every stage promises and gets: the run signature, the context, the two exceptions, the declaration.

A stage's `run(params, inputs, out_dir, context)` reads only the upstream entry folders in `inputs` (stage name
-> folder), writes only into `out_dir`, and returns its metrics as a JSON-able dict; the runner saves them as
metrics.json and in the manifest. This module imports no torch, so the tool can plan, key and report without
loading a model.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, ContextManager, Protocol

LISTED_FIGURES = "figures.json"  # figures a stage can only name once it has run (one per concept, say)


class StageSkipped(Exception):
    """Raised by a stage that has nothing to do for these inputs; its message says why, for the summary."""


class StageError(Exception):
    """A problem the user can fix (bad data, a diverged run); its message is one line saying what and how."""


class Progress(Protocol):
    def advance(self, steps: int = 1, status: str | None = None) -> None: ...


@dataclass(frozen=True)
class StageContext:
    """What the tool hands a stage besides its data: settings that never change results, and ways to talk."""

    device: str  # "cpu", "cuda" or "auto"
    workers: int | None  # worker processes for decoding; None = one per core
    resume_dir: Path  # survives an interrupted run of this exact key; the stage keeps checkpoints here
    echo: Callable[[str], None]  # one line to the user (warnings, notes)
    progress: Callable[[int, str], ContextManager[Progress]]  # progress(total_steps, label)


@dataclass(frozen=True)
class Figure:
    """A picture a stage's entry shows on the report page, in declaration order; missing files are not shown."""

    file: str  # relative to the entry folder
    caption: str  # what a person needs to read it


@dataclass(frozen=True)
class StageSpec:
    """One stage, declared: everything the runner, the cache and the report need, and nothing they compute.

    `run`, `edit` and `fingerprint` name functions as "module:function"; each is imported only when called.
    """

    name: str  # CLI token, module, outputs/<name>/: one spelling everywhere
    version: int  # bump when the stage's outputs change meaning, so old cache entries stop matching
    params: type
    upstream: tuple[str, ...]
    run: str  # run(params, inputs, out_dir, context) -> metrics
    describe: Callable[[object], str]  # short human-readable prefix of the cache folder name
    summary: str  # one line for the manifest and the report: what the folder holds
    figures: tuple[Figure, ...] = ()  # shown first; a stage may list more in LISTED_FIGURES (see write_figures)
    follows: tuple[str, ...] = ()  # run automatically whenever all of these stages run
    fingerprint: str = ""  # fingerprint(params) -> str over files read from outside the cache, if any
    skip_reason: Callable[[dict], str] | None = None  # all stage params -> why this stage has nothing to do, or ""
    edit: str = ""  # edit(picture, inputs, edits, output, device): `pipeline edit` with this stage's entry
    distributed: bool = False  # under torchrun every rank runs it (it trains in DDP: stages.training.fit, ...)
    # params -> True when its model normalises over the batch (BatchNorm) or draws per-row randomness of its own
    # (dropout): N ranks then train a different model than one process, so the world size enters the cache key
    batch_statistics: Callable[[object], bool] | None = None


@dataclass(frozen=True)
class Comparison:
    """A report section putting models side by side, shown when their latest entries read one prepared set.

    Each column is one model: its stage first, then stages whose entries add files to it (its colorer); a file is
    taken from the first of them that has it, and a colorer's entry only if it was made from that model's entry.
    With `variants`, the columns are instead cached entries of one stage that differ in those parameters.
    """

    title: str
    columns: tuple[tuple[str, ...], ...]  # e.g. (("vae", "vae_color"), ("gan", "gan_color"))
    side_by_side: tuple[Figure, ...]  # one row per figure, the models next to each other
    stacked: tuple[Figure, ...]  # the models one above the other (wide grids)
    metrics: tuple[str, ...]  # table rows, a column per model; a row no model has is left out
    # parameters of the one stage in `columns`: then a column per combination of their values, each the newest
    # entry with it that read the same prepared set as the stage's latest (e.g. colorize's arch and loss)
    variants: tuple[str, ...] = ()


def write_figures(out_dir: Path, figures: list[Figure]) -> None:
    """Declare figures whose files depend on the data (LISTED_FIGURES); the report shows them after the fixed ones."""
    (out_dir / LISTED_FIGURES).write_text(json.dumps([f.__dict__ for f in figures], indent=1), encoding="utf-8")


def read_figures(entry: Path) -> list[Figure]:
    """The figures an entry listed with `write_figures`, or none if it listed none (or the list is unreadable)."""
    try:
        listed = json.loads((entry / LISTED_FIGURES).read_text(encoding="utf-8"))
        return [Figure(str(f["file"]), str(f["caption"])) for f in listed]
    except (OSError, ValueError, TypeError, KeyError):
        return []
