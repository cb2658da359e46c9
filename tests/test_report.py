"""Specification of outputs/: a self-contained index.html that agrees with the files, and readable entry folders.

One small run (48 embedded faces at 12x12, a 2-epoch VAE, a 1-epoch conv colorizer, concepts) is made, then a
second run that changes only the colorizer's seed, so the page shows stages that ran next to stages reused from
the cache. Every test only reads that shared folder.
"""
from __future__ import annotations

import html
import json
import math
import os
import re
import shutil
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest
from click.testing import Result

from helpers import DEFAULT_RUN, SUMMARY_LINE, cli, latest_entry, metrics_of, read_manifest, succeeded, summary_lines
from pipeline.cache import Cache
from pipeline.report import scalar_metrics
from stages.registry import stage

PREPARE = ("prepare", "--count", "48", "--size", "12", "--test-fraction", "0.25")
PARAMS = ("--set", "vae.epochs=2", "--set", "vae.batch_size=16", "--set", "vae.latent_dim=10",
          "--set", "vae.arch=fc", "--set", "colorize.arch=conv", "--set", "colorize.epochs=1",
          "--set", "colorize.batch_size=32", "--set", "concepts.min_count=10")
RUN = ("run", "--stages", "vae,colorize,concepts", *PARAMS)


def statuses(result: Result) -> dict[str, str]:
    """stage -> ran / cached / skipped, as the command's summary printed it."""
    return {stage_name: SUMMARY_LINE.match(line).group(2) for stage_name, line in summary_lines(result).items()}


class Page(HTMLParser):
    """What a reader of index.html sees: images, links, anchors, tagged stages, table cells by section."""

    def __init__(self, text: str):
        super().__init__()
        self.images: list[dict] = []
        self.links: list[str] = []
        self.ids: set[str] = set()
        self.cells: list[tuple[str | None, str | None, str, str]] = []  # (section, table class, key, value)
        self.overview: list[list[tuple[str, str]]] = []  # rows before the first section: (cell text, span class)
        self.section_tags: dict[str, str] = {}
        self.style = ""
        self._section: str | None = None
        self._tables: list[str | None] = []
        self._row: list[tuple[str, str]] | None = None
        self._cell: list[str] | None = None
        self._span_class = ""
        self._in_style = False
        self.feed(text)
        self.close()

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if "id" in a:
            self.ids.add(a["id"])
        if tag == "h2":
            self._section = a.get("id")
        elif tag == "table":
            self._tables.append(a.get("class"))
        elif tag == "img":
            self.images.append(a)
        elif tag == "a" and "href" in a:
            self.links.append(a["href"])
        elif tag == "style":
            self._in_style = True
        elif tag == "tr" and self._section is None:
            self._row = []
        elif tag in ("td", "th") and self._row is not None:
            self._cell, self._span_class = [], ""
        elif tag == "span" and "tag" in (a.get("class") or "").split():
            self._span_class = a["class"]
            if self._section is not None:
                self.section_tags[self._section] = a["class"].split()[1]
        if tag == "td" and "data-key" in a:
            self.cells.append((self._section, self._tables[-1] if self._tables else None, a["data-key"],
                               a["data-value"]))

    def handle_endtag(self, tag):
        if tag == "table" and self._tables:
            self._tables.pop()
        elif tag == "style":
            self._in_style = False
        elif tag in ("td", "th") and self._cell is not None and self._row is not None:
            self._row.append(("".join(self._cell).strip(), self._span_class))
            self._cell = None
        elif tag == "tr" and self._row is not None:
            self.overview.append(self._row)
            self._row = None

    def handle_data(self, data):
        if self._in_style:
            self.style += data
        if self._cell is not None:
            self._cell.append(data)


# ----- the shared run ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> tuple[Path, Result, Page]:
    """(outputs, output of the second run, its index.html parsed); the second run retrains only the colorizer."""
    outputs = tmp_path_factory.mktemp("report") / "outputs"
    succeeded(cli(outputs, *PREPARE))
    succeeded(cli(outputs, *RUN))
    second = succeeded(cli(outputs, *RUN, "--set", "colorize.seed=1"))
    return outputs, second, Page((outputs / "index.html").read_text(encoding="utf-8"))


def equal_values(shown, recorded) -> bool:
    if isinstance(shown, float) and isinstance(recorded, float) and math.isnan(shown) and math.isnan(recorded):
        return True
    return shown == recorded and type(shown) is type(recorded)


