"""summary.json (schema 1) from call records and generator health. Pure: no I/O, no clock.

A run whose generator was overloaded measured the generator, not the target; such a run is
marked invalid (with reasons) rather than reported as if it were fine. See docs/results.md.
`Summary` is the file as typed records: `to_dict()`/`to_json()` write it, `from_dict()` reads it back.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, ClassVar, Protocol, TypeVar

from voiceload.core.emodel import loss_percent
from voiceload.core.slo import SloResult
from voiceload.core.stats import LatencyHistogram, ValueHistogram
from voiceload.protocol import (
    OUTCOME_COMPLETED,
    OUTCOME_REJECTED,
    OUTCOME_TIMEOUT,
    OUTCOMES,
    SIP_ORIGIN_LOCAL,
    CallRecord,
    Heartbeat,
)

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
class AgentSummary:
    heartbeats: int = 0
    max_cpu_percent: float = 0.0
    max_pump_lag_ms: float = 0.0
    max_media_lag_ms: float = 0.0


@dataclass
class _AgentHealth(AgentSummary):
    """An agent's worst health so far (what summary.json's per_agent shows), and what else the run tracks of it."""

    placed: int = 0  # the agent's own count, from its latest heartbeat
    last_seen: float = 0.0  # unix time of its latest heartbeat


@dataclass
class GeneratorHealth:
    """Worst health seen per agent over the run, fed one Heartbeat at a time."""

    agents: dict[str, _AgentHealth] = field(default_factory=dict)

    def observe(self, hb: Heartbeat) -> None:
        a = self.agents.setdefault(hb.agent_id, _AgentHealth())
        a.heartbeats += 1
        a.max_cpu_percent = max(a.max_cpu_percent, float(hb.cpu_percent))
        a.max_pump_lag_ms = max(a.max_pump_lag_ms, float(hb.pump_lag_ms_max))
        a.max_media_lag_ms = max(a.max_media_lag_ms, float(hb.media_lag_ms_max))
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
        return max((a.max_cpu_percent for a in self.agents.values()), default=None)

    @property
    def max_pump_lag_ms(self) -> float | None:
        return max((a.max_pump_lag_ms for a in self.agents.values()), default=None)

    def invalid_reasons(self, thresholds: HealthThresholds = DEFAULT_THRESHOLDS,
                        agents_with_calls: Iterable[str] = ()) -> list[str]:
        """Why this generator's numbers cannot be trusted; empty when they can."""
        reasons = []
        for agent_id, a in sorted(self.agents.items()):
            if a.max_cpu_percent > thresholds.max_cpu_percent:
                reasons.append(f"agent {agent_id}: CPU {a.max_cpu_percent:.0f} % of a core "
                               f"(limit {thresholds.max_cpu_percent:g} %)")
            if a.max_pump_lag_ms > thresholds.max_pump_lag_ms:
                reasons.append(f"agent {agent_id}: event pump {a.max_pump_lag_ms:.0f} ms late "
                               f"(limit {thresholds.max_pump_lag_ms:g} ms)")
            if a.max_media_lag_ms > thresholds.max_media_lag_ms:
                reasons.append(f"agent {agent_id}: media clock {a.max_media_lag_ms:.0f} ms late "
                               f"(limit {thresholds.max_media_lag_ms:g} ms)")
        for agent_id in sorted(set(agents_with_calls) - set(self.agents)):
            reasons.append(f"agent {agent_id}: placed calls but sent no heartbeat (health unknown)")
        return reasons

    def summary(self, thresholds: HealthThresholds, clock_slip_ms: LatencyStats) -> GeneratorSummary:
        return GeneratorSummary(
            agents=len(self.agents),
            heartbeats=self.heartbeats,
            max_cpu_percent=_round(self.max_cpu_percent),
            max_pump_lag_ms=_round(self.max_pump_lag_ms),
            max_media_lag_ms=_round(max((a.max_media_lag_ms for a in self.agents.values()), default=None)),
            limits=HealthLimits(thresholds.max_cpu_percent, thresholds.max_pump_lag_ms, thresholds.max_media_lag_ms,
                                thresholds.max_clock_slip_ms),
            per_agent={
                agent_id: AgentSummary(a.heartbeats, round(a.max_cpu_percent, 3), round(a.max_pump_lag_ms, 3),
                                       round(a.max_media_lag_ms, 3))
                for agent_id, a in sorted(self.agents.items())
            },
            clock_slip_ms=clock_slip_ms,
        )


