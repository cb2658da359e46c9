"""Specification of `pipeline status` (predict, never train) and `pipeline clean` (never break what is kept).

Both commands read only keys and manifests, never what a stage wrote, so the training stages are replaced by
stand-ins that write a payload of known size: the runner, the cache, the keys and the manifests are the real ones,
and the tests take a second instead of minutes. The image set is really prepared (48 embedded faces, 12x12).
"""
from __future__ import annotations

import re
from pathlib import Path

import pytest
from click.testing import Result

from helpers import cli, latest_entry, read_manifest, replace_stage_entry, succeeded, summary_lines
from pipeline.cache import Cache
from stages.registry import STAGES, STAGE_NAMES

PREPARE = ("prepare", "--count", "48", "--size", "12")
BASE = ("--set", "vae.arch=fc", "--set", "vae.latent_dim=4", "--set", "vae.epochs=2", "--set", "colorize.epochs=1")
PAYLOAD = {"vae": 3 * 2**20, "colorize": 2**20, "vae_color": 2**19, "concepts": 2**18}  # bytes each entry writes
STATUS_LINE = re.compile(r"^(\w+)\s+(\S+)\s+(.*)$")


def _stand_in(stage_name: str):
    def run(params, inputs, out_dir, context):
        (out_dir / "payload.bin").write_bytes(b"\0" * PAYLOAD[stage_name])
        return {"headline": f"stand-in {stage_name}", "inputs": len(inputs)}
    return run


@pytest.fixture(autouse=True)
def stand_in_stages(monkeypatch):
    """Every training stage's entry point writes a payload instead of training (prepare stays real)."""
    for spec in STAGES:
        if spec.name != "prepare":
            replace_stage_entry(monkeypatch, spec, _stand_in(spec.name))


@pytest.fixture
def cache_of(prepared, copy_of):
    """cache_of(*runs) -> `outputs`: a copy of the prepared set, then each run's extra arguments, in order."""

    def make(*runs: tuple[str, ...]) -> Path:
        outputs = copy_of(prepared)
        for extra in runs:
            succeeded(cli(outputs, "run", *extra))
        return outputs

    return make


def status_of(outputs: Path, *args) -> dict[str, tuple[str, str]]:
    """stage -> (entry, state) as `pipeline status` prints them."""
    result = succeeded(cli(outputs, "status", *args))
    lines = {}
    for line in result.output.splitlines():
        match = STATUS_LINE.match(line)
        assert match and match.group(1) in STAGE_NAMES, f"unexpected line {line!r}"
        lines[match.group(1)] = (match.group(2), match.group(3))
    return lines


def entries(outputs: Path, stage_name: str) -> set[str]:
    return {m.entry for m in Cache(outputs).entries(stage_name)}


def snapshot(outputs: Path) -> dict[str, int]:
    return {str(p.relative_to(outputs)): p.lstat().st_size for p in outputs.rglob("*") if p.name != ".lock"}


# ----- status --------------------------------------------------------------------------------------------------------


def test_status_with_the_settings_of_the_last_run_says_every_stage_is_cached(cache_of):
    outputs = cache_of(("--stages", "vae,colorize,concepts", *BASE))

    lines = status_of(outputs, *BASE)

    assert list(lines) == list(STAGE_NAMES)
    for stage_name, (entry, state) in lines.items():
        assert state == "cached", lines
        assert entry == latest_entry(outputs, stage_name).name


def test_status_after_one_changed_parameter_names_it_and_says_downstream_reruns_because_vae_changed(cache_of):
    outputs = cache_of(("--stages", "vae,colorize,concepts", *BASE))
    old_vae = latest_entry(outputs, "vae").name

    lines = status_of(outputs, *BASE, "--set", "vae.latent_dim=3")

    new_vae = lines["vae"][0]
    assert new_vae.startswith("fc-z3-e2-") and new_vae != old_vae
    assert lines["vae"][1] == "would run: vae.latent_dim 4 -> 3"
    assert lines["prepare"][1] == "cached" and lines["colorize"][1] == "cached"
    for downstream in ("vae_color", "concepts"):
        assert lines[downstream][1] == f"would run: vae changed ({old_vae} -> {new_vae})", lines[downstream]


