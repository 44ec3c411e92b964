"""The end-of-run summary for the terminal (rich; plain text with simple rules when not a terminal)."""

from __future__ import annotations

from typing import Any

from rich import box
from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from voiceload.core.summary import LatencyStats, Summary


def _fmt_ms(v: Any) -> str:
    return "-" if v is None else f"{v:,.0f}" if v >= 100 else f"{v:.1f}"


def _two(v: float | None) -> str:
    return "-" if v is None else f"{v:.2f}"


def render_summary(summary: Summary) -> RenderableType:
    """The end-of-run report for the terminal; plain text with simple rules when not a terminal."""
    calls = summary.calls
    valid = summary.valid
    head = Text()
    head.append(f"Run {summary.run_id}", style="bold")
    head.append(f"  scenario {summary.scenario or '-'} -> {summary.target or '-'}, "
                f"concurrency {summary.concurrency}, {summary.duration_s:.1f} s\n")
    head.append("VALID" if valid else "INVALID", style="bold green" if valid else "bold red")
    for reason in summary.invalid_reasons:
        head.append(f"\n  - {reason}", style="red")
    head.append(f"\nCompletion {100 * summary.completion_rate:.1f} %", style="bold")
    head.append(f"  placed {calls.placed} of {calls.planned} planned, "
                f"completed {calls.completed}, failed {calls.failed}")
    outcomes = ", ".join(f"{k} {v}" for k, v in summary.outcomes.items() if v)
    if outcomes:
        head.append(f"\nOutcomes: {outcomes}")
    if summary.top_failures:
        head.append("\nTop failures:")
        for name, n in summary.top_failures.items():
            head.append(f"\n  {name}: {n} call{'s' if n != 1 else ''}", style="red")

    table = Table(title="Bot response latency (ms, wire)", box=box.SIMPLE_HEAD, title_justify="left")
    for col in ("turn", "n", "ok", "not ok", "p50", "p95", "p99", "max", "top failure"):
        table.add_column(col, justify="left" if col in ("turn", "top failure") else "right")

    def row(name: str, lat: LatencyStats, ok: str = "", not_ok: str = "", why: str = "") -> None:
        table.add_row(name, str(lat.count), ok, not_ok, _fmt_ms(lat.p50), _fmt_ms(lat.p95),
                      _fmt_ms(lat.p99), _fmt_ms(lat.max), why)

    row("greeting", summary.greeting_onset_ms)
    for t in summary.turns:
        top = next(iter(t.reasons.items()), None)
        row(str(t.index), t.latency_ms, str(t.ok), str(t.not_ok), f"{top[0]} ({top[1]})" if top else "")
    row("all turns", summary.turn_latency_ms)

    setup = summary.setup_ms
    gen = summary.generator
    tail = Text()
    tail.append(f"SIP setup p50 {_fmt_ms(setup.p50)} ms, p95 {_fmt_ms(setup.p95)} ms; codes: ")
    tail.append(", ".join(f"{code} x{n}" for code, n in summary.sip_codes.items()) or "-")
    if summary.source_addresses:
        rejected = {a: f", {c.rejected} rejected" if c.rejected else "" for a, c in summary.source_addresses.items()}
        tail.append("\nSource addresses: " + ", ".join(
            f"{addr} {c.calls} calls ({c.completed} completed{rejected[addr]})"
            for addr, c in summary.source_addresses.items()))
    media = summary.media
    if media is not None and media.rated:
        mos, loss = media.mos, media.loss_pct
        codecs = ", ".join(f"{c} x{n}" for c, n in media.codecs.items())
        tail.append(f"\nCall quality (E-model, {media.rated} calls rated): MOS p50 {_two(mos.p50)}, "
                    f"p5 {_two(mos.p5)}, worst {_two(mos.min)}; loss p95 {_two(loss.p95)} %; codecs {codecs}")
    cpu, lag = gen.max_cpu_percent, gen.max_pump_lag_ms
    cpu_s = "-" if cpu is None else f"{cpu:.0f} %"
    lag_s = "-" if lag is None else f"{lag:.0f} ms"
    tail.append(f"\nGenerator: {gen.agents} agents, {gen.heartbeats} heartbeats, "
                f"max CPU {cpu_s}, max pump lag {lag_s}")
    return Group(head, table, tail)
