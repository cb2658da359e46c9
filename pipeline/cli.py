"""The `pipeline` command: parse, call the runner, print the summary. No logic lives here.

Nothing heavy is imported at module level, so `pipeline --help` answers instantly; torch loads only when a
stage that trains actually runs.
"""
from __future__ import annotations

import _thread
import contextlib
import errno
import functools
import math
import os
import re
import signal
import sys
import threading
from pathlib import Path

import click

from pipeline import params as params_mod
from pipeline import runner
from pipeline.params import UsageError
from stages.contract import StageError
from stages import distributed
from stages.params import PrepareParams
from stages import registry
from stages.registry import SOURCE_STAGE

DEFAULT_STAGES = "vae,colorize,concepts"
_UNKNOWN_TOTAL_STRIDE = 256  # progress steps per redraw when a stage cannot know its total in advance
_MAX_WORKERS = 4 * (os.cpu_count() or 1)  # more decoding processes than this only cost memory
_MAX_AMOUNT = 10.0  # concept edits beyond 10x the concept vector leave the space the VAE decodes
_PICTURE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")  # what `edit` can write
_SHORT_WRITE = re.compile(r"\d+ requested and \d+ written")  # numpy's words for a write the disk cut short


class _Bar:
    """click's progress bar behind the small interface stages use (`advance(steps, status)`).

    Steps are passed on in strides of 1/200 of the total (of 256 when the total is unknown, as for a folder still
    being decoded): redrawing for each of 20,000 decoded images cost more main-process time than the hashing and
    bookkeeping of those images together."""

    def __init__(self, total: int, label: str):
        self._bar = click.progressbar(length=total, label=label, file=sys.stderr, show_eta=True,
                                      item_show_func=lambda status: status or "")
        self._stride, self._pending = max(1, total // 200) if total else _UNKNOWN_TOTAL_STRIDE, 0

    def __enter__(self):
        self._bar.__enter__()
        return self

    def __exit__(self, *exc):
        if self._pending:
            self._bar.update(self._pending)
        return self._bar.__exit__(*exc)

    def advance(self, steps: int = 1, status: str | None = None) -> None:
        self._pending += steps
        if status is not None or self._pending >= self._stride:
            self._bar.update(self._pending, status)
            self._pending = 0


def _warn(message: str) -> None:
    click.echo(message, err=True)


def _settings(outputs: Path, device: str = "auto", workers: int | None = None) -> runner.Settings:
    return runner.Settings(outputs=outputs, device=device, workers=workers, echo=_warn, progress=_Bar)


outputs_option = click.option(
    "--outputs", type=click.Path(file_okay=False, path_type=Path), envvar="PIPELINE_OUTPUTS",
    default=Path("outputs"), show_default=True, help="Cache folder (or set PIPELINE_OUTPUTS).")


@contextlib.contextmanager
def _user_errors():
    """Turn the mistakes a user can fix into one clean line and a non-zero exit, never a traceback."""
    try:
        yield
    except (UsageError, StageError) as error:
        raise click.ClickException(str(error)) from None
    except BrokenPipeError:  # `pipeline status | head -1`: the reader has all it wanted
        null = os.open(os.devnull, os.O_WRONLY)
        os.dup2(null, sys.stdout.fileno())  # the interpreter's last flush must not fail again
        sys.exit(1)
    except OSError as error:  # disk full, no permission on --outputs, ...: the file and the reason, nothing more
        if error.errno == errno.ENOSPC or _SHORT_WRITE.search(str(error)):
            where = f" while writing {error.filename}" if error.filename else ""
            raise click.ClickException(f"no space left on device{where}: free space and run again") from None
        where = f"{error.filename}: " if error.filename else ""
        raise click.ClickException(f"{where}{error.strerror or error}: check the disk and the --outputs folder") \
            from None
    except KeyboardInterrupt:
        click.echo("\ninterrupted: nothing half-finished was kept; run the same command again to resume.", err=True)
        sys.exit(130)


def _print_outcome(outcome: runner.Outcome, outputs: Path) -> None:
    headline = outcome.metrics.get("headline", "")
    where = outputs / outcome.stage / outcome.entry
    if outcome.status == "skipped":
        click.echo(f"{outcome.stage}: skipped ({outcome.reason})")
        return
    if outcome.status == "cached":
        click.echo(f"{outcome.stage}: cached (key {outcome.entry}) -> {where}")
    else:
        click.echo(f"{outcome.stage}: ran in {outcome.seconds:.1f} s because {outcome.reason} -> {where}")
    if headline:
        click.echo(f"  {headline}")


def _write_report(outputs: Path, outcomes: list[runner.Outcome]) -> None:
    from pipeline import report

    page = report.write_report(outputs, {o.stage: o for o in outcomes})
    click.echo(f"results: {outputs}/ (open {page})")


_INTERRUPT_AGAIN_AFTER_SECONDS = 0.01  # long enough for the hook to have returned


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """Learn to draw small faces: prepare an image set, train a VAE on gray faces, colorize them.

    \b
    pipeline prepare                      build the 30x30 gray + color set (embedded faces, or --source DIR)
    pipeline run --stages vae,colorize    train or reuse each stage; results land in outputs/
    pipeline run                          all stages, concept vectors included
    pipeline status                       what is cached, and what would re-run and why
    """
    # torch reads this at its first allocation, and no command has loaded torch yet: big tensors (StackNN's
    # weight gradient, made afresh each step) then come in 2 MB pages (docs/decisions.md). A user's setting wins.
    os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")
    # Nor numpy: one OpenBLAS thread per process. prepare's decode pool is already one process per core, and
    # BLAS threads on top spin against each other: the Lanczos resize (two small matrix products) took a hundred
    # times as long (docs/decisions.md). Every numpy product the stages do is that small.
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _terminated)
        if getattr(sys.unraisablehook, "func", None) is not _interrupt_again_if_dropped:
            sys.unraisablehook = functools.partial(_interrupt_again_if_dropped, sys.unraisablehook)


