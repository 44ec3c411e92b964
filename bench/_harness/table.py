"""Plain-text tables of bench results: one row per measurement, right-aligned columns."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

Row = dict[str, Any]
Column = tuple[str, Callable[[Row], str]]  # heading, cell of a row


def fmt(v: Any, spec: str = ".1f") -> str:
    """A number as `spec` says, "-" for a figure that was not measured."""
    return "-" if v is None else format(v, spec)


def pair(a: Any, b: Any, spec: str = ".1f", sep: str = " | ") -> str:
    """Two figures in one cell (voiceload | SIPp, p50/p95)."""
    return f"{fmt(a, spec)}{sep}{fmt(b, spec)}"


def print_table(columns: Sequence[Column], rows: Sequence[Row]) -> None:
    """The header and one line per row, each column as wide as its widest cell."""
    cells = [[fn(r) for _, fn in columns] for r in rows]
    widths = [max(len(h), *(len(c[i]) for c in cells)) for i, (h, _) in enumerate(columns)]
    print("  ".join(h.rjust(w) for (h, _), w in zip(columns, widths, strict=True)))
    for c in cells:
        print("  ".join(v.rjust(w) for v, w in zip(c, widths, strict=True)))
