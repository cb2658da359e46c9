"""Specification of the small mistakes a user makes on the command line: each is refused in one line before any
work, and the tool's own messages say what really happened (a broken pipe, a full disk, a non-array file)."""
from __future__ import annotations

import errno
import os
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from helpers import assert_one_clear_error_line, cli, succeeded
from pipeline.cache import Cache

REPO = Path(__file__).resolve().parents[1]


# ----- prepare ---------------------------------------------------------------------------------------------------


def test_count_zero_is_an_error_that_says_to_write_all(pipeline, outputs):
    result = pipeline("prepare", "--count", "0")

    assert_one_clear_error_line(result, "--count 0", "all")
    assert not outputs.exists()


def test_test_fraction_zero_is_refused_by_prepare_not_later_by_run(pipeline, outputs):
    result = pipeline("prepare", "--count", "20", "--test-fraction", "0")

    assert_one_clear_error_line(result, "prepare.test_fraction", "at least")
    assert not outputs.exists()


@pytest.mark.parametrize("workers", ["0", "-1", "1000"])
def test_workers_out_of_bounds_is_refused(pipeline, outputs, workers):
    result = pipeline("prepare", "--count", "20", "--workers", workers)

    assert_one_clear_error_line(result, "--workers")
    assert not outputs.exists()


def test_a_single_image_saved_as_npy_says_to_add_a_leading_axis(pipeline, outputs, tmp_path):
    np.save(tmp_path / "face.npy", np.zeros((30, 30, 3), np.uint8))

    result = pipeline("prepare", "--source", tmp_path / "face.npy", "--count", "all")

    assert_one_clear_error_line(result, "face.npy", "(30, 30, 3)", "leading axis", "(N, H, W, C)")


def test_a_file_named_npy_that_is_no_numpy_array_says_so(pipeline, outputs, tmp_path):
    (tmp_path / "table.npy").write_text("a,b\n1,2\n")

    result = pipeline("prepare", "--source", tmp_path / "table.npy", "--count", "all")

    line = assert_one_clear_error_line(result, "table.npy", "not a NumPy array file")
    assert "pickle" not in line


def test_an_object_array_npy_says_it_holds_python_objects(pipeline, outputs, tmp_path):
    np.save(tmp_path / "objects.npy", np.array([{"a": 1}, None], dtype=object), allow_pickle=True)

    result = pipeline("prepare", "--source", tmp_path / "objects.npy", "--count", "all")

    assert_one_clear_error_line(result, "objects.npy", "Python objects")


# ----- run ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("stages", ["", " , "])
def test_an_empty_stage_list_is_an_error_naming_the_stages(pipeline, stages):
    result = pipeline("run", "--stages", stages)

    assert_one_clear_error_line(result, "--stages", "vae", "colorize")


# ----- edit --------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("args, mentions", [
    (["-o", "strip.txt"], ("strip.txt", ".png")),
    (["--amount", "nan"], ("--amount", "nan")),
    (["--amount", "inf"], ("--amount", "inf")),
    (["--amount", "1e30"], ("--amount", "10")),
    (["--amount", "1", "--amount", "2"], ("--amount", "one")),
])
def test_edit_refuses_bad_output_names_and_amounts_before_any_work(pipeline, tmp_path, args, mentions):
    """There is no concepts entry in this outputs folder: the refusal must come before the command looks for one."""
    result = pipeline("edit", tmp_path / "me.png", "--concept", "hair=blonde", *args)

    line = assert_one_clear_error_line(result, *mentions)
    assert "no concepts entry" not in line


def test_edit_accepts_one_amount_per_concept(pipeline, tmp_path):
    result = pipeline("edit", tmp_path / "me.png", "--concept", "hair=blonde", "--concept", "eyes=blue",
                      "--amount", "1", "--amount", "-2")

    assert_one_clear_error_line(result, "no concepts entry")  # got past the checks, to the missing entry


# ----- what the tool says about its own failures -------------------------------------------------------------------


def test_status_into_a_closed_pipe_exits_quietly(tmp_path):
    succeeded(cli(tmp_path / "outputs", "prepare", "--count", "20"))
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    process = subprocess.Popen([sys.executable, "-m", "pipeline.cli", "status", "--outputs", str(tmp_path / "outputs")],
                               env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    process.stdout.close()  # as `| head -0` would: every write is a broken pipe

    _, errors = process.communicate(timeout=60)

    assert errors.decode() == ""
    assert process.returncode == 1


@pytest.mark.parametrize("error", [
    OSError(errno.ENOSPC, "No space left on device", "/data/out/color.npy"),
    OSError("100000 requested and 4096 written"),  # what numpy's tofile says on a full disk
], ids=["errno", "numpy"])
def test_a_full_disk_is_named_as_such(pipeline, monkeypatch, error):
    from pipeline import runner

    def full(*args, **kwargs):
        raise error
    monkeypatch.setattr(runner, "run_source", full)

    result = pipeline("prepare", "--count", "20")

    line = assert_one_clear_error_line(result, "no space left on device", "free space and run again")
    assert "requested" not in line


def test_pointing_latest_at_a_folder_in_its_way_leaves_no_temporary_link(tmp_path):
    cache = Cache(tmp_path)
    (tmp_path / "vae" / "latest").mkdir(parents=True)

    with pytest.raises(OSError):
        cache.point_latest("vae", "conv-z10-e30-0123456789")

    assert sorted(p.name for p in (tmp_path / "vae").iterdir()) == ["latest"]


def test_clean_says_whom_it_waits_for_as_run_does(tmp_path):
    from pipeline import runner

    held, release, said = threading.Event(), threading.Event(), []

    def hold_the_lock():
        with Cache(tmp_path).locked(print):
            held.set()
            release.wait(10)
    holder = threading.Thread(target=hold_the_lock)
    holder.start()
    assert held.wait(10)
    threading.Timer(0.5, release.set).start()

    runner.clean(tmp_path, 1, echo=said.append)

    holder.join()
    assert said == [f"waiting for pipeline pid {os.getpid()} to finish with {tmp_path} ..."]
