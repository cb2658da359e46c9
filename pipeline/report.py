"""outputs/index.html: one static page showing the latest entry of every stage, and a table of earlier ones.

No server, no external assets, relative links only, so the folder can be zipped and mailed. Numbers on the page
come straight from each entry's manifest.json, so the page can never disagree with the files.
"""
from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any

from pipeline.cache import Cache
from stages.registry import STAGES

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

# Which images each stage shows, in order, with the caption a person needs to read them.
_IMAGES = {
    "prepare": [("preview.png", "gray | color pairs of the prepared set")],
    "vae": [("reconstructions.png", "test faces (top) and their reconstructions (bottom)"),
            ("samples.png", "64 decodes of z ~ N(0, I)"),
            ("interpolation.png", "each row: two test faces and 7 latent points between them"),
            ("traversal.png", "each row: one latent dimension from -3 to 3 (ordered by KL)"),
            ("manifold.png", "the 2-D latent space, 15x15 grid"),
            ("loss.png", "train and test loss per epoch")],
    "colorize": [("test_colorized.png", "test faces: gray input | colorized | true color"),
                 ("loss.png", "train and test loss per epoch")],
    "vae_color": [("samples_color.png", "the VAE's samples, colorized"),
                  ("reconstructions_color.png", "gray | VAE reconstruction | colorized | true color"),
                  ("interpolation_color.png", "interpolations, colorized"),
                  ("traversal_color.png", "latent traversals, colorized")],
}


def _images(folder: Path, stage: str) -> list[tuple[str, str]]:
    """The (file, caption) pairs a stage's entry shows; concept grids are listed by the entry's concepts.json."""
    if stage != "concepts":
        return _IMAGES.get(stage, [])
    try:
        table = json.loads((folder / "concepts.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return []
    shown = []
    for name, facts in table.items():
        landing = f" · edits land {100 * facts['landing_rate']:.0f}%" if "landing_rate" in facts else ""
        auc = "n/a (no tagged test faces)" if facts["test_auc"] is None else f"{facts['test_auc']:.2f}"
        caption = (f"{name}: test AUC {auc} · consistency {facts['edit_consistency']:.2f}{landing}"
                   f" · columns α = -2 … 3")
        shown.append((facts["grid_color"], caption))
    return shown


def _format(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return html.escape(str(value))


def scalar_metrics(metrics: dict[str, Any]) -> dict[str, Any]:
    """The metrics worth a table cell: numbers and short strings, not lists or nested tables."""
    return {k: v for k, v in metrics.items()
            if k != "headline" and isinstance(v, (int, float, str, bool)) and len(str(v)) < 80}


def _table(rows: dict[str, Any], css_class: str) -> str:
    cells = "".join(f"<tr><th>{html.escape(k)}</th><td class=num data-key='{html.escape(k)}' "
                    f"data-value='{html.escape(json.dumps(v))}'>{_format(v)}</td></tr>" for k, v in rows.items())
    return f"<table class={css_class}>{cells}</table>"


def _stage_section(cache: Cache, stage: str, outcome) -> str:
    entries = cache.entries(stage)
    latest = cache.latest(stage) or (entries[0] if entries else None)
    if latest is None:
        return ""
    folder = f"{stage}/{latest['entry']}"
    status = getattr(outcome, "status", "earlier")
    parts = [f"<h2 id={stage}>{stage} <span class='tag {status}'>{html.escape(status)}</span></h2>",
             f"<p class=meta>{html.escape(latest.get('summary', ''))}<br>"
             f"<a href='{folder}/'>{html.escape(folder)}</a> · finished {html.escape(latest.get('finished', ''))}"
             f" · took {latest.get('seconds', 0):.1f} s · built because {html.escape(latest.get('reason', ''))}</p>"]
    if latest.get("metrics", {}).get("headline"):
        parts.append(f"<p>{html.escape(latest['metrics']['headline'])}</p>")
    figures = [f"<figure><a href='{folder}/{name}'><img class=px src='{folder}/{name}' alt='{name}'"
               f" style='width:{_display_width(cache.root / folder / name)}px'></a>"
               f"<figcaption>{html.escape(caption)}</figcaption></figure>"
               for name, caption in _images(cache.root / folder, stage) if (cache.root / folder / name).is_file()]
    parts.append(f"<div class=grid>{''.join(figures)}</div>")
    parts.append("<div class=grid><div><h3>metrics</h3>"
                 + _table(scalar_metrics(latest.get("metrics", {})), "metrics")
                 + "</div><div><h3>parameters</h3>" + _table(latest.get("params", {}), "params") + "</div></div>")
    if len(entries) > 1:
        rows = "".join(
            f"<tr><td><a href='{stage}/{m['entry']}/'>{html.escape(m['entry'])}</a></td>"
            f"<td>{html.escape(m.get('finished', ''))}</td><td class=num>{m.get('seconds', 0):.1f}</td>"
            f"<td>{html.escape(m.get('metrics', {}).get('headline', ''))}</td></tr>" for m in entries)
        parts.append(f"<details><summary>{len(entries)} cached entries</summary><table><tr><th>entry</th>"
                     f"<th>finished</th><th>seconds</th><th>result</th></tr>{rows}</table></details>")
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
    for spec in STAGES:
        latest = cache.latest(spec.name)
        outcome = outcomes.get(spec.name)
        if latest is None and outcome is None:
            continue
        status = getattr(outcome, "status", "earlier")
        reason = getattr(outcome, "reason", "")
        headline = (latest or {}).get("metrics", {}).get("headline", "") if status != "skipped" else reason
        entry = f"<a href='#{spec.name}'>{spec.name}</a>"
        rows.append(f"<tr><td>{entry}</td><td><span class='tag {status}'>{html.escape(status)}</span></td>"
                    f"<td class=num>{(latest or {}).get('seconds', 0):.1f} s</td><td>{html.escape(headline)}</td></tr>")
    return ("<table><tr><th>stage</th><th>this command</th><th>took</th><th>result</th></tr>"
            + "".join(rows) + "</table>") if rows else ""


def write_report(root: Path, outcomes: dict[str, Any]) -> Path:
    """Regenerate root/index.html from the cache; `outcomes` says which stages this command ran or reused."""
    cache = Cache(root)
    sections = [_stage_section(cache, spec.name, outcomes.get(spec.name)) for spec in STAGES]
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
