"""Reports of a run dir, rebuilt at any time from calls.jsonl: report.html, turns.csv, junit.xml.

`report.html` is self-contained (plots are inline PNGs drawn with matplotlib's Agg canvas; no
scripts, no CDN, no web fonts), so it opens offline and can be mailed or archived as one file.
Every string that comes from a record is escaped. See docs/reports.md.
"""

from __future__ import annotations

import base64
import csv
import heapq
import html
import io
import json
import logging
import os
import re
import xml.etree.ElementTree as ET
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from voiceload.core.summary import SUMMARY_SCHEMA, GeneratorHealth, reason_key, summarize
from voiceload.core.timeseries import RunSeries, build_series
from voiceload.errors import UserError
from voiceload.protocol import OUTCOME_COMPLETED, OUTCOMES, CallRecord
from voiceload.results.collector import CALLS_FILE, SUMMARY_FILE, load_calls

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

log = logging.getLogger(__name__)

REPORT_HTML = "report.html"
TURNS_CSV = "turns.csv"
JUNIT_XML = "junit.xml"
SLOWEST_CALLS = 10

TURNS_CSV_COLUMNS = (
    "call_id", "agent_id", "seq", "outcome", "turn_index", "utterance_start_ms", "utterance_end_ms",
    "bot_onset_ms", "bot_end_ms", "latency_ms", "ok", "reason", "prompt_score",
)


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


@dataclass(frozen=True)
class StoredSlo:
    """An SLO result as the run stored it in summary.json (`"slo": [{expr, metric, op, ...}]`)."""

    expr: str
    metric: str
    op: str
    threshold: float
    value: float | None
    passed: bool


@dataclass
class RunData:
    run_dir: Path
    records: list[CallRecord]
    summary: dict[str, Any]
    series: RunSeries
    note: str | None  # why the summary was recomputed, if it was


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


def load_run(run_dir: Path) -> RunData:
    if not run_dir.is_dir():
        raise UserError(f"{run_dir}: not a directory")
    calls = run_dir / CALLS_FILE
    if not calls.is_file():
        raise UserError(f"{run_dir}: no {CALLS_FILE} here (not a voiceload run directory?)")
    records = load_calls(calls)
    series = build_series(records)
    summary, note = None, None
    spath = run_dir / SUMMARY_FILE
    if spath.is_file():
        try:
            summary = json.loads(spath.read_text(encoding="utf-8"))
            if not isinstance(summary, dict) or summary.get("schema") != SUMMARY_SCHEMA:
                raise ValueError(f"not a schema {SUMMARY_SCHEMA} summary")
        except (OSError, ValueError) as exc:
            log.warning("%s: %s; recomputing it from %s", spath, exc, CALLS_FILE)
            summary, note = None, f"{SUMMARY_FILE} unreadable ({exc}): recomputed from {CALLS_FILE}"
    else:
        note = f"no {SUMMARY_FILE}: recomputed from {CALLS_FILE}"
    if summary is None:
        summary = _recompute(records, series, run_dir)
        note = f"{note}; generator health unknown (heartbeats are not in {CALLS_FILE})"
    return RunData(run_dir, records, summary, series, note)


def stored_slos(summary: dict[str, Any]) -> list[SloResult]:
    """summary.json's `slo` list back into results; a malformed entry is skipped with a warning."""
    out: list[SloResult] = []
    items = summary.get("slo") or []
    for item in items if isinstance(items, list) else []:
        try:
            value = item["value"]
            out.append(StoredSlo(str(item["expr"]), str(item["metric"]), str(item["op"]), float(item["threshold"]),
                                 None if value is None else float(value), bool(item["passed"])))
        except (KeyError, TypeError, ValueError) as exc:
            log.warning("ignored a malformed SLO result in %s: %r (%s)", SUMMARY_FILE, item, exc)
    return out


def _recompute(records: list[CallRecord], series: RunSeries, run_dir: Path) -> dict[str, Any]:
    started = series.t0
    ended = started + len(series.buckets) * series.bucket_s
    return summarize(
        records, run_id=records[0].run_id if records else run_dir.name, scenario_name="", target="",
        concurrency=0, calls_planned=len(records), started_at=started, ended_at=ended, health=GeneratorHealth(),
    )


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


# --- turns.csv ------------------------------------------------------------------------------------


