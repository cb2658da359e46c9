"""Specification of a hard crash: `kill -9` of a `pipeline run` in the middle of training leaves nothing trusted
behind, and running the same command again resumes and publishes a correct entry."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from helpers import cli, latest_entry, metrics_of, succeeded
from pipeline.cache import Cache

PREPARE = ("prepare", "--count", "48", "--size", "12", "--test-fraction", "0.4")
EPOCHS = 150  # tiny epochs: long enough to be caught mid-training, short enough to finish the re-run quickly
RUN = ("run", "--stages", "vae", "--set", "vae.arch=fc", "--set", "vae.latent_dim=2", "--set", f"vae.epochs={EPOCHS}",
       "--set", "vae.batch_size=16")
DEADLINE_SECONDS = 120


@pytest.mark.slow
def test_kill_9_during_training_then_the_same_command_resumes_and_publishes(tmp_path):
    outputs = tmp_path / "outputs"
    succeeded(cli(outputs, *PREPARE))
    repository = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": str(repository)}
    process = subprocess.Popen([sys.executable, "-m", "pipeline.cli", *RUN, "--outputs", str(outputs)], env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + DEADLINE_SECONDS
        while not list((outputs / "vae" / ".resume").glob("*/checkpoint.pt")):
            assert process.poll() is None, "training ended before a resume checkpoint was seen"
            assert time.monotonic() < deadline, "no resume checkpoint in time"
            time.sleep(0.01)
        os.kill(process.pid, signal.SIGKILL)
        assert process.wait(timeout=30) == -signal.SIGKILL
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()

    assert Cache(outputs).entries("vae") == [] and not (outputs / "vae" / "latest").exists()

    again = succeeded(cli(outputs, *RUN))

    assert "vae: resuming from epoch" in again.output and "\nvae: ran" in again.output
    entry = latest_entry(outputs, "vae")
    assert Cache(outputs).manifest(entry) is not None
    assert metrics_of(entry)["epochs"] == EPOCHS
    assert list((outputs / "vae").glob(".staging-*")) == [], "the killed run's half-written folder is swept"
    assert not list((outputs / "vae" / ".resume").iterdir()), "publishing removes the resume checkpoint"
