"""Specification of the stage cache: what is reused, what re-runs and why, and what is never trusted."""
from __future__ import annotations

import json
import os
import threading
from dataclasses import dataclass, replace
from pathlib import Path

import pytest

import stages.prepare
from helpers import cli, latest_entry, read_manifest, shapes_picture
from pipeline import runner
from pipeline.cache import Cache
from stages.params import param
from stages.registry import StageSpec

# ----- a fake stage, called through the real runner ------------------------------------------------------------------


@dataclass(frozen=True)
class FakeParams:
    value: int = param(1, "what the fake stage writes")


CALLS: list[int] = []


def fake_writes(params, inputs, out_dir, context):
    CALLS.append(params.value)
    (out_dir / "result.txt").write_text(f"value {params.value}\n")
    return {"headline": f"wrote {params.value}"}


def fake_writes_then_raises(params, inputs, out_dir, context):
    CALLS.append(params.value)
    (out_dir / "result.txt").write_text("half of it")
    raise RuntimeError("disk on fire")


def fake_writes_then_is_interrupted(params, inputs, out_dir, context):
    CALLS.append(params.value)
    (out_dir / "result.txt").write_text("half of it")
    raise KeyboardInterrupt


FAKE = StageSpec(name="fake", version=1, params=FakeParams, upstream=(), run=f"{__name__}:fake_writes",
                 describe=lambda p: f"v{p.value}", summary="a fake stage for tests")
DOWNSTREAM = StageSpec(name="down", version=1, params=FakeParams, upstream=("fake",), run=f"{__name__}:fake_writes",
                       describe=lambda p: "down", summary="a fake downstream stage for tests")


@pytest.fixture
def cache(tmp_path) -> Cache:
    CALLS.clear()
    return Cache(tmp_path / "outputs")


def run_fake(cache: Cache, spec: StageSpec = FAKE, value: int = 1, force: bool = False) -> runner.Outcome:
    settings = runner.Settings(outputs=cache.root, echo=lambda line: None)
    return runner.run_stage(cache, spec, FakeParams(value), {}, settings, force)


def fake_key(value: int = 1):
    return runner.make_key(FAKE, FakeParams(value), {})


# ----- reuse, re-run, force (through the runner) ---------------------------------------------------------------------


def test_same_params_run_the_stage_once_then_reuse_its_entry(cache):
    first = run_fake(cache)
    second = run_fake(cache)

    assert (first.status, second.status) == ("ran", "cached")
    assert CALLS == [1]
    assert second.entry == first.entry
    assert second.metrics == {"headline": "wrote 1"}
    assert (cache.entry_dir("fake", first.entry) / "result.txt").read_text() == "value 1\n"


def test_force_runs_the_stage_again_and_says_force(cache):
    run_fake(cache)

    forced = run_fake(cache, force=True)

    assert forced.status == "ran"
    assert forced.reason == "--force"
    assert CALLS == [1, 1]
    assert cache.lookup(fake_key()) is not None


def test_bumped_stage_version_runs_again_and_says_so(cache):
    first = run_fake(cache)

    bumped = run_fake(cache, replace(FAKE, version=2))

    assert (bumped.status, bumped.reason) == ("ran", "stage code version 1 -> 2")
    assert bumped.entry != first.entry and CALLS == [1, 1]


def test_changed_param_runs_again_and_names_the_param(cache):
    run_fake(cache, value=1)

    changed = run_fake(cache, value=2)

    assert changed.status == "ran"
    assert changed.reason == "fake.value 1 -> 2"
    assert CALLS == [1, 2]