def recorded_metrics(entry: Path) -> dict:
    """The entry's metrics.json where the stage writes one, else the metrics in its manifest."""
    return metrics_of(entry) if (entry / "metrics.json").is_file() else read_manifest(entry)["metrics"]


# ----- the page: self-contained, relative, true to the files ---------------------------------------------------------


def test_second_run_mixes_stages_that_ran_with_stages_reused_from_the_cache(report):
    _, second, _ = report

    assert statuses(second) == {"vae": "cached", "colorize": "ran", "vae_color": "ran", "concepts": "ran"}


def test_every_image_and_link_is_relative_and_resolves_inside_outputs(report):
    outputs, _, page = report
    root = outputs.resolve()

    assert len(page.images) >= 10 and len(page.links) >= 10, "the page shows the stages' grids and folders"
    for target in [image["src"] for image in page.images] + page.links:
        parts = urlsplit(target)
        assert not parts.scheme and not parts.netloc, f"{target!r} leaves the folder (scheme or host)"
        assert not target.startswith(("/", "\\")) and ":" not in target, f"{target!r} is absolute"
        if target.startswith("#"):
            assert target[1:] in page.ids, f"in-page link {target!r} has no anchor"
            continue
        path = (outputs / unquote(parts.path)).resolve()
        assert path.exists(), f"{target!r} points at nothing"
        assert path == root or root in path.parents, f"{target!r} resolves outside outputs/"


def test_page_still_works_after_the_folder_is_moved(report, tmp_path):
    outputs, _, page = report
    moved = tmp_path / "mailed" / "results"
    shutil.copytree(outputs, moved, symlinks=True)

    for target in [image["src"] for image in page.images] + [link for link in page.links if link[:1] != "#"]:
        assert (moved / unquote(target)).exists(), target


def test_every_image_links_to_itself_and_is_drawn_pixelated(report):
    outputs, _, page = report

    assert page.images
    for image in page.images:
        assert "px" in image.get("class", "").split(), image
        assert image["src"] in page.links, f"{image['src']} is not clickable to full size"
    rule = re.search(r"img\.px\s*\{([^}]*)\}", page.style)
    assert rule and re.search(r"image-rendering\s*:\s*pixelated", rule.group(1)), page.style


def test_each_stage_shows_the_grids_of_its_latest_entry(report):
    outputs, _, page = report
    sources = {image["src"] for image in page.images}

    for stage_name, name in [("prepare", "preview.png"), ("vae", "samples.png"), ("vae", "loss.png"),
                             ("colorize", "test_colorized.png"), ("vae_color", "samples_color.png")]:
        assert f"{stage_name}/{latest_entry(outputs, stage_name).name}/{name}" in sources
    concepts = latest_entry(outputs, "concepts")
    table = json.loads((concepts / "concepts.json").read_text())
    assert table, "the embedded faces give concepts"
    for facts in table.values():
        assert f"concepts/{concepts.name}/{facts['grid_color']}" in sources


def test_every_metric_cell_equals_the_value_recorded_in_its_entry(report):
    outputs, _, page = report
    cells = [cell for cell in page.cells if cell[1] == "metrics"]

    assert {section for section, *_ in cells} == set(DEFAULT_RUN)
    for section in DEFAULT_RUN:
        entry = latest_entry(outputs, section)
        recorded = recorded_metrics(entry)
        shown = {key: json.loads(value) for s, _, key, value in cells if s == section}
        assert set(shown) == set(scalar_metrics(recorded)), f"{section}: every scalar metric, nothing else"
        for key, value in shown.items():
            assert equal_values(value, recorded[key]), f"{section}.{key}: page {value!r}, file {recorded[key]!r}"
        for _, table, key, value in (cell for cell in page.cells if cell[0] == section and cell[1] == "matrix"):
            name, row, column = key.split(".")  # a nested table, e.g. realism.prior.c2st
            assert equal_values(json.loads(value), recorded[name][row][column]), f"{section}.{key}"


def test_metrics_json_and_manifest_agree_where_a_stage_writes_both(report):
    outputs, _, _ = report

    for stage_name in ("vae", "colorize"):
        entry = latest_entry(outputs, stage_name)
        assert metrics_of(entry) == read_manifest(entry)["metrics"]


