"""report.html: one self-contained page (inline CSS from report.css, plots as inline PNGs, no scripts).

Every string that comes from a record is escaped. See docs/reports.md.
"""

from __future__ import annotations

import functools
import heapq
import html
from collections.abc import Iterable, Sequence
from importlib.resources import files
from typing import TYPE_CHECKING, Any

from voiceload.audio.wav import read_tape_tracks
from voiceload.core.summary import (
    LatencyStats,
    MediaSummary,
    QualityStats,
    SpreadStats,
    Summary,
    failure_counts,
    top_failures,
)
from voiceload.core.timeseries import RunSeries
from voiceload.protocol import OUTCOME_COMPLETED, CallRecord
from voiceload.report.formats import fmt_ms, fmt_pct, iso_utc
from voiceload.report.plots import (
    plot_capacity,
    plot_completion,
    plot_concurrency,
    plot_latency_over_time,
    plot_latency_vs_concurrency,
    plot_mos,
    plot_outcomes,
    plot_tape,
    png_b64,
)
from voiceload.report.rundir import (
    JUNIT_XML,
    TAPES_DIR,
    TURNS_CSV,
    GreetingCounts,
    RunData,
    SloResult,
    greeting_counts,
    kept_tape,
)
from voiceload.results.collector import CALLS_FILE, SUMMARY_FILE

if TYPE_CHECKING:
    from matplotlib.figure import Figure

SLOWEST_CALLS = 10
CSS_RESOURCE = "report.css"


@functools.cache
def css() -> str:
    """The page's style sheet, a package data file (inlined: the page must open offline)."""
    return files("voiceload.report").joinpath(CSS_RESOURCE).read_text(encoding="utf-8")


def _e(v: Any) -> str:
    return html.escape(str(v), quote=True)


def render_html(run: RunData, slos: Sequence[SloResult] = ()) -> str:
    s = run.summary
    parts = [_header(s), _verdict(s, slos)]
    if run.note:
        parts.append(f"<p class='note'>Note: {_e(run.note)}.</p>")
    if not run.records:
        parts.append(f"<p class='note'>No calls were placed: {_e(CALLS_FILE)} holds no call records.</p>")
    parts.append(_kpis(s, slos))
    if slos:
        parts.append(_slo_table(slos))
    if isinstance(s.capacity, dict):
        parts.append(_capacity_section(s.capacity))
    parts += ["<h2>Summary</h2>", _summary_tables(s, run.series)]
    parts += ["<h2>Load and latency over time</h2>", _figures(run, slos)]
    parts += ["<h2>Turns</h2>", _turns_table(s, greeting_counts(run.records))]
    if s.media is not None:
        parts.append(_quality_section(s.media, run.records))
    why = _failure_reasons(run.records)
    if why:
        parts.append(_failure_table(why))
    slowest = slowest_calls(run.records)
    parts += [f"<h2>Slowest {SLOWEST_CALLS} calls</h2>", _slowest_table(run, slowest)]
    if (run.run_dir / TAPES_DIR).is_dir():
        parts.append(_slowest_tapes(run, slowest))
    parts.append(_footer(run))
    return _page(f"voiceload report · {s.run_id}", parts)


def _page(title: str, parts: list[str]) -> str:
    return ("<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
            "<meta name='viewport' content='width=device-width, initial-scale=1'>"
            f"<title>{_e(title)}</title><style>\n{css()}</style></head>\n<body><main>\n"
            + "\n".join(parts) + "\n</main></body></html>\n")


def _header(s: Summary) -> str:
    return (f"<h1>voiceload report</h1><p class='sub'>run <b>{_e(s.run_id)}</b>"
            f" · scenario <b>{_e(s.scenario or '–')}</b> → {_e(s.target or '–')}"
            f" · target concurrency {_e(s.concurrency or '–')}"
            f" · started {_e(iso_utc(s.started_at).replace('T', ' ') or '–')} UTC"
            f" · {float(s.duration_s or 0):.1f} s</p>")


