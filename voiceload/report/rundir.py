"""A run dir read back for its reports: the records, the summary (stored or recomputed), the series."""

from __future__ import annotations

import json
import logging
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from voiceload.core.summary import SUMMARY_SCHEMA, GeneratorHealth, Summary, reason_key, summarize
from voiceload.core.timeseries import RunSeries, build_series
from voiceload.errors import UserError
from voiceload.protocol import CallRecord
from voiceload.results.collector import CALLS_FILE, SUMMARY_FILE, load_calls

log = logging.getLogger(__name__)

REPORT_HTML = "report.html"
TAPES_DIR = "tapes"  # OUT/tapes: the calls' tapes, kept with `voiceload run --keep-tapes`
TURNS_CSV = "turns.csv"
JUNIT_XML = "junit.xml"


class SloResult(Protocol):
    """What the report needs of an evaluated SLO (voiceload.core.slo.SloResult has these attributes)."""

    @property
    def expr(self) -> str: ...  # as the user wrote it, e.g. "p95_turn_latency_ms<=1500"
    @property
    def metric(self) -> str: ...
    @property
    def op(self) -> str: ...
    @property
    def threshold(self) -> float: ...
    @property
    def value(self) -> float | None: ...  # None: the run did not measure it
    @property
    def passed(self) -> bool: ...


@dataclass
class RunData:
    run_dir: Path
    records: list[CallRecord]
    summary: Summary
    series: RunSeries
    note: str | None  # why the summary was recomputed, if it was


def load_run(run_dir: Path) -> RunData:
    if not run_dir.is_dir():
        raise UserError(f"{run_dir}: not a directory")
    calls = run_dir / CALLS_FILE
    if not calls.is_file():
        raise UserError(f"{run_dir}: no {CALLS_FILE} here (not a voiceload run directory?)")
    records = load_calls(calls)
    series = build_series(records)
    summary: Summary | None = None
    note = None
    spath = run_dir / SUMMARY_FILE
    if spath.is_file():
        try:
            body = json.loads(spath.read_text(encoding="utf-8"))
            if not isinstance(body, dict) or body.get("schema") != SUMMARY_SCHEMA:
                raise ValueError(f"not a schema {SUMMARY_SCHEMA} summary")
            summary = Summary.from_dict(body, on_bad_slo=_bad_slo)
        except (OSError, ValueError) as exc:
            log.warning("%s: %s; recomputing it from %s", spath, exc, CALLS_FILE)
            summary, note = None, f"{SUMMARY_FILE} unreadable ({exc}): recomputed from {CALLS_FILE}"
    else:
        note = f"no {SUMMARY_FILE}: recomputed from {CALLS_FILE}"
    if summary is None:
        summary = _recompute(records, series, run_dir)
        note = f"{note}; generator health unknown (heartbeats are not in {CALLS_FILE})"
    return RunData(run_dir, records, summary, series, note)


def stored_slos(summary: Summary) -> list[SloResult]:
    """The SLO results the run stored in summary.json (key `slo`), if any."""
    return list(summary.slo or [])


def _bad_slo(why: str) -> None:
    log.warning("ignored a malformed SLO result in %s: %s", SUMMARY_FILE, why)


def _recompute(records: list[CallRecord], series: RunSeries, run_dir: Path) -> Summary:
    started = series.t0
    ended = started + len(series.buckets) * series.bucket_s
    return summarize(
        records, run_id=records[0].run_id if records else run_dir.name, scenario_name="", target="",
        concurrency=0, calls_planned=len(records), started_at=started, ended_at=ended, health=GeneratorHealth(),
    )


def kept_tape(run_dir: Path, rec: CallRecord) -> Path | None:
    """The call's kept tape inside the run dir's tapes/, if the record names one and it is there.

    A record is data from an agent: a name that leaves tapes/ (absolute, `..`) is not followed.
    """
    if rec.tape is None or not (run_dir / TAPES_DIR).is_dir():
        return None
    path = (run_dir / rec.tape).resolve()
    if not path.is_relative_to((run_dir / TAPES_DIR).resolve()) or not path.is_file():
        return None
    return path


@dataclass(frozen=True)
class GreetingCounts:
    ok: int
    not_ok: int
    reasons: dict[str, int]


def greeting_counts(records: Iterable[CallRecord]) -> GreetingCounts | None:
    """ok/not ok of the greeting over the calls that had one; None when no call did."""
    ok = not_ok = 0
    reasons: Counter[str] = Counter()
    for rec in records:
        if rec.greeting is None:
            continue
        if rec.greeting.ok:
            ok += 1
        else:
            not_ok += 1
            reasons[reason_key(rec.greeting.reason)] += 1
    return None if ok + not_ok == 0 else GreetingCounts(ok, not_ok, dict(reasons.most_common()))