@dataclass
class _TurnStats:
    latency: LatencyHistogram = field(default_factory=LatencyHistogram)
    ok: int = 0
    not_ok: int = 0
    reasons: Counter[str] = field(default_factory=Counter)
    dtmf: int = 0


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
) -> Summary:
    """Aggregate one pass over the records into the summary (summary.json, schema 1)."""
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
    sources: dict[str, SourceCounts] = {}
    failures: Counter[str] = Counter()
    media = MediaStats()

    for rec in records:
        placed += 1
        media.observe(rec)
        if rec.source_address is not None:
            src = sources.setdefault(rec.source_address, SourceCounts())
            src.calls += 1
            src.completed += rec.outcome == OUTCOME_COMPLETED
            src.rejected += rec.outcome == OUTCOME_REJECTED
        completed += rec.outcome == OUTCOME_COMPLETED
        outcomes[rec.outcome] += 1
        if (name := failure_name(rec)) is not None:
            failures[name] += 1
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
            ts.dtmf += t.dtmf is not None
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
    return Summary(
        run_id=run_id,
        scenario=scenario_name,
        target=target,
        concurrency=concurrency,
        started_at=started_at,
        ended_at=ended_at,
        duration_s=round(max(ended_at - started_at, 0.0), 3),
        calls=CallCounts(planned=calls_planned, placed=placed, completed=completed, failed=placed - completed),
        outcomes=dict(outcomes),
        completion_rate=round(completed / placed, 6) if placed else 0.0,
        turn_latency_ms=LatencyStats.of(all_turns),
        turns=[
            TurnSummary(index, LatencyStats.of(ts.latency), ts.ok, ts.not_ok, dict(ts.reasons.most_common()),
                        dtmf=ts.dtmf)
            for index, ts in sorted(turns.items())
        ],
        greeting_onset_ms=LatencyStats.of(greeting),
        setup_ms=LatencyStats.of(setup),
        sip_codes=dict(sorted(sip_codes.items())),
        top_failures=top_failures(failures),
        hangup_by=dict(sorted(hangup_by.items())),
        source_addresses=dict(sorted(sources.items(), key=lambda kv: _ip_key(kv[0]))),
        valid=not invalid,
        invalid_reasons=invalid,
        generator=health.summary(thresholds, LatencyStats.of(slip)),
        media=media.summary(),
    )


# MOS and R: the low end is the bad end, so the summary gives low percentiles
QUALITY_PERCENTILES = {"p50": 50.0, "p10": 10.0, "p5": 5.0, "p1": 1.0}
# loss, jitter, round trip: the high end is the bad end
SPREAD_PERCENTILES = {"p50": 50.0, "p95": 95.0, "p99": 99.0}
WORST_CALLS = 5  # summary.json's media.worst_calls holds the calls of lowest MOS, this many
UNKNOWN_CODEC = "unknown"  # media.codecs' key for records that name no codec (agents before codecs)