def test_every_parameter_cell_equals_the_parameter_in_the_manifest(report):
    outputs, _, page = report

    for section in DEFAULT_RUN:
        shown = {key: json.loads(value) for s, table, key, value in page.cells if s == section and table == "params"}
        assert shown == read_manifest(latest_entry(outputs, section))["params"], section


def test_page_tags_each_stage_ran_or_cached_as_the_command_said_with_the_time_it_took(report):
    outputs, second, page = report
    said = statuses(second)
    rows = {row[0][0]: row for row in page.overview if row and row[0][0] in DEFAULT_RUN}

    assert list(rows) == list(DEFAULT_RUN), "one overview row per stage, in pipeline order"
    for stage_name, row in rows.items():
        expected = said.get(stage_name, "earlier")  # prepare was not part of this command
        text, span = row[1]
        assert (text, span) == (expected, f"tag {expected}"), row
        assert page.section_tags[stage_name] == expected
        seconds = read_manifest(latest_entry(outputs, stage_name))["seconds"]
        assert row[2][0] == f"{seconds:.1f} s"
    assert {"ran", "cached", "earlier"} <= {row[1][0] for row in rows.values()}


def test_section_names_the_latest_folder_and_its_summary(report):
    outputs, _, page = report
    text = (outputs / "index.html").read_text(encoding="utf-8")

    for stage_name in DEFAULT_RUN:
        entry = latest_entry(outputs, stage_name)
        assert f"{stage_name}/{entry.name}/" in page.links
        assert html.escape(stage(stage_name).summary) in text


def test_a_stage_with_several_entries_lists_the_earlier_ones(report):
    outputs, _, page = report

    colorize_entries = [m.entry for m in Cache(outputs).entries("colorize")]
    assert len(colorize_entries) == 2
    for entry in colorize_entries:
        assert f"colorize/{entry}/" in page.links


# ----- entry folders -------------------------------------------------------------------------------------------------


def test_entry_folders_start_with_a_readable_label_of_their_parameters(report):
    outputs, _, _ = report

    expected = {"prepare": r"embedded-n48-s12", "vae": r"fc-z10-e2", "colorize": r"conv-mse-e1",
                "vae_color": r"vae-colored", "concepts": r"min10"}
    for stage_name, label in expected.items():
        name = latest_entry(outputs, stage_name).name
        assert re.fullmatch(label + r"-[0-9a-f]{10}", name), name


def test_latest_is_a_relative_link_to_a_trusted_entry(report):
    outputs, _, _ = report
    cache = Cache(outputs)

    for stage_name in DEFAULT_RUN:
        link = outputs / stage_name / "latest"
        assert link.is_symlink()
        target = os.readlink(link)
        assert not os.path.isabs(target) and "/" not in target, f"{target!r}: the folder must survive a move"
        manifest = cache.manifest(link.resolve())
        assert manifest is not None, f"{stage_name}/latest is not a trusted entry"
        assert manifest.entry == target


def test_every_manifest_has_a_one_line_summary_of_what_the_folder_holds(report):
    outputs, _, _ = report

    for stage_name in DEFAULT_RUN:
        for manifest in Cache(outputs).entries(stage_name):
            summary = manifest.summary
            assert summary == stage(stage_name).summary
            assert summary.strip() and "\n" not in summary


def test_colorizers_that_read_one_prepared_set_are_compared_side_by_side(report, tmp_path):
    outputs = tmp_path / "outputs"
    shutil.copytree(report[0], outputs, symlinks=True)
    conv = latest_entry(outputs, "colorize")
    page = (outputs / "index.html").read_text(encoding="utf-8")
    assert "id=compare-" not in page, "two conv mse entries are one variant: nothing to compare yet"

    succeeded(cli(outputs, "run", "--stages", "colorize", *PARAMS, "--set", "colorize.arch=stacknn"))

    stacknn = latest_entry(outputs, "colorize")
    page = (outputs / "index.html").read_text(encoding="utf-8")
    section = page[page.index("<h2 id=compare-stacknn_mse-conv_mse>"):]
    for entry in (stacknn, conv):
        assert f"src='colorize/{entry.name}/test_colorized.png'" in section
    cells = {cell[2]: json.loads(cell[3]) for cell in Page(section).cells}
    for column, entry in (("stacknn mse", stacknn), ("conv mse", conv)):
        for metric in ("psnr", "baseline_psnr", "psnr_margin", "color_auc", "colorfulness_ratio"):
            assert cells[f"numbers.{metric}.{column}"] == metrics_of(entry)[metric], (column, metric)
