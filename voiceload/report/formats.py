"""How the reports print numbers and times (shared by the HTML, its plots and junit.xml)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any


def fmt_ms(v: float | None) -> str:
    """A latency in ms as the report prints it (summary.json values to 0.1 ms keep their digits)."""
    if v is None:
        return "–"
    return f"{v:.1f}" if abs(v) >= 10 else f"{v:.2f}"


def fmt_pct(rate: float) -> str:
    return f"{100 * rate:.1f} %"


def iso_utc(ts: Any) -> str:
    """Unix time as `YYYY-MM-DDTHH:MM:SS` (UTC); empty for a missing or non-positive time."""
    if not isinstance(ts, int | float) or ts <= 0:
        return ""
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%S")
