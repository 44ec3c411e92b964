"""SLO gate: `METRIC OP NUMBER` expressions checked against a run's Summary. Pure.

    p95_turn_latency_ms <= 1500      completion_rate>=0.99      setup_p95_ms<=500      mos_p5>=3.8

Metrics name a value of summary.json (docs/results.md); the table is in docs/live-and-slo.md.
A metric without data (no turn measured, nothing placed) cannot meet its SLO: value None, failed.
The run's exit code (`exit_code`): 3 when the run is invalid (whatever the SLOs say, since an
overloaded generator measured itself), else 1 when an SLO failed, else 0.
"""

from __future__ import annotations

import difflib
import math
import operator
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from voiceload.errors import EXIT_INVALID_RUN, EXIT_OK, EXIT_SLO_FAILED, UserError

if TYPE_CHECKING:  # summary.py stores SloResults: it imports this module
    from voiceload.core.summary import LatencyStats, QualityStats, SpreadStats, Summary

OPS: dict[str, Callable[[float, float], bool]] = {
    "<=": operator.le, "<": operator.lt, ">=": operator.ge, ">": operator.gt,
}
STATS = ("p50", "p90", "p95", "p99", "max")
RATE_METRICS = ("completion_rate", "error_rate")
COUNT_METRICS = ("failed_calls",)

# metric name -> (summary key of a statistics object, stat); per-turn metrics are matched by _TURN
_LATENCY: dict[str, tuple[str, str]] = {
    **{f"{s}_turn_latency_ms": ("turn_latency_ms", s) for s in STATS},
    **{f"setup_{s}_ms": ("setup_ms", s) for s in STATS},
    **{f"greeting_{s}_onset_ms": ("greeting_onset_ms", s) for s in STATS},
}
# call quality (summary.json's `media`): MOS and R are judged at their low end, loss, jitter and RTT at their high
QUALITY_STATS = ("p50", "p10", "p5", "p1", "min", "mean")
SPREAD_STATS = ("p50", "p95", "p99", "max", "mean")
_MEDIA: dict[str, tuple[str, str]] = {
    **{f"mos_{s}": ("mos", s) for s in QUALITY_STATS},
    **{f"r_factor_{s}": ("r_factor", s) for s in QUALITY_STATS},
    **{f"loss_pct_{s}": ("loss_pct", s) for s in SPREAD_STATS},
    **{f"jitter_ms_{s}": ("jitter_ms", s) for s in SPREAD_STATS},
    **{f"rtt_ms_{s}": ("rtt_ms", s) for s in SPREAD_STATS},
}
_BOUNDS = {"mos": (1.0, 4.5), "r_factor": (0.0, 100.0), "loss_pct": (0.0, 100.0)}  # what a threshold can be
FIXED_METRICS = (*RATE_METRICS, *COUNT_METRICS, *_LATENCY, *_MEDIA)
_TURN = re.compile(rf"turn(\d+)_({'|'.join(STATS)})_latency_ms")
_EXPR = re.compile(r"\s*([A-Za-z_][A-Za-z0-9_]*)\s*(<=|>=|==|!=|=<|=>|<|>|=)\s*(\S.*?)\s*")
_NUMBER = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?")

VALID_METRICS = (
    "completion_rate, error_rate, failed_calls, <stat>_turn_latency_ms, turn<N>_<stat>_latency_ms, "
    f"setup_<stat>_ms, greeting_<stat>_onset_ms (<stat>: {', '.join(STATS)}; <N>: turn number from 0), "
    f"mos_<q>, r_factor_<q> (<q>: {', '.join(QUALITY_STATS)}), loss_pct_<s>, jitter_ms_<s>, rtt_ms_<s> "
    f"(<s>: {', '.join(SPREAD_STATS)})"
)


@dataclass(frozen=True)
class Slo:
    """One parsed objective. `expr` is the text as written, without whitespace (a stable name)."""

    expr: str
    metric: str
    op: str  # one of OPS
    threshold: float

    @property
    def turn(self) -> int | None:
        """The scenario turn a per-turn metric is about (0-based); None for run-wide metrics."""
        m = _TURN.fullmatch(self.metric)
        return int(m.group(1)) if m else None

    def met_by(self, value: float) -> bool:
        return OPS[self.op](value, self.threshold)

    def problem_with(self, *, turns: int | None, greeting: bool) -> str | None:
        """Why this SLO can never have data for a scenario with `turns` turns (None: it can).

        `turns=None` skips the turn-number check (e.g. while the scenario's turns are invalid).
        """
        t = self.turn
        if t is not None and turns is not None and t >= turns:
            have = "turn 0" if turns == 1 else f"turns 0..{turns - 1}"
            return f"SLO {self.expr!r}: the scenario has no turn {t} (it has {have})"
        if self.metric.startswith("greeting_") and not greeting:
            return f"SLO {self.expr!r}: the scenario has no greeting"
        return None


@dataclass(frozen=True)
class SloResult:
    expr: str
    metric: str
    op: str
    threshold: float
    value: float | None  # None: the summary has no data for this metric
    passed: bool

    def line(self) -> str:
        """`PASS p95_turn_latency_ms<=1500 (value 453.1)` / `FAIL ... (no data)`, for terminals and logs."""
        shown = "no data" if self.value is None else f"value {_fmt(self.value)}"
        return f"{'PASS' if self.passed else 'FAIL'} {self.expr} ({shown})"

    @classmethod
    def from_dict(cls, body: Mapping[str, Any]) -> SloResult:
        """A verdict as summary.json stores it (KeyError, TypeError or ValueError when malformed)."""
        value = body["value"]
        return cls(str(body["expr"]), str(body["metric"]), str(body["op"]), float(body["threshold"]),
                   None if value is None else float(value), bool(body["passed"]))