def test_status_predicts_exactly_what_run_then_does(cache_of):
    outputs = cache_of(("--stages", "vae,colorize,concepts", *BASE))
    changed = (*BASE, "--set", "vae.latent_dim=3")
    predicted = status_of(outputs, *changed)

    result = succeeded(cli(outputs, "run", "--stages", "vae,colorize,concepts", *changed))

    ran = summary_lines(result)
    for stage_name in ("vae", "colorize", "vae_color", "concepts"):
        entry, state = predicted[stage_name]
        verb = "cached" if state == "cached" else "ran"
        assert ran[stage_name].startswith(f"{stage_name}: {verb}"), ran[stage_name]
        assert latest_entry(outputs, stage_name).name == entry
    assert "because vae.latent_dim 4 -> 3" in ran["vae"]


def test_status_trains_nothing_and_changes_nothing(cache_of, monkeypatch):
    outputs = cache_of(("--stages", "vae,colorize,concepts", *BASE))
    before = snapshot(outputs)
    for spec in STAGES:
        replace_stage_entry(monkeypatch, spec, lambda *a, **k: pytest.fail("status ran a stage"))

    status_of(outputs, "--set", "vae.latent_dim=7", "--set", "colorize.epochs=5")

    assert snapshot(outputs) == before


def test_status_for_a_color_vae_says_the_color_stages_would_be_skipped_and_why(cache_of):
    outputs = cache_of(("--stages", "vae,colorize,concepts", *BASE))
    changed = (*BASE, "--set", "vae.channels=3")

    lines = status_of(outputs, *changed)
    ran = summary_lines(succeeded(cli(outputs, "run", "--stages", "vae,colorize,concepts", *changed)))

    assert lines["vae"][1] == "would run: vae.channels 1 -> 3"
    for stage_name in ("colorize", "vae_color", "concepts"):
        assert lines[stage_name][1].startswith("skipped (") and "vae.channels=3" in lines[stage_name][1], lines
        assert ran[stage_name].startswith(f"{stage_name}: skipped ("), "status agrees with run"


def test_status_before_anything_is_prepared_says_to_run_prepare(outputs):
    lines = status_of(outputs)

    assert lines == {"prepare": ("-", "would run: no prepared set: run `pipeline prepare`")}


# ----- clean ---------------------------------------------------------------------------------------------------------

FULL = ("--stages", "vae,colorize,concepts")
Z2, Z3 = ("--set", "vae.latent_dim=2"), ("--set", "vae.latent_dim=3")


def removal_lines(result: Result, verb: str) -> set[str]:
    return {line[len(verb) + 1:] for line in result.output.splitlines() if line.startswith(verb + " ")}


def test_clean_keep_1_removes_the_older_chain_and_reports_the_space_freed(cache_of):
    outputs = cache_of((*FULL, *BASE, *Z2), (*FULL, *BASE, *Z3))
    old = {stage_name: entries(outputs, stage_name) - {latest_entry(outputs, stage_name).name}
           for stage_name in STAGE_NAMES}
    assert [len(old[s]) for s in STAGE_NAMES] == [0, 1, 0, 1, 1], "the z2 vae and what was built on it"
    freed = sum(sum(Cache(outputs).manifest(outputs / s / e).files.values()) for s in old for e in old[s])

    result = succeeded(cli(outputs, "clean", "--keep", "1"))

    assert removal_lines(result, "removed") == {f"{s}/{e}" for s in old for e in old[s]}
    assert f"freed {freed / 2**20:.1f} MiB in 3 entries" in result.output
    assert freed >= PAYLOAD["vae"] + PAYLOAD["vae_color"] + PAYLOAD["concepts"]
    for stage_name in STAGE_NAMES:
        assert entries(outputs, stage_name) == {latest_entry(outputs, stage_name).name}
        for entry in old[stage_name]:
            assert not (outputs / stage_name / entry).exists()


