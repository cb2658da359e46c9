"""outputs/index.html: one static page showing the latest entry of every stage, and a table of earlier ones.

No server, no external assets, relative links only, so the folder can be zipped and mailed. Numbers on the page
come straight from each entry's manifest.json, so the page can never disagree with the files.
"""
from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any

from pipeline.cache import Cache, Manifest
from stages.contract import Comparison, Figure, StageSpec, read_figures
from stages import registry

_STYLE = """
body{font-family:system-ui,sans-serif;margin:2em auto;max-width:1200px;color:#222;padding:0 1em}
h1{margin-bottom:.2em} h2{border-bottom:1px solid #ccc;padding-bottom:.2em;margin-top:2em}
.meta{color:#666;font-size:.9em} .grid{display:flex;flex-wrap:wrap;gap:1.2em;align-items:flex-start}
figure{margin:0} figcaption{font-size:.85em;color:#444;margin-top:.3em}
img.px{image-rendering:pixelated;image-rendering:crisp-edges;max-width:100%;border:1px solid #ddd}
table{border-collapse:collapse;font-size:.88em;margin:.6em 0} td,th{border:1px solid #ddd;padding:.25em .6em;text-align:left}
th{background:#f4f4f4} td.num{text-align:right;font-variant-numeric:tabular-nums}
details{margin:.5em 0} .tag{display:inline-block;padding:0 .5em;border-radius:.8em;font-size:.8em}
.ran{background:#dff3df} .cached{background:#e4ecfb} .skipped{background:#f6e7cc} .earlier{background:#eee}
"""

def _figures(folder: Path, spec: StageSpec) -> list[Figure]:
    """What a stage's entry shows: its declared figures, then any it listed itself, if the files exist."""
    return [f for f in (*spec.figures, *read_figures(folder)) if (folder / f.file).is_file()]


def _format(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.4g}"
    return html.escape(str(value))


def _is_scalar(value: Any) -> bool:
    return value is None or isinstance(value, (int, float, str, bool)) and len(str(value)) < 80


def scalar_metrics(metrics: dict[str, Any]) -> dict[str, Any]:
    """The metrics worth a table cell: numbers and short strings, not lists or nested tables."""
    return {k: v for k, v in metrics.items() if k != "headline" and _is_scalar(v) and v is not None}


def table_metrics(metrics: dict[str, Any]) -> dict[str, dict[str, dict[str, Any]]]:
    """The metrics that are tables: {row: {column: scalar}} (a judge's scores per generator, say)."""
    return {k: v for k, v in metrics.items()
            if isinstance(v, dict) and v and all(isinstance(row, dict) and row and all(map(_is_scalar, row.values()))
                                                 for row in v.values())}


def _matrix(name: str, rows: dict[str, dict[str, Any]]) -> str:
    """One table per nested metric: a row per key, a column per inner key (blank where a row lacks it)."""
    columns = list(dict.fromkeys(column for row in rows.values() for column in row))
    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    body = "".join(
        f"<tr><th>{html.escape(r)}</th>" + "".join(
            f"<td class=num data-key='{html.escape(f'{name}.{r}.{c}')}' data-value='{html.escape(json.dumps(row[c]))}'>"
            f"{_format(row[c])}</td>" if c in row
            else "<td></td>" for c in columns) + "</tr>" for r, row in rows.items())
    return f"<h3>{html.escape(name)}</h3><table class=matrix><tr><th></th>{head}</tr>{body}</table>"


def _table(rows: dict[str, Any], css_class: str) -> str:
    cells = "".join(f"<tr><th>{html.escape(k)}</th><td class=num data-key='{html.escape(k)}' "
                    f"data-value='{html.escape(json.dumps(v))}'>{_format(v)}</td></tr>" for k, v in rows.items())
    return f"<table class={css_class}>{cells}</table>"


