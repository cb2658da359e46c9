"""Specification of the stage contract from the outside: a stage that only the registry knows about is planned,
keyed, run, cached and shown on the report page, with no edit in pipeline/."""
from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from helpers import succeeded
from stages import registry
from stages.contract import Figure, StageSpec, write_figures
from stages.params import NoParams

PREPARE = ("prepare", "--count", "12", "--size", "8")
CALLS: list[Path] = []
REALISM = {"vae": {"c2st": 0.71, "c2st_std": 0.02, "fd": 12.5},
           "gan": {"c2st": 0.64, "density": 0.9, "coverage": 0.8}}


def toy_run(params, inputs, out_dir: Path, context) -> dict:
    """Reads the prepared set's folder it was handed; writes one declared figure and one it lists itself."""
    CALLS.append(inputs["prepare"])
    Image.new("RGB", (12, 12), (200, 30, 30)).save(out_dir / "toy.png")
    Image.new("RGB", (12, 12), (30, 30, 200)).save(out_dir / "toy_extra.png")
    write_figures(out_dir, [Figure("toy_extra.png", "a figure only the run could name")])
    return {"headline": "toy ran", "pixels": 144, "realism": REALISM}


TOY = StageSpec(name="toy", version=1, params=NoParams, upstream=("prepare",), run=f"{__name__}:toy_run",
                describe=lambda p: "toy", summary="a toy stage with one declared figure",
                figures=(Figure("toy.png", "the toy's red square"),))


@pytest.fixture
def toy_registered(monkeypatch):
    monkeypatch.setattr(registry, "STAGES", (*registry.STAGES, TOY))
    CALLS.clear()


def test_a_registered_toy_stage_runs_caches_and_shows_its_figures_on_the_report(toy_registered, pipeline, outputs):
    succeeded(pipeline(*PREPARE))

    first = succeeded(pipeline("run", "--stages", "toy"))
    second = succeeded(pipeline("run", "--stages", "toy"))

    assert "toy: ran" in first.output and "toy: cached" in second.output
    assert CALLS == [(outputs / "prepare" / "latest").resolve()], "ran once, reading the prepared set it was handed"
    page = (outputs / "index.html").read_text(encoding="utf-8")
    entry = (outputs / "toy" / "latest").resolve().name
    assert f"src='toy/{entry}/toy.png'" in page and "the toy&#x27;s red square" in page
    assert f"src='toy/{entry}/toy_extra.png'" in page and "a figure only the run could name" in page
    assert page.index("toy.png") < page.index("toy_extra.png"), "declared figures first"


def test_nested_metrics_become_a_table_with_a_row_per_key_and_a_column_per_inner_key(toy_registered, pipeline,
                                                                                       outputs):
    succeeded(pipeline(*PREPARE))
    succeeded(pipeline("run", "--stages", "toy"))

    page = (outputs / "index.html").read_text(encoding="utf-8")
    section = page[page.index("<h2 id=toy>"):]
    table = section[section.index("<h3>realism</h3>"):section.index("</table>", section.index("<h3>realism"))]
    assert "<th>c2st</th><th>c2st_std</th><th>fd</th><th>density</th><th>coverage</th>" in table
    assert "data-key='realism.gan.density' data-value='0.9'>0.9</td>" in table
    assert "data-key='realism.vae.density'" not in table, "a generator without that score leaves the cell blank"
    assert "<th>pixels</th>" in section, "scalar metrics stay in the metrics table"
