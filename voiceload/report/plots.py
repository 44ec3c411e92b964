"""The report's plots: matplotlib figures on the Agg canvas (no pyplot state), as inline PNGs."""

from __future__ import annotations

import base64
import io
import re
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from voiceload.audio.wav import SAMPLE_RATE, TapeTracks
from voiceload.core.summary import MediaSummary, Summary
from voiceload.core.timeseries import RunSeries
from voiceload.protocol import OUTCOMES, CallRecord
from voiceload.report.formats import fmt_ms
from voiceload.report.rundir import SloResult

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

BLUE, ORANGE, GREEN, RED, GRAY, PURPLE = "#2563eb", "#ea580c", "#16a34a", "#dc2626", "#6b7280", "#7c3aed"
OUTCOME_COLORS = {"completed": GREEN, "failed": RED, "rejected": ORANGE, "timeout": PURPLE, "error": GRAY,
                  "agent_lost": "#0891b2"}


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


def png_b64(fig: Figure) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, metadata={"Software": None})
    return base64.b64encode(buf.getvalue()).decode("ascii")


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


def plot_latency_over_time(series: RunSeries, summary: Summary, slos: Sequence[SloResult] = ()) -> Figure:
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
    lat = summary.turn_latency_ms
    if lat.p95 is not None:
        ax.axhline(lat.p95, color=ORANGE, linestyle="--", linewidth=1, label=f"run p95 {fmt_ms(lat.p95)} ms")
    if lat.p50 is not None:
        ax.axhline(lat.p50, color=BLUE, linestyle="--", linewidth=1, label=f"run p50 {fmt_ms(lat.p50)} ms")
    for x in slos:
        if "latency" in x.metric and "turn" in x.metric and x.op.startswith("<"):
            ax.axhline(x.threshold, color=RED, linestyle=":", linewidth=1.5, label=f"SLO {x.expr}")
    top = max(v for b in pts for v in (b.latency_p95, b.latency_p50) if v is not None)
    ax.set_ylim(0, max(top, *(x.threshold for x in slos if "latency" in x.metric and "turn" in x.metric),
                       lat.p95 or 0) * 1.4)  # room for the legend
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


def plot_outcomes(summary: Summary) -> Figure:
    fig, (ax1, ax2) = _new_figure(height=3.0, cols=2)
    ax1.set_title("Call outcomes", loc="left", fontweight="bold")
    ax2.set_title("Final SIP response", loc="left", fontweight="bold")
    outcomes = {o: int(summary.outcomes.get(o, 0)) for o in OUTCOMES}
    _bars(ax1, list(outcomes), list(outcomes.values()), [OUTCOME_COLORS.get(o, GRAY) for o in outcomes])
    codes = summary.sip_codes
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



MOS_BIN = 0.1


def plot_mos(mos: Iterable[float], media: MediaSummary) -> Figure:
    """The calls' E-model MOS as a histogram (0.1 wide bins, 1 to 4.5), with the run's p50 and p5."""
    fig, ax = _titled_plot("Call quality (E-model MOS)", "MOS (1 bad … 4.5 best)", "calls")
    values = [v for v in mos if 1.0 <= v <= 4.5]
    ax.set_xlim(1.0, 4.6)
    if not values:
        _no_data(ax, "call rated")
        return fig
    # G.109's classes, lightly shaded: R >= 80 (MOS 4.03) satisfied, R < 60 (MOS 3.1) many dissatisfied
    ax.axvspan(1.0, 3.1, color=RED, alpha=0.06, linewidth=0)
    ax.axvspan(3.1, 4.03, color=ORANGE, alpha=0.06, linewidth=0)
    ax.axvspan(4.03, 4.6, color=GREEN, alpha=0.06, linewidth=0)
    edges = [1.0 + i * MOS_BIN for i in range(round(3.6 / MOS_BIN) + 1)]
    counts, _, _ = ax.hist(values, bins=edges, color=BLUE, alpha=0.8)
    ax.set_ylim(0, max(float(max(counts)), 1.0) * 1.25)  # room for the legend
    from matplotlib.ticker import MaxNLocator

    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    for stat, value, color in (("p50", media.mos.p50, BLUE), ("p5", media.mos.p5, ORANGE)):
        if value is not None:
            ax.axvline(value, color=color, linestyle="--", linewidth=1, label=f"run {stat} {value:.2f}")
    ax.legend(loc="upper left", frameon=False, ncols=2)
    return fig


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


TAPE_BIN_MS = 10  # one envelope point per 10 ms: a minute of call stays a few thousand points


def _envelope(x: np.ndarray, start_s: float) -> tuple[np.ndarray, np.ndarray]:
    """The start (s) and peak magnitude (full scale 1.0) of each TAPE_BIN_MS of samples."""
    n = SAMPLE_RATE * TAPE_BIN_MS // 1000
    bins = len(x) // n
    if bins == 0:
        return np.zeros(0), np.zeros(0)
    peak = np.abs(x[: bins * n].astype(np.int32)).reshape(bins, n).max(axis=1) / 32768.0
    return start_s + np.arange(bins) * n / SAMPLE_RATE, peak


def plot_tape(tracks: TapeTracks, rec: CallRecord, title: str) -> Figure:
    """A call's tape as a waveform envelope on the answer's time axis, the caller and the far end in
    two colours when the tape is stereo, with each turn's boundaries: caller speech (blue) and the
    bot's reply (orange), solid at the start and dashed at the end; the latency between them shaded."""
    fig, (ax,) = _new_figure(height=2.0)
    ax.set_title(title, loc="left", fontweight="bold", fontsize=10)
    ax.set_xlabel("seconds since the answer")
    ax.set_ylabel("peak")
    start_s = (rec.tape_start_ms or 0.0) / 1000
    shown = [("caller", tracks.caller, BLUE), ("bot", tracks.far, ORANGE)] if tracks.caller is not None else [
        ("both directions", tracks.mixed, GRAY)]
    for label, x, color in shown:
        assert x is not None
        t, peak = _envelope(x, start_s)
        ax.fill_between(t, -peak, peak, color=color, alpha=0.55, linewidth=0, label=label)
    if not len(tracks.mixed):
        _no_data(ax, "audio on the tape")
    marks: list[tuple[float | None, str, str]] = []
    if rec.greeting is not None:
        marks += [(rec.greeting.bot_onset_ms, ORANGE, "-"), (rec.greeting.bot_end_ms, ORANGE, "--")]
    for turn in rec.turns:
        marks += [(turn.utterance_start_ms, BLUE, "-"), (turn.utterance_end_ms, BLUE, "--"),
                  (turn.bot_onset_ms, ORANGE, "-"), (turn.bot_end_ms, ORANGE, "--")]
        if turn.utterance_end_ms is not None and turn.bot_onset_ms is not None:  # the turn's latency
            ax.axvspan(turn.utterance_end_ms / 1000, turn.bot_onset_ms / 1000, color=RED, alpha=0.12, linewidth=0)
        if turn.utterance_start_ms is not None:
            ax.text(turn.utterance_start_ms / 1000, 0.97, f" turn {turn.index}", fontsize=8, color=BLUE,
                    transform=ax.get_xaxis_transform(), va="top")
    for ms, color, style in marks:
        if ms is not None:
            ax.axvline(ms / 1000, color=color, linestyle=style, linewidth=1)
    ax.set_ylim(-1.05, 1.05)
    ax.legend(loc="lower right", frameon=False, ncols=2, fontsize=8)
    return fig
