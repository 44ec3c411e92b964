"""build_series(): per-second load, completion and latency, and latency by concurrency, from hand-made records."""

from __future__ import annotations

import pytest

from voiceload.core.timeseries import DEFAULT_UNANSWERED_MS, active_at, build_series, call_span
from voiceload.protocol import CallRecord, TurnResult

T0 = 1_700_000_000.0
REL = 1e-3


def call(cid: str, start: float, *, outcome: str = "completed", setup: float | None = 100.0,
         duration: float | None = 2400.0, ringing: float | None = None, reason: str | None = None,
         turns: list[tuple[float, float]] | None = None) -> CallRecord:
    """`start` in s after T0; turns as (bot_onset_ms, latency_ms)."""
    return CallRecord(
        run_id="r1", agent_id="a0", call_id=cid, seq=0, outcome=outcome, started_at=T0 + start,
        setup_ms=setup, duration_ms=duration, ringing_ms=ringing, reason=reason,
        sip_code=200 if setup is not None else None,
        turns=[TurnResult(index=i, utterance_end_ms=onset - lat, bot_onset_ms=onset, latency_ms=lat, ok=True)
               for i, (onset, lat) in enumerate(turns or [])],
    )


def two_calls() -> list[CallRecord]:
    # A: [0, 2.5) completed, replies at 0.6 s (300 ms) and 1.6 s (700 ms)
    # B: [1.0, 4.0) failed, reply at 1.2 s (1000 ms)
    return [
        call("A", 0.0, turns=[(500.0, 300.0), (1500.0, 700.0)]),
        call("B", 1.0, outcome="failed", setup=0.0, duration=3000.0, turns=[(200.0, 1000.0)]),
    ]


def test_buckets_count_active_started_ended() -> None:
    s = build_series(two_calls())
    assert s.t0 == T0 and s.bucket_s == 1.0 and s.calls == 2 and s.untimed == 0 and s.estimated_ends == 0
    assert [b.t for b in s.buckets] == [0.0, 1.0, 2.0, 3.0]
    assert [b.active for b in s.buckets] == pytest.approx([1.0, 2.0, 1.5, 1.0])
    assert [b.active_peak for b in s.buckets] == [1, 2, 2, 1]
    assert s.peak_active == 2
    assert [b.started for b in s.buckets] == [1, 1, 0, 0]
    assert [b.completed for b in s.buckets] == [0, 0, 1, 0]  # A ends at 2.5 s
    assert [b.failed for b in s.buckets] == [0, 0, 0, 1]  # B ends at 4.0 s: the last bucket


def test_latency_percentiles_per_second() -> None:
    s = build_series(two_calls())
    assert [b.turns for b in s.buckets] == [1, 2, 0, 0]
    b0, b1, b2, _ = s.buckets
    assert b0.latency_p50 == pytest.approx(300.0, rel=REL) and b0.latency_p95 == pytest.approx(300.0, rel=REL)
    assert b1.latency_p50 == pytest.approx(700.0, rel=REL)
    assert b1.latency_p95 == pytest.approx(1000.0, rel=REL)
    assert b2.latency_p50 is None and b2.latency_p95 is None


def test_latency_by_concurrency_at_the_reply() -> None:
    s = build_series(two_calls())
    # 0.6 s: only A in progress; 1.2 s and 1.6 s: A and B
    groups = [(g.lo, g.hi, g.turns) for g in s.by_concurrency]
    assert groups == [(1, 1, 1), (2, 2, 2)]
    g1, g2 = s.by_concurrency
    assert g1.latency_p50 == pytest.approx(300.0, rel=REL)
    assert g2.latency_p50 == pytest.approx(700.0, rel=REL) and g2.latency_p95 == pytest.approx(1000.0, rel=REL)
    assert g1.label == "1"


def test_concurrency_groups_widen_for_many_calls() -> None:
    recs = [call(f"c{i}", i * 0.01, duration=10_000.0, turns=[(5000.0, 100.0 + i)]) for i in range(100)]
    s = build_series(recs)
    assert s.peak_active == 100
    assert all(g.hi - g.lo + 1 == 5 for g in s.by_concurrency)  # 100 / 24 -> groups of 5
    assert sum(g.turns for g in s.by_concurrency) == 100
    assert s.by_concurrency[-1].label == "100-104"


def test_unanswered_calls_end_when_the_agent_gave_up() -> None:
    timeout_named = call("t1", 0.0, outcome="timeout", setup=None, duration=None,
                         reason="no answer within 3000 ms")
    timeout_unnamed = call("t2", 0.0, outcome="timeout", setup=None, duration=None, reason="no final response")
    rejected = call("r1", 0.0, outcome="rejected", setup=None, duration=None, ringing=20.0, reason="486 Busy Here")
    assert call_span(timeout_named, T0).end == pytest.approx(3.0)
    assert call_span(timeout_unnamed, T0).end == pytest.approx(DEFAULT_UNANSWERED_MS / 1000)
    assert call_span(timeout_unnamed, T0, unanswered_ms=8000).end == pytest.approx(8.0)
    assert call_span(rejected, T0).end == pytest.approx(0.02)
    assert all(call_span(r, T0).estimated for r in (timeout_named, timeout_unnamed, rejected))

    s = build_series([timeout_named, timeout_unnamed, rejected])
    assert s.estimated_ends == 3 and len(s.buckets) == 5
    assert [b.failed for b in s.buckets] == [1, 0, 0, 1, 1]  # by end time: 0.02 s, 3 s, 5 s (last bucket)
    assert [b.active_peak for b in s.buckets] == [3, 2, 2, 1, 1]
    assert sum(b.completed for b in s.buckets) == 0


def test_answered_without_duration_ends_after_its_last_event() -> None:
    rec = call("x", 0.0, outcome="failed", setup=200.0, duration=None, turns=[(1800.0, 400.0)])
    span = call_span(rec, T0)
    assert span.estimated and span.end == pytest.approx(2.0)  # setup 0.2 s + reply at 1.8 s
    s = build_series([rec])
    assert s.by_concurrency[0].lo == 1  # the call counts itself at its own reply


def test_handover_is_not_two_calls() -> None:
    s = build_series([call("a", 0.0, setup=0.0, duration=1000.0), call("b", 1.0, setup=0.0, duration=1000.0)])
    assert [b.active_peak for b in s.buckets] == [1, 1]
    assert [b.active for b in s.buckets] == pytest.approx([1.0, 1.0])
    spans = [call_span(r, T0) for r in (call("a", 0.0, setup=0.0, duration=1000.0),)]
    assert active_at(spans, 0.5) == 1 and active_at(spans, 1.0) == 0


def test_long_runs_get_wider_buckets() -> None:
    s = build_series([call("a", 0.0, setup=0.0, duration=95_000.0)], max_buckets=10)
    assert s.bucket_s == 10.0 and len(s.buckets) == 10
    assert s.buckets[-1].active == pytest.approx(0.5)


def test_empty_and_untimed() -> None:
    s = build_series([])
    assert s.buckets == [] and s.by_concurrency == [] and s.calls == 0 and s.peak_active == 0
    s = build_series([call("z", -T0, setup=None, duration=None, outcome="error")])  # started_at 0: unknown
    assert s.untimed == 1 and s.buckets == []
    with pytest.raises(ValueError):
        build_series([], bucket_s=0)
