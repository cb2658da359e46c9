"""Shared fixtures: one torch thread, small generated image folders, and a `pipeline` invoker writing into
tmp_path/outputs. Shared plain functions are in helpers.py."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from click.testing import Result

from helpers import cli, shapes_picture, succeeded


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """torch runs on one thread in every test module, restored afterwards: the models trained here are tiny, and
    two threads on a busy 2-core machine spend far more time waiting for each other than computing."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def make_folder(tmp_path):
    """make_folder(count, name="faces") -> a folder of `count` distinct PNGs named 0.png, 1.png, ..."""

    def make(count: int, name: str = "faces") -> Path:
        folder = tmp_path / name
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(count):
            shapes_picture(i).save(folder / f"{i}.png")
        return folder

    return make


@pytest.fixture
def outputs(tmp_path) -> Path:
    return tmp_path / "outputs"


@pytest.fixture
def pipeline(outputs):
    """pipeline("prepare", "--count", "40") -> click Result of that command with `--outputs tmp_path/outputs`."""

    def invoke(command: str, *args: str, env: dict | None = None) -> Result:
        return cli(None if env and "PIPELINE_OUTPUTS" in env else outputs, command, *args, env=env)

    return invoke


@pytest.fixture(scope="module")
def prepared(request, tmp_path_factory) -> Path:
    """An outputs folder holding only the set that the test module's PREPARE command makes, shared by the module's
    tests: copy it (copy_of), never change it."""
    outputs = tmp_path_factory.mktemp("prepared") / "outputs"
    succeeded(cli(outputs, *request.module.PREPARE))
    return outputs


@pytest.fixture
def copy_of(outputs):
    """copy_of(folder) -> `outputs` (tmp_path/outputs, where the `pipeline` fixture writes) as a copy of it."""

    def copy(folder: Path) -> Path:
        shutil.copytree(folder, outputs, symlinks=True)
        return outputs

    return copy
