"""SLO expressions: parsing, the error messages users see, evaluation against summary.json, exit codes."""

from __future__ import annotations

import json
from typing import Any

import pytest

from voiceload.core.slo import Slo, SloResult, evaluate, exit_code, parse_slo, parse_slos, value_of
from voiceload.core.summary import GeneratorHealth, Summary, summarize
from voiceload.errors import EXIT_INVALID_RUN, EXIT_OK, EXIT_SLO_FAILED, UserError
from voiceload.protocol import CallRecord, GreetingResult, Heartbeat, TurnResult

# --- parsing -------------------------------------------------------------------------------------


@pytest.mark.parametrize(("text", "metric", "op", "threshold"), [
    ("p95_turn_latency_ms<=1500", "p95_turn_latency_ms", "<=", 1500.0),
    ("  completion_rate >= 0.99 ", "completion_rate", ">=", 0.99),
    ("setup_p95_ms<500", "setup_p95_ms", "<", 500.0),
    ("max_turn_latency_ms > 1e3", "max_turn_latency_ms", ">", 1000.0),
    ("turn1_p95_latency_ms<=400.5", "turn1_p95_latency_ms", "<=", 400.5),
    ("turn12_max_latency_ms<=9000", "turn12_max_latency_ms", "<=", 9000.0),
    ("greeting_p99_onset_ms<=2000", "greeting_p99_onset_ms", "<=", 2000.0),
    ("failed_calls<=0", "failed_calls", "<=", 0.0),
    ("error_rate<.01", "error_rate", "<", 0.01),
])
def test_valid_expressions(text: str, metric: str, op: str, threshold: float) -> None:
    slo = parse_slo(text)
    assert (slo.metric, slo.op, slo.threshold) == (metric, op, threshold)
    assert slo.expr == "".join(text.split())  # the expression as written, whitespace dropped


def test_every_stat_of_every_latency_family_parses() -> None:
    for stat in ("p50", "p90", "p95", "p99", "max"):
        for name in (f"{stat}_turn_latency_ms", f"turn0_{stat}_latency_ms", f"setup_{stat}_ms",
                     f"greeting_{stat}_onset_ms"):
            assert parse_slo(f"{name}<=1").metric == name


def test_turn_property() -> None:
    assert parse_slo("turn3_p50_latency_ms<1").turn == 3
    assert parse_slo("p50_turn_latency_ms<1").turn is None


def error(text: str) -> str:
    with pytest.raises(UserError) as info:
        parse_slo(text)
    return str(info.value)


def test_unknown_metric_suggests_and_lists_valid_metrics() -> None:
    msg = error("p95_turn_latncy_ms<=1500")
    assert msg.startswith("SLO 'p95_turn_latncy_ms<=1500': unknown metric 'p95_turn_latncy_ms' "
                          "(did you mean 'p95_turn_latency_ms'?); metrics: completion_rate, error_rate, ")
    assert "setup_<stat>_ms" in msg and "turn<N>_<stat>_latency_ms" in msg
    assert "(did you mean" not in error("bananas<1")


@pytest.mark.parametrize(("typo", "meant"), [
    ("turn_latency_p95_ms", "p95_turn_latency_ms"),  # keeps the statistic asked for
    ("setup_ms_p95", "setup_p95_ms"),
    ("turn_2_p95_latency_ms", "turn2_p95_latency_ms"),  # keeps the turn number
    ("turn1_latency_p99_ms", "turn1_p99_latency_ms"),
    ("greeting_p95_ms", "greeting_p95_onset_ms"),
    ("completion", "completion_rate"),
])
def test_suggestions(typo: str, meant: str) -> None:
    assert f"(did you mean {meant!r}?)" in error(f"{typo}<=1")


