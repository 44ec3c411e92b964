"""Per-second series of a run from its call records, for reports. Pure: no I/O, no clock.

Time `t` is seconds since the run's first INVITE. A call is *active* from `started_at` until
`started_at + (setup_ms + duration_ms) / 1000`. Calls that were never answered have no duration:
their end is estimated (see `call_span`) and counted in `RunSeries.estimated_ends`.

Latency percentiles come from one HDR histogram per bucket (never from sorting samples). A turn
happens at `started_at + (setup_ms + bot_onset_ms) / 1000`: the moment the bot's reply arrived.
"""

from __future__ import annotations

import bisect
import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from voiceload.core.stats import LatencyHistogram
from voiceload.protocol import OUTCOME_COMPLETED, OUTCOME_TIMEOUT, CallRecord

# A timeout whose reason does not say how long the agent waited: the scenario default
# (`answer_timeout_ms`, see voiceload/scenario.py).
DEFAULT_UNANSWERED_MS = 5000.0
# Longer runs get wider buckets, so a report costs at most this many histograms per series.
MAX_BUCKETS = 3600
# Latency vs concurrency: at most this many concurrency groups (widths 1, 2, 5, 10, 20, 50, ...).
MAX_CONCURRENCY_GROUPS = 24

_WAITED = re.compile(r"no answer within (\d+(?:\.\d+)?) ms")


@dataclass(frozen=True)
class CallSpan:
    """When one call occupied a slot, in seconds since the first INVITE."""

    call_id: str
    start: float
    end: float
    completed: bool
    estimated: bool  # end not measured (never answered, or no duration): estimated


@dataclass(frozen=True)
class Bucket:
    """One time bucket [t, t + bucket_s)."""

    t: float  # bucket start, seconds since the first INVITE
    active: float  # calls in progress, time-weighted mean over the bucket
    active_peak: int  # most calls in progress at any instant of the bucket
    started: int  # INVITEs sent
    completed: int  # calls that ended `completed`
    failed: int  # calls that ended any other way
    turns: int  # turn latencies measured (by the bot reply's arrival)
    latency_p50: float | None  # ms; None without turns
    latency_p95: float | None


@dataclass(frozen=True)
class ConcurrencyGroup:
    """Turn latency while `lo`..`hi` calls (inclusive) were in progress."""

    lo: int
    hi: int
    turns: int
    latency_p50: float | None
    latency_p95: float | None

    @property
    def label(self) -> str:
        return str(self.lo) if self.lo == self.hi else f"{self.lo}-{self.hi}"


@dataclass(frozen=True)
class RunSeries:
    t0: float  # unix time of the first INVITE (0.0 when there are no timed calls)
    bucket_s: float
    buckets: list[Bucket]
    by_concurrency: list[ConcurrencyGroup]  # only groups with turns, ascending
    calls: int  # calls with a start time
    untimed: int  # records without a start time (left out)
    estimated_ends: int  # calls whose end was estimated
    peak_active: int


def call_span(rec: CallRecord, t0: float, *, unanswered_ms: float = DEFAULT_UNANSWERED_MS) -> CallSpan:
    """The call's [start, end) in seconds since `t0`.

    Answered calls end at setup + duration (or, without a duration, at the last thing measured
    in the call). A timeout ends when the agent gave up: the wait named in its reason, else
    `unanswered_ms`. A rejected or failed-to-place call ends at its last known signalling event
    (the 18x, if any): close enough, as rejections come back within milliseconds.
    """
    start = rec.started_at - t0
    setup = rec.setup_ms
    if setup is not None:
        if rec.duration_ms is not None:
            return CallSpan(rec.call_id, start, start + (setup + rec.duration_ms) / 1000,
                            rec.outcome == OUTCOME_COMPLETED, False)
        return CallSpan(rec.call_id, start, start + (setup + _last_offset_ms(rec)) / 1000,
                        rec.outcome == OUTCOME_COMPLETED, True)
    waited = rec.ringing_ms or 0.0
    if rec.outcome == OUTCOME_TIMEOUT:
        m = _WAITED.search(rec.reason or "")
        waited = max(waited, float(m.group(1)) if m else unanswered_ms)
    return CallSpan(rec.call_id, start, start + waited / 1000, rec.outcome == OUTCOME_COMPLETED, True)


def _last_offset_ms(rec: CallRecord) -> float:
    """The latest offset (ms from answer) the record knows of."""
    offsets = [0.0]
    if rec.greeting is not None:
        offsets += [v for v in (rec.greeting.bot_onset_ms, rec.greeting.bot_end_ms) if v is not None]
    for t in rec.turns:
        offsets += [v for v in (t.utterance_start_ms, t.utterance_end_ms, t.bot_onset_ms, t.bot_end_ms)
                    if v is not None]
    return max(offsets)


def turn_times(rec: CallRecord, t0: float) -> list[tuple[float, float]]:
    """(time of the bot's reply in s since t0, latency ms) for every turn with a measured latency."""
    if rec.setup_ms is None:
        return []
    base = rec.started_at - t0 + rec.setup_ms / 1000
    return [(base + t.bot_onset_ms / 1000, t.latency_ms) for t in rec.turns
            if t.latency_ms is not None and t.bot_onset_ms is not None]