def _terminated(signum, frame) -> None:
    """SIGTERM (`kill PID`, a scheduler's stop) takes the Ctrl-C path: workers stopped, nothing half-written kept."""
    raise KeyboardInterrupt


def _interrupt_again_if_dropped(report_otherwise, unraisable) -> None:
    """Python drops an exception raised inside a finalizer, a weakref callback or a fork hook ("Exception ignored
    in ..."). A Ctrl-C or SIGTERM that lands there would be lost and the run would go on (seen: in logging's
    after-fork hook while prepare forked its workers), so it is raised again a moment later, from a timer thread:
    raised from this hook, it would be dropped once more."""
    if isinstance(unraisable.exc_value, KeyboardInterrupt):
        threading.Timer(_INTERRUPT_AGAIN_AFTER_SECONDS, _thread.interrupt_main).start()
        return
    report_otherwise(unraisable)


def _parse_count(value: str) -> int:
    """A positive number, or `all` (0 inside, meaning every usable image)."""
    if value.strip().lower() == "all":
        return 0
    try:
        count = int(value)
    except ValueError:
        raise click.BadParameter(f"{value!r} is not a number or 'all'") from None
    if count == 0:
        raise UsageError("--count 0 would keep no image: give a positive number, or --count all for every image")
    return count


def _parse_crop(value: str) -> float:
    kind, _, fraction = value.partition(":")
    try:
        if kind == "center" and fraction:
            return float(fraction)
    except ValueError:
        pass
    raise click.BadParameter(f"{value!r}: write it as center:F, e.g. center:0.5 keeps the central half")


@main.command()
@click.option("--source", type=click.Path(path_type=Path), default=None,
              help="Image folder, .zip/.tar[.gz] archive, .npy/.npz array or IDX file. Default: embedded faces.")
@click.option("--labels", type=click.Path(path_type=Path), default=None, help="CSV of tags: file,<tag columns...>.")
@click.option("--count", default=str(PrepareParams.count), show_default=True,
              help="Images to keep, or 'all'.")
@click.option("--size", type=int, default=PrepareParams.size, show_default=True, help="Side of the square images.")
@click.option("--crop", default="center:1", show_default=True, help="center:F keeps the central fraction F.")
@click.option("--seed", type=int, default=PrepareParams.seed, show_default=True, help="Seed of choice and split.")
@click.option("--test-fraction", type=float, default=PrepareParams.test_fraction, show_default=True,
              help="Fraction held out for testing.")
@click.option("--dedupe/--no-dedupe", default=PrepareParams.dedupe, show_default=True,
              help="Drop near-duplicate images.")
@click.option("--workers", type=click.IntRange(1, _MAX_WORKERS), default=None,
              help="Decoding processes (default: one per core).")