class MediaStats:
    """The media half of the summary, fed one record at a time: codecs, E-model quality, loss, jitter, RTT.

    Constant memory (histograms and the few worst calls), so the collector can keep one for the live
    view as well. Only records with RTP counters count: an unanswered call had no media to judge.
    """

    def __init__(self) -> None:
        self.calls = 0
        self.no_audio = 0
        self.srtp = 0
        self.codecs: Counter[str] = Counter()
        self.mos = ValueHistogram(scale=100, highest=5.0)
        self.r_factor = ValueHistogram(scale=10, highest=100.0)
        self.loss_pct = ValueHistogram(scale=1000, highest=100.0)
        self.jitter_ms = ValueHistogram(scale=100, highest=10_000.0)
        self.rtt_ms = ValueHistogram(scale=10, highest=60_000.0)
        self._worst: list[tuple[float, float, int, WorstCall]] = []  # at most WORST_CALLS, lowest MOS first

    def observe(self, rec: CallRecord) -> None:
        rtp = rec.rtp
        if rtp is None:
            return
        self.calls += 1
        self.codecs[str(rtp.codec or UNKNOWN_CODEC)] += 1
        self.srtp += rtp.srtp is True
        received = _count(rtp.rx_packets)  # a record is text from the wire: a counter of the wrong type is none
        if received == 0:
            self.no_audio += 1
        elif received is not None:
            self.loss_pct.record(loss_percent(received, _count(rtp.rx_lost) or 0))
            if (jitter := _float(rtp.rx_jitter_ms_mean)) is not None:
                self.jitter_ms.record(jitter)
        if (rtt := _float(rtp.rtt_ms_mean)) is not None:
            self.rtt_ms.record(rtt)
        q = rec.quality
        if q is None:
            return
        self.mos.record(q.mos)
        self.r_factor.record(q.r_factor)
        key = (q.mos, q.r_factor, self.calls)  # ties: the earlier record first
        if len(self._worst) < WORST_CALLS or key < self._worst[-1][:3]:
            worst = WorstCall(rec.call_id, rec.agent_id, q.codec, q.mos, q.r_factor, q.loss_pct, q.delay_ms)
            self._worst.append((*key, worst))
            self._worst.sort(key=lambda w: w[:3])
            del self._worst[WORST_CALLS:]

    @property
    def rated(self) -> int:
        return self.mos.count

    def summary(self) -> MediaSummary | None:
        """summary.json's `media` section; None when no record carried RTP counters (it is then left out)."""
        if not self.calls:
            return None
        return MediaSummary(
            calls=self.calls, rated=self.rated, no_audio=self.no_audio,
            codecs=dict(self.codecs.most_common()), srtp=self.srtp,
            mos=QualityStats.of(self.mos, 2), r_factor=QualityStats.of(self.r_factor, 1),
            loss_pct=SpreadStats.of(self.loss_pct, 3), jitter_ms=SpreadStats.of(self.jitter_ms, 2),
            rtt_ms=SpreadStats.of(self.rtt_ms, 1),
            worst_calls=[w[3] for w in self._worst],
        )


TOP_FAILURES = 10  # summary.json's top_failures holds this many names; the rest count under OTHER_FAILURES
OTHER_FAILURES = "other"


def failure_name(rec: CallRecord) -> str | None:
    """What a call that did not complete counts as among the top failures; None for a completed call.

    A SIP ending keeps its numbers, because they are the point: `rejected 486 Busy Here`,
    `rejected 503 Service Unavailable (Retry-After 5)`, `timeout: no answer within 5000 ms`; a status
    our own stack made is its reason alone, `transport error: Connection refused (local 503)`. A
    measured reason groups as `reason_key` does: `failed: turn 1: bot took N ms (max N)`.
    """
    if rec.outcome == OUTCOME_COMPLETED:
        return None
    if rec.outcome == OUTCOME_REJECTED:
        if rec.sip_origin == SIP_ORIGIN_LOCAL and rec.reason:  # no response came: not the far end's refusal
            return rec.reason
        return f"rejected {rec.reason or rec.sip_code or 'without a reason'}"
    if rec.outcome == OUTCOME_TIMEOUT:
        return f"timeout: {rec.reason or 'no answer'}"
    return f"{rec.outcome}: {reason_key(rec.reason)}"


def failure_counts(records: Iterable[CallRecord]) -> Counter[str]:
    """Calls per failure name (see `failure_name`) over every call that did not complete."""
    return Counter(name for rec in records if (name := failure_name(rec)) is not None)


def top_failures(counts: Counter[str], top: int = TOP_FAILURES) -> dict[str, int]:
    """The `top` most common failure names, most common first; the calls of the rest under "other"."""
    kept = dict(counts.most_common(top))
    rest = sum(counts.values()) - sum(kept.values())
    if rest:
        kept[OTHER_FAILURES] = rest
    return kept


