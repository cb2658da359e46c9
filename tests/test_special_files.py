"""Specification of what a folder source does with files that are not plain pictures: symlink loops, dangling
links, named pipes, devices and huge sparse files are each skipped with a reason and counted; nothing hangs, reads
without limit, or aborts the run. Every prepare here runs as a real process with a time limit."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from helpers import shapes_picture
from stages import sources
from stages.sources import read_images

REPO = Path(__file__).resolve().parents[1]
SIZE = 30


def prepare_in_a_process(folder: Path, outputs: Path, timeout: float = 60) -> subprocess.CompletedProcess:
    """`pipeline prepare --source FOLDER --count all` as its own process: a hang fails the test, not the suite."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "pipeline.cli", "prepare", "--source", str(folder), "--count", "all",
                           "--workers", "2", "--outputs", str(outputs)],
                          env=env, capture_output=True, text=True, timeout=timeout)


@pytest.fixture
def hostile_folder(tmp_path) -> Path:
    """6 good PNGs, a good one reached through a symlink, and every kind of special file named like a picture."""
    folder = tmp_path / "faces"
    folder.mkdir()
    for index in range(6):
        shapes_picture(index).save(folder / f"{index}.png")
    (folder / "linked.png").symlink_to(folder / "0.png")
    (folder / "loop-a.png").symlink_to(folder / "loop-b.png")
    (folder / "loop-b.png").symlink_to(folder / "loop-a.png")
    (folder / "self.png").symlink_to(folder / "self.png")
    (folder / "dangling.jpg").symlink_to(folder / "gone.jpg")
    os.mkfifo(folder / "pipe.png")
    (folder / "zeros.png").symlink_to("/dev/zero")
    with open(folder / "sparse.png", "wb") as sparse:
        sparse.truncate(1536 * 2**20)  # 1.5 GB that take no disk
    return folder


SPECIAL = {"loop-a.png": "unreadable file (symlink loop)", "loop-b.png": "unreadable file (symlink loop)",
           "self.png": "unreadable file (symlink loop)",
           "dangling.jpg": "unreadable file (broken symlink: its target is missing)",
           "pipe.png": "not a regular file (a named pipe)", "zeros.png": "not a regular file (a character device)",
           "sparse.png": "file larger than 256 MiB"}


def test_special_files_are_each_skipped_with_their_reason(hostile_folder):
    items = {item.name: item for item in read_images(hostile_folder, SIZE, workers=1)}

    assert {name: items[name].skip_reason for name in SPECIAL} == SPECIAL
    assert items["linked.png"].skip_reason is None
    assert items["linked.png"].content_hash == items["0.png"].content_hash


def test_folder_files_have_the_size_limit_of_archive_members(tmp_path, monkeypatch):
    monkeypatch.setattr(sources, "_MAX_MEMBER_BYTES", 1000)
    noise = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    Image.fromarray(noise).save(tmp_path / "big.png")  # 12 KB: noise does not compress

    [item] = read_images(tmp_path, SIZE, workers=1)

    assert item.skip_reason == "file larger than 1000 bytes"


def test_prepare_of_a_folder_of_special_files_finishes_and_counts_them(hostile_folder, tmp_path):
    done = prepare_in_a_process(hostile_folder, tmp_path / "outputs")

    assert done.returncode == 0, done.stdout + done.stderr
    entry = (tmp_path / "outputs" / "prepare" / "latest").resolve()
    metrics = json.loads((entry / "metrics.json").read_text())
    assert metrics["skipped"] == len(SPECIAL)
    assert metrics["skipped_by_reason"] == {"unreadable file (symlink loop)": 3,
                                            "unreadable file (broken symlink: its target is missing)": 1,
                                            "not a regular file (a named pipe)": 1,
                                            "not a regular file (a character device)": 1,
                                            "file larger than 256 MiB": 1}
    assert metrics["read"] == 7 + len(SPECIAL)  # the 6 pictures and the link to one of them, then the specials


def test_a_source_that_is_a_named_pipe_is_refused_in_one_line(tmp_path):
    os.mkfifo(tmp_path / "images.npy")

    done = prepare_in_a_process(tmp_path / "images.npy", tmp_path / "outputs", timeout=30)

    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [f"Error: {tmp_path / 'images.npy'} is not a regular file or a "
                                                "folder: point --source at a folder, archive or array of images"]
