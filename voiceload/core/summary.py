"""summary.json (schema 1) from call records and generator health. Pure: no I/O, no clock.

A run whose generator was overloaded measured the generator, not the target; such a run is
marked invalid (with reasons) rather than reported as if it were fine. See docs/results.md.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from voiceload.core.stats import LatencyHistogram
from voiceload.protocol import OUTCOME_COMPLETED, OUTCOMES, CallRecord, Heartbeat

SUMMARY_SCHEMA = 1
_NUMBER = re.compile(r"\d+(?:\.\d+)?")

# An agent above this share of one core (its pjsua2 pump and our Python share one GIL) starts to
# send late frames and to see events late: its timings describe itself, not the target.
MAX_AGENT_CPU_PERCENT = 85.0
# The agent's event pump must run every ~20 ms (one RTP frame); 100 ms late means five frames of
# audio were handled late, which is more than the latency resolution we promise.
MAX_PUMP_LAG_MS = 100.0
# An agent's audio clock may sit one 20 ms tick (+ a poll) off wall time; 60 ms means its bridge
# fell three frames behind, so its tape no longer times the wire to the promised +/-20 ms.
MAX_CLOCK_SLIP_MS = 60.0
# The RTP engine's clock sends every call's frame each 20 ms. A tick that wakes two frames late has
# held back a frame of every call by that much (and the engine skips the lost ticks): the caller's
# send times, one side of every turn, are no longer the schedule's.
MAX_MEDIA_LAG_MS = 40.0


@dataclass(frozen=True)
class HealthThresholds:
    max_cpu_percent: float = MAX_AGENT_CPU_PERCENT
    max_pump_lag_ms: float = MAX_PUMP_LAG_MS
    max_media_lag_ms: float = MAX_MEDIA_LAG_MS
    max_clock_slip_ms: float = MAX_CLOCK_SLIP_MS


DEFAULT_THRESHOLDS = HealthThresholds()


@dataclass
class _AgentHealth:
    heartbeats: int = 0
    cpu_percent_max: float = 0.0
    pump_lag_ms_max: float = 0.0
    media_lag_ms_max: float = 0.0
    placed: int = 0  # the agent's own count, from its latest heartbeat
    last_seen: float = 0.0  # unix time of its latest heartbeat


@dataclass
class GeneratorHealth:
    """Worst health seen per agent over the run, fed one Heartbeat at a time."""

    agents: dict[str, _AgentHealth] = field(default_factory=dict)

    def observe(self, hb: Heartbeat) -> None:
        a = self.agents.setdefault(hb.agent_id, _AgentHealth())
        a.heartbeats += 1
        a.cpu_percent_max = max(a.cpu_percent_max, float(hb.cpu_percent))
        a.pump_lag_ms_max = max(a.pump_lag_ms_max, float(hb.pump_lag_ms_max))
        a.media_lag_ms_max = max(a.media_lag_ms_max, float(hb.media_lag_ms_max))
        a.placed = max(a.placed, int(hb.placed))
        a.last_seen = max(a.last_seen, float(hb.at))

    def per_agent_placed(self, agent_id: str) -> int:
        """Calls the agent said it had placed, in its latest heartbeat (0 if never heard)."""
        a = self.agents.get(agent_id)
        return a.placed if a is not None else 0

    @property
    def heartbeats(self) -> int:
        return sum(a.heartbeats for a in self.agents.values())

    @property
    def max_cpu_percent(self) -> float | None:
        return max((a.cpu_percent_max for a in self.agents.values()), default=None)

    @property
    def max_pump_lag_ms(self) -> float | None:
        return max((a.pump_lag_ms_max for a in self.agents.values()), default=None)

    def invalid_reasons(self, thresholds: HealthThresholds = DEFAULT_THRESHOLDS,
                        agents_with_calls: Iterable[str] = ()) -> list[str]:
        """Why this generator's numbers cannot be trusted; empty when they can."""
        reasons = []
        for agent_id, a in sorted(self.agents.items()):
            if a.cpu_percent_max > thresholds.max_cpu_percent:
                reasons.append(f"agent {agent_id}: CPU {a.cpu_percent_max:.0f} % of a core "
                               f"(limit {thresholds.max_cpu_percent:g} %)")
            if a.pump_lag_ms_max > thresholds.max_pump_lag_ms:
                reasons.append(f"agent {agent_id}: event pump {a.pump_lag_ms_max:.0f} ms late "
                               f"(limit {thresholds.max_pump_lag_ms:g} ms)")
            if a.media_lag_ms_max > thresholds.max_media_lag_ms:
                reasons.append(f"agent {agent_id}: media clock {a.media_lag_ms_max:.0f} ms late "
                               f"(limit {thresholds.max_media_lag_ms:g} ms)")
        for agent_id in sorted(set(agents_with_calls) - set(self.agents)):
            reasons.append(f"agent {agent_id}: placed calls but sent no heartbeat (health unknown)")
        return reasons

    def to_dict(self, thresholds: HealthThresholds = DEFAULT_THRESHOLDS) -> dict[str, Any]:
        return {
            "agents": len(self.agents),
            "heartbeats": self.heartbeats,
            "max_cpu_percent": _round(self.max_cpu_percent),
            "max_pump_lag_ms": _round(self.max_pump_lag_ms),
            "max_media_lag_ms": _round(max((a.media_lag_ms_max for a in self.agents.values()), default=None)),
            "limits": {"cpu_percent": thresholds.max_cpu_percent, "pump_lag_ms": thresholds.max_pump_lag_ms,
                       "media_lag_ms": thresholds.max_media_lag_ms, "clock_slip_ms": thresholds.max_clock_slip_ms},
            "per_agent": {
                agent_id: {
                    "heartbeats": a.heartbeats,
                    "max_cpu_percent": _round(a.cpu_percent_max),
                    "max_pump_lag_ms": _round(a.pump_lag_ms_max),
                    "max_media_lag_ms": _round(a.media_lag_ms_max),
                }
                for agent_id, a in sorted(self.agents.items())
            },
        }