def _stage_section(cache: Cache, spec: StageSpec, outcome) -> str:
    stage = spec.name
    entries = cache.entries(stage)
    latest: Manifest | None = cache.latest(stage) or (entries[0] if entries else None)
    if latest is None:
        return ""
    folder = f"{stage}/{latest.entry}"
    status = getattr(outcome, "status", "earlier")
    parts = [f"<h2 id={stage}>{stage} <span class='tag {status}'>{html.escape(status)}</span></h2>",
             f"<p class=meta>{html.escape(latest.summary)}<br>"
             f"<a href='{folder}/'>{html.escape(folder)}</a> · finished {html.escape(latest.finished)}"
             f" · took {latest.seconds:.1f} s · built because {html.escape(latest.reason)}</p>"]
    if latest.metrics.get("headline"):
        parts.append(f"<p>{html.escape(latest.metrics['headline'])}</p>")
    figures = [f"<figure><a href='{folder}/{f.file}'><img class=px src='{folder}/{f.file}' alt='{f.file}'"
               f" style='width:{_display_width(cache.root / folder / f.file)}px'></a>"
               f"<figcaption>{html.escape(f.caption)}</figcaption></figure>"
               for f in _figures(cache.root / folder, spec)]
    parts.append(f"<div class=grid>{''.join(figures)}</div>")
    parts.append("<div class=grid><div><h3>metrics</h3>"
                 + _table(scalar_metrics(latest.metrics), "metrics")
                 + "</div><div><h3>parameters</h3>" + _table(latest.params, "params") + "</div></div>")
    tables = [_matrix(name, rows) for name, rows in table_metrics(latest.metrics).items()]
    if tables:
        parts.append(f"<div class=grid>{''.join(f'<div>{t}</div>' for t in tables)}</div>")
    if len(entries) > 1:
        rows = "".join(
            f"<tr><td><a href='{stage}/{m.entry}/'>{html.escape(m.entry)}</a></td>"
            f"<td>{html.escape(m.finished)}</td><td class=num>{m.seconds:.1f}</td>"
            f"<td>{html.escape(m.metrics.get('headline', ''))}</td></tr>" for m in entries)
        parts.append(f"<details><summary>{len(entries)} cached entries</summary><table><tr><th>entry</th>"
                     f"<th>finished</th><th>seconds</th><th>result</th></tr>{rows}</table></details>")
    return "\n".join(parts)


def _stage_columns(cache: Cache, comparison: Comparison) -> list:
    """Per column: (name, [(folder relative to root, manifest)] of the model and its colorers), or [] if one
    is missing."""
    models = []
    for stages in comparison.columns:
        model = cache.latest(stages[0])
        if model is None:
            return []
        entries = [(f"{stages[0]}/{model.entry}", model)]
        for extra in stages[1:]:
            latest = cache.latest(extra)
            if latest is not None and latest.upstream.get(stages[0]) == model.entry:
                entries.append((f"{extra}/{latest.entry}", latest))
        models.append((stages[0], entries))
    return models


def _variant_columns(cache: Cache, comparison: Comparison) -> list:
    """One column per combination of the `variants` parameters' values: the newest entry of the stage with it
    that read the prepared set its latest entry read, named by those values (`conv classify`, `stacknn mse hair`)."""
    stage = comparison.columns[0][0]
    latest = cache.latest(stage)
    if latest is None:
        return []
    source = latest.upstream.get(registry.SOURCE_STAGE)
    models = {}
    for manifest in cache.entries(stage):  # newest first
        values = (manifest.params.get(p) for p in comparison.variants)
        name = " ".join(str(value) for value in values if value not in ("", None))  # an unset option: no word
        if manifest.upstream.get(registry.SOURCE_STAGE) == source and name not in models:
            models[name] = [(f"{stage}/{manifest.entry}", manifest)]
    return list(models.items()) if len(models) > 1 else []