@pytest.mark.parametrize(("text", "message"), [
    ("p95_turn_latency_ms==1500", "operator '==' is not supported (an SLO is a bound: use <=, <, >= or >)"),
    ("p95_turn_latency_ms=1500", "operator '=' is not supported"),
    ("p95_turn_latency_ms=<1500", "operator '=<' is not supported (did you mean '<='?)"),
    ("p95_turn_latency_ms<=1500ms", "threshold must be a number, got '1500ms' (thresholds carry no unit"),
    ("p95_turn_latency_ms<=fast", "threshold must be a number, got 'fast'"),
    ("p95_turn_latency_ms<=inf", "threshold must be a number, got 'inf'"),
    ("p95_turn_latency_ms<=-5", "p95_turn_latency_ms is never negative, got -5"),
    ("completion_rate>=99", "completion_rate is a fraction from 0 to 1, got 99 (did you mean 0.99?)"),
    ("error_rate<=1000", "error_rate is a fraction from 0 to 1, got 1000"),
    ("p95_turn_latency_ms", "expected METRIC OP NUMBER with OP one of <=, <, >=, >"),
    ("<=1500", "expected METRIC OP NUMBER"),
    ("", "expected METRIC OP NUMBER"),
])
def test_bad_expressions(text: str, message: str) -> None:
    msg = error(text)
    assert msg.startswith(f"SLO {''.join(text.split())!r}: ")
    assert message in msg


def test_parse_slos_keeps_order_and_drops_repeats() -> None:
    slos = parse_slos(["completion_rate>=0.99", "setup_p95_ms<=500", "completion_rate >= 0.99"])
    assert [s.expr for s in slos] == ["completion_rate>=0.99", "setup_p95_ms<=500"]


def test_problem_with_scenario() -> None:
    assert parse_slo("turn2_p95_latency_ms<1").problem_with(turns=2, greeting=True) == (
        "SLO 'turn2_p95_latency_ms<1': the scenario has no turn 2 (it has turns 0..1)")
    assert parse_slo("turn1_p95_latency_ms<1").problem_with(turns=1, greeting=True) == (
        "SLO 'turn1_p95_latency_ms<1': the scenario has no turn 1 (it has turn 0)")
    assert parse_slo("turn1_p95_latency_ms<1").problem_with(turns=2, greeting=False) is None
    assert parse_slo("greeting_p95_onset_ms<1").problem_with(turns=2, greeting=False) == (
        "SLO 'greeting_p95_onset_ms<1': the scenario has no greeting")
    assert parse_slo("completion_rate>=0.9").problem_with(turns=1, greeting=False) is None


# --- evaluation ----------------------------------------------------------------------------------


def stats(p50: float | None, p95: float | None, count: int = 10) -> dict[str, Any]:
    return {"p50": p50, "p90": p95, "p95": p95, "p99": p95, "max": p95, "min": p50, "mean": p50,
            "count": count, "out_of_range": 0}


SUMMARY_JSON: dict[str, Any] = {
    "calls": {"planned": 40, "placed": 40, "completed": 39, "failed": 1},
    "completion_rate": 0.975,
    "turn_latency_ms": stats(430.0, 470.0),
    "turns": [
        {"index": 0, "latency_ms": stats(433.0, 453.0)},
        {"index": 1, "latency_ms": stats(412.0, 472.0)},
        {"index": 2, "latency_ms": stats(None, None, count=0)},
    ],
    "greeting_onset_ms": stats(300.0, 320.0),
    "setup_ms": stats(12.0, 14.5),
    "valid": True,
}
SUMMARY = Summary.from_dict(SUMMARY_JSON)


@pytest.mark.parametrize(("metric", "value"), [
    ("completion_rate", 0.975),
    ("error_rate", 0.025),
    ("failed_calls", 1.0),
    ("p95_turn_latency_ms", 470.0),
    ("p50_turn_latency_ms", 430.0),
    ("turn0_p95_latency_ms", 453.0),
    ("turn1_p50_latency_ms", 412.0),
    ("turn2_p95_latency_ms", None),  # the turn exists but nothing was measured
    ("turn7_p95_latency_ms", None),  # no such turn in the results
    ("setup_p95_ms", 14.5),
    ("greeting_p50_onset_ms", 300.0),
])
def test_value_of(metric: str, value: float | None) -> None:
    assert value_of(metric, SUMMARY) == value


