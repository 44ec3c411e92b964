"""Reports of a run dir, rebuilt at any time from calls.jsonl: report.html, turns.csv, junit.xml.

`report.html` is self-contained (plots are inline PNGs drawn with matplotlib's Agg canvas; no
scripts, no CDN, no web fonts), so it opens offline and can be mailed or archived as one file.
One module per file: table (turns.csv), junit, html (+ report.css), plots; text is the terminal's
end-of-run summary. See docs/reports.md.
Imports `voiceload.core`, `voiceload.protocol`, `voiceload.results` and `voiceload.audio.wav` (kept
tapes); matplotlib, no network.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from voiceload.report.html import render_html
from voiceload.report.junit import junit_xml
from voiceload.report.rundir import (
    JUNIT_XML,
    REPORT_HTML,
    TURNS_CSV,
    SloResult,
    greeting_counts,
    load_run,
    stored_slos,
)
from voiceload.report.table import turns_csv

__all__ = ["JUNIT_XML", "REPORT_HTML", "TURNS_CSV", "SloResult", "write_reports"]


def write_reports(run_dir: Path, *, slo_results: Sequence[SloResult] | None = None) -> list[Path]:
    """Write report.html, turns.csv and junit.xml into `run_dir`; return their paths.

    UserError when `run_dir` holds no calls.jsonl. summary.json is used when present, else
    recomputed from the records (then the generator's health is unknown, and the run says so).
    Without `slo_results`, the SLO results stored in summary.json (key `slo`) are shown, if any.
    """
    run = load_run(run_dir)
    slos: list[SloResult] = list(slo_results) if slo_results is not None else stored_slos(run.summary)
    out = []
    path = run_dir / TURNS_CSV
    _write_atomic(path, turns_csv(run.records))
    out.append(path)
    path = run_dir / JUNIT_XML
    _write_atomic(path, junit_xml(run.summary, slos, greeting=greeting_counts(run.records)))
    out.append(path)
    path = run_dir / REPORT_HTML
    _write_atomic(path, render_html(run, slos))
    out.append(path)
    return out


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