def _verdict(s: Summary, slos: Sequence[SloResult]) -> str:
    """Invalid beats an SLO failure (exit 3 before exit 1); then SLOs; then plain validity."""
    failed_slos = [x for x in slos if not x.passed]
    if not s.valid:
        cls, text = "invalid", "INVALID run: the numbers below cannot be trusted"
    elif failed_slos:
        cls, text = "fail", f"FAIL: {len(failed_slos)} of {len(slos)} SLOs not met"
    elif slos:
        cls, text = "pass", f"PASS: valid run, all {len(slos)} SLOs met"
    else:
        cls, text = "pass", "VALID run (no SLOs given)"
    items = [f"<li>{_e(r)}</li>" for r in s.invalid_reasons]
    items += [f"<li>SLO <code>{_e(x.expr)}</code> failed: {_e(_slo_measured(x))}</li>" for x in failed_slos]
    return f"<div class='verdict {cls}'>{_e(text)}" + (f"<ul>{''.join(items)}</ul>" if items else "") + "</div>"


def _kpis(s: Summary, slos: Sequence[SloResult]) -> str:
    calls, lat = s.calls, s.turn_latency_ms
    met = sum(1 for x in slos if x.passed)
    rate = float(s.completion_rate)
    rate_cls = "good" if rate >= 0.99 else "warn" if rate >= 0.9 else "bad"
    validity = ("<span class='good'>VALID</span>" if s.valid else "<span class='bad'>INVALID</span>")
    return ("<div class='kpis'>"
            + _kpi("Completion", f"<span class='{rate_cls}'>{fmt_pct(rate)}</span>",
                   f"{calls.completed} of {calls.placed} placed calls ({calls.planned} planned)")
            + _kpi("Turn latency p50", f"{fmt_ms(lat.p50)} ms", f"{lat.count} turns measured")
            + _kpi("Turn latency p95", f"{fmt_ms(lat.p95)} ms",
                   f"p99 {fmt_ms(lat.p99)} ms, max {fmt_ms(lat.max)} ms")
            + _kpi("Validity", validity, f"{met}/{len(slos)} SLOs met" if slos else "no SLOs")
            + "</div>")


def _slo_table(slos: Sequence[SloResult]) -> str:
    rows = ["<h2>SLOs</h2><table><tr><th>SLO</th><th class='text'>metric</th><th>measured</th><th>threshold</th>"
            "<th>result</th></tr>"]
    for x in slos:
        res = "<span class='good'>pass</span>" if x.passed else "<span class='bad'>FAIL</span>"
        measured = "not measured" if x.value is None else f"{x.value:g}"
        rows.append(f"<tr><td class='text'><code>{_e(x.expr)}</code></td><td class='text'>{_e(x.metric)}</td>"
                    f"<td>{_e(measured)}</td><td>{_e(x.op)} {x.threshold:g}</td><td>{res}</td></tr>")
    rows.append("</table>")
    return "\n".join(rows)


def _figures(run: RunData, slos: Sequence[SloResult]) -> str:
    s = run.summary
    return "\n".join([
        _figure_html(plot_concurrency(run.series, int(s.concurrency or 0)),
                     "Calls in progress per second (mean and peak within each second), from call start "
                     "to hang-up; unanswered calls until the agent gave up."),
        _figure_html(plot_latency_over_time(run.series, s, slos),
                     "Turn latency per second, by the arrival of the bot's reply (HDR percentiles per second); "
                     "dashed: the whole run's p50 and p95."),
        _figure_html(plot_latency_vs_concurrency(run.series),
                     "Turn latency grouped by the number of calls in progress when the bot replied "
                     "(bars: turns measured)."),
        _figure_html(plot_completion(run.series),
                     "Calls ended per second, completed vs not completed; line: cumulative completion rate."),
        _figure_html(plot_outcomes(s), "Call outcomes and final SIP responses to the INVITE."),
    ])


def _figure_html(fig: Figure, caption: str) -> str:
    title = (fig.axes[0].get_title(loc="left") or fig.axes[0].get_title()) if fig.axes else ""  # titles sit left
    return (f"<figure><img alt='{_e(title)}' src='data:image/png;base64,{png_b64(fig)}'>"
            f"<figcaption>{_e(caption)}</figcaption></figure>")


