"""Plain helpers shared by the test modules; the shared fixtures are in conftest.py.

Test modules import this as `from helpers import ...`: pytest's default (rootdir-based, "prepend") import mode
puts this folder, which has no __init__.py, on sys.path.
"""
from __future__ import annotations

import gzip
import importlib
import json
import re
from pathlib import Path

import numpy as np
from click.testing import CliRunner, Result
from PIL import Image, ImageDraw

from pipeline.cli import DEFAULT_STAGES, main
from pipeline.runner import plan
from stages.registry import STAGE_NAMES

GRID_PADDING = 4  # stages.viz.grid_image: make_grid(..., padding=4)
GRID_TARGET_CELL = 90  # stages.viz scales images up by an integer factor to about this many pixels, never down
# the stages a plain `pipeline prepare && pipeline run` visits, in pipeline order (opt-in stages such as gan are not)
DEFAULT_RUN = ("prepare", *(spec.name for spec in plan(DEFAULT_STAGES.split(","))))
SUMMARY_LINE = re.compile(r"^(\w+): (ran|cached|skipped)\b")


# ----- running the command line --------------------------------------------------------------------------------------


def cli(outputs: Path | None, *args, env: dict | None = None) -> Result:
    """`pipeline ARGS --outputs OUTPUTS` through click's CliRunner; outputs=None leaves --outputs off."""
    extra = [] if outputs is None else ["--outputs", str(outputs)]
    return CliRunner().invoke(main, [*map(str, args), *extra], env=env)


def succeeded(result: Result) -> Result:
    assert result.exit_code == 0, result.output
    return result


def assert_one_clear_error_line(result: Result, *mentions: str, last_line: bool = True) -> str:
    """A user mistake: non-zero exit, exactly one `Error:` line (the last line unless last_line=False) naming every
    one of `mentions`, no traceback; returns that line."""
    errors = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert result.exit_code not in (0, None), result.output
    assert len(errors) == 1, result.output
    if last_line:
        assert result.output.strip().splitlines()[-1] == errors[0], result.output
    assert "Traceback" not in result.output
    # click's CliRunner: a non-zero exit either raised SystemExit (a clean exit) or any other exception (a crash)
    assert isinstance(result.exception, SystemExit), repr(result.exception)
    for text in mentions:
        assert text in errors[0], errors[0]
    return errors[0]


def summary_lines(result: Result, *, each_once: bool = False) -> dict[str, str]:
    """stage -> its `stage: ran|cached|skipped ...` summary line, in the order printed (the last one where a stage
    is printed twice, or, with each_once=True, a failure)."""
    lines = {}
    for line in result.output.splitlines():
        match = SUMMARY_LINE.match(line)
        if match and match.group(1) in STAGE_NAMES:
            assert not each_once or match.group(1) not in lines, f"{match.group(1)} reported twice:\n{result.output}"
            lines[match.group(1)] = line
    return lines


# ----- stand-ins for stages ------------------------------------------------------------------------------------------


def replace_stage_entry(monkeypatch, spec, replacement) -> None:
    """Point the stage's run function (`module:function` in its StageSpec) at `replacement` for this test."""
    module, _, function = spec.run.partition(":")
    monkeypatch.setattr(importlib.import_module(module), function, replacement)


def interrupt_fit_after(fit, epochs: int):
    """A stand-in for stages.training.fit that trains `epochs` epochs, then raises KeyboardInterrupt as a user's
    ctrl-C would (at the next per-epoch evaluation, so resume checkpoints of the finished epochs exist)."""
    def interrupted(job, context, device):
        real_evaluate, calls = job.evaluate, []

        def evaluate(model):
            calls.append(1)
            if len(calls) > epochs:
                raise KeyboardInterrupt
            return real_evaluate(model)

        job.evaluate = evaluate
        return fit(job, context, device)
    return interrupted


