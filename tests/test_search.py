"""The capacity search's pure parts: the level sequence, breach confirmation, step windows, verdicts."""

from __future__ import annotations

import pytest

from voiceload.core.search import CapacitySearch, StepVerdict, Window, host_cpu_reason, judge_step, step_records
from voiceload.core.slo import parse_slos
from voiceload.errors import EXIT_INVALID_RUN, EXIT_OK, EXIT_SLO_FAILED
from voiceload.protocol import CallRecord, Heartbeat, TurnResult


def verdict(level: int, *, passed: bool = True, valid: bool = True, attempt: int = 1) -> StepVerdict:
    return StepVerdict(
        concurrency=level, attempt=attempt, calls=10, completed=10, turns=20, calls_per_s=level / 10,
        p50_ms=400.0, p95_ms=500.0 if passed else 1500.0, passed=passed,
        failed_slos=() if passed else ("p95_turn_latency_ms<=900 (1500)",),
        invalid_reasons=() if valid else ("agent a0: event pump 300 ms late (limit 100 ms)",),
    )


def walk(search: CapacitySearch, outcome: dict[int, list[str]]) -> list[int]:
    """Feed verdicts per level from `outcome` ('pass' | 'fail' | 'invalid', one per attempt)."""
    levels = []
    tries: dict[int, int] = {}
    while (level := search.next_level()) is not None:
        levels.append(level)
        i = tries.get(level, 0)
        tries[level] = i + 1
        kind = outcome.get(level, ["pass"])[min(i, len(outcome.get(level, ["pass"])) - 1)]
        search.record(verdict(level, passed=kind == "pass", valid=kind != "invalid", attempt=search.attempt))
    return levels


def test_a_confirmed_breach_ends_the_search_at_the_last_passing_level() -> None:
    search = CapacitySearch(start=10, step=5, max_concurrency=100)
    levels = walk(search, {25: ["fail", "fail"]})
    assert levels == [10, 15, 20, 25, 25]
    result = search.result()
    assert result.knee == 20 and not result.at_least and result.exit_code == EXIT_OK
    assert result.first_failing is not None and result.first_failing.concurrency == 25
    assert "20 concurrent calls" in result.headline() and "25 calls broke" in result.headline()


def test_a_breach_that_does_not_repeat_is_not_a_knee() -> None:
    search = CapacitySearch(start=10, step=10, max_concurrency=40)
    levels = walk(search, {20: ["fail", "pass"]})
    assert levels == [10, 20, 20, 30, 40]
    result = search.result()
    assert result.knee == 40 and result.at_least and result.exit_code == EXIT_OK
    assert "reached --max" in result.headline()


def test_the_first_level_breaking_twice_exits_1() -> None:
    search = CapacitySearch(start=10, step=10, max_concurrency=40)
    assert walk(search, {10: ["fail", "fail"]}) == [10, 10]
    result = search.result()
    assert result.knee is None and result.exit_code == EXIT_SLO_FAILED
    assert "even the first level" in result.headline()


def test_a_saturated_generator_gives_at_least_n_and_exit_3() -> None:
    search = CapacitySearch(start=10, step=10, max_concurrency=100)
    assert walk(search, {40: ["invalid"]}) == [10, 20, 30, 40]
    result = search.result()
    assert result.knee == 30 and result.at_least and result.exit_code == EXIT_INVALID_RUN
    assert "at least 30" in result.headline() and "saturated at 40" in result.headline()


def test_the_last_level_is_clipped_to_max() -> None:
    search = CapacitySearch(start=10, step=15, max_concurrency=30)
    assert walk(search, {}) == [10, 25, 30]


@pytest.mark.parametrize("start,step,top", [(0, 10, 20), (10, 0, 20), (30, 10, 20)])
def test_bad_search_parameters_are_refused(start: int, step: int, top: int) -> None:
    with pytest.raises(ValueError):
        CapacitySearch(start, step, top)


def record(call_id: str, started_at: float, duration_s: float, onsets_ms: list[float], latency: float = 400.0,
           outcome: str = "completed", agent: str = "a0") -> CallRecord:
    return CallRecord(
        run_id="r", agent_id=agent, call_id=call_id, seq=1, outcome=outcome, sip_code=200, started_at=started_at,
        setup_ms=0.0, duration_ms=duration_s * 1000,
        turns=[TurnResult(index=i, bot_onset_ms=o, latency_ms=latency, ok=True) for i, o in enumerate(onsets_ms)],
    )


def test_a_step_is_judged_on_the_calls_that_ended_in_its_window() -> None:
    w = Window(start=100.0, judge_from=110.0, end=170.0)
    recs = [
        record("before", 90.0, 15.0, [5000, 10000]),  # ended at 105: before the judged window
        record("inside", 120.0, 12.0, [5000, 10000]),
        record("straddles", 95.0, 20.0, [3000, 12000]),  # ends at 115; its first reply (98 s) predates the level
        record("after", 165.0, 12.0, [5000]),  # ends at 177: belongs to later
    ]
    got = {r.call_id: r for r in step_records(recs, w)}
    assert set(got) == {"inside", "straddles"}
    assert [t.index for t in got["straddles"].turns] == [1]
    assert len(got["inside"].turns) == 2


def test_judge_step_checks_slos_and_generator_health_inside_the_window() -> None:
    w = Window(start=0.0, judge_from=10.0, end=70.0)
    recs = [record(f"c{i}", 10.0 + i, 12.0, [2000, 6000], latency=400.0 + 10 * i) for i in range(40)]
    slos = parse_slos(["p95_turn_latency_ms<=900", "completion_rate>=0.99"])
    hb_ok = Heartbeat(run_id="r", agent_id="a0", at=30.0, active_calls=4, placed=10, finished=6, cpu_percent=20.0,
                      pump_lag_ms_max=20.0, max_calls=4)
    hb_late_outside = Heartbeat(run_id="r", agent_id="a0", at=5.0, active_calls=4, placed=10, finished=6,
                                cpu_percent=20.0, pump_lag_ms_max=900.0, max_calls=4)
    v = judge_step(30, 1, recs, w, slos, heartbeats=[hb_ok, hb_late_outside], host_cpu=[50.0, 60.0])
    assert v.valid and v.passed, v
    assert v.calls == 40 and v.turns == 80 and v.calls_per_s == pytest.approx(40 / 60, abs=1e-3)
    assert v.host_cpu_percent == 55.0

    strict = parse_slos(["p95_turn_latency_ms<=500"])
    v = judge_step(30, 1, recs, w, strict, heartbeats=[hb_ok])
    assert not v.passed and v.failed_slos[0].startswith("p95_turn_latency_ms<=500 (")

    hb_late = Heartbeat(run_id="r", agent_id="a0", at=40.0, active_calls=4, placed=10, finished=6, cpu_percent=20.0,
                        pump_lag_ms_max=400.0, max_calls=4)
    v = judge_step(30, 1, recs, w, slos, heartbeats=[hb_late], host_cpu=[95.0, 97.0])
    assert not v.valid
    assert any("event pump" in r for r in v.invalid_reasons)
    assert any("host CPU 96 %" in r for r in v.invalid_reasons)


def test_host_cpu_reason() -> None:
    assert host_cpu_reason([]) is None
    assert host_cpu_reason([80.0, 89.0]) is None
    reason = host_cpu_reason([92.0, 94.0])
    assert reason is not None and "saturated" in reason