def _failure_table(why: list[tuple[str, int]]) -> str:
    return "\n".join(["<h2>Why calls did not complete</h2><table><tr><th>outcome and reason (SIP status as sent; "
                      "measured numbers as N)</th><th>calls</th></tr>",
                      "".join(f"<tr><td class='text'>{_e(r)}</td><td>{n}</td></tr>" for r, n in why),
                      "</table>"])


def _footer(run: RunData) -> str:
    return (f"<footer>voiceload {_e(_version())} · rebuilt from <code>{_e(CALLS_FILE)}</code> with "
            f"<code>voiceload report {_e(run.run_dir)}</code> · also in this directory: "
            f"<a href='{TURNS_CSV}'>{TURNS_CSV}</a>, <a href='{JUNIT_XML}'>{JUNIT_XML}</a>, "
            f"<a href='{SUMMARY_FILE}'>{SUMMARY_FILE}</a>, <a href='{CALLS_FILE}'>{CALLS_FILE}</a>. "
            "Latency is wire latency: last caller packet sent → first bot packet received.</footer>")


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


def _kpi(label: str, value_html: str, detail: str) -> str:
    return (f"<div class='kpi'><span class='label'>{_e(label)}</span><span class='value'>{value_html}</span>"
            f"<span class='detail'>{_e(detail)}</span></div>")


def _slo_measured(x: SloResult) -> str:
    measured = "not measured" if x.value is None else f"{x.value:g}"
    return f"{x.metric} = {measured}, threshold {x.op} {x.threshold:g}"


def _stat_line(st: LatencyStats) -> str:
    if not st.count:
        return "–"
    oor = f", {st.out_of_range} out of range" if st.out_of_range else ""
    return (f"p50 {fmt_ms(st.p50)} · p95 {fmt_ms(st.p95)} · p99 {fmt_ms(st.p99)} · "
            f"max {fmt_ms(st.max)} ms (n={st.count}{oor})")


def _counts(d: dict[str, Any]) -> str:
    return ", ".join(f"{k}: {v}" for k, v in d.items() if v) or "–"


def _summary_tables(s: Summary, series: RunSeries) -> str:
    calls, gen = s.calls, s.generator
    cpu, lag = gen.max_cpu_percent, gen.max_pump_lag_ms
    left = [
        ("run id", s.run_id),
        ("scenario", s.scenario or "–"),
        ("target", s.target or "–"),
        ("target concurrency", s.concurrency or "–"),
        ("peak calls in progress", series.peak_active),
        ("started", (iso_utc(s.started_at).replace("T", " ") + " UTC") if s.started_at else "–"),
        ("duration", f"{float(s.duration_s or 0):.1f} s"),
        ("calls", f"{calls.planned} planned, {calls.placed} placed, {calls.completed} completed, "
                  f"{calls.failed} not completed"),
        ("completion rate", fmt_pct(float(s.completion_rate))),
        ("outcomes", _counts(s.outcomes)),
    ]
    right = [
        ("turn latency (ms)", _stat_line(s.turn_latency_ms)),
        ("greeting onset (ms)", _stat_line(s.greeting_onset_ms)),
        ("SIP setup (ms)", _stat_line(s.setup_ms)),
        ("SIP codes", _counts(s.sip_codes)),
        ("hung up by", _counts(s.hangup_by)),
        ("generator", f"{gen.agents} agents, {gen.heartbeats} heartbeats"),
        ("agent CPU, worst", "–" if cpu is None else f"{cpu:.0f} % of a core (limit {gen.limits.cpu_percent} %)"),
        ("pump lag, worst", "–" if lag is None else f"{lag:.0f} ms (limit {gen.limits.pump_lag_ms} ms)"),
        ("validity", "valid" if s.valid else "INVALID: " + "; ".join(map(str, s.invalid_reasons))),
    ]
    if series.estimated_ends:
        left.append(("estimated call ends", f"{series.estimated_ends} calls (never answered or no duration)"))

    def table(rows: list[tuple[str, Any]]) -> str:
        return ("<table class='kv'>" + "".join(f"<tr><td>{_e(k)}</td><td>{_e(v)}</td></tr>" for k, v in rows)
                + "</table>")

    return f"<div class='cols'>{table(left)}{table(right)}</div>"