def test_evaluate_passes_fails_and_no_data() -> None:
    slos = [parse_slo(t) for t in ("p95_turn_latency_ms<=470", "p95_turn_latency_ms<470",
                                   "completion_rate>=0.99", "turn2_p95_latency_ms<=99999", "failed_calls<=1")]
    results = evaluate(slos, SUMMARY)
    assert [r.passed for r in results] == [True, False, False, False, True]
    assert results[0] == SloResult("p95_turn_latency_ms<=470", "p95_turn_latency_ms", "<=", 470.0, 470.0, True)
    assert results[3].value is None
    assert [r.line() for r in results] == [
        "PASS p95_turn_latency_ms<=470 (value 470)",
        "FAIL p95_turn_latency_ms<470 (value 470)",
        "FAIL completion_rate>=0.99 (value 0.975)",
        "FAIL turn2_p95_latency_ms<=99999 (no data)",
        "PASS failed_calls<=1 (value 1)",
    ]


def test_nothing_placed_is_no_data_for_rates() -> None:
    empty = Summary.from_dict({**SUMMARY_JSON, "calls": {"planned": 4, "placed": 0, "completed": 0, "failed": 0},
                               "completion_rate": 0.0})
    (c, e) = evaluate([parse_slo("completion_rate>=0"), parse_slo("error_rate<=1")], empty)
    assert (c.value, c.passed, e.value, e.passed) == (None, False, None, False)


def test_a_partial_or_foreign_summary_gives_no_data_not_a_crash() -> None:
    results = evaluate([parse_slo(t) for t in ("completion_rate>=0.5", "failed_calls<=0", "setup_p95_ms<=1",
                                               "turn0_p95_latency_ms<=1", "p95_turn_latency_ms<=1")],
                       Summary.from_dict({"turns": [{"index": "0"}], "setup_ms": {"count": 3, "p95": "fast"},
                                          "calls": {"failed": None}}))
    assert [r.value for r in results] == [None] * 5
    for bad in ({"turns": [None]}, {"turns": {"index": 0}}, {"calls": [1]}):  # not the shape of a summary
        with pytest.raises(ValueError, match="summary"):
            Summary.from_dict(bad)


def test_exit_code_invalid_wins_over_slo_failure() -> None:
    ok = SloResult("a", "completion_rate", ">=", 0.5, 0.9, True)
    bad = SloResult("b", "completion_rate", ">=", 0.99, 0.9, False)
    valid, invalid = Summary(valid=True), Summary(valid=False)
    assert exit_code(valid, [ok]) == EXIT_OK == 0
    assert exit_code(valid, []) == EXIT_OK
    assert exit_code(valid, [ok, bad]) == EXIT_SLO_FAILED == 1
    assert exit_code(invalid, [ok, bad]) == EXIT_INVALID_RUN == 3
    assert exit_code(invalid, [ok]) == EXIT_INVALID_RUN
    assert exit_code(Summary.from_dict({}), []) == EXIT_INVALID_RUN  # no verdict on validity: not trusted