def parse_slo(text: str) -> Slo:
    """Parse `METRIC OP NUMBER`; UserError naming the expression and the valid metrics otherwise."""
    if not isinstance(text, str):
        raise UserError(f"SLO {text!r}: must be text such as 'p95_turn_latency_ms<=1500'")
    expr = "".join(text.split())
    m = _EXPR.fullmatch(text)
    if m is None:
        raise UserError(f"SLO {expr!r}: expected METRIC OP NUMBER with OP one of <=, <, >=, > "
                        f"(e.g. 'p95_turn_latency_ms<=1500'); metrics: {VALID_METRICS}")
    metric, op, number = m.groups()
    if metric not in FIXED_METRICS and not _TURN.fullmatch(metric):
        raise UserError(f"SLO {expr!r}: unknown metric {metric!r}{_suggest(metric)}; metrics: {VALID_METRICS}")
    if op not in OPS:
        hint = {"=<": "<=", "=>": ">="}.get(op)
        fix = f" (did you mean {hint!r}?)" if hint else " (an SLO is a bound: use <=, <, >= or >)"
        raise UserError(f"SLO {expr!r}: operator {op!r} is not supported{fix}")
    if not _NUMBER.fullmatch(number):
        unit = " (thresholds carry no unit: the metric name says it)" if re.match(r"[\d.]", number) else ""
        raise UserError(f"SLO {expr!r}: threshold must be a number, got {number!r}{unit}")
    threshold = float(number)
    if not math.isfinite(threshold):
        raise UserError(f"SLO {expr!r}: threshold must be a finite number, got {number!r}")
    if metric in RATE_METRICS and not 0.0 <= threshold <= 1.0:
        hint = f" (did you mean {threshold / 100:g}?)" if 1.0 < threshold <= 100.0 else ""
        raise UserError(f"SLO {expr!r}: {metric} is a fraction from 0 to 1, got {number}{hint}")
    if threshold < 0:
        raise UserError(f"SLO {expr!r}: {metric} is never negative, got {number}")
    if metric in _MEDIA and (bounds := _BOUNDS.get(_MEDIA[metric][0])) is not None:
        lo, hi = bounds
        if not lo <= threshold <= hi:
            raise UserError(f"SLO {expr!r}: {_MEDIA[metric][0]} lies between {lo:g} and {hi:g}, got {number}")
    return Slo(expr=expr, metric=metric, op=op, threshold=threshold)


def parse_slos(texts: Iterable[str]) -> tuple[Slo, ...]:
    """Parse several (e.g. the scenario's `slo:` then `--slo` flags), dropping exact repeats."""
    out: dict[str, Slo] = {}
    for text in texts:
        slo = parse_slo(text)
        out.setdefault(slo.expr, slo)
    return tuple(out.values())


def value_of(metric: str, summary: Summary) -> float | None:
    """The metric's value in a summary; None when there is no data for it."""
    placed = _number(summary.calls.placed)
    if metric in RATE_METRICS:
        rate = _number(summary.completion_rate)
        if rate is None or not placed:  # nothing placed: a rate of nothing is no data, not 0 %
            return None
        return rate if metric == "completion_rate" else round(1.0 - rate, 6)
    if metric == "failed_calls":
        return _number(summary.calls.failed)
    if metric in _LATENCY:
        key, stat = _LATENCY[metric]
        return _stat(getattr(summary, key), stat)
    if metric in _MEDIA:
        key, stat = _MEDIA[metric]
        return None if summary.media is None else _stat(getattr(summary.media, key), stat)
    m = _TURN.fullmatch(metric)
    if m is None:
        raise ValueError(f"unknown SLO metric {metric!r}")
    index, stat = int(m.group(1)), m.group(2)
    for turn in summary.turns:
        if turn.index == index:
            return _stat(turn.latency_ms, stat)
    return None


def evaluate(slos: Iterable[Slo], summary: Summary) -> list[SloResult]:
    """Check each SLO against a summary, in order."""
    results = []
    for slo in slos:
        value = value_of(slo.metric, summary)
        passed = value is not None and slo.met_by(value)
        results.append(SloResult(slo.expr, slo.metric, slo.op, slo.threshold, value, passed))
    return results


def exit_code(summary: Summary, results: Iterable[SloResult]) -> int:
    """3 if the run is invalid (wins over SLOs), 1 if an SLO failed, else 0."""
    if not summary.valid:
        return EXIT_INVALID_RUN
    return EXIT_OK if all(r.passed for r in results) else EXIT_SLO_FAILED


def _stat(stats: LatencyStats | QualityStats | SpreadStats, stat: str) -> float | None:
    if not stats.count:
        return None
    return _number(stats.stat(stat))


def _number(v: Any) -> float | None:
    if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
        return None
    return float(v)


def _fmt(v: float) -> str:
    return f"{v:.6g}"


def _suggest(metric: str) -> str:
    """A close valid name; per-turn names keep the turn number the user wrote."""
    m = re.match(r"turns?_?(\d+)", metric)
    n = m.group(1) if m else "0"
    candidates = [*FIXED_METRICS, *(f"turn{n}_{s}_latency_ms" for s in STATS)]
    stat = re.search(rf"(?<![a-z0-9])({'|'.join(STATS)})(?![a-z0-9])", metric)
    if stat:  # keep the statistic the user asked for: `turn_latency_p95_ms` is not about p99
        candidates = [c for c in candidates if f"_{stat.group(1)}_" in f"_{c}_"]
    close = difflib.get_close_matches(metric, candidates, n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""