def interrupted_once(function):
    """A stand-in for `function` whose first call raises KeyboardInterrupt, as a user's ctrl-C would at that
    point; later calls (the re-run) go through to `function`."""
    calls = []

    def interrupted(*args, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            raise KeyboardInterrupt
        return function(*args, **kwargs)
    return interrupted


def must_not_run(name: str):
    """A stand-in that fails the test when called: for code whose result should come from the cache."""
    def fail(*args, **kwargs):
        raise AssertionError(f"{name} ran although its result is cached")
    return fail


# ----- what the stages leave behind ----------------------------------------------------------------------------------


def latest_entry(outputs: Path, stage: str = "prepare") -> Path:
    return (outputs / stage / "latest").resolve()


def read_manifest(entry: Path) -> dict:
    return json.loads((entry / "manifest.json").read_text())


def metrics_of(entry: Path) -> dict:
    return json.loads((entry / "metrics.json").read_text())


def decoded_png(path: Path) -> Image.Image:
    """The image with every pixel decoded (a truncated file fails here); the file itself is closed again."""
    with Image.open(path) as image:
        image.load()
        return image


def grid_cell(side: int, target: int = GRID_TARGET_CELL) -> int:
    """The side of one grid cell: the image scaled up by an integer factor to about `target` px (never down)."""
    return side * max(1, target // side)


def grid_size(rows: int, columns: int, side: int, target: int = GRID_TARGET_CELL) -> tuple[int, int]:
    """(width, height) of a stages.viz grid of side x side images: scaled-up cells, 4 px gutters around each."""
    cell = grid_cell(side, target)
    return columns * (cell + GRID_PADDING) + GRID_PADDING, rows * (cell + GRID_PADDING) + GRID_PADDING


# ----- input data ----------------------------------------------------------------------------------------------------


def shapes_picture(seed: int, side: int = 48) -> Image.Image:
    """An RGB picture of a few colored ellipses and rectangles on a colored background, different per seed."""
    rng = np.random.default_rng(seed)
    image = Image.new("RGB", (side, side), tuple(int(v) for v in rng.integers(0, 256, 3)))
    draw = ImageDraw.Draw(image)
    for _ in range(4):
        x, y = (int(v) for v in rng.integers(0, side * 2 // 3, 2))
        w, h = (int(v) for v in rng.integers(side // 4, side // 2, 2))
        shape = draw.ellipse if rng.random() < 0.5 else draw.rectangle
        shape([x, y, x + w, y + h], fill=tuple(int(v) for v in rng.integers(0, 256, 3)))
    return image


def write_idx(path: Path, images: np.ndarray) -> None:
    """An MNIST-style IDX file (unsigned bytes, 3 dimensions) of `images`; gzipped when the name ends in .gz."""
    header = (0x00000803).to_bytes(4, "big") + b"".join(n.to_bytes(4, "big") for n in images.shape)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "wb") as stream:
        stream.write(header + images.astype(np.uint8).tobytes())


# ----- faces whose hair color only the tag gives away ----------------------------------------------------------------

HAIR_CHROMA = ((0.0, 0.25), (-0.2, -0.15), (0.25, -0.05))  # (Cb, Cr) of tags 1, 2, 3: red, green, blue hair


def tagged_hair_faces(count: int, side: int = 12, seed: int = 0):
    """(gray (N, 1, S, S), color (N, 3, S, S), tag (N,) in 1..3): faces whose top third is hair with the tag's
    hue, at a gray level drawn independently of the tag, over a neutral skin texture. Gray alone cannot tell
    the tags apart; the true colors can."""
    import torch

    from stages.colorizers import color_from

    generator = torch.Generator().manual_seed(seed)
    gray = 0.55 + 0.15 * torch.rand(count, 1, side, side, generator=generator)
    hair_gray = 0.35 + 0.2 * torch.rand(count, 1, 1, 1, generator=generator)
    gray[:, :, :side // 3] = hair_gray
    tag = torch.arange(count) % len(HAIR_CHROMA) + 1
    chroma = torch.zeros(count, 2, side, side)
    chroma[:, :, :side // 3] = torch.tensor(HAIR_CHROMA)[tag - 1][:, :, None, None]
    return gray, color_from(gray, chroma).clamp(0, 1), tag