def reason_key(reason: str | None) -> str:
    """Group failure reasons that differ only in their numbers ("bot took 3412 ms (max 3000)")."""
    return _NUMBER.sub("N", reason) if reason else "unknown"


def _ip_key(addr: str) -> tuple[int, ...]:
    """127.0.0.10 after 127.0.0.9: addresses in numeric order (anything else sorts first)."""
    parts = addr.split(".")
    return tuple(int(p) for p in parts) if all(p.isdigit() for p in parts) else ()


def _count(v: Any) -> int | None:
    return v if isinstance(v, int) and not isinstance(v, bool) else None


def _float(v: Any) -> float | None:
    return float(v) if isinstance(v, int | float) and not isinstance(v, bool) else None


def _round(v: float | None) -> float | None:
    return None if v is None else round(v, 3)


# --- summary.json as records ---------------------------------------------------------------------


@dataclass
class LatencyStats:
    """One statistics object: HDR percentiles in ms (None when nothing was measured)."""

    p50: float | None = None
    p90: float | None = None
    p95: float | None = None
    p99: float | None = None
    max: float | None = None
    min: float | None = None
    mean: float | None = None
    count: int = 0
    out_of_range: int = 0  # values the histogram could not hold (negative or over an hour)

    @classmethod
    def of(cls, h: LatencyHistogram) -> LatencyStats:
        return cls(**h.percentiles(), out_of_range=h.out_of_range)

    def stat(self, name: str) -> Any:
        """A statistic by its summary.json name ("p95", "max", ...)."""
        return getattr(self, name)

    @classmethod
    def from_dict(cls, body: Mapping[str, Any]) -> LatencyStats:
        return _record(cls, body)


@dataclass
class CallCounts:
    planned: int = 0
    placed: int = 0
    completed: int = 0
    failed: int = 0  # placed but not completed


@dataclass
class SourceCounts:
    """The calls of one source address (`--bind`): a gateway's per-IP limit shows as one address's rejections."""

    calls: int = 0
    completed: int = 0
    rejected: int = 0


@dataclass
class TurnSummary:
    index: int
    latency_ms: LatencyStats = field(default_factory=LatencyStats)
    ok: int = 0
    not_ok: int = 0
    reasons: dict[str, int] = field(default_factory=dict)  # reason_key -> calls, most common first
    dtmf: int = 0  # calls in which this turn dialled DTMF digits instead of speaking

    @classmethod
    def from_dict(cls, body: Mapping[str, Any]) -> TurnSummary:
        return _record(cls, {**body, "latency_ms": LatencyStats.from_dict(_obj(body, "latency_ms"))})


@dataclass
class HealthLimits:
    """The HealthThresholds the run was judged by, as summary.json names them."""

    cpu_percent: float = MAX_AGENT_CPU_PERCENT
    pump_lag_ms: float = MAX_PUMP_LAG_MS
    media_lag_ms: float = MAX_MEDIA_LAG_MS
    clock_slip_ms: float = MAX_CLOCK_SLIP_MS


@dataclass
class GeneratorSummary:
    """The load generator's worst health over the run (None: no heartbeat was heard)."""

    agents: int = 0
    heartbeats: int = 0
    max_cpu_percent: float | None = None
    max_pump_lag_ms: float | None = None
    max_media_lag_ms: float | None = None
    limits: HealthLimits = field(default_factory=HealthLimits)
    per_agent: dict[str, AgentSummary] = field(default_factory=dict)
    clock_slip_ms: LatencyStats = field(default_factory=LatencyStats)

    @classmethod
    def from_dict(cls, body: Mapping[str, Any]) -> GeneratorSummary:
        per_agent = {str(k): _record(AgentSummary, _as_obj(v, f"per_agent.{k}"))
                     for k, v in _obj(body, "per_agent").items()}
        return _record(cls, {**body, "limits": _record(HealthLimits, _obj(body, "limits")), "per_agent": per_agent,
                             "clock_slip_ms": LatencyStats.from_dict(_obj(body, "clock_slip_ms"))})