def _turns_table(s: Summary, greeting: GreetingCounts | None) -> str:
    head = ("<table><tr><th>turn</th><th>n</th><th>ok</th><th>not ok</th><th>p50</th><th>p90</th><th>p95</th>"
            "<th>p99</th><th>max</th><th class='text'>top failure reasons</th></tr>")
    rows = []

    def row(name: str, st: LatencyStats, ok: Any, not_ok: Any, reasons: dict[str, int]) -> None:
        top = "; ".join(f"{why} ({n})" for why, n in list(reasons.items())[:3])
        cells = "".join(f"<td>{fmt_ms(st.stat(k))}</td>" for k in ("p50", "p90", "p95", "p99", "max"))
        bad = " class='bad'" if isinstance(not_ok, int) and not_ok else ""
        rows.append(f"<tr><td>{_e(name)}</td><td>{st.count}</td><td>{_e(ok)}</td>"
                    f"<td{bad}>{_e(not_ok)}</td>{cells}<td class='text'>{_e(top)}</td></tr>")

    if greeting is not None or s.greeting_onset_ms.count:
        g = greeting or GreetingCounts(0, 0, {})
        row("greeting (onset)", s.greeting_onset_ms, g.ok, g.not_ok, g.reasons)
    for t in s.turns:
        row(f"turn {t.index}", t.latency_ms, t.ok, t.not_ok, t.reasons)
    row("all turns", s.turn_latency_ms, "", "", {})
    return head + "".join(rows) + "</table><p class='sub'>latencies in ms; n = replies measured (late ones too)</p>"


def _failure_reasons(records: Iterable[CallRecord]) -> list[tuple[str, int]]:
    """The summary's top failures, counted again from the records (a run dir of an older voiceload has none)."""
    return list(top_failures(failure_counts(records)).items())


def _worst_turn(rec: CallRecord) -> tuple[float, int] | None:
    lat = [(t.latency_ms, t.index) for t in rec.turns if t.latency_ms is not None]
    return max(lat) if lat else None


def slowest_calls(records: Iterable[CallRecord], n: int = SLOWEST_CALLS) -> list[tuple[CallRecord, float, int]]:
    """The n calls with the worst turn latency: (record, latency ms, turn index), worst first."""
    worst = ((rec, w) for rec in records if (w := _worst_turn(rec)) is not None)
    return [(rec, w[0], w[1]) for rec, w in heapq.nlargest(n, worst, key=lambda x: x[1][0])]


def _tape_href(run: RunData, rec: CallRecord) -> str | None:
    """The kept tape's link, relative to report.html (which sits in the run dir), if it is there."""
    path = kept_tape(run.run_dir, rec)
    return None if path is None else path.relative_to(run.run_dir.resolve()).as_posix()


def _slowest_table(run: RunData, rows: list[tuple[CallRecord, float, int]]) -> str:
    if not rows:
        return "<p class='sub'>No turn latency was measured.</p>"
    tapes = (run.run_dir / TAPES_DIR).is_dir()
    out = ["<table><tr><th class='text'>call id</th><th class='text'>agent</th><th>worst turn latency (ms)</th>"
           "<th>turn</th><th class='text'>outcome</th><th class='text'>reason</th>"
           + ("<th class='text'>tape</th>" if tapes else "") + "</tr>"]
    for rec, ms, idx in rows:
        cls = "good" if rec.outcome == OUTCOME_COMPLETED else "bad"
        tape = ""
        if tapes:
            href = _tape_href(run, rec)
            link = f"<a href='{_e(href)}'>WAV</a>" if href else "–"
            tape = f"<td class='text'>{link}</td>"
        out.append(f"<tr><td class='text'><code>{_e(rec.call_id)}</code></td><td class='text'>{_e(rec.agent_id)}</td>"
                   f"<td>{fmt_ms(ms)}</td><td>{idx}</td><td class='text {cls}'>{_e(rec.outcome)}</td>"
                   f"<td class='text'>{_e(rec.reason or '')}</td>{tape}</tr>")
    out.append("</table>")
    return "".join(out)