@pytest.mark.parametrize("failing_entry", ["fake_writes_then_raises", "fake_writes_then_is_interrupted"])
def test_stage_failing_mid_write_leaves_nothing_trusted_and_the_next_run_recomputes(cache, failing_entry):
    failing = replace(FAKE, run=f"{__name__}:{failing_entry}")

    with pytest.raises((RuntimeError, KeyboardInterrupt)):
        run_fake(cache, failing)

    stage_folder = cache.root / "fake"
    assert cache.lookup(fake_key()) is None
    assert cache.latest("fake") is None
    assert cache.entries("fake") == []
    assert not (stage_folder / "latest").exists()
    assert not list(stage_folder.glob(".staging-*"))
    assert not cache.entry_dir("fake", fake_key().entry).exists()

    again = run_fake(cache)  # same key, working stage code

    assert again.status == "ran"
    assert again.reason == "nothing cached yet"
    assert CALLS == [1, 1]
    assert (cache.entry_dir("fake", again.entry) / "result.txt").read_text() == "value 1\n"


# ----- what is trusted ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("damage", ["delete", "truncate"])
def test_entry_whose_listed_file_was_deleted_or_truncated_is_not_trusted(cache, damage):
    outcome = run_fake(cache)
    folder = cache.entry_dir("fake", outcome.entry)
    assert cache.lookup(fake_key()) is not None

    if damage == "delete":
        (folder / "result.txt").unlink()
    else:
        (folder / "result.txt").write_text("val")

    assert cache.lookup(fake_key()) is None
    assert cache.entries("fake") == []
    rerun = run_fake(cache)
    assert rerun.status == "ran"
    assert CALLS == [1, 1]
    assert cache.lookup(fake_key()) is not None


@pytest.mark.parametrize("manifest", [
    None,  # killed before the manifest was written
    "{ not json",
    json.dumps({"stage": "fake", "files": {"result.txt": 8}}),  # no "complete": true
    json.dumps({"stage": "fake", "files": {"result.txt": 8}, "complete": False}),
])
def test_folder_without_a_complete_manifest_is_not_trusted(cache, manifest):
    key = fake_key()
    folder = cache.entry_dir("fake", key.entry)
    folder.mkdir(parents=True)
    (folder / "result.txt").write_text("value 1\n")
    if manifest is not None:
        (folder / "manifest.json").write_text(manifest)

    assert cache.lookup(key) is None
    assert cache.entries("fake") == []
    assert run_fake(cache).status == "ran"
    assert CALLS == [1]


def test_published_manifest_lists_every_file_with_its_size_and_is_complete(cache):
    outcome = run_fake(cache)

    manifest = read_manifest(cache.entry_dir("fake", outcome.entry))

    assert manifest["complete"] is True
    entry = cache.entry_dir("fake", outcome.entry)
    metrics_size = (entry / "metrics.json").stat().st_size
    assert manifest["files"] == {"result.txt": len("value 1\n"), "metrics.json": metrics_size}
    assert json.loads((entry / "metrics.json").read_text()) == manifest["metrics"]
    assert manifest["params"] == {"value": 1}
    assert manifest["reason"] == "nothing cached yet"


def test_leftover_staging_folders_of_killed_runs_are_swept_by_the_next_command(pipeline, outputs):
    leftover = outputs / "prepare" / ".staging-embedded-n40-s30-0123456789-99999"
    leftover.mkdir(parents=True)
    (leftover / "gray.npy").write_bytes(b"half")

    assert pipeline("prepare", "--count", "40").exit_code == 0

    assert not leftover.exists()
    assert not list((outputs / "prepare").glob(".staging-*"))


# ----- keys chain ----------------------------------------------------------------------------------------------------


def test_downstream_key_changes_when_its_upstream_entry_changes():
    before = runner.make_key(DOWNSTREAM, FakeParams(1), {"fake": "v1-aaaaaaaaaa"})
    same = runner.make_key(DOWNSTREAM, FakeParams(1), {"fake": "v1-aaaaaaaaaa"})
    after = runner.make_key(DOWNSTREAM, FakeParams(1), {"fake": "v2-bbbbbbbbbb"})

    assert before.entry == same.entry
    assert after.entry != before.entry