@dataclass
class QualityStats:
    """MOS or R over the calls the E-model rated: the low percentiles, since low is bad (None: none rated)."""

    p50: float | None = None
    p10: float | None = None
    p5: float | None = None
    p1: float | None = None
    min: float | None = None
    max: float | None = None
    mean: float | None = None
    count: int = 0

    @classmethod
    def of(cls, h: ValueHistogram, digits: int) -> QualityStats:
        return cls(**h.stats(QUALITY_PERCENTILES, digits))

    def stat(self, name: str) -> Any:
        return getattr(self, name)

    @classmethod
    def from_dict(cls, body: Mapping[str, Any]) -> QualityStats:
        return _record(cls, body)


@dataclass
class SpreadStats:
    """Packet loss, jitter or round trip over calls: the high percentiles, since high is bad."""

    p50: float | None = None
    p95: float | None = None
    p99: float | None = None
    min: float | None = None
    max: float | None = None
    mean: float | None = None
    count: int = 0

    @classmethod
    def of(cls, h: ValueHistogram, digits: int) -> SpreadStats:
        return cls(**h.stats(SPREAD_PERCENTILES, digits))

    def stat(self, name: str) -> Any:
        return getattr(self, name)

    @classmethod
    def from_dict(cls, body: Mapping[str, Any]) -> SpreadStats:
        return _record(cls, body)


@dataclass
class WorstCall:
    """One of the calls of lowest MOS, with what the E-model judged it on."""

    call_id: str
    agent_id: str
    codec: str | None
    mos: float
    r_factor: float
    loss_pct: float
    delay_ms: float


@dataclass
class MediaSummary:
    """summary.json's `media`: present once a call carried RTP counters (docs/results.md, docs/media.md)."""

    calls: int = 0  # calls with RTP counters (answered calls, in practice)
    rated: int = 0  # of those, the calls the E-model rated (audio received, codec known)
    no_audio: int = 0  # calls with RTP counters that received no packet at all
    codecs: dict[str, int] = field(default_factory=dict)  # negotiated codec -> calls, most common first
    srtp: int = 0  # calls whose media was SRTP
    mos: QualityStats = field(default_factory=QualityStats)
    r_factor: QualityStats = field(default_factory=QualityStats)
    loss_pct: SpreadStats = field(default_factory=SpreadStats)  # per call: lost / expected, %
    jitter_ms: SpreadStats = field(default_factory=SpreadStats)  # per call: mean RFC 3550 jitter
    rtt_ms: SpreadStats = field(default_factory=SpreadStats)  # per call: mean RTCP round trip, when measured
    worst_calls: list[WorstCall] = field(default_factory=list)  # lowest MOS first

    @classmethod
    def from_dict(cls, body: Mapping[str, Any]) -> MediaSummary:
        worst = body.get("worst_calls") or []
        if not isinstance(worst, list):
            raise ValueError(f"summary key 'media.worst_calls' is a {type(worst).__name__}, not a list")
        return _record(cls, {
            **body,
            **{k: QualityStats.from_dict(_obj(body, k)) for k in ("mos", "r_factor")},
            **{k: SpreadStats.from_dict(_obj(body, k)) for k in ("loss_pct", "jitter_ms", "rtt_ms")},
            "worst_calls": [_record(WorstCall, _as_obj(w, "media.worst_calls[]")) for w in worst],
        })


