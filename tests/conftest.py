"""Shared fixtures: small generated image folders and a `pipeline` invoker writing into tmp_path/outputs."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner, Result
from PIL import Image, ImageDraw

from pipeline.cli import main


def shapes_picture(seed: int, side: int = 48) -> Image.Image:
    """An RGB picture of a few coloured ellipses and rectangles on a coloured background, different per seed."""
    rng = np.random.default_rng(seed)
    image = Image.new("RGB", (side, side), tuple(int(v) for v in rng.integers(0, 256, 3)))
    draw = ImageDraw.Draw(image)
    for _ in range(4):
        x, y = (int(v) for v in rng.integers(0, side * 2 // 3, 2))
        w, h = (int(v) for v in rng.integers(side // 4, side // 2, 2))
        shape = draw.ellipse if rng.random() < 0.5 else draw.rectangle
        shape([x, y, x + w, y + h], fill=tuple(int(v) for v in rng.integers(0, 256, 3)))
    return image


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
        extra = [] if env and "PIPELINE_OUTPUTS" in env else ["--outputs", str(outputs)]
        return CliRunner().invoke(main, [command, *map(str, args), *extra], env=env)

    return invoke


def latest_entry(outputs: Path, stage: str = "prepare") -> Path:
    return (outputs / stage / "latest").resolve()


def read_manifest(entry: Path) -> dict:
    return json.loads((entry / "manifest.json").read_text())