def build_series(
    records: Iterable[CallRecord],
    *,
    bucket_s: float = 1.0,
    unanswered_ms: float = DEFAULT_UNANSWERED_MS,
    max_buckets: int = MAX_BUCKETS,
) -> RunSeries:
    """All per-bucket series and latency by concurrency, in one pass over the records."""
    if bucket_s <= 0:
        raise ValueError("bucket_s must be positive")
    recs = list(records)
    timed = [r for r in recs if r.started_at > 0]
    untimed = len(recs) - len(timed)
    if not timed:
        return RunSeries(0.0, bucket_s, [], [], 0, untimed, 0, 0)
    t0 = min(r.started_at for r in timed)
    spans = [call_span(r, t0, unanswered_ms=unanswered_ms) for r in timed]
    # A reply can outlast an estimated end: stretch the span so the call is active at its own turns.
    samples: list[tuple[float, float]] = []
    for i, r in enumerate(timed):
        tt = turn_times(r, t0)
        samples += tt
        last = max((t + 0.001 for t, _ in tt), default=spans[i].end)  # active just past its reply
        if last > spans[i].end:
            s = spans[i]
            spans[i] = CallSpan(s.call_id, s.start, last, s.completed, True)

    horizon = max(max(s.end for s in spans), max((t for t, _ in samples), default=0.0))
    n = max(1, math.ceil(horizon / bucket_s - 1e-9))
    if n > max_buckets:
        bucket_s = _nice_width(horizon / max_buckets)
        n = max(1, math.ceil(horizon / bucket_s - 1e-9))

    started = [0] * n
    completed = [0] * n
    failed = [0] * n
    for s in spans:
        started[_index(s.start, bucket_s, n)] += 1
        if s.completed:
            completed[_index(s.end, bucket_s, n)] += 1
        else:
            failed[_index(s.end, bucket_s, n)] += 1
    active, peak = _occupancy(spans, bucket_s, n)

    per_bucket: dict[int, list[float]] = {}
    for t, lat in samples:
        per_bucket.setdefault(_index(t, bucket_s, n), []).append(lat)
    buckets = []
    for i in range(n):
        lats = per_bucket.get(i, [])
        p50, p95 = _p50_p95(lats)
        buckets.append(Bucket(round(i * bucket_s, 6), active[i], peak[i], started[i], completed[i], failed[i],
                              len(lats), p50, p95))

    return RunSeries(t0, bucket_s, buckets, _by_concurrency(spans, samples), len(spans), untimed,
                     sum(s.estimated for s in spans), max(peak))


def active_at(spans: Sequence[CallSpan], t: float) -> int:
    """Calls in progress at instant t (start <= t < end). O(n); see `_by_concurrency` for many instants."""
    return sum(s.start <= t < s.end for s in spans)


def _index(t: float, width: float, n: int) -> int:
    return min(max(int(t // width), 0), n - 1)


def _occupancy(spans: Sequence[CallSpan], width: float, n: int) -> tuple[list[float], list[int]]:
    """Time-weighted mean and peak of calls in progress per bucket: one sweep over start/end events."""
    # ends sort before starts at the same instant: a slot handed from one call to the next is not two calls
    events = sorted([(s.start, 1) for s in spans] + [(s.end, -1) for s in spans], key=lambda e: (e[0], e[1]))
    area = [0.0] * n
    peak = [0] * n
    level = 0
    now = 0.0
    for at, step in events:
        at = min(max(at, 0.0), n * width)
        _accumulate(area, peak, level, now, at, width, n)
        now = at
        level += step
        peak[_index(at, width, n)] = max(peak[_index(at, width, n)], level)
    _accumulate(area, peak, level, now, n * width, width, n)
    return [round(a / width, 3) for a in area], peak


def _accumulate(area: list[float], peak: list[int], level: int, t1: float, t2: float, width: float, n: int) -> None:
    """`level` calls were in progress over [t1, t2): add to each bucket's area and peak."""
    if t2 <= t1 or level == 0:
        return
    i = _index(t1, width, n)
    while i < n and i * width < t2:
        lo, hi = max(t1, i * width), min(t2, (i + 1) * width)
        if hi > lo:
            area[i] += level * (hi - lo)
            peak[i] = max(peak[i], level)
        i += 1


def _by_concurrency(spans: Sequence[CallSpan], samples: Sequence[tuple[float, float]]) -> list[ConcurrencyGroup]:
    if not samples:
        return []
    starts = sorted(s.start for s in spans)
    ends = sorted(s.end for s in spans)
    levels = [(bisect.bisect_right(starts, t) - bisect.bisect_right(ends, t), lat) for t, lat in samples]
    width = int(_nice_width(max(lv for lv, _ in levels) / MAX_CONCURRENCY_GROUPS))
    groups: dict[int, list[float]] = {}
    for lv, lat in levels:
        groups.setdefault(max(lv, 0) // width, []).append(lat)
    out = []
    for g, lats in sorted(groups.items()):
        p50, p95 = _p50_p95(lats)
        out.append(ConcurrencyGroup(g * width, g * width + width - 1, len(lats), p50, p95))
    return out


def _nice_width(x: float) -> float:
    """The smallest of 1, 2, 5, 10, 20, 50, ... that is >= x."""
    if x <= 1:
        return 1.0
    mag = 10 ** math.floor(math.log10(x))
    for m in (1, 2, 5, 10):
        if m * mag >= x:
            return float(m * mag)
    return float(10 * mag)  # pragma: no cover - the loop always returns


def _p50_p95(lats: Sequence[float]) -> tuple[float | None, float | None]:
    if not lats:
        return None, None
    h = LatencyHistogram()
    for v in lats:
        h.record(v)
    p = h.percentiles()
    return p["p50"], p["p95"]