def test_against_a_real_summary() -> None:
    """The metric paths match what summarize() actually writes (after a JSON round trip)."""
    def rec(n: int, outcome: str, lat: float | None) -> CallRecord:
        return CallRecord(run_id="r", agent_id="a0", call_id=f"c{n}", seq=n, outcome=outcome, sip_code=200,
                          setup_ms=10.0 + n, greeting=GreetingResult(bot_onset_ms=300.0, ok=True),
                          turns=[TurnResult(index=0, latency_ms=400.0 + n, ok=True),
                                 TurnResult(index=1, latency_ms=lat, ok=lat is not None)])
    health = GeneratorHealth()
    health.observe(Heartbeat(run_id="r", agent_id="a0", at=0.0, active_calls=1, placed=1, finished=0,
                             cpu_percent=10.0, pump_lag_ms_max=1.0, max_calls=4))
    summary = Summary.from_dict(json.loads(summarize(
        [rec(0, "completed", 500.0), rec(1, "completed", 520.0), rec(2, "failed", None)],
        run_id="r", scenario_name="s", target="sip:x@127.0.0.1", concurrency=1, calls_planned=3,
        started_at=0.0, ended_at=1.0, health=health).to_json()))
    values = {m: value_of(m, summary) for m in (
        "completion_rate", "error_rate", "failed_calls", "max_turn_latency_ms", "turn0_max_latency_ms",
        "turn1_max_latency_ms", "setup_max_ms", "greeting_p50_onset_ms")}
    assert values == pytest.approx({  # HDR values: within 0.1 %
        "completion_rate": 2 / 3, "error_rate": 1 / 3, "failed_calls": 1.0, "max_turn_latency_ms": 520.0,
        "turn0_max_latency_ms": 402.0, "turn1_max_latency_ms": 520.0, "setup_max_ms": 12.0,
        "greeting_p50_onset_ms": 300.0,
    }, rel=1e-3)
    results = evaluate(parse_slos(["completion_rate>=0.99", "p95_turn_latency_ms<=1500"]), summary)
    assert [r.passed for r in results] == [False, True]
    assert exit_code(summary, results) == EXIT_SLO_FAILED


def test_slo_is_frozen() -> None:
    slo = parse_slo("completion_rate>=0.9")
    assert isinstance(slo, Slo)
    with pytest.raises(AttributeError):
        slo.threshold = 0.1  # type: ignore[misc]


# --- call quality -----------------------------------------------------------------------------------


def test_quality_metrics_parse_and_bound_their_thresholds() -> None:
    assert parse_slo("mos_p5>=3.8").metric == "mos_p5"
    for name in ("mos_min", "mos_p1", "r_factor_p10", "loss_pct_p95", "jitter_ms_max", "rtt_ms_p99"):
        assert parse_slo(f"{name}>=1").metric == name
    with pytest.raises(UserError, match=r"mos lies between 1 and 4\.5"):
        parse_slo("mos_p5>=38")
    with pytest.raises(UserError, match="loss_pct lies between 0 and 100"):
        parse_slo("loss_pct_p95<=101")
    with pytest.raises(UserError, match="did you mean 'mos_p5'"):
        parse_slo("mos_p05>=3.8")


def test_quality_slos_against_a_summary() -> None:
    from voiceload.core.emodel import call_quality
    from voiceload.protocol import RtpStats

    records = []
    for i in range(20):
        rtp = RtpStats(rx_packets=1000, rx_lost=100 if i == 0 else 0, rx_jitter_ms_mean=1.0)
        records.append(CallRecord(run_id="r", agent_id="a", call_id=f"c{i}", seq=i, outcome="completed", rtp=rtp,
                                  quality=call_quality(rtp)))
    s = summarize(records, run_id="r", scenario_name="", target="", concurrency=1, calls_planned=20,
                  started_at=0.0, ended_at=1.0, health=GeneratorHealth())
    results = {x.metric: x for x in evaluate(parse_slos(["mos_p50>=4.3", "mos_min>=3.8", "loss_pct_max<=1",
                                                         "rtt_ms_p95<=300"]), s)}
    assert results["mos_p50"].passed and results["mos_p50"].value == 4.41
    assert not results["mos_min"].passed and results["mos_min"].value is not None
    assert not results["loss_pct_max"].passed
    assert results["rtt_ms_p95"].value is None and not results["rtt_ms_p95"].passed  # no RTCP: no data
    no_media = summarize([], run_id="r", scenario_name="", target="", concurrency=1, calls_planned=0,
                         started_at=0.0, ended_at=1.0, health=GeneratorHealth())
    assert value_of("mos_p5", no_media) is None
