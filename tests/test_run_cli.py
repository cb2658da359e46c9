"""Specification of `pipeline run`'s summary and report: each stage, whether it ran or was reused, and where;
and of `--nproc N`, which hands the same run to torchrun.

One small VAE + conv colorizer run on 12x12 faces is shared; tests that change the cache work on a copy.
"""
from __future__ import annotations

import re
from pathlib import Path

import pytest
from click.testing import Result

from helpers import assert_one_clear_error_line, cli, latest_entry, replace_stage_entry, succeeded, summary_lines
from pipeline import runner
from pipeline.cli import DEFAULT_STAGES
from stages import distributed

PREPARE = ("prepare", "--count", "48", "--size", "12")
PARAMS = ("--set", "vae.latent_dim=3", "--set", "vae.epochs=1", "--set", "vae.batch_size=16",
          "--set", "colorize.arch=conv", "--set", "colorize.epochs=1", "--set", "colorize.batch_size=16")
RUN = ("run", "--stages", "vae,colorize", *PARAMS)
PLANNED = [spec.name for spec in runner.plan(["vae", "colorize"])]  # upstream first, followers included


def summary(result: Result) -> dict[str, str]:
    """stage -> its summary line, in the order printed; each stage at most once."""
    return summary_lines(result, each_once=True)


def folder_named_in(line: str) -> Path:
    match = re.search(r" -> (\S+)$", line)
    assert match, f"no folder in {line!r}"
    return Path(match.group(1))


@pytest.fixture(scope="module")
def first_run(tmp_path_factory) -> tuple[Path, Result]:
    outputs = tmp_path_factory.mktemp("run") / "outputs"
    succeeded(cli(outputs, *PREPARE))
    return outputs, succeeded(cli(outputs, *RUN))


@pytest.fixture
def copy_of_first_run(first_run, copy_of) -> Path:
    return copy_of(first_run[0])


@pytest.fixture
def no_training(monkeypatch):
    """Every planned stage's entry point fails the test if called."""
    for spec in runner.plan(["vae", "colorize"]):
        replace_stage_entry(monkeypatch, spec,
                            lambda *a, _name=spec.name, **k: pytest.fail(f"{_name} ran although cached"))


def test_summary_lists_each_stage_as_ran_with_its_folder(first_run):
    outputs, result = first_run

    lines = summary(result)

    assert {"vae", "colorize", "vae_color"} <= set(PLANNED)
    assert list(lines) == PLANNED, result.output
    for stage, line in lines.items():
        assert line.startswith(f"{stage}: ran in ") and "because nothing cached yet" in line, line
        folder = folder_named_in(line)
        assert folder == outputs / stage / folder.name
        assert folder.resolve() == latest_entry(outputs, stage)
        assert (folder / "manifest.json").is_file()


def test_run_writes_the_index_page_and_says_where_it_is(first_run):
    outputs, result = first_run

    assert f"results: {outputs}/ (open {outputs / 'index.html'})" in result.output
    page = (outputs / "index.html").read_text()
    for stage in PLANNED:
        assert f"{stage}/{latest_entry(outputs, stage).name}/" in page
    images = re.findall(r"src='([^']+)'", page)
    assert {"samples.png", "test_colorized.png", "samples_color.png"} <= {Path(src).name for src in images}
    assert all((outputs / src).is_file() for src in images), "every image on the page exists"


def test_identical_rerun_lists_each_stage_as_cached_with_its_folder(copy_of_first_run, pipeline, no_training):
    outputs = copy_of_first_run
    (outputs / "index.html").unlink()

    result = succeeded(pipeline(*RUN))

    lines = summary(result)
    assert list(lines) == PLANNED, result.output
    for stage, line in lines.items():
        entry = latest_entry(outputs, stage)
        assert line == f"{stage}: cached (key {entry.name}) -> {outputs / stage / entry.name}"
    assert (outputs / "index.html").is_file(), "the page is rewritten even when nothing ran"
    assert "class='tag cached'" in (outputs / "index.html").read_text()


def test_force_reruns_only_the_named_stage(copy_of_first_run, pipeline):
    outputs = copy_of_first_run
    before = latest_entry(outputs, "vae")

    result = succeeded(pipeline("run", "--stages", "vae", "--force", *PARAMS))

    lines = summary(result)
    assert list(lines) == ["vae"], result.output
    assert lines["vae"].startswith("vae: ran in ") and "because --force" in lines["vae"]
    assert latest_entry(outputs, "vae") == before, "same parameters, same entry, rebuilt in place"


def test_summary_reports_a_skipped_stage_and_why(copy_of_first_run, pipeline):
    result = succeeded(pipeline(*RUN, "--set", "vae.channels=3"))

    lines = summary(result)
    assert lines["vae"].startswith("vae: ran")
    assert lines["vae_color"].startswith("vae_color: skipped (") and "vae.channels=3" in lines["vae_color"]


def test_nproc_launches_the_same_run_through_torchrun_with_every_other_option_unchanged(monkeypatch, tmp_path):
    launched = []
    monkeypatch.setattr(distributed, "launch", lambda nproc, arguments: launched.append((nproc, arguments)) or 0)
    (tmp_path / "p.toml").write_text("[vae]\nwidth = 8\n")
    given = ["run", "--stages", "vae", "--set", "vae.epochs=1", "--set", "vae.latent_dim=3",
             "--config", str(tmp_path / "p.toml"), "--device", "cpu", "--force", "--outputs", str(tmp_path / "out")]

    succeeded(cli(None, *given[:1], "--nproc", "3", *given[1:]))
    succeeded(cli(None, "run", "--nproc", "2"))

    assert launched == [(3, given), (2, ["run", "--stages", DEFAULT_STAGES, "--device", "auto", "--outputs",
                                         "outputs"])], "defaults spelled out, so every rank runs what was asked"


def test_nproc_below_one_is_refused_in_one_line(tmp_path):
    assert_one_clear_error_line(cli(tmp_path, "run", "--nproc", "0"), "--nproc", "0")


def test_nproc_checks_the_parameters_before_it_launches_anything(monkeypatch, tmp_path):
    monkeypatch.setattr(distributed, "launch", lambda *a: pytest.fail("launched despite a wrong --set"))

    assert_one_clear_error_line(cli(tmp_path, "run", "--nproc", "2", "--set", "vae.no_such=1"), "vae.no_such")