@click.option("--force", is_flag=True, help="Rebuild even if an identical set is cached.")
@outputs_option
def prepare(source, labels, count, size, crop, seed, test_fraction, dedupe, workers, force, outputs) -> None:
    """Build the image set: gray + color arrays, a seeded train/test split and a preview grid."""
    with _user_errors():
        overrides = {"source": str(source or ""), "labels": str(labels or ""), "count": _parse_count(count),
                     "size": size, "crop": _parse_crop(crop), "seed": seed, "test_fraction": test_fraction,
                     "dedupe": dedupe}
        prepare_params = params_mod.build(PrepareParams, SOURCE_STAGE, overrides)
        outcome = runner.run_source(prepare_params, _settings(outputs, workers=workers), force)
        _print_outcome(outcome, outputs)
        _write_report(outputs, [outcome])


def _param_tables() -> dict[str, type]:
    """Stage name -> its parameter dataclass, for every stage `pipeline run` can run."""
    return {spec.name: spec.params for spec in registry.STAGES if spec.name != SOURCE_STAGE}


def _stage_params(sets: tuple[str, ...], config: Path | None) -> dict:
    tables = _param_tables()
    layers = [params_mod.read_config(config, tables)] if config else []
    layers.append(params_mod.parse_sets(sets, tables))
    merged = params_mod.merge(*layers)
    return {name: params_mod.build(cls, name, merged.get(name, {}), _warn) for name, cls in tables.items()}


def _params_listing() -> str:
    lines = []
    for name, cls in _param_tables().items():
        lines.extend(params_mod.describe(cls, name))
    return "\n".join(lines)


@main.command(epilog="\b\nStage parameters (--set STAGE.PARAM=VALUE, or [STAGE] tables in --config):\n"
                     + _params_listing())
@click.option("--stages", default=DEFAULT_STAGES, show_default=True,
              help="Comma-separated stages; upstream stages are added (and reused if cached).")
@click.option("--set", "sets", multiple=True, metavar="STAGE.PARAM=VALUE", help="Override a parameter (repeatable).")
@click.option("--config", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="TOML file with [vae] / [colorize] tables; --set wins over it.")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True,
              help="Where to train (auto = cuda when available).")
@click.option("--force", is_flag=True, help="Re-run the named stages even if cached.")
@click.option("--nproc", type=click.IntRange(min=1), default=1, show_default=True,
              help="Train with N processes on this machine: the same run, launched through torchrun.")
@outputs_option
def run(stages, sets, config, device, force, nproc, outputs) -> None:
    """Train (or reuse from the cache) the VAE and colorizer on the prepared set."""
    with _user_errors():
        tokens = [t.strip() for t in stages.split(",") if t.strip()]
        if not tokens:
            runnable = ", ".join(spec.name for spec in registry.STAGES if spec.name != SOURCE_STAGE)
            raise UsageError(f"--stages {stages!r} names no stage: give one or more of {runnable}")
        all_params = _stage_params(sets, config)
        runner.plan(tokens)  # reject unknown stage names before any work
        if nproc > 1:  # checked here first, so a mistake is one line rather than one per rank
            if distributed.world().size > 1:
                raise UsageError("--nproc starts torchrun itself: under torchrun, leave --nproc out")
            sys.exit(distributed.launch(nproc, _given_options(click.get_current_context(), leave_out="nproc")))
        outcomes = runner.run_pipeline(tokens, all_params, _settings(outputs, device), force)
        if distributed.world().main:  # one torchrun rank reports: rank 0, which wrote the cache
            _summarize(outcomes, outputs)
    distributed.end_rank()


def _summarize(outcomes: list[runner.Outcome], outputs: Path) -> None:
    """What ran, what came from the cache, where the results are, and the report page."""
    for outcome in outcomes:
        _print_outcome(outcome, outputs)
    by_status = {status: [o.stage for o in outcomes if o.status == status] for status in ("ran", "cached", "skipped")}
    click.echo("summary: " + "; ".join(f"{status} {', '.join(names)}" for status, names in by_status.items()
                                       if names) + f" in {sum(o.seconds for o in outcomes):.0f} s")
    _write_report(outputs, outcomes)


def _given_options(context: click.Context, leave_out: str) -> list[str]:
    """The command line that reproduces this command's parsed options (defaults spelled out), without one."""
    arguments = [context.info_name]
    for option in context.command.params:
        value, flag = context.params[option.name], max(option.opts, key=len)
        if option.name == leave_out or value is None:
            continue
        if option.is_flag:
            arguments += [flag] if value else option.secondary_opts[:1]
        else:
            arguments += [text for item in (value if option.multiple else [value]) for text in (flag, str(item))]
    return arguments