@dataclass
class Summary:
    """summary.json. `media` and the last three (set after the run) are absent from the file while None."""

    schema: int = SUMMARY_SCHEMA
    run_id: str = ""
    scenario: str = ""
    target: str = ""
    concurrency: int = 0
    started_at: float = 0.0
    ended_at: float = 0.0
    duration_s: float = 0.0
    calls: CallCounts = field(default_factory=CallCounts)
    outcomes: dict[str, int] = field(default_factory=dict)
    completion_rate: float = 0.0
    turn_latency_ms: LatencyStats = field(default_factory=LatencyStats)
    turns: list[TurnSummary] = field(default_factory=list)
    greeting_onset_ms: LatencyStats = field(default_factory=LatencyStats)
    setup_ms: LatencyStats = field(default_factory=LatencyStats)
    sip_codes: dict[str, int] = field(default_factory=dict)  # final response code ("none": no response) -> calls
    top_failures: dict[str, int] = field(default_factory=dict)  # failure_name -> calls, most common first
    hangup_by: dict[str, int] = field(default_factory=dict)
    source_addresses: dict[str, SourceCounts] = field(default_factory=dict)  # local IP -> its calls
    valid: bool = False
    invalid_reasons: list[str] = field(default_factory=list)
    generator: GeneratorSummary = field(default_factory=GeneratorSummary)
    media: MediaSummary | None = None  # codecs and call quality; absent when no call carried RTP counters
    capacity: dict[str, Any] | None = None  # `voiceload capacity`'s answer (also capacity.json)
    slo: list[SloResult] | None = None  # the SLO verdicts, in order
    exit_code: int | None = None  # the command's exit code

    def to_dict(self) -> dict[str, Any]:
        body = asdict(self)
        for key in _ABSENT_WHEN_NONE:
            if body[key] is None:
                del body[key]
        return body

    def to_json(self) -> str:
        """The text of summary.json."""
        return json.dumps(self.to_dict(), indent=2) + "\n"

    @classmethod
    def from_dict(cls, body: Mapping[str, Any], *, on_bad_slo: Callable[[str], None] | None = None) -> Summary:
        """A summary.json back; missing keys take their defaults, a wrong shape is a ValueError.

        A malformed SLO verdict is left out (and described to `on_bad_slo`): the rest still reads.
        """
        turns = body.get("turns") or []
        if not isinstance(turns, list):
            raise ValueError(f"summary key 'turns' is a {type(turns).__name__}, not a list")
        capacity = body.get("capacity")
        return _record(cls, {
            **body,
            "calls": _record(CallCounts, _obj(body, "calls")),
            "turn_latency_ms": LatencyStats.from_dict(_obj(body, "turn_latency_ms")),
            "turns": [TurnSummary.from_dict(_as_obj(t, "turns[]")) for t in turns],
            "greeting_onset_ms": LatencyStats.from_dict(_obj(body, "greeting_onset_ms")),
            "setup_ms": LatencyStats.from_dict(_obj(body, "setup_ms")),
            "source_addresses": {str(k): _record(SourceCounts, _as_obj(v, f"source_addresses.{k}"))
                                 for k, v in _obj(body, "source_addresses").items()},
            "generator": GeneratorSummary.from_dict(_obj(body, "generator")),
            "media": None if body.get("media") is None else MediaSummary.from_dict(_obj(body, "media")),
            "capacity": capacity if isinstance(capacity, dict) else None,
            "slo": None if "slo" not in body else _slo_results(body["slo"], on_bad_slo),
        })


_SET_AFTER_THE_RUN = ("capacity", "slo", "exit_code")
# left out of the file while None: summary.json of a run without them reads as it always did
_ABSENT_WHEN_NONE = ("media", *_SET_AFTER_THE_RUN)


class _Dataclass(Protocol):
    __dataclass_fields__: ClassVar[dict[str, Any]]


_R = TypeVar("_R", bound=_Dataclass)


def _record(cls: type[_R], body: Mapping[str, Any]) -> _R:
    """The dataclass `cls` from the keys of `body` it has (others are ignored); TypeError becomes ValueError."""
    names = cls.__dataclass_fields__
    try:
        return cls(**{k: v for k, v in body.items() if k in names})
    except TypeError as exc:
        raise ValueError(f"not a summary {cls.__name__}: {exc}") from None


def _obj(body: Mapping[str, Any], key: str) -> Mapping[str, Any]:
    return _as_obj(body.get(key), key)


def _as_obj(value: Any, what: str) -> Mapping[str, Any]:
    """A JSON object of summary.json; a missing one reads as empty."""
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise ValueError(f"summary key {what!r} is a {type(value).__name__}, not an object")
    return value


def _slo_results(items: Any, on_bad: Callable[[str], None] | None) -> list[SloResult]:
    out = []
    for item in items if isinstance(items, list) else []:
        try:
            out.append(SloResult.from_dict(item))
        except (KeyError, TypeError, ValueError) as exc:
            if on_bad is not None:
                on_bad(f"{item!r} ({exc})")
    return out
