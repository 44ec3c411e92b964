"""Load shapes and the capacity search, with real calls against the reference bot over 127.0.0.1."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.refbot import (
    LOAD_REASONS,
    REPO,
    RefBot,
    RunResult,
    assert_completed,
    checked_summary,
    start_bot,
    voiceload,
)
from voiceload.core.timeseries import build_series
from voiceload.protocol import CallRecord

pytestmark = pytest.mark.real

QUICK = REPO / "scenarios" / "quick.yaml"  # one turn, ~4 s per call


@pytest.fixture
def quick_bot(tmp_path: Path) -> Iterator[RefBot]:
    b = start_bot(tmp_path, scenario=QUICK, think_ms="300", max_calls=8)
    try:
        yield b
    finally:
        b.stop()


def test_a_shape_ramps_holds_and_ends_with_one_record_per_placed_call(quick_bot: RefBot, tmp_path: Path) -> None:
    out = tmp_path / "run"
    res = voiceload("run", str(QUICK), "--target", quick_bot.target, "--shape", "ramp:0-4/6s,constant:4/8s",
                    "--out", str(out), out=out, timeout=120)
    summary = checked_summary(res)
    calls = res.calls()
    assert len({c["call_id"] for c in calls}) == len(calls) >= 8
    assert_completed(summary, calls)
    assert summary["calls"]["placed"] == summary["calls"]["planned"] == len(calls)
    series = build_series([CallRecord.from_dict(c) for c in calls])
    assert series.peak_active == 4  # the constant segment's level, never more
    first_second = [b for b in series.buckets if b.t < 1.0]
    assert all(b.active_peak <= 2 for b in first_second)  # the ramp starts low
    assert summary["concurrency"] == 4


def skip_if_stopped_by_a_busy_box(res: RunResult, cap: dict[str, Any]) -> None:
    """A step whose generator health was spoiled, which only a busy box does to these few calls (agents
    at 2-4 % of a core), ends the search there: check it says so (exit 3, "at least" the last level
    that held), then skip, as the level this test is about was never judged."""
    *before, last = cap["steps"]
    if last["valid"]:
        return
    assert res.code == 3, res.stderr[-2000:]
    assert cap["saturated_at"] == last and "saturated" in res.stdout
    assert all(any(k in r for k in LOAD_REASONS) for r in last["invalid_reasons"]), last["invalid_reasons"]
    assert all(s["valid"] for s in before)
    held = [s["concurrency"] for s in before if s["passed"]]
    assert cap["knee"] == (max(held) if held else None)
    pytest.skip(f"a busy box spoiled the generator's health at {last['concurrency']} calls: "
                f"{'; '.join(last['invalid_reasons'])}")


def test_capacity_search_against_an_unlimited_bot_reaches_max(quick_bot: RefBot, tmp_path: Path) -> None:
    """`--max-host-cpu 100`: the host-CPU guard counts every process on the box, and on a shared box
    the others would end the search (test_a_saturated_generator... trips that guard on purpose)."""
    out = tmp_path / "cap"
    res = voiceload("capacity", str(QUICK), "--target", quick_bot.target, "--slo", "p95_turn_latency_ms<=900",
                    "--start", "2", "--step", "2", "--max", "4", "--hold", "8s", "--settle", "4s",
                    "--max-host-cpu", "100", "--out", str(out), out=out, timeout=180)
    cap = json.loads((out / "capacity.json").read_text())
    skip_if_stopped_by_a_busy_box(res, cap)
    assert res.code == 0, res.stderr[-2000:]
    assert cap["knee"] == 4 and cap["at_least"] is True
    assert [s["concurrency"] for s in cap["steps"]] == [2, 4]
    assert all(s["passed"] and s["valid"] and s["calls"] > 0 for s in cap["steps"])
    assert "at least 4 concurrent calls" in res.stdout
    html = (out / "report.html").read_text()
    assert "Capacity search" in html


def test_a_saturated_generator_makes_the_answer_at_least_n_with_exit_3(quick_bot: RefBot, tmp_path: Path) -> None:
    """The host-CPU guard is what stops a search on a saturated box; a 0.1 % limit trips it at once."""
    out = tmp_path / "cap"
    res = voiceload("capacity", str(QUICK), "--target", quick_bot.target, "--slo", "p95_turn_latency_ms<=900",
                    "--start", "2", "--step", "2", "--max", "8", "--hold", "6s", "--settle", "3s",
                    "--max-host-cpu", "0.1", "--out", str(out), out=out, timeout=120)
    assert res.code == 3, res.stderr[-2000:]
    cap = json.loads((out / "capacity.json").read_text())
    assert cap["knee"] is None and cap["saturated_at"]["concurrency"] == 2
    assert "saturated" in res.stdout


@pytest.mark.parametrize("args,message", [
    (["capacity", "--start", "2"], "needs at least one SLO"),
    (["capacity", "--slo", "p95_turn_latency_ms<=900", "--start", "0"], "--start 0"),
    (["capacity", "--slo", "p95_turn_latency_ms<=900", "--start", "5", "--max", "4"], "--max 4"),
    (["capacity", "--slo", "p95_turn_latency_ms<=900", "--hold", "soon"], "--hold 'soon'"),
    (["run", "--shape", "ramp:0-x/5m"], "--shape"),
    (["run", "--shape", "constant:4/10s", "-c", "4"], "--shape replaces"),
    (["run", "--shape", "constant:4/10s", "--max-rate", "0"], "--max-rate 0"),
])
def test_bad_search_and_shape_input_exits_2_before_any_call(tmp_path: Path, args: list[str], message: str) -> None:
    out = tmp_path / "never"
    res = voiceload(args[0], str(QUICK), "--target", "sip:bot@127.0.0.1:9", *args[1:], "--out", str(out), timeout=60)
    assert res.code == 2, (res.stdout, res.stderr)
    assert message in res.stderr
    assert not (out / "calls.jsonl").exists()


def test_capacity_search_finds_the_knee_of_a_bot_with_known_capacity(tmp_path: Path) -> None:
    """Two workers, one-turn calls: the bot model puts the knee of p95<=900 ms at 4 calls."""
    from voiceload.core.scenario import load_scenario
    from voiceload.sut.botmodel import ScenarioTiming, predict_knee

    predicted = predict_knee(2, 300.0, ScenarioTiming.from_scenario(load_scenario(QUICK)), 900.0, n_max=20)
    assert predicted == 4
    bot = start_bot(tmp_path, scenario=QUICK, think_ms="300", max_calls=12, extra=["--capacity", "2"])
    out = tmp_path / "cap"
    try:
        res = voiceload("capacity", str(QUICK), "--target", bot.target, "--slo", "p95_turn_latency_ms<=900",
                        "--start", "2", "--step", "1", "--max", "8", "--hold", "15s", "--settle", "4s",
                        "--max-host-cpu", "100", "--out", str(out), out=out, timeout=400)
    finally:
        bot.stop()
    cap = json.loads((out / "capacity.json").read_text())
    skip_if_stopped_by_a_busy_box(res, cap)
    assert res.code == 0, res.stderr[-3000:]
    assert cap["first_failing"] is not None, cap["headline"]
    assert abs(cap["knee"] - predicted) <= 1, cap["headline"]
    failing = cap["first_failing"]
    assert failing["concurrency"] == cap["knee"] + 1
    assert [s["attempt"] for s in cap["steps"] if s["concurrency"] == failing["concurrency"]] == [1, 2]