def test_clean_keeps_an_older_entry_that_a_kept_downstream_entry_was_built_from(cache_of):
    """z2 runs in full; then only the VAE is retrained with z3, so the one vae_color and concepts entries still
    read the z2 VAE: it is not the newest, yet it must stay."""
    outputs = cache_of((*FULL, *BASE, *Z2), ("--stages", "vae", *BASE, *Z3))
    z2 = read_manifest(latest_entry(outputs, "vae_color"))["inputs"]["upstream"]["vae"]
    assert z2.startswith("fc-z2-") and latest_entry(outputs, "vae").name.startswith("fc-z3-")
    before = snapshot(outputs)

    result = succeeded(cli(outputs, "clean", "--keep", "1"))

    assert removal_lines(result, "removed") == set()
    assert "freed 0.0 MiB in 0 entries" in result.output
    assert snapshot(outputs) == before
    assert Cache(outputs).manifest(outputs / "vae" / z2) is not None


def test_clean_removes_the_older_entry_once_nothing_kept_reads_it(cache_of):
    """As above, but the color stages then catch up with z3: nothing kept reads the z2 VAE any more."""
    outputs = cache_of((*FULL, *BASE, *Z2), ("--stages", "vae", *BASE, *Z3))
    z2 = read_manifest(latest_entry(outputs, "vae_color"))["inputs"]["upstream"]["vae"]
    succeeded(cli(outputs, "run", *FULL, *BASE, *Z3))

    result = succeeded(cli(outputs, "clean", "--keep", "1"))

    assert f"vae/{z2}" in removal_lines(result, "removed")
    assert not (outputs / "vae" / z2).exists()
    assert entries(outputs, "vae") == {latest_entry(outputs, "vae").name}


def test_clean_keeps_the_entry_latest_points_at_even_when_it_is_not_the_newest(cache_of):
    outputs = cache_of((*FULL, *BASE, *Z2), (*FULL, *BASE, *Z3), (*FULL, *BASE, *Z2))  # z2 again: cached
    z2 = latest_entry(outputs, "vae").name
    assert z2.startswith("fc-z2-") and Cache(outputs).entries("vae")[0].entry != z2, "z3 finished last"

    result = succeeded(cli(outputs, "clean", "--keep", "0"))

    assert (outputs / "vae" / z2).is_dir()
    assert {line.split("/")[0] for line in removal_lines(result, "removed")} == {"vae", "vae_color", "concepts"}
    for stage_name in STAGE_NAMES:
        assert entries(outputs, stage_name) == {latest_entry(outputs, stage_name).name}
    lines = status_of(outputs, *BASE, *Z2)
    assert all(state == "cached" for _, state in lines.values()), "nothing the current settings use was removed"


def test_clean_dry_run_lists_the_same_removals_and_deletes_nothing(cache_of):
    outputs = cache_of((*FULL, *BASE, *Z2), (*FULL, *BASE, *Z3))
    before = snapshot(outputs)
    page = (outputs / "index.html").read_text()

    dry = succeeded(cli(outputs, "clean", "--keep", "1", "--dry-run"))

    assert snapshot(outputs) == before and (outputs / "index.html").read_text() == page
    would = removal_lines(dry, "would remove")
    assert len(would) == 3 and re.search(r"^would free \d+\.\d MiB in 3 entries$", dry.output, re.M)
    real = succeeded(cli(outputs, "clean", "--keep", "1"))
    assert removal_lines(real, "removed") == would
    assert dry.output.splitlines()[-1].replace("would free", "freed") in real.output


def test_clean_rewrites_the_page_without_the_removed_entries(cache_of):
    outputs = cache_of((*FULL, *BASE, *Z2), (*FULL, *BASE, *Z3))

    result = succeeded(cli(outputs, "clean", "--keep", "1"))

    page = (outputs / "index.html").read_text()
    for removed in removal_lines(result, "removed"):
        assert removed not in page
    for target in re.findall(r"(?:href|src)='([^'#][^']*)'", page):
        assert (outputs / target).exists(), target