def _quality_section(m: MediaSummary, records: Sequence[CallRecord]) -> str:
    """Codecs, the E-model's MOS and R, loss, jitter, RTT; the MOS histogram; the calls of lowest MOS."""
    def q(st: QualityStats) -> str:
        if not st.count:
            return "–"
        return f"p50 {st.p50:g} · p10 {st.p10:g} · p5 {st.p5:g} · p1 {st.p1:g} · worst {st.min:g} (n={st.count})"

    def spread(st: SpreadStats, unit: str) -> str:
        if not st.count:
            return "–"
        return f"p50 {st.p50:g} · p95 {st.p95:g} · p99 {st.p99:g} · max {st.max:g} {unit} (n={st.count})"

    rows = [
        ("calls with media", f"{m.calls} ({m.rated} rated, {m.no_audio} received no audio, {m.srtp} SRTP)"),
        ("codecs", _counts(m.codecs)),
        ("MOS (E-model)", q(m.mos)),
        ("R factor", q(m.r_factor)),
        ("packet loss, received", spread(m.loss_pct, "%")),
        ("jitter, received (mean per call)", spread(m.jitter_ms, "ms")),
        ("round trip (RTCP)", spread(m.rtt_ms, "ms")),
    ]
    out = ["<h2>Call quality</h2><table class='kv'>"
           + "".join(f"<tr><td>{_e(k)}</td><td>{_e(v)}</td></tr>" for k, v in rows) + "</table>"]
    mos = [rec.quality.mos for rec in records if rec.quality is not None]
    out.append(_figure_html(plot_mos(mos, m), "ITU-T G.107 E-model estimate per call, from the audio the caller "
                                              "received: loss, jitter and RTCP round trip (docs/media.md)."))
    if m.worst_calls:
        out.append(f"<h3>Lowest MOS ({len(m.worst_calls)} calls)</h3><table><tr><th class='text'>call id</th>"
                   "<th class='text'>agent</th><th class='text'>codec</th><th>MOS</th><th>R</th><th>loss %</th>"
                   "<th>one-way delay ms</th></tr>")
        for w in m.worst_calls:
            out.append(f"<tr><td class='text'><code>{_e(w.call_id)}</code></td><td class='text'>{_e(w.agent_id)}</td>"
                       f"<td class='text'>{_e(w.codec or '–')}</td><td>{w.mos:.2f}</td><td>{w.r_factor:.1f}</td>"
                       f"<td>{w.loss_pct:g}</td><td>{w.delay_ms:g}</td></tr>")
        out.append("</table>")
    return "".join(out)


def _slowest_tapes(run: RunData, rows: list[tuple[CallRecord, float, int]]) -> str:
    """The kept tapes of the slowest calls: a link to each WAV and its waveform with the turns marked."""
    out = [f"<h2>Tapes of the slowest calls</h2><p class='sub'>kept under <code>{_e(TAPES_DIR)}/</code>"
           " (<code>--keep-tapes</code>); blue: the caller's speech, orange: the bot's (one grey trace when"
           " the tape is mono); solid lines mark where speech starts, dashed where it ends; shaded: each"
           " turn's latency.</p>"]
    shown = 0
    for rec, ms, idx in rows:
        href = _tape_href(run, rec)
        path = kept_tape(run.run_dir, rec)
        if href is None or path is None:
            continue
        fig = plot_tape(read_tape_tracks(path), rec, f"{rec.call_id} · turn {idx}: {fmt_ms(ms)} ms")
        out.append(f"<figure class='tape'><img alt='waveform of {_e(href)}' src='data:image/png;base64,"
                   f"{png_b64(fig)}'><figcaption><a href='{_e(href)}'>{_e(href)}</a> · worst turn {idx}, "
                   f"{fmt_ms(ms)} ms · {_e(rec.outcome)}</figcaption></figure>")
        shown += 1
    if not shown:
        out.append("<p class='sub'>None of these calls' tapes is in the run dir.</p>")
    return "\n".join(out)


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("voiceload")
    except Exception:
        return "?"