def turns_csv(records: Iterable[CallRecord]) -> str:
    """One row per turn of every call (the greeting is not a turn); empty cells for unknown values."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(TURNS_CSV_COLUMNS)
    for rec in records:
        for t in rec.turns:
            w.writerow([rec.call_id, rec.agent_id, rec.seq, rec.outcome, t.index, _cell(t.utterance_start_ms),
                        _cell(t.utterance_end_ms), _cell(t.bot_onset_ms), _cell(t.bot_end_ms), _cell(t.latency_ms),
                        "true" if t.ok else "false", t.reason or "", _cell(t.prompt_score)])
    return buf.getvalue()


def _cell(v: float | None) -> str:
    return "" if v is None else f"{v:g}"


# --- junit.xml ------------------------------------------------------------------------------------

_XML_INVALID = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff]")


def _x(s: str) -> str:
    """Text safe for XML 1.0 (ElementTree escapes markup but not control characters)."""
    return _XML_INVALID.sub("?", s)


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


def junit_xml(summary: dict[str, Any], slos: Sequence[SloResult], *, greeting: GreetingCounts | None = None) -> str:
    """JUnit XML: one suite "voiceload"; cases "run valid", one per SLO, "greeting", one per turn."""
    cases: list[ET.Element] = []

    def case(classname: str, name: str, failure: str | None = None, detail: str = "", kind: str = "") -> None:
        tc = ET.Element("testcase", classname=classname, name=_x(name), time="0")
        if failure is not None:
            f = ET.SubElement(tc, "failure", message=_x(failure), type=kind)
            f.text = _x(detail or failure)
        cases.append(tc)

    reasons = [str(r) for r in summary.get("invalid_reasons", [])]
    case("voiceload.run", "run valid",
         None if summary.get("valid", False) else "run invalid: " + "; ".join(reasons or ["no reason given"]),
         "\n".join(reasons), "invalid")
    for slo in slos:
        fail = None
        if not slo.passed:
            measured = "not measured" if slo.value is None else f"{slo.value:g}"
            fail = f"{slo.metric} = {measured}, threshold {slo.op} {slo.threshold:g}"
        case("voiceload.slo", slo.expr, fail, kind="slo")
    if greeting is not None:
        n = greeting.ok + greeting.not_ok
        case("voiceload.turns", "greeting",
             _turn_failure("the greeting", greeting.not_ok, n, greeting.reasons) if greeting.not_ok else None,
             _reasons_text(greeting.reasons), "turn")
    for t in summary.get("turns", []):
        n = t["ok"] + t["not_ok"]
        case("voiceload.turns", f"turn {t['index']}",
             _turn_failure(f"turn {t['index']}", t["not_ok"], n, t["reasons"]) if t["not_ok"] else None,
             _reasons_text(t["reasons"]), "turn")

    failures = sum(1 for c in cases if c.find("failure") is not None)
    attrs = {"tests": str(len(cases)), "failures": str(failures), "errors": "0", "skipped": "0",
             "time": f"{float(summary.get('duration_s') or 0):.3f}"}
    root = ET.Element("testsuites", {"name": "voiceload", **attrs})
    suite = ET.SubElement(root, "testsuite",
                          {"name": "voiceload", "timestamp": _iso(summary.get("started_at")), **attrs})
    props = ET.SubElement(suite, "properties")
    for key in ("run_id", "scenario", "target", "concurrency", "completion_rate"):
        ET.SubElement(props, "property", name=key, value=_x(str(summary.get(key, ""))))
    suite.extend(cases)
    ET.indent(root)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n"


def _turn_failure(what: str, not_ok: int, n: int, reasons: dict[str, int]) -> str:
    top = next(iter(reasons.items()), None)
    msg = f"{not_ok} of {n} calls not ok at {what}"
    return msg + (f"; top reason: {top[0]} ({top[1]})" if top else "")


def _reasons_text(reasons: dict[str, int]) -> str:
    return "\n".join(f"{n} x {why}" for why, n in reasons.items())


def _iso(ts: Any) -> str:
    if not isinstance(ts, int | float) or ts <= 0:
        return ""
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%S")


# --- report.html ----------------------------------------------------------------------------------

BLUE, ORANGE, GREEN, RED, GRAY, PURPLE = "#2563eb", "#ea580c", "#16a34a", "#dc2626", "#6b7280", "#7c3aed"
OUTCOME_COLORS = {"completed": GREEN, "failed": RED, "rejected": ORANGE, "timeout": PURPLE, "error": GRAY,
                  "agent_lost": "#0891b2"}

CSS = """
:root { --fg:#1f2937; --muted:#6b7280; --line:#e5e7eb; --bg:#f9fafb; --ok:#15803d; --bad:#b91c1c; --warn:#b45309; }
* { box-sizing: border-box; }
body { margin: 0; background: #fff; color: var(--fg);
       font: 15px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, "DejaVu Sans", "Liberation Sans", sans-serif; }
main { max-width: 1100px; margin: 0 auto; padding: 28px 32px 48px; }
h1 { font-size: 26px; margin: 0 0 4px; }
h2 { font-size: 19px; margin: 36px 0 10px; padding-bottom: 4px; border-bottom: 2px solid var(--line); }
.sub { color: var(--muted); margin: 0 0 18px; overflow-wrap: anywhere; }
.verdict { border-radius: 10px; padding: 14px 18px; margin: 0 0 16px; font-size: 18px; font-weight: 600;
           border: 1px solid; }
.verdict.pass { background: #f0fdf4; border-color: #86efac; color: var(--ok); }
.verdict.fail { background: #fef2f2; border-color: #fca5a5; color: var(--bad); }
.verdict.invalid { background: #fffbeb; border-color: #fcd34d; color: var(--warn); }
.verdict ul { margin: 6px 0 0; font-size: 15px; font-weight: 400; }
.kpis { display: grid; grid-template-columns: repeat(4, 1fr); gap: 12px; margin-bottom: 8px; }
.kpi { background: var(--bg); border: 1px solid var(--line); border-radius: 10px; padding: 12px 16px; }
.kpi .label { display: block; color: var(--muted); font-size: 13px; text-transform: uppercase; letter-spacing: .04em; }
.kpi .value { display: block; font-size: 28px; font-weight: 700; font-variant-numeric: tabular-nums; }
.kpi .detail { display: block; color: var(--muted); font-size: 13px; }
.good { color: var(--ok); } .bad { color: var(--bad); } .warn { color: var(--warn); }
table { border-collapse: collapse; width: 100%; font-variant-numeric: tabular-nums; font-size: 14px; }
th, td { padding: 5px 10px; border-bottom: 1px solid var(--line); text-align: right; vertical-align: top; }
th { background: var(--bg); font-weight: 600; }
th:first-child, td:first-child, .text { text-align: left; }
td.text { overflow-wrap: anywhere; }
table.kv td:first-child { color: var(--muted); width: 28%; }
table.kv td { text-align: left; }
.cols { display: grid; grid-template-columns: 1fr 1fr; gap: 24px; }
figure { margin: 14px 0 22px; break-inside: avoid; page-break-inside: avoid; }
figure img { width: 100%; height: auto; border: 1px solid var(--line); border-radius: 6px; }
figcaption { color: var(--muted); font-size: 13px; margin-top: 4px; }
.note { color: var(--warn); }
footer { margin-top: 40px; color: var(--muted); font-size: 13px; }
code { font-family: "DejaVu Sans Mono", monospace; font-size: 13px; }
@media (max-width: 800px) { .kpis { grid-template-columns: 1fr 1fr; } .cols { grid-template-columns: 1fr; } }
@media print {
  main { max-width: none; padding: 0; } body { font-size: 12px; }
  h2 { break-after: avoid; page-break-after: avoid; } table, .kpis { break-inside: avoid; }
  .verdict, .kpi, th { -webkit-print-color-adjust: exact; print-color-adjust: exact; }
}
"""


def fmt_ms(v: float | None) -> str:
    """A latency in ms as the report prints it (summary.json values to 0.1 ms keep their digits)."""
    if v is None:
        return "–"
    return f"{v:.1f}" if abs(v) >= 10 else f"{v:.2f}"


def fmt_pct(rate: float) -> str:
    return f"{100 * rate:.1f} %"


def _e(v: Any) -> str:
    return html.escape(str(v), quote=True)


def render_html(run: RunData, slos: Sequence[SloResult] = ()) -> str:
    s = run.summary
    calls = s["calls"]
    lat = s["turn_latency_ms"]
    valid = bool(s.get("valid", False))
    failed_slos = [x for x in slos if not x.passed]
    parts: list[str] = []
    add = parts.append

    add(f"<h1>voiceload report</h1><p class='sub'>run <b>{_e(s['run_id'])}</b>"
        f" · scenario <b>{_e(s.get('scenario') or '–')}</b> → {_e(s.get('target') or '–')}"
        f" · target concurrency {_e(s.get('concurrency') or '–')}"
        f" · started {_e(_iso(s.get('started_at')).replace('T', ' ') or '–')} UTC"
        f" · {float(s.get('duration_s') or 0):.1f} s</p>")

    # verdict: invalid beats an SLO failure (exit 3 before exit 1); then SLOs; then plain validity
    if not valid:
        cls, text = "invalid", "INVALID run: the numbers below cannot be trusted"
    elif failed_slos:
        cls, text = "fail", f"FAIL: {len(failed_slos)} of {len(slos)} SLOs not met"
    elif slos:
        cls, text = "pass", f"PASS: valid run, all {len(slos)} SLOs met"
    else:
        cls, text = "pass", "VALID run (no SLOs given)"
    items = [f"<li>{_e(r)}</li>" for r in s.get("invalid_reasons", [])]
    items += [f"<li>SLO <code>{_e(x.expr)}</code> failed: {_e(_slo_measured(x))}</li>" for x in failed_slos]
    add(f"<div class='verdict {cls}'>{_e(text)}" + (f"<ul>{''.join(items)}</ul>" if items else "") + "</div>")
    if run.note:
        add(f"<p class='note'>Note: {_e(run.note)}.</p>")
    if not run.records:
        add(f"<p class='note'>No calls were placed: {_e(CALLS_FILE)} holds no call records.</p>")

    rate = float(s["completion_rate"])
    rate_cls = "good" if rate >= 0.99 else "warn" if rate >= 0.9 else "bad"
    validity = ("<span class='good'>VALID</span>" if valid else "<span class='bad'>INVALID</span>")
    slo_kpi = (f"{len(slos) - len(failed_slos)}/{len(slos)} SLOs met" if slos else "no SLOs")
    add("<div class='kpis'>"
        + _kpi("Completion", f"<span class='{rate_cls}'>{fmt_pct(rate)}</span>",
               f"{calls['completed']} of {calls['placed']} placed calls ({calls['planned']} planned)")
        + _kpi("Turn latency p50", f"{fmt_ms(lat['p50'])} ms", f"{lat['count']} turns measured")
        + _kpi("Turn latency p95", f"{fmt_ms(lat['p95'])} ms",
               f"p99 {fmt_ms(lat['p99'])} ms, max {fmt_ms(lat['max'])} ms")
        + _kpi("Validity", validity, slo_kpi)
        + "</div>")

    if slos:
        add("<h2>SLOs</h2><table><tr><th>SLO</th><th class='text'>metric</th><th>measured</th><th>threshold</th>"
            "<th>result</th></tr>")
        for x in slos:
            res = "<span class='good'>pass</span>" if x.passed else "<span class='bad'>FAIL</span>"
            measured = "not measured" if x.value is None else f"{x.value:g}"
            add(f"<tr><td class='text'><code>{_e(x.expr)}</code></td><td class='text'>{_e(x.metric)}</td>"
                f"<td>{_e(measured)}</td><td>{_e(x.op)} {x.threshold:g}</td><td>{res}</td></tr>")
        add("</table>")

    if isinstance(s.get("capacity"), dict):
        add(_capacity_section(s["capacity"]))

    add("<h2>Summary</h2>")
    add(_summary_tables(s, run.series))

    add("<h2>Load and latency over time</h2>")
    add(_figure_html(plot_concurrency(run.series, int(s.get("concurrency") or 0)),
                     "Calls in progress per second (mean and peak within each second), from call start "
                     "to hang-up; unanswered calls until the agent gave up."))
    add(_figure_html(plot_latency_over_time(run.series, s, slos),
                     "Turn latency per second, by the arrival of the bot's reply (HDR percentiles per second); "
                     "dashed: the whole run's p50 and p95."))
    add(_figure_html(plot_latency_vs_concurrency(run.series),
                     "Turn latency grouped by the number of calls in progress when the bot replied "
                     "(bars: turns measured)."))
    add(_figure_html(plot_completion(run.series),
                     "Calls ended per second, completed vs not completed; line: cumulative completion rate."))
    add(_figure_html(plot_outcomes(s), "Call outcomes and final SIP responses to the INVITE."))

    add("<h2>Turns</h2>")
    add(_turns_table(s, greeting_counts(run.records)))
    why = _failure_reasons(run.records)
    if why:
        add("<h2>Why calls did not complete</h2><table><tr><th>reason (numbers as N)</th><th>calls</th></tr>")
        add("".join(f"<tr><td class='text'>{_e(r)}</td><td>{n}</td></tr>" for r, n in why))
        add("</table>")
    add(f"<h2>Slowest {SLOWEST_CALLS} calls</h2>")
    add(_slowest_table(run.records))

    version = _version()
    add(f"<footer>voiceload {_e(version)} · rebuilt from <code>{_e(CALLS_FILE)}</code> with "
        f"<code>voiceload report {_e(run.run_dir)}</code> · also in this directory: "
        f"<a href='{TURNS_CSV}'>{TURNS_CSV}</a>, <a href='{JUNIT_XML}'>{JUNIT_XML}</a>, "
        f"<a href='{SUMMARY_FILE}'>{SUMMARY_FILE}</a>, <a href='{CALLS_FILE}'>{CALLS_FILE}</a>. "
        "Latency is wire latency: last caller packet sent → first bot packet received.</footer>")

    title = f"voiceload report · {s['run_id']}"
    return ("<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
            "<meta name='viewport' content='width=device-width, initial-scale=1'>"
            f"<title>{_e(title)}</title><style>{CSS}</style></head>\n<body><main>\n"
            + "\n".join(parts) + "\n</main></body></html>\n")


def _capacity_section(cap: dict[str, Any]) -> str:
    """`voiceload capacity`: the answer, the per-level table and latency vs concurrency per level."""
    steps = cap.get("steps") or []
    out = [f"<h2>Capacity search</h2><p><b>{_e(cap.get('headline', ''))}</b></p>",
           f"<p class='sub'>levels {_e(cap.get('start'))}, +{_e(cap.get('step'))} … ≤ {_e(cap.get('max'))}; "
           f"each held {_e(cap.get('hold_s'))} s after {_e(cap.get('settle_s'))} s to settle; SLOs: "
           + ", ".join(f"<code>{_e(x)}</code>" for x in cap.get("slos", [])) + "</p>",
           "<table><tr><th>calls in flight</th><th>try</th><th>calls judged</th><th>completed</th><th>calls/s</th>"
           "<th>turns</th><th>p50 ms</th><th>p95 ms</th><th>host CPU %</th><th class='text'>verdict</th></tr>"]
    for st in steps:
        if not st.get("valid", True):
            verdict = "<span class='bad'>generator saturated</span>: " + _e("; ".join(st["invalid_reasons"]))
        elif st.get("passed"):
            verdict = "<span class='good'>SLOs met</span>"
        else:
            verdict = "<span class='bad'>broke</span> " + _e("; ".join(st["failed_slos"]))
        cpu = st.get("host_cpu_percent")
        out.append(f"<tr><td>{st['concurrency']}</td><td>{st['attempt']}</td><td>{st['calls']}</td>"
                   f"<td>{st['completed']}</td><td>{st['calls_per_s']:.2f}</td><td>{st['turns']}</td>"
                   f"<td>{fmt_ms(st['p50_ms'])}</td><td>{fmt_ms(st['p95_ms'])}</td>"
                   f"<td>{'–' if cpu is None else f'{cpu:.0f}'}</td><td class='text'>{verdict}</td></tr>")
    out.append("</table>")
    out.append(_figure_html(plot_capacity(cap), "Turn latency at each level of the search, judged on the calls that "
                                                "ended in the level's window; red: the latency SLO."))
    return "".join(out)


def plot_capacity(cap: dict[str, Any]) -> Figure:
    fig, ax = _titled_plot("Latency vs concurrency (capacity search)", "calls in flight", "turn latency (ms)")
    steps = [st for st in cap.get("steps") or [] if st.get("p95_ms") is not None]
    if not steps:
        _no_data(ax, "turn latency measured")
        return fig
    x = [st["concurrency"] for st in steps]
    ax.plot(x, [st["p95_ms"] for st in steps], color=ORANGE, marker="o", linewidth=1.6, label="p95")
    ax.plot(x, [st["p50_ms"] for st in steps], color=BLUE, marker="o", linewidth=1.6, label="p50")
    for st in steps:
        if not st.get("valid", True) or not st.get("passed"):
            ax.plot([st["concurrency"]], [st["p95_ms"]], marker="x", color=RED, markersize=10, linestyle="none")
    limits = [_threshold(expr) for expr in cap.get("slos", []) if "turn" in expr and "latency" in expr]
    for lim in limits:
        if lim is not None:
            ax.axhline(lim, color=RED, linestyle=":", linewidth=1.5, label=f"SLO {lim:g} ms")
    if cap.get("knee") is not None:
        ax.axvline(cap["knee"], color=GREEN, linestyle="--", linewidth=1, label=f"knee {cap['knee']}")
    top = max([st["p95_ms"] for st in steps] + [v for v in limits if v is not None])
    ax.set_ylim(0, top * 1.3)
    ax.legend(loc="upper left", frameon=False, ncols=4, fontsize=9)
    return fig


def _threshold(expr: str) -> float | None:
    m = re.search(r"[<>]=?\s*([0-9.]+)\s*$", expr)
    return float(m.group(1)) if m else None


def _kpi(label: str, value_html: str, detail: str) -> str:
    return (f"<div class='kpi'><span class='label'>{_e(label)}</span><span class='value'>{value_html}</span>"
            f"<span class='detail'>{_e(detail)}</span></div>")


def _slo_measured(x: SloResult) -> str:
    measured = "not measured" if x.value is None else f"{x.value:g}"
    return f"{x.metric} = {measured}, threshold {x.op} {x.threshold:g}"


def _stat_line(st: dict[str, Any]) -> str:
    if not st or not st.get("count"):
        return "–"
    oor = f", {st['out_of_range']} out of range" if st.get("out_of_range") else ""
    return (f"p50 {fmt_ms(st['p50'])} · p95 {fmt_ms(st['p95'])} · p99 {fmt_ms(st['p99'])} · "
            f"max {fmt_ms(st['max'])} ms (n={st['count']}{oor})")


def _counts(d: dict[str, Any]) -> str:
    return ", ".join(f"{k}: {v}" for k, v in d.items() if v) or "–"


def _summary_tables(s: dict[str, Any], series: RunSeries) -> str:
    calls = s["calls"]
    gen = s.get("generator", {})
    cpu, lag = gen.get("max_cpu_percent"), gen.get("max_pump_lag_ms")
    limits = gen.get("limits", {})
    left = [
        ("run id", s["run_id"]),
        ("scenario", s.get("scenario") or "–"),
        ("target", s.get("target") or "–"),
        ("target concurrency", s.get("concurrency") or "–"),
        ("peak calls in progress", series.peak_active),
        ("started", (_iso(s.get("started_at")).replace("T", " ") + " UTC") if s.get("started_at") else "–"),
        ("duration", f"{float(s.get('duration_s') or 0):.1f} s"),
        ("calls", f"{calls['planned']} planned, {calls['placed']} placed, {calls['completed']} completed, "
                  f"{calls['failed']} not completed"),
        ("completion rate", fmt_pct(float(s["completion_rate"]))),
        ("outcomes", _counts(s.get("outcomes", {}))),
    ]
    right = [
        ("turn latency (ms)", _stat_line(s["turn_latency_ms"])),
        ("greeting onset (ms)", _stat_line(s.get("greeting_onset_ms", {}))),
        ("SIP setup (ms)", _stat_line(s.get("setup_ms", {}))),
        ("SIP codes", _counts(s.get("sip_codes", {}))),
        ("hung up by", _counts(s.get("hangup_by", {}))),
        ("generator", f"{gen.get('agents', '–')} agents, {gen.get('heartbeats', '–')} heartbeats"),
        ("agent CPU, worst",
         "–" if cpu is None else f"{cpu:.0f} % of a core (limit {limits.get('cpu_percent', '–')} %)"),
        ("pump lag, worst", "–" if lag is None else f"{lag:.0f} ms (limit {limits.get('pump_lag_ms', '–')} ms)"),
        ("validity", "valid" if s.get("valid") else "INVALID: " + "; ".join(map(str, s.get("invalid_reasons", [])))),
    ]
    if series.estimated_ends:
        left.append(("estimated call ends", f"{series.estimated_ends} calls (never answered or no duration)"))

    def table(rows: list[tuple[str, Any]]) -> str:
        return ("<table class='kv'>" + "".join(f"<tr><td>{_e(k)}</td><td>{_e(v)}</td></tr>" for k, v in rows)
                + "</table>")

    return f"<div class='cols'>{table(left)}{table(right)}</div>"


def _turns_table(s: dict[str, Any], greeting: GreetingCounts | None) -> str:
    head = ("<table><tr><th>turn</th><th>n</th><th>ok</th><th>not ok</th><th>p50</th><th>p90</th><th>p95</th>"
            "<th>p99</th><th>max</th><th class='text'>top failure reasons</th></tr>")
    rows = []

    def row(name: str, st: dict[str, Any], ok: Any, not_ok: Any, reasons: dict[str, int]) -> None:
        top = "; ".join(f"{why} ({n})" for why, n in list(reasons.items())[:3])
        cells = "".join(f"<td>{fmt_ms(st.get(k))}</td>" for k in ("p50", "p90", "p95", "p99", "max"))
        bad = " class='bad'" if isinstance(not_ok, int) and not_ok else ""
        rows.append(f"<tr><td>{_e(name)}</td><td>{st.get('count', 0)}</td><td>{_e(ok)}</td>"
                    f"<td{bad}>{_e(not_ok)}</td>{cells}<td class='text'>{_e(top)}</td></tr>")

    if greeting is not None or s.get("greeting_onset_ms", {}).get("count"):
        g = greeting or GreetingCounts(0, 0, {})
        row("greeting (onset)", s.get("greeting_onset_ms", {}), g.ok, g.not_ok, g.reasons)
    for t in s.get("turns", []):
        row(f"turn {t['index']}", t["latency_ms"], t["ok"], t["not_ok"], t["reasons"])
    row("all turns", s["turn_latency_ms"], "", "", {})
    return head + "".join(rows) + "</table><p class='sub'>latencies in ms; n = replies measured (late ones too)</p>"


def _failure_reasons(records: Iterable[CallRecord], top: int = 10) -> list[tuple[str, int]]:
    c: Counter[str] = Counter(reason_key(r.reason) for r in records if r.outcome != OUTCOME_COMPLETED)
    return c.most_common(top)


def _worst_turn(rec: CallRecord) -> tuple[float, int] | None:
    lat = [(t.latency_ms, t.index) for t in rec.turns if t.latency_ms is not None]
    return max(lat) if lat else None


def slowest_calls(records: Iterable[CallRecord], n: int = SLOWEST_CALLS) -> list[tuple[CallRecord, float, int]]:
    """The n calls with the worst turn latency: (record, latency ms, turn index), worst first."""
    worst = ((rec, w) for rec in records if (w := _worst_turn(rec)) is not None)
    return [(rec, w[0], w[1]) for rec, w in heapq.nlargest(n, worst, key=lambda x: x[1][0])]


def _slowest_table(records: list[CallRecord]) -> str:
    rows = slowest_calls(records)
    if not rows:
        return "<p class='sub'>No turn latency was measured.</p>"
    out = ["<table><tr><th class='text'>call id</th><th class='text'>agent</th><th>worst turn latency (ms)</th>"
           "<th>turn</th><th class='text'>outcome</th><th class='text'>reason</th></tr>"]
    for rec, ms, idx in rows:
        cls = "good" if rec.outcome == OUTCOME_COMPLETED else "bad"
        out.append(f"<tr><td class='text'><code>{_e(rec.call_id)}</code></td><td class='text'>{_e(rec.agent_id)}</td>"
                   f"<td>{fmt_ms(ms)}</td><td>{idx}</td><td class='text {cls}'>{_e(rec.outcome)}</td>"
                   f"<td class='text'>{_e(rec.reason or '')}</td></tr>")
    out.append("</table>")
    return "".join(out)


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("voiceload")
    except Exception:
        return "?"


# --- plots ----------------------------------------------------------------------------------------


def _new_figure(height: float = 3.3, cols: int = 1) -> tuple[Figure, list[Axes]]:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(10, height), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)  # Agg, without pyplot's global state
    axes = [fig.add_subplot(1, cols, i + 1) for i in range(cols)]
    for ax in axes:
        ax.grid(True, color="#e5e7eb", linewidth=0.8)
        ax.set_axisbelow(True)
        for side in ("top", "right"):
            ax.spines[side].set_visible(False)
    return fig, axes


def _png_b64(fig: Figure) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, metadata={"Software": None})
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _figure_html(fig: Figure, caption: str) -> str:
    title = fig.axes[0].get_title() if fig.axes else ""
    return (f"<figure><img alt='{_e(title)}' src='data:image/png;base64,{_png_b64(fig)}'>"
            f"<figcaption>{_e(caption)}</figcaption></figure>")


def _no_data(ax: Axes, what: str) -> None:
    ax.text(0.5, 0.5, f"no {what}", ha="center", va="center", transform=ax.transAxes, color=GRAY, fontsize=12)


def _nan(values: Iterable[float | None]) -> list[float]:
    return [float("nan") if v is None else v for v in values]


def _titled_plot(title: str, xlabel: str, ylabel: str) -> tuple[Figure, Axes]:
    """One plot with the report's title style and axis labels."""
    fig, (ax,) = _new_figure()
    ax.set_title(title, loc="left", fontweight="bold")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    return fig, ax


SINCE_START = "seconds since the first INVITE"


def plot_concurrency(series: RunSeries, target: int = 0) -> Figure:
    fig, ax = _titled_plot("Concurrency over time", SINCE_START, "calls in progress")
    if not series.buckets:
        _no_data(ax, "calls")
        return fig
    edges = [b.t for b in series.buckets] + [series.buckets[-1].t + series.bucket_s]
    ax.stairs([b.active_peak for b in series.buckets], edges, color=BLUE, alpha=0.35, linewidth=1, label="peak")
    ax.stairs([b.active for b in series.buckets], edges, color=BLUE, fill=True, alpha=0.25)
    ax.stairs([b.active for b in series.buckets], edges, color=BLUE, linewidth=1.8, label="mean")
    if target:
        ax.axhline(target, color=GRAY, linestyle="--", linewidth=1, label=f"target {target}")
    ax.set_ylim(0, max(series.peak_active, target, 1) * 1.15)
    ax.set_xlim(edges[0], edges[-1])
    ax.legend(loc="upper right", frameon=False, ncols=3)
    return fig


def plot_latency_over_time(series: RunSeries, summary: dict[str, Any], slos: Sequence[SloResult] = ()) -> Figure:
    fig, ax = _titled_plot("Turn latency over time", SINCE_START, "latency (ms)")
    pts = [b for b in series.buckets if b.turns]
    if not pts:
        _no_data(ax, "turn latency measured")
        return fig
    t = [b.t + series.bucket_s / 2 for b in series.buckets]
    ax.plot(t, _nan(b.latency_p95 for b in series.buckets), color=ORANGE, marker="o", markersize=3.5,
            linewidth=1.2, label="p95 per second")
    ax.plot(t, _nan(b.latency_p50 for b in series.buckets), color=BLUE, marker="o", markersize=3.5,
            linewidth=1.2, label="p50 per second")
    lat = summary["turn_latency_ms"]
    if lat.get("p95") is not None:
        ax.axhline(lat["p95"], color=ORANGE, linestyle="--", linewidth=1, label=f"run p95 {fmt_ms(lat['p95'])} ms")
    if lat.get("p50") is not None:
        ax.axhline(lat["p50"], color=BLUE, linestyle="--", linewidth=1, label=f"run p50 {fmt_ms(lat['p50'])} ms")
    for x in slos:
        if "latency" in x.metric and "turn" in x.metric and x.op.startswith("<"):
            ax.axhline(x.threshold, color=RED, linestyle=":", linewidth=1.5, label=f"SLO {x.expr}")
    top = max(v for b in pts for v in (b.latency_p95, b.latency_p50) if v is not None)
    ax.set_ylim(0, max(top, *(x.threshold for x in slos if "latency" in x.metric and "turn" in x.metric),
                       lat.get("p95") or 0) * 1.4)  # room for the legend
    ax.set_xlim(0, series.buckets[-1].t + series.bucket_s)
    ax.legend(loc="upper right", frameon=False, ncols=3, fontsize=9)
    return fig


def plot_latency_vs_concurrency(series: RunSeries) -> Figure:
    fig, ax = _titled_plot("Turn latency vs concurrency", "calls in progress when the bot replied", "latency (ms)")
    groups = series.by_concurrency
    if not groups:
        _no_data(ax, "turn latency measured")
        return fig
    x = [(g.lo + g.hi) / 2 for g in groups]
    width = max(groups[0].hi - groups[0].lo + 1, 1) * 0.8
    counts = ax.twinx()
    counts.bar(x, [g.turns for g in groups], width=width, color="#d1d5db", alpha=0.6, zorder=0)
    counts.set_ylabel("turns measured", color=GRAY)
    counts.set_ylim(0, max(g.turns for g in groups) * 3)  # bars stay in the lower third
    counts.spines["top"].set_visible(False)
    ax.set_zorder(counts.get_zorder() + 1)
    ax.patch.set_visible(False)
    ax.plot(x, _nan(g.latency_p95 for g in groups), color=ORANGE, marker="o", linewidth=1.6, label="p95")
    ax.plot(x, _nan(g.latency_p50 for g in groups), color=BLUE, marker="o", linewidth=1.6, label="p50")
    top = max(v for g in groups for v in (g.latency_p95, g.latency_p50) if v is not None)
    ax.set_ylim(0, top * 1.25)
    from matplotlib.ticker import MaxNLocator

    lo, hi = groups[0].lo, groups[-1].hi
    pad = max(2.0, width)
    ax.set_xlim(max(lo - pad, 0), hi + pad)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.legend(loc="upper left", frameon=False, ncols=2)
    return fig


def plot_completion(series: RunSeries) -> Figure:
    fig, ax = _titled_plot("Completion over time", SINCE_START, "calls ended per second")
    if not series.buckets:
        _no_data(ax, "calls")
        return fig
    edges = [b.t for b in series.buckets] + [series.buckets[-1].t + series.bucket_s]
    done = [b.completed for b in series.buckets]
    total = [b.completed + b.failed for b in series.buckets]
    ax.stairs(total, edges, fill=True, color=RED, label="not completed")
    ax.stairs(done, edges, fill=True, color=GREEN, label="completed")
    ax.set_ylim(0, max(max(total), 1) * 1.45)  # room for the legend above the bars and the 100 % line
    ax.set_xlim(edges[0], edges[-1])
    rate_ax = ax.twinx()
    c_done = c_all = 0
    cum: list[float] = []
    for d, a in zip(done, total, strict=True):
        c_done, c_all = c_done + d, c_all + a
        cum.append(100 * c_done / c_all if c_all else float("nan"))
    rate_ax.plot([e + series.bucket_s for e in edges[:-1]], cum, color="#111827", linewidth=1.2,
                 label="cumulative completion %")
    rate_ax.set_ylim(0, 130)
    rate_ax.set_yticks([0, 20, 40, 60, 80, 100])
    rate_ax.set_ylabel("completion %")
    rate_ax.spines["top"].set_visible(False)
    h1, l1 = ax.get_legend_handles_labels()
    h2, l2 = rate_ax.get_legend_handles_labels()
    ax.legend(h1 + h2, l1 + l2, loc="upper left", frameon=False, ncols=3)
    return fig


def plot_outcomes(summary: dict[str, Any]) -> Figure:
    fig, (ax1, ax2) = _new_figure(height=3.0, cols=2)
    ax1.set_title("Call outcomes", loc="left", fontweight="bold")
    ax2.set_title("Final SIP response", loc="left", fontweight="bold")
    outcomes = {o: int(summary.get("outcomes", {}).get(o, 0)) for o in OUTCOMES}
    _bars(ax1, list(outcomes), list(outcomes.values()), [OUTCOME_COLORS.get(o, GRAY) for o in outcomes])
    codes = summary.get("sip_codes", {})
    colors = [GREEN if c.startswith("2") else GRAY if c == "none" else RED for c in codes]
    if codes:
        _bars(ax2, list(codes), [int(v) for v in codes.values()], colors)
    else:
        _no_data(ax2, "calls")
    return fig


def _bars(ax: Axes, labels: list[str], values: list[int], colors: list[str]) -> None:
    bars = ax.bar(labels, values, color=colors, width=0.6)
    ax.bar_label(bars, padding=2, fontsize=9)
    ax.set_ylim(0, max(max(values, default=0), 1) * 1.2)
    ax.set_xlim(-0.75, max(len(labels), 4) - 0.25)  # a lone bar stays a bar, not a wall
    ax.set_ylabel("calls")
    ax.grid(axis="x", visible=False)