def _comparison_section(cache: Cache, comparison: Comparison) -> str:
    """The models' latest entries side by side, if every one exists and all read the same prepared set."""
    models = (_variant_columns if comparison.variants else _stage_columns)(cache, comparison)
    if not models or len({entries[0][1].upstream.get(registry.SOURCE_STAGE) for _, entries in models}) != 1:
        return ""

    def image(name: str, entries, figure: Figure) -> str:
        for folder, _ in entries:
            if (cache.root / folder / figure.file).is_file():
                return (f"<figure><img class=px src='{folder}/{figure.file}' alt='{figure.file}' style='width:"
                        f"{_display_width(cache.root / folder / figure.file)}px'><figcaption>{html.escape(name)}: "
                        f"{html.escape(figure.caption)}</figcaption></figure>")
        return ""

    slug = "-".join(name.replace(" ", "_") for name, _ in models)
    parts = [f"<h2 id=compare-{slug}>{html.escape(comparison.title)}</h2>"]
    for figure in comparison.side_by_side:
        parts.append("<div class=grid>" + "".join(image(name, entries, figure) for name, entries in models) + "</div>")
    rows = {}
    for metric in comparison.metrics:
        values = {name: next((m.metrics[metric] for _, m in entries if metric in m.metrics), None)
                  for name, entries in models}
        if any(v is not None for v in values.values()):
            rows[metric] = values
    rows["stage seconds"] = {name: entries[0][1].seconds for name, entries in models}
    parts.append(_matrix("numbers", rows))
    for figure in comparison.stacked:
        parts.extend(image(name, entries, figure) for name, entries in models)
    return "\n".join(parts)


def _display_width(path: Path) -> int:
    """Tiny images are drawn 3x larger (pixelated) so 30x30 faces are visible; grids share the row two by two."""
    from PIL import Image

    with Image.open(path) as image:
        width = image.width
    return width * 3 if width < 200 else min(width, 540)


def _overview(cache: Cache, outcomes: dict[str, Any]) -> str:
    """One row per stage at the top of the page: what this command did, and the stage's headline result."""
    rows = []
    for spec in registry.STAGES:
        latest = cache.latest(spec.name)
        outcome = outcomes.get(spec.name)
        if latest is None and outcome is None:
            continue
        status = getattr(outcome, "status", "earlier")
        reason = getattr(outcome, "reason", "")
        headline = (latest.metrics.get("headline", "") if latest else "") if status != "skipped" else reason
        entry = f"<a href='#{spec.name}'>{spec.name}</a>"
        rows.append(f"<tr><td>{entry}</td><td><span class='tag {status}'>{html.escape(status)}</span></td>"
                    f"<td class=num>{latest.seconds if latest else 0:.1f} s</td><td>{html.escape(headline)}</td></tr>")
    return ("<table><tr><th>stage</th><th>this command</th><th>took</th><th>result</th></tr>"
            + "".join(rows) + "</table>") if rows else ""


def write_report(root: Path, outcomes: dict[str, Any]) -> Path:
    """Regenerate root/index.html from the cache; `outcomes` says which stages this command ran or reused."""
    cache = Cache(root)
    sections = [_stage_section(cache, spec, outcomes.get(spec.name)) for spec in registry.STAGES]
    sections += [_comparison_section(cache, comparison) for comparison in registry.COMPARISONS]
    body = "\n".join(s for s in sections if s) or "<p>Nothing here yet: run <code>pipeline prepare</code>.</p>"
    body = _overview(cache, outcomes) + body
    page = (f"<!doctype html><html><head><meta charset=utf-8><title>pipeline results</title>"
            f"<style>{_STYLE}</style></head><body><h1>pipeline results</h1>"
            f"<p class=meta>Latest entry of each stage. Every folder holds a manifest.json with the parameters, "
            f"inputs, versions and metrics behind it.</p>{body}</body></html>\n")
    target = Path(root) / "index.html"
    temporary = target.with_name(".index.html.tmp")
    temporary.write_text(page, encoding="utf-8")
    temporary.replace(target)
    return target