def test_downstream_reruns_when_upstream_reruns_and_says_upstream_changed(cache):
    settings = runner.Settings(outputs=cache.root, echo=lambda line: None)
    upstream_1 = cache.entry_dir("fake", run_fake(cache, value=1).entry)
    upstream_2 = cache.entry_dir("fake", run_fake(cache, value=2).entry)

    first = runner.run_stage(cache, DOWNSTREAM, FakeParams(7), {"fake": upstream_1}, settings, False)
    reused = runner.run_stage(cache, DOWNSTREAM, FakeParams(7), {"fake": upstream_1}, settings, False)
    rerun = runner.run_stage(cache, DOWNSTREAM, FakeParams(7), {"fake": upstream_2}, settings, False)

    assert (first.status, reused.status, rerun.status) == ("ran", "cached", "ran")
    assert rerun.reason == f"fake changed ({upstream_1.name} -> {upstream_2.name})"
    assert read_manifest(cache.entry_dir("down", rerun.entry))["inputs"]["upstream"] == {"fake": upstream_2.name}


# ----- the prepare command and the cache -----------------------------------------------------------------------------


@pytest.fixture
def prepare_calls(monkeypatch):
    """Counts the real prepare stage's runs (the runner looks `stages.prepare:run` up at call time)."""
    calls = []
    real = stages.prepare.run

    def counting(*args, **kwargs):
        calls.append(args[0])
        return real(*args, **kwargs)

    monkeypatch.setattr(stages.prepare, "run", counting)
    return calls


def test_rerunning_prepare_with_the_same_params_is_a_cache_hit(pipeline, outputs, prepare_calls):
    first = pipeline("prepare", "--count", "40")
    entry = latest_entry(outputs)

    second = pipeline("prepare", "--count", "40")

    assert first.exit_code == 0 and second.exit_code == 0, second.output
    assert "prepare: ran" in first.stdout
    assert f"prepare: cached (key {entry.name})" in second.stdout
    assert "40 kept" in second.stdout
    assert len(prepare_calls) == 1
    assert latest_entry(outputs) == entry


@pytest.mark.parametrize("change, why", [
    (["--count", "50"], "because prepare.count 40 -> 50"),
    (["--test-fraction", "0.25"], "because prepare.test_fraction 0.1 -> 0.25"),
])
def test_changed_param_reruns_prepare_and_says_why(pipeline, outputs, prepare_calls, change, why):
    pipeline("prepare", "--count", "40")
    old_entry = latest_entry(outputs)

    result = pipeline("prepare", "--count", "40", *change)

    assert result.exit_code == 0, result.output
    assert "prepare: ran" in result.stdout
    assert why in result.stdout
    assert len(prepare_calls) == 2
    assert latest_entry(outputs) != old_entry
    assert old_entry.is_dir()  # the earlier entry stays cached


def test_changed_seed_reruns_prepare_and_says_why(pipeline, outputs, prepare_calls):
    pipeline("prepare", "--count", "40")

    result = pipeline("prepare", "--count", "40", "--seed", "1")

    assert "ran" in result.stdout and "prepare.seed 0 -> 1" in result.stdout
    assert [p.seed for p in prepare_calls] == [0, 1]


def test_force_rebuilds_an_identical_cached_set(pipeline, outputs, prepare_calls):
    pipeline("prepare", "--count", "40")
    entry = latest_entry(outputs)

    result = pipeline("prepare", "--count", "40", "--force")

    assert result.exit_code == 0, result.output
    assert "because --force" in result.stdout
    assert len(prepare_calls) == 2
    assert latest_entry(outputs) == entry
    assert read_manifest(entry)["reason"] == "--force"


def test_deleted_file_in_prepared_entry_makes_prepare_rebuild_it(pipeline, outputs, prepare_calls):
    pipeline("prepare", "--count", "40")
    entry = latest_entry(outputs)
    (entry / "gray.npy").unlink()

    result = pipeline("prepare", "--count", "40")

    assert "prepare: ran" in result.stdout
    assert len(prepare_calls) == 2
    assert (entry / "gray.npy").is_file()
    assert Cache(outputs).manifest(entry) is not None