@main.command(name="status")
@click.option("--stages", default=DEFAULT_STAGES, show_default=True, help="Stages as you would pass to run.")
@click.option("--set", "sets", multiple=True, metavar="STAGE.PARAM=VALUE", help="Parameters as you would pass to run.")
@click.option("--config", type=click.Path(dir_okay=False, path_type=Path), default=None, help="TOML file as for run.")
@click.option("--verify", is_flag=True, help="Also check every cached file against its recorded content hash.")
@outputs_option
def show_status(stages, sets, config, verify, outputs) -> None:
    """One line per stage: the key these settings give, whether it is cached, and if not, why it would run."""
    with _user_errors():
        tokens = [t.strip() for t in stages.split(",") if t.strip()]
        for line in runner.status(_stage_params(sets, config), outputs, tokens):
            state = ("cached" if line.cached else f"skipped ({line.reason})" if line.skipped
                     else f"would run: {line.reason}")
            click.echo(f"{line.stage:10} {line.entry or '-':40} {state}")
        if verify:
            checked = runner.verify(outputs)
            for item in checked:
                if not item.hashed:
                    click.echo(f"sizes only: {item.stage}/{item.entry}: published before content hashes were "
                               "recorded")
            damaged = [item for item in checked if item.problem]
            for item in damaged:
                click.echo(f"damaged: {item.stage}/{item.entry}: {item.problem}")
            if damaged:
                raise click.ClickException(f"{len(damaged)} of {len(checked)} entries damaged: the next command "
                                           "that needs one recomputes it")
            click.echo(f"verified: all {len(checked)} entries match their manifests")


@main.command()
@click.option("--keep", type=click.IntRange(min=0), default=1, show_default=True,
              help="Newest entries to keep per stage (entries that kept ones depend on are kept too).")
@click.option("--dry-run", is_flag=True, help="Only say what would be removed.")
@outputs_option
def clean(keep, dry_run, outputs) -> None:
    """Remove old cache entries, keeping the newest N per stage and everything they depend on."""
    with _user_errors():
        removed = runner.clean(outputs, keep, dry_run, echo=_warn)
        for item in removed:
            click.echo(f"{'would remove' if dry_run else 'removed'} {item.stage}/{item.entry}")
        freed = sum(item.bytes for item in removed)
        click.echo(f"{'would free' if dry_run else 'freed'} {freed / 2**20:.1f} MiB in {len(removed)} entries")
        if not dry_run and removed:
            _write_report(outputs, [])


def _parse_concept(value: str) -> str:
    if "=" not in value:
        raise click.BadParameter(f"{value!r}: write it as TAG=VALUE, e.g. hair=blonde")
    return value


def _check_picture_output(output: Path) -> None:
    if output.suffix.lower() not in _PICTURE_SUFFIXES:
        raise UsageError(f"-o {output}: name a picture file ending in {', '.join(_PICTURE_SUFFIXES)}, e.g. "
                         "edited.png")


def _checked_amounts(amounts: list[float], concepts: int) -> list[float]:
    """One amount for all concepts, or one per concept, each finite and within +-10."""
    if len(amounts) not in (1, concepts):
        raise UsageError(f"{len(amounts)} --amount values for {concepts} --concept: give one amount for all, "
                         "or one per concept, in order")
    for amount in amounts:
        if not math.isfinite(amount) or abs(amount) > _MAX_AMOUNT:
            raise UsageError(f"--amount {amount}: give a number between {-_MAX_AMOUNT:g} and {_MAX_AMOUNT:g}")
    return amounts * concepts if len(amounts) == 1 else amounts


@main.command()
@click.argument("picture", type=click.Path(path_type=Path))
@click.option("--concept", "concepts", multiple=True, required=True,
              callback=lambda context, option, values: [_parse_concept(v) for v in values],
              help="A concept to add, e.g. hair=blonde (repeatable).")
@click.option("--amount", "amounts", multiple=True, type=float,
              help="How far to move along each --concept, -10 to 10: one for all, or one per concept (default 1.5).")
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), default=Path("edited.png"),
              show_default=True, help="Where to write the strip: input | reconstruction | edited | colored.")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
@outputs_option
def edit(picture, concepts, amounts, output, device, outputs) -> None:
    """Edit your own picture along concept vectors (hair=blonde, eyes=blue, direction=left, ...)."""
    with _user_errors():
        _check_picture_output(output)
        amounts = _checked_amounts(list(amounts) or [1.5], len(concepts))
        pairs = list(zip(concepts, amounts))
        runner.edit(picture, pairs, output, _settings(outputs, device))
        click.echo(f"wrote {output}: input | reconstruction | edited gray | edited color")


@main.command(name="params")
def list_params() -> None:
    """List every stage parameter with its default and meaning."""
    click.echo(_params_listing())


if __name__ == "__main__":  # pragma: no cover
    main()
