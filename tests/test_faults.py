"""Specification of what survives a kill: real `pipeline` processes, real signals, every wait bounded in time.

A killed command must leave nothing alive and nothing locked: its decode workers die with it, SIGTERM is handled
like Ctrl-C, and the next command on the same outputs folder runs at once.
"""
from __future__ import annotations

import contextlib
import fcntl
import itertools
import json
import shutil
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def start_pipeline(*args: str) -> subprocess.Popen:
    """`python -m pipeline.cli ARGS` of this checkout, in its own session so a test can signal it alone.

    One BLAS/OpenMP thread: the matrix compares a re-run's metrics with the clean run's exactly, and a threaded
    GEMM may split its sums differently from run to run on a loaded machine (seen once in five CI runs)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "MKL_DYNAMIC": "FALSE"}
    return subprocess.Popen([sys.executable, "-m", "pipeline.cli", *args], env=env, start_new_session=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def run_pipeline(*args: str, timeout: float) -> subprocess.CompletedProcess:
    process = start_pipeline(*args)
    try:
        output, _ = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        kill_tree(process.pid)
        output, _ = process.communicate()
        pytest.fail(f"`pipeline {' '.join(args)}` did not finish within {timeout} s:\n{output}")
    return subprocess.CompletedProcess(process.args, process.returncode, output)


def children_of(pid: int) -> set[int]:
    """Live processes whose parent is `pid` (from /proc)."""
    found = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid and fields[0] != "Z":
                found.add(int(entry.name))
    return found


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def kill_all(pids) -> None:
    """Clean up after a failed test: exactly these processes, by pid."""
    for pid in pids:
        if alive(pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def kill_tree(pid: int) -> None:
    kill_all([*children_of(pid), pid])


def wait_until(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout} s waiting until {what}")
        time.sleep(0.05)


# ----- item 1: decode workers never outlive the command, and never hold the lock -------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("sent", [signal.SIGKILL, signal.SIGTERM], ids=["kill-9", "sigterm"])
def test_killing_prepare_takes_its_workers_down_and_frees_the_cache(tmp_path, sent):
    outputs = str(tmp_path / "outputs")
    process = start_pipeline("prepare", "--count", "20000", "--workers", "2", "--outputs", outputs)
    workers: set[int] = set()
    try:
        wait_until(lambda: len(children_of(process.pid)) >= 2, 30, "prepare has started its decode workers")
        workers = children_of(process.pid)
        time.sleep(1.5)  # the workers are drawing faces and filling the result pipe

        os.kill(process.pid, sent)
        process.wait(timeout=20)

        wait_until(lambda: not any(alive(pid) for pid in workers), 10, "the orphaned workers have exited")
        after = run_pipeline("clean", "--outputs", outputs, timeout=30)
        assert after.returncode == 0, after.stdout
        assert "waiting for" not in after.stdout
    finally:
        kill_all([*workers, *children_of(process.pid), process.pid])


def test_sigterm_is_handled_like_ctrl_c_with_one_line_and_nothing_kept(tmp_path):
    outputs = tmp_path / "outputs"
    process = start_pipeline("prepare", "--count", "20000", "--workers", "1", "--outputs", str(outputs))
    try:
        wait_until(lambda: (outputs / "prepare").is_dir() and any((outputs / "prepare").glob(".staging-*")), 30,
                   "prepare is writing its staging folder")
        time.sleep(0.5)
        process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=20)
    finally:
        kill_tree(process.pid)

    assert process.returncode == 130, output
    assert "interrupted: nothing half-finished was kept" in output
    assert "Traceback" not in output
    assert list((outputs / "prepare").glob(".staging-*")) == []


def test_an_interrupt_that_python_drops_in_a_finalizer_is_raised_again():
    """Python drops what a finalizer or a fork hook raises; a SIGTERM landing there once let prepare run on to the
    end (3 of 20 tries, in logging's after-fork hook). The CLI raises such an interrupt again at the next step."""
    from pipeline import cli

    class RaisesWhenFinalized:
        def __del__(self):
            raise KeyboardInterrupt

    before = sys.unraisablehook, signal.getsignal(signal.SIGTERM)
    reached_the_end = False
    try:
        cli.main.callback()
        with pytest.raises(KeyboardInterrupt):
            RaisesWhenFinalized()  # finalized at once; its KeyboardInterrupt is dropped
            time.sleep(5)  # the interrupt comes back within milliseconds
            reached_the_end = True
    finally:
        sys.unraisablehook = before[0]
        signal.signal(signal.SIGTERM, before[1])
    assert not reached_the_end


def test_a_forked_child_of_a_dead_command_does_not_hold_the_cache_lock(tmp_path):
    """The command holds the lock, forks a child that lingers, then dies by kill -9: the lock is free at once."""
    holder = subprocess.run([sys.executable, "-c", f"""
import os, signal, time
from pipeline.cache import Cache
with Cache({str(tmp_path)!r}).locked(print):
    child = os.fork()
    if child == 0:
        null = os.open(os.devnull, os.O_WRONLY)
        os.dup2(null, 1), os.dup2(null, 2)  # lets the test's read of the output end
        time.sleep(30)
        os._exit(0)
    print(child, flush=True)
    os.kill(os.getpid(), signal.SIGKILL)
"""], env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True, text=True, timeout=30)
    lingering = int(holder.stdout.split()[0])
    try:
        assert alive(lingering)
        with open(tmp_path / ".lock", "a+") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)  # BlockingIOError if the child still held it
    finally:
        kill_all([lingering])


