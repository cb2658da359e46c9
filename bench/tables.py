"""The markdown tables the compare benches print, so their rows paste straight into docs/decisions.md."""

from __future__ import annotations

from collections.abc import Iterable, Sequence


def cell(value) -> str:
    """A number as a table shows it: "–" for missing, 3 significant decimals for small values, thousands apart."""
    if value is None:
        return "–"
    if isinstance(value, str):
        return value
    if isinstance(value, int):
        return f"{value:,}"
    if value != value:  # NaN: a metric this row's model does not have
        return "–"
    return f"{value:.2e}" if 0 < abs(value) < 1e-3 else f"{value:.3f}" if abs(value) < 10 else f"{value:,.2f}"


def markdown_table(columns: Sequence[str], rows: Iterable[Sequence]) -> str:
    """`columns` names the header (the first one heads the row labels); each row is its label and its values."""
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(value) for value in row) + " |" for row in rows]
    return "\n".join(lines)