def test_changed_source_file_reruns_prepare_and_says_source_changed(pipeline, make_folder, prepare_calls):
    folder = make_folder(6)
    pipeline("prepare", "--source", folder, "--count", "all")
    shapes_picture(100).save(folder / "new.png")

    result = pipeline("prepare", "--source", folder, "--count", "all")

    assert "because source files changed" in result.stdout
    assert len(prepare_calls) == 2
    assert "7 kept" in result.stdout


def test_latest_points_at_the_most_recently_used_entry(pipeline, outputs):
    pipeline("prepare", "--count", "40")
    seed_0 = latest_entry(outputs)
    pipeline("prepare", "--count", "40", "--seed", "1")
    seed_1 = latest_entry(outputs)

    pipeline("prepare", "--count", "40")  # a cache hit is a use too

    link = outputs / "prepare" / "latest"
    assert link.is_symlink()
    assert os.readlink(link) == seed_0.name
    assert seed_1 != seed_0 and seed_1.is_dir()


def test_outputs_option_chooses_the_cache_root_over_the_env_var(tmp_path):
    root = tmp_path / "elsewhere"

    result = cli(root, "prepare", "--count", "40", env={"PIPELINE_OUTPUTS": str(tmp_path / "from-env")})

    assert result.exit_code == 0, result.output
    assert (root / "prepare" / "latest" / "gray.npy").is_file()
    assert not (tmp_path / "from-env").exists()


def test_pipeline_outputs_env_var_chooses_the_cache_root(pipeline, tmp_path, outputs):
    root = tmp_path / "from-env"

    result = pipeline("prepare", "--count", "40", env={"PIPELINE_OUTPUTS": str(root)})

    assert result.exit_code == 0, result.output
    assert (root / "prepare" / "latest" / "gray.npy").is_file()
    assert not outputs.exists()


def test_default_cache_root_is_outputs_in_the_working_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("PIPELINE_OUTPUTS", raising=False)

    result = cli(None, "prepare", "--count", "40")  # no --outputs

    assert result.exit_code == 0, result.output
    assert (tmp_path / "outputs" / "prepare" / "latest" / "gray.npy").is_file()


# ----- concurrent commands -----------------------------------------------------------------------------------------


def test_second_command_waits_for_the_cache_lock_and_says_so(tmp_path):
    root = tmp_path / "outputs"
    first_waits: list[str] = []
    second_waits: list[str] = []
    second_has_lock = threading.Event()

    def second_command():
        with Cache(root).locked(second_waits.append):
            second_has_lock.set()

    with Cache(root).locked(first_waits.append):
        other = threading.Thread(target=second_command, daemon=True)
        other.start()
        assert not second_has_lock.wait(0.5), "the second command got the lock while the first held it"
        assert second_waits == [f"waiting for pipeline pid {os.getpid()} to finish with {root} ..."]

    assert second_has_lock.wait(5), "the second command never got the lock after the first released it"
    other.join(5)
    assert first_waits == []
    assert Path(root / ".lock").read_text() == ""  # released: no holder recorded


def test_world_size_enters_the_key_only_for_models_that_normalise_over_the_batch(monkeypatch):
    from stages import registry
    from stages.params import VaeParams

    def keys():
        return {arch: runner.make_key(registry.stage("vae"), VaeParams(arch=arch), {"prepare": "p"}).entry
                for arch in ("fc", "conv")}

    alone = keys()
    monkeypatch.setenv("WORLD_SIZE", "2")
    two_ranks = keys()

    assert two_ranks["fc"] == alone["fc"], "two ranks train exactly what one process does: reuse it"
    assert two_ranks["conv"] != alone["conv"], "BatchNorm over each rank's rows trains another model"