# ----- the fault matrix: kill -9 and SIGTERM of the main process at three points of each stage -----------------------


TIMING = ("seconds", "per_second", "headline")  # metrics that measure time (the headline quotes images/s)
TINY_VAE = ("--set", "vae.epochs=4", "--set", "vae.latent_dim=2", "--set", "vae.width=2")
COMMANDS = {
    "prepare": ("prepare", "--count", "1500", "--workers", "2"),
    "vae": ("run", "--stages", "vae", *TINY_VAE),
    "colorize": ("run", "--stages", "colorize", *TINY_VAE, "--set", "colorize.arch=conv",
                 "--set", "colorize.epochs=4"),
}
STARTS_FROM = {"prepare": None, "vae": "prepared", "colorize": "vae"}  # the outputs folder each command starts from
SMALL_SET = ("prepare", "--count", "40")  # what the training stages of the matrix train on


def staging_holds(name: str):
    return lambda outputs, stage: any((folder / name).exists() for folder in outputs.glob(f"{stage}/.staging-*"))


def resume_holds(name: str):
    return lambda outputs, stage: any(outputs.glob(f"{stage}/.resume/*/{name}"))


STARTING, TRAINING, FIGURES = (("starting", staging_holds(".")), ("training", resume_holds("checkpoint.pt")),
                               ("drawing figures", staging_holds("history.json")))
DECODING, ARRAYS, PREVIEW = (("decoding", staging_holds(".")), ("writing the arrays", staging_holds("color.npy")),
                             ("writing the preview", staging_holds("preview.png")))
STRIKES = {  # (where, which signal), in the order a run passes them: each signal at every point of prepare; the
    # training stages, whose runs cost seconds each, alternate signals over their three points
    "prepare": [(point, sent) for point in (DECODING, ARRAYS, PREVIEW) for sent in (signal.SIGKILL, signal.SIGTERM)],
    "vae": [(STARTING, signal.SIGKILL), (TRAINING, signal.SIGTERM), (FIGURES, signal.SIGKILL)],
    "colorize": [(STARTING, signal.SIGTERM), (TRAINING, signal.SIGKILL), (FIGURES, signal.SIGTERM)],
}


def timeless(metrics: dict) -> dict:
    return {name: value for name, value in metrics.items() if not any(word in name for word in TIMING)}


def entry_metrics(outputs: Path, stage: str) -> dict:
    return timeless(json.loads(((outputs / stage / "latest").resolve() / "metrics.json").read_text()))


@pytest.fixture(scope="module")
def clean_runs(tmp_path_factory) -> dict[str, tuple[float, dict, Path]]:
    """Each command of the matrix run once without faults: its wall time, its metrics, and a copy of the outputs
    folder it started from."""
    base = tmp_path_factory.mktemp("clean")
    assert run_pipeline(*SMALL_SET, "--outputs", str(base / "prepared"), timeout=120).returncode == 0
    found = {}
    for stage, command in COMMANDS.items():
        before = base / f"{stage}-before"
        if STARTS_FROM[stage]:
            shutil.copytree(base / STARTS_FROM[stage], before, symlinks=True)
        else:
            before.mkdir()
        shutil.copytree(before, base / stage, symlinks=True)
        started = time.monotonic()
        done = run_pipeline(*command, "--outputs", str(base / stage), timeout=300)
        assert done.returncode == 0, done.stdout
        found[stage] = (time.monotonic() - started, entry_metrics(base / stage, stage), before)
    return found


@pytest.mark.slow
@pytest.mark.parametrize("stage", COMMANDS)
def test_a_killed_command_run_again_finishes_with_the_clean_runs_metrics(clean_runs, tmp_path, stage):
    normal_seconds, clean_metrics, before = clean_runs[stage]
    for (point, reached), sent in STRIKES[stage]:
        where = f"{signal.Signals(sent).name} while {point}"
        outputs = tmp_path / where.replace(" ", "-")
        shutil.copytree(before, outputs, symlinks=True)
        process = start_pipeline(*COMMANDS[stage], "--outputs", str(outputs))
        workers: set[int] = set()
        try:
            for tick in itertools.count():
                if reached(outputs, stage) or process.poll() is not None:
                    break
                if tick % 20 == 0:  # a scan of /proc costs far more than a look at the outputs folder
                    workers |= children_of(process.pid)
                time.sleep(0.005)
            assert process.poll() is None, f"{stage} finished before it was {point}"
            process.send_signal(sent)
            process.communicate(timeout=30)
            wait_until(lambda: not any(alive(pid) for pid in workers), 10, "the killed command's workers exited")
        finally:
            kill_all([*workers, *children_of(process.pid), process.pid])

        started = time.monotonic()
        again = run_pipeline(*COMMANDS[stage], "--outputs", str(outputs), timeout=normal_seconds + 60)

        assert again.returncode == 0, again.stdout
        assert time.monotonic() - started <= normal_seconds + 60, where
        assert "waiting for" not in again.stdout
        assert entry_metrics(outputs, stage) == clean_metrics, where
        assert not list(outputs.glob(f"{stage}/.staging-*"))