@dataclass
class _TurnStats:
    latency: LatencyHistogram = field(default_factory=LatencyHistogram)
    ok: int = 0
    not_ok: int = 0
    reasons: Counter[str] = field(default_factory=Counter)


def summarize(
    records: Iterable[CallRecord],
    *,
    run_id: str,
    scenario_name: str,
    target: str,
    concurrency: int,
    calls_planned: int,
    started_at: float,
    ended_at: float,
    health: GeneratorHealth,
    thresholds: HealthThresholds = DEFAULT_THRESHOLDS,
    extra_invalid_reasons: Sequence[str] = (),
) -> dict[str, Any]:
    """Aggregate one pass over the records into the summary.json dict (schema 1)."""
    placed = completed = 0
    outcomes: Counter[str] = Counter({o: 0 for o in OUTCOMES})
    sip_codes: Counter[str] = Counter()
    hangup_by: Counter[str] = Counter()
    agents: set[str] = set()
    all_turns = LatencyHistogram()
    greeting = LatencyHistogram()
    setup = LatencyHistogram()
    slip = LatencyHistogram()
    slipped: Counter[str] = Counter()  # per agent: calls whose audio clock slipped past the limit
    turns: dict[int, _TurnStats] = {}

    for rec in records:
        placed += 1
        completed += rec.outcome == OUTCOME_COMPLETED
        outcomes[rec.outcome] += 1
        sip_codes[str(rec.sip_code) if rec.sip_code is not None else "none"] += 1
        hangup_by[rec.hangup_by or "none"] += 1
        agents.add(rec.agent_id)
        if rec.setup_ms is not None:
            setup.record(rec.setup_ms)
        if rec.clock_slip_ms is not None:
            slip.record(max(rec.clock_slip_ms, 0.001))
            if rec.clock_slip_ms > thresholds.max_clock_slip_ms:
                slipped[rec.agent_id] += 1
        if rec.greeting is not None and rec.greeting.bot_onset_ms is not None:
            greeting.record(rec.greeting.bot_onset_ms)
        for t in rec.turns:
            ts = turns.setdefault(t.index, _TurnStats())
            if t.latency_ms is not None:
                ts.latency.record(t.latency_ms)
                all_turns.record(t.latency_ms)
            if t.ok:
                ts.ok += 1
            else:
                ts.not_ok += 1
                ts.reasons[reason_key(t.reason)] += 1

    invalid = [*health.invalid_reasons(thresholds, agents), *extra_invalid_reasons]
    invalid += [
        f"agent {agent_id}: audio clock fell behind wall time by more than {thresholds.max_clock_slip_ms:g} ms "
        f"in {n} calls (generator overloaded)"
        for agent_id, n in sorted(slipped.items())
    ]
    return {
        "schema": SUMMARY_SCHEMA,
        "run_id": run_id,
        "scenario": scenario_name,
        "target": target,
        "concurrency": concurrency,
        "started_at": started_at,
        "ended_at": ended_at,
        "duration_s": round(max(ended_at - started_at, 0.0), 3),
        "calls": {
            "planned": calls_planned, "placed": placed, "completed": completed, "failed": placed - completed,
        },
        "outcomes": dict(outcomes),
        "completion_rate": round(completed / placed, 6) if placed else 0.0,
        "turn_latency_ms": _latency(all_turns),
        "turns": [
            {
                "index": index,
                "latency_ms": _latency(ts.latency),
                "ok": ts.ok,
                "not_ok": ts.not_ok,
                "reasons": dict(ts.reasons.most_common()),
            }
            for index, ts in sorted(turns.items())
        ],
        "greeting_onset_ms": _latency(greeting),
        "setup_ms": _latency(setup),
        "sip_codes": dict(sorted(sip_codes.items())),
        "hangup_by": dict(sorted(hangup_by.items())),
        "valid": not invalid,
        "invalid_reasons": invalid,
        "generator": {**health.to_dict(thresholds), "clock_slip_ms": _latency(slip)},
    }


def reason_key(reason: str | None) -> str:
    """Group failure reasons that differ only in their numbers ("bot took 3412 ms (max 3000)")."""
    return _NUMBER.sub("N", reason) if reason else "unknown"


def _latency(h: LatencyHistogram) -> dict[str, Any]:
    return {**h.percentiles(), "out_of_range": h.out_of_range}


def _round(v: float | None) -> float | None:
    return None if v is None else round(v, 3)
