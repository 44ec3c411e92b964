"""The bot's worker pool and the closed-loop model that predicts its knee (pure, no calls)."""

from __future__ import annotations

import dataclasses
import random
from pathlib import Path

import pytest

from tests.test_callflow import drive
from voiceload.core.callflow import BotFlow, Play, ThinkTime
from voiceload.core.scenario import load_scenario
from voiceload.sut.botmodel import (
    ScenarioTiming,
    WorkerPool,
    main,
    percentile,
    predict_knee,
    simulate,
)

DEMO = Path(__file__).resolve().parent.parent / "scenarios" / "demo.yaml"

# A small two-turn scenario: greeting 2 s, utterances 1.5 s, replies 2 s.
TIMING = ScenarioTiming(greeting_ms=2000.0, utterance_ms=(1500.0, 1500.0), reply_ms=(2000.0, 2000.0),
                        silence_gap_ms=500.0, hangup_by="caller", hangup_after_ms=300.0, endpoint_ms=350.0)
SHORT_S = 600.0  # simulated seconds per N: enough for these tests, fast


def test_pool_serves_first_come_first_served_on_the_earliest_free_worker() -> None:
    pool = WorkerPool(2)
    assert pool.schedule(0, 100, 900) == 0  # worker A busy until 1000
    assert pool.schedule(5, 100, 400) == 5  # worker B busy until 505
    assert pool.schedule(10, 100, 900) == 505  # B frees first
    assert pool.schedule(20, 100, 900) == 1000  # then A
    assert pool.schedule(3000, 100, 900) == 3000  # idle workers: no wait, never before the arrival


def test_capacity_one_is_a_serial_queue() -> None:
    pool = WorkerPool(1)
    starts = [pool.schedule(0, 300, 700) for _ in range(3)]
    assert starts == [0, 1000, 2000]
    assert WorkerPool(1).due(50, 300, 700) == 350  # due = start + think
    with pytest.raises(ValueError):
        WorkerPool(0)


def test_up_to_capacity_callers_never_queue() -> None:
    for think, expected in ((500.0, 500.0), (300.0, 350.0)):  # a think under the endpointing is endpoint-bound
        lat = simulate(4, 4, think, TIMING, SHORT_S, seed=3)
        assert lat and min(lat) == pytest.approx(expected) and max(lat) == pytest.approx(expected)
        assert percentile(lat, 95) == pytest.approx(expected, rel=1e-3)  # HDR: 3 significant digits
    lagged = simulate(2, 4, 500.0, dataclasses.replace(TIMING, hear_lag_ms=30.0), SHORT_S, seed=3)
    assert min(lagged) == pytest.approx(530.0) and max(lagged) == pytest.approx(530.0)


def test_more_callers_than_workers_queue() -> None:
    lat = simulate(6, 1, 500.0, TIMING, SHORT_S, seed=3)
    assert min(lat) >= 500.0
    assert percentile(lat, 95) > 2000.0  # a serial bot with 6 callers: waits of several utterances


def test_simulation_is_deterministic() -> None:
    jittered = dataclasses.replace(TIMING, think_jitter_ms=100.0)
    a = simulate(8, 3, 400.0, jittered, SHORT_S, seed=7)
    assert a == simulate(8, 3, 400.0, jittered, SHORT_S, seed=7)
    assert a != simulate(8, 3, 400.0, jittered, SHORT_S, seed=8)
    assert predict_knee(3, 400.0, jittered, 900.0, 20, duration_s=SHORT_S) == predict_knee(
        3, 400.0, jittered, 900.0, 20, duration_s=SHORT_S)


def test_knee_grows_with_capacity() -> None:
    knees = [predict_knee(c, 400.0, TIMING, 900.0, 60, duration_s=SHORT_S) for c in (1, 2, 4, 8)]
    assert knees == sorted(knees) and len(set(knees)) == len(knees)
    assert knees[0] >= 1
    # a call keeps a worker busy 7 s of its ~12 s: the knee sits near C x 12 / 7
    assert all(c <= k <= 3 * c for c, k in zip((1, 2, 4, 8), knees, strict=True))
    assert predict_knee(4, 400.0, TIMING, 300.0, 20, duration_s=SHORT_S) == 0  # the think time alone breaks it


def test_timing_from_the_demo_scenario() -> None:
    t = ScenarioTiming.from_scenario(load_scenario(DEMO), 350)
    assert t.greeting_ms == pytest.approx(2608.25)
    assert t.reply_ms == pytest.approx((1673.0, 3277.5))
    assert t.utterance_ms == pytest.approx((1590.75, 985.25))  # speech end (fricatives included), not the file's end
    assert (t.silence_gap_ms, t.hangup_by, t.hangup_after_ms, t.endpoint_ms) == (500, "caller", 300, 350)
    assert t.call_ms(400) == pytest.approx(60 + 200 + 2608.25 + 500 + 1590.75 + 400 + 1673 + 500 + 985.25 + 400
                                           + 3277.5 + 500)


def test_cli_entry_prints_the_knee(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([str(DEMO), "--capacity", "3", "--think-ms", "300", "--p95-ms", "900", "--duration-s", "300"]) == 0
    out = capsys.readouterr().out
    assert "predicted knee: N = " in out and "<- knee" in out
    assert main([str(DEMO), "--capacity", "3", "--think-ms", "x", "--p95-ms", "900"]) == 2


def bot(scheduler: WorkerPool | None) -> BotFlow:
    return BotFlow(prompt_ms=[1000.0, 500.0], has_greeting=True, n_turns=1, think=ThinkTime(400), endpoint_ms=300,
                   hangup_by="caller", hangup_after_ms=200, rng=random.Random(0),
                   scheduler=None if scheduler is None else scheduler.due)


def test_bot_flow_waits_for_a_free_worker() -> None:
    """Two calls on one worker: the second greeting waits for the first to be spoken."""
    pool = WorkerPool(1)
    a, b = bot(pool), bot(pool)
    a.on_answer(0)
    b.on_answer(0)
    assert (a.greeting_queued_ms, b.greeting_queued_ms) == (0.0, 1200.0)  # 200 delay + 1000 prompt
    assert drive(a, 0, 300, 0) == [(200, Play(0))]
    assert drive(b, 0, 1500, 0) == [(1400, Play(0))]
    # both callers speak until 2995; a's job arrives first and holds the worker for 400 + 500 ms
    drive(a, 1500, 3000, 30)
    drive(b, 1500, 3000, 30)
    assert drive(a, 3000, 3500, 0) == [(3395, Play(1))]
    assert drive(b, 3000, 4500, 0) == [(4295, Play(1))]  # started at 2995 + 900
    assert (a.queued_ms, b.queued_ms) == ([0.0], [900.0])
    assert a.think_ms == b.think_ms == [400.0]


def test_bot_flow_without_a_scheduler_never_queues() -> None:
    f = bot(None)
    f.on_answer(0)
    drive(f, 0, 1300, 0)
    drive(f, 1300, 2000, 30)
    assert drive(f, 2000, 3000, 0) == [(2395, Play(1))]
    assert f.queued_ms == [0.0] and f.greeting_queued_ms == 0.0
