"""The capacity search as pure logic: which concurrency to try next, and what the steps add up to.

`voiceload capacity` holds one concurrency level at a time and judges it only on what happened
while it was held (`step_records`). A level that breaks an SLO is tried once more before the
breach counts (`CapacitySearch`), because one unlucky minute must not set the answer. A level at
which the generator itself was overloaded ends the search: beyond it the numbers would describe
the load generator, so the answer becomes "at least the last good level" (exit 3).
No I/O and no clock here: the coordinator feeds verdicts in and acts on the levels that come out.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from voiceload.core.slo import Slo, evaluate
from voiceload.core.summary import DEFAULT_THRESHOLDS, GeneratorHealth, HealthThresholds, summarize
from voiceload.core.timeseries import call_span
from voiceload.errors import EXIT_INVALID_RUN, EXIT_OK, EXIT_SLO_FAILED
from voiceload.protocol import OUTCOME_COMPLETED, CallRecord, Heartbeat

# The whole host is one load generator when `run` spawns the agents itself: above this mean CPU
# over a step, timers and scheduling are late on every process, the bot's included.
MAX_HOST_CPU_PERCENT = 90.0


@dataclass(frozen=True)
class Window:
    """One step in unix time: the level was set at `start`, judged on [judge_from, end]."""

    start: float
    judge_from: float
    end: float

    @property
    def hold_s(self) -> float:
        return self.end - self.judge_from


@dataclass(frozen=True)
class StepVerdict:
    """What one held level measured, and whether it met every SLO."""

    concurrency: int
    attempt: int  # 1, or 2 for the confirming retry
    calls: int  # calls that ended inside the judged window
    completed: int
    turns: int  # turn latencies measured in the window
    calls_per_s: float  # completed calls per second of the window
    p50_ms: float | None
    p95_ms: float | None
    passed: bool  # every SLO met
    failed_slos: tuple[str, ...] = ()  # "expr (value)" of each SLO that failed
    invalid_reasons: tuple[str, ...] = ()  # the generator could not be trusted during this step
    host_cpu_percent: float | None = None

    @property
    def valid(self) -> bool:
        return not self.invalid_reasons

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["valid"] = self.valid
        return d


@dataclass
class CapacitySearch:
    """Step the concurrency up from `start` by `step` to `max_concurrency`; stop at a confirmed breach.

    `next_level()` gives the level to hold (None when the search is over); `record()` takes its
    verdict. The outcome is read from `result()`.
    """

    start: int
    step: int
    max_concurrency: int
    verdicts: list[StepVerdict] = field(default_factory=list)
    _level: int | None = None
    _attempt: int = 1
    _done: bool = False

    def __post_init__(self) -> None:
        if self.start < 1 or self.step < 1 or self.max_concurrency < self.start:
            raise ValueError(f"capacity search {self.start}+{self.step}..{self.max_concurrency}: "
                             "need start >= 1, step >= 1 and max >= start")
        self._level = self.start

    def next_level(self) -> int | None:
        return None if self._done else self._level

    @property
    def attempt(self) -> int:
        return self._attempt

    def record(self, verdict: StepVerdict) -> None:
        self.verdicts.append(verdict)
        assert self._level is not None
        if not verdict.valid:
            self._done = True
        elif verdict.passed:
            self._attempt = 1
            nxt = self._level + self.step
            if self._level >= self.max_concurrency:
                self._done = True
            else:
                self._level = min(nxt, self.max_concurrency)
        elif self._attempt == 1:
            self._attempt = 2  # confirm the breach at the same level
        else:
            self._done = True

    def result(self) -> CapacityResult:
        passing = [v for v in self.verdicts if v.valid and v.passed]
        best = max(passing, key=lambda v: v.concurrency) if passing else None
        last = self.verdicts[-1] if self.verdicts else None
        saturated = last is not None and not last.valid
        breached = last is not None and last.valid and not last.passed
        failing = last if breached else None
        if saturated:
            code = EXIT_INVALID_RUN
        elif breached and best is None:
            code = EXIT_SLO_FAILED
        else:
            code = EXIT_OK
        return CapacityResult(
            knee=best.concurrency if best else None,
            calls_per_s=best.calls_per_s if best else None,
            at_least=not breached,
            first_failing=failing,
            saturated_at=last if saturated else None,
            steps=list(self.verdicts),
            exit_code=code,
        )


@dataclass(frozen=True)
class CapacityResult:
    knee: int | None  # highest level that met every SLO (with a valid generator)
    calls_per_s: float | None  # completed calls per second at that level
    at_least: bool  # no breach seen: the true capacity is `knee` or more
    first_failing: StepVerdict | None  # the confirmed breach
    saturated_at: StepVerdict | None  # the step where the generator could no longer be trusted
    steps: list[StepVerdict]
    exit_code: int

    def headline(self) -> str:
        """The answer in one sentence."""
        if self.first_failing is not None:
            broke = "; ".join(self.first_failing.failed_slos)
            if self.knee is None:
                return (f"even the first level ({self.first_failing.concurrency} calls) breaks the SLOs: {broke}")
            return (f"capacity: {self.knee} concurrent calls ({self.calls_per_s:.2f} calls/s); "
                    f"{self.first_failing.concurrency} calls broke {broke} (confirmed twice)")
        if self.saturated_at is not None:
            reasons = self.saturated_at.invalid_reasons
            why = "; ".join(reasons[:2]) + (f"; and {len(reasons) - 2} more" if len(reasons) > 2 else "")
            floor = f"at least {self.knee} concurrent calls" if self.knee is not None else "unknown"
            return (f"capacity: {floor} — the load generator saturated at {self.saturated_at.concurrency} calls "
                    f"before the target broke ({why})")
        return f"capacity: at least {self.knee} concurrent calls (the search reached --max without a breach)"

    def to_dict(self) -> dict[str, Any]:
        return {
            "knee": self.knee,
            "calls_per_s": self.calls_per_s,
            "at_least": self.at_least,
            "first_failing": self.first_failing.to_dict() if self.first_failing else None,
            "saturated_at": self.saturated_at.to_dict() if self.saturated_at else None,
            "headline": self.headline(),
            "exit_code": self.exit_code,
            "steps": [v.to_dict() for v in self.steps],
        }


def step_records(records: Iterable[CallRecord], window: Window) -> list[CallRecord]:
    """The calls a step is judged on: those that ended inside its judged window.

    Each keeps only the turns whose reply came after the level was set, so a call that began
    under the previous level does not lend it its turns. (With a settle time of one call, the
    calls that end in the window ran at this level throughout.)
    """
    out = []
    for rec in records:
        if not rec.started_at:
            continue
        span = call_span(rec, 0.0)
        if not window.judge_from <= span.end <= window.end:
            continue
        base = rec.started_at + (rec.setup_ms or 0.0) / 1000
        turns = [t for t in rec.turns
                 if t.bot_onset_ms is None or base + t.bot_onset_ms / 1000 >= window.start]
        out.append(dataclasses.replace(rec, turns=turns) if len(turns) != len(rec.turns) else rec)
    return out


def host_cpu_reason(samples: Sequence[float], limit: float = MAX_HOST_CPU_PERCENT) -> str | None:
    """The host-saturation reason for a step, from CPU samples (percent of all cores) taken during it."""
    if not samples:
        return None
    mean = sum(samples) / len(samples)
    if mean > limit:
        return f"host CPU {mean:.0f} % of all cores (limit {limit:g} %): the machine running the agents is saturated"
    return None


def judge_step(
    concurrency: int, attempt: int, records: Iterable[CallRecord], window: Window, slos: Sequence[Slo],
    *, heartbeats: Iterable[Heartbeat] = (), host_cpu: Sequence[float] = (),
    thresholds: HealthThresholds = DEFAULT_THRESHOLDS, max_host_cpu: float = MAX_HOST_CPU_PERCENT,
) -> StepVerdict:
    """One held level's verdict: its calls and turns against the SLOs, its generator health against the limits."""
    recs = step_records(records, window)
    health = GeneratorHealth()
    for hb in heartbeats:
        if window.judge_from <= hb.at <= window.end:
            health.observe(hb)
    s = summarize(recs, run_id="", scenario_name="", target="", concurrency=concurrency, calls_planned=len(recs),
                  started_at=window.judge_from, ended_at=window.end, health=health, thresholds=thresholds)
    results = evaluate(slos, s)
    invalid = list(s.invalid_reasons)
    host = host_cpu_reason(host_cpu, max_host_cpu)
    if host:
        invalid.append(host)
    lat = s.turn_latency_ms
    completed = sum(r.outcome == OUTCOME_COMPLETED for r in recs)
    return StepVerdict(
        concurrency=concurrency, attempt=attempt, calls=len(recs), completed=completed,
        turns=lat.count, calls_per_s=round(completed / max(window.hold_s, 1e-9), 3),
        p50_ms=lat.p50, p95_ms=lat.p95,
        passed=all(r.passed for r in results),
        failed_slos=tuple(f"{r.expr} ({'no data' if r.value is None else f'{r.value:g}'})"
                          for r in results if not r.passed),
        invalid_reasons=tuple(invalid),
        host_cpu_percent=round(sum(host_cpu) / len(host_cpu), 1) if host_cpu else None,
    )
