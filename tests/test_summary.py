"""summarize(): counts, completion, per-turn percentiles and validity from hand-made records."""

from __future__ import annotations

import json
from typing import Any

import pytest

from voiceload.core.emodel import call_quality
from voiceload.core.slo import SloResult, evaluate, parse_slos
from voiceload.core.summary import (
    MAX_AGENT_CPU_PERCENT,
    MAX_PUMP_LAG_MS,
    SUMMARY_SCHEMA,
    GeneratorHealth,
    HealthThresholds,
    MediaStats,
    Summary,
    summarize,
)
from voiceload.protocol import CallRecord, GreetingResult, Heartbeat, RtpStats, TurnResult

REL = 1e-3


TurnSpec = tuple[float | None, bool, str | None]  # latency_ms, ok, reason


def rec(n: int, outcome: str = "completed", *, agent: str = "a1", sip: int | None = 200,
        setup: float | None = 20.0, greeting: float | None = 300.0,
        turns: list[TurnSpec] | None = None, hangup: str | None = "caller") -> CallRecord:
    turns = [(500.0, True, None), (700.0, True, None)] if turns is None else turns
    return CallRecord(
        run_id="r1", agent_id=agent, call_id=f"c{n}", seq=n, outcome=outcome, sip_code=sip, setup_ms=setup,
        hangup_by=hangup,
        greeting=None if greeting is None else GreetingResult(bot_onset_ms=greeting, ok=True),
        turns=[TurnResult(index=i, latency_ms=lat, ok=ok, reason=why)
               for i, (lat, ok, why) in enumerate(turns)],
    )


def hb(agent: str = "a1", cpu: float = 30.0, lag: float = 5.0, media_lag: float = 0.0) -> Heartbeat:
    return Heartbeat(run_id="r1", agent_id=agent, at=0.0, active_calls=1, placed=1, finished=0,
                     cpu_percent=cpu, pump_lag_ms_max=lag, max_calls=4, media_lag_ms_max=media_lag)


def healthy(*agents: str) -> GeneratorHealth:
    h = GeneratorHealth()
    for a in agents or ("a1",):
        h.observe(hb(a))
    return h


def run(records: list[CallRecord], health: GeneratorHealth | None = None, **kw: Any) -> dict[str, Any]:
    """summary.json's content, as a dict."""
    args: dict[str, Any] = dict(run_id="r1", scenario_name="happy", target="sip:bot@127.0.0.1:5080",
                                concurrency=4, calls_planned=len(records), started_at=1000.0, ended_at=1060.5,
                                health=healthy() if health is None else health)
    args.update(kw)
    return summarize(records, **args).to_dict()


def test_counts_and_completion() -> None:
    records = [rec(i) for i in range(8)] + [
        rec(8, "failed", turns=[(500.0, True, None), (None, False, "no_reply")], hangup="bot"),
        rec(9, "rejected", sip=486, setup=None, greeting=None, turns=[], hangup=None),
    ]
    s = run(records, calls_planned=12)
    assert s["schema"] == SUMMARY_SCHEMA
    assert s["calls"] == {"planned": 12, "placed": 10, "completed": 8, "failed": 2}
    assert s["completion_rate"] == pytest.approx(0.8)
    assert s["outcomes"] == {"completed": 8, "failed": 1, "rejected": 1, "timeout": 0, "error": 0, "agent_lost": 0}
    assert s["sip_codes"] == {"200": 9, "486": 1}
    assert s["hangup_by"] == {"bot": 1, "caller": 8, "none": 1}
    assert s["duration_s"] == pytest.approx(60.5)
    assert (s["run_id"], s["scenario"], s["target"], s["concurrency"]) == (
        "r1", "happy", "sip:bot@127.0.0.1:5080", 4)
    assert s["valid"] is True and s["invalid_reasons"] == []
    json.dumps(s)  # the summary is plain JSON


def test_per_turn_latency_ok_and_reasons() -> None:
    records = [rec(i, turns=[(100.0 + i, True, None), (400.0 + 10 * i, True, None)]) for i in range(10)]
    records.append(rec(10, "failed", turns=[(150.0, True, None), (None, False, "no_reply")]))
    records.append(rec(11, "failed", turns=[(None, False, "wrong_prompt")]))
    s = run(records)
    t0, t1 = s["turns"]
    assert (t0["index"], t0["ok"], t0["not_ok"], t0["reasons"]) == (0, 11, 1, {"wrong_prompt": 1})
    assert (t1["index"], t1["ok"], t1["not_ok"], t1["reasons"]) == (1, 10, 1, {"no_reply": 1})
    assert t0["latency_ms"]["count"] == 11
    assert t0["latency_ms"]["max"] == pytest.approx(150, rel=REL)
    assert t1["latency_ms"]["min"] == pytest.approx(400, rel=REL)
    assert t1["latency_ms"]["max"] == pytest.approx(490, rel=REL)
    assert s["turn_latency_ms"]["count"] == 21
    assert s["turn_latency_ms"]["out_of_range"] == 0


def test_reasons_that_differ_only_in_numbers_are_grouped() -> None:
    records = [rec(i, "failed", turns=[(3000.0 + i, False, f"bot took {3000 + i} ms (max 3000)")])
               for i in range(3)]
    records.append(rec(3, "failed", turns=[(None, False, None)]))
    assert run(records)["turns"][0]["reasons"] == {"bot took N ms (max N)": 3, "unknown": 1}


def test_greeting_and_setup_histograms() -> None:
    s = run([rec(i, setup=10.0 * (i + 1), greeting=200.0 + i) for i in range(10)])
    assert s["setup_ms"]["p50"] == pytest.approx(50, rel=REL)
    assert s["setup_ms"]["max"] == pytest.approx(100, rel=REL)
    assert s["greeting_onset_ms"]["count"] == 10
    assert s["greeting_onset_ms"]["min"] == pytest.approx(200, rel=REL)


def test_negative_latency_is_counted_out_of_range() -> None:
    s = run([rec(0, turns=[(-20.0, False, "barge_in")])])
    assert s["turn_latency_ms"]["count"] == 0
    assert s["turn_latency_ms"]["out_of_range"] == 1
    assert s["turn_latency_ms"]["p50"] is None


def test_no_calls_placed() -> None:
    s = run([], calls_planned=5, health=GeneratorHealth())
    assert s["calls"] == {"planned": 5, "placed": 0, "completed": 0, "failed": 0}
    assert s["completion_rate"] == 0.0
    assert s["turns"] == []
    assert s["turn_latency_ms"]["p99"] is None


def test_overloaded_generator_makes_the_run_invalid() -> None:
    health = GeneratorHealth()
    health.observe(hb("a1", cpu=40.0, lag=5.0))
    health.observe(hb("a1", cpu=MAX_AGENT_CPU_PERCENT + 5, lag=5.0))
    health.observe(hb("a2", cpu=20.0, lag=MAX_PUMP_LAG_MS + 50))
    s = run([rec(0, agent="a1"), rec(1, agent="a2")], health=health)
    assert s["valid"] is False
    assert len(s["invalid_reasons"]) == 2
    assert "agent a1: CPU 90 %" in s["invalid_reasons"][0]
    assert "agent a2: event pump 150 ms late" in s["invalid_reasons"][1]
    gen = s["generator"]
    assert (gen["agents"], gen["heartbeats"]) == (2, 3)
    assert gen["max_cpu_percent"] == pytest.approx(90)
    assert gen["max_pump_lag_ms"] == pytest.approx(150)
    assert gen["per_agent"]["a1"]["heartbeats"] == 2


def test_agent_without_heartbeats_makes_the_run_invalid() -> None:
    s = run([rec(0, agent="a1"), rec(1, agent="silent")], health=healthy("a1"))
    assert s["valid"] is False
    assert s["invalid_reasons"] == ["agent silent: placed calls but sent no heartbeat (health unknown)"]


def test_thresholds_and_extra_reasons() -> None:
    health = GeneratorHealth()
    health.observe(hb(cpu=60.0))
    assert run([rec(0)], health=health)["valid"] is True
    strict = run([rec(0)], health=health, thresholds=HealthThresholds(max_cpu_percent=50.0))
    assert strict["valid"] is False
    extra = run([rec(0)], extra_invalid_reasons=["3 calls missing"])
    assert extra["invalid_reasons"] == ["3 calls missing"] and extra["valid"] is False


def test_a_late_media_clock_makes_the_run_invalid() -> None:
    """The RTP engine's tick woke past the limit: caller frames left late, one side of every turn."""
    health = GeneratorHealth()
    health.observe(hb(media_lag=12.0))
    assert run([rec(0)], health=health)["valid"]
    health.observe(hb(media_lag=65.0))
    s = run([rec(0)], health=health)
    assert not s["valid"]
    assert any("media clock 65 ms late (limit 40 ms)" in r for r in s["invalid_reasons"])
    assert s["generator"]["max_media_lag_ms"] == 65.0


def test_an_audio_clock_that_slipped_makes_the_run_invalid() -> None:
    healthy, slipped = rec(1), rec(2)
    healthy.clock_slip_ms, slipped.clock_slip_ms = 12.5, 95.0
    s = run([healthy])
    assert s["valid"] and s["generator"]["clock_slip_ms"]["max"] == pytest.approx(12.5, abs=0.1)
    s = run([healthy, slipped])
    assert not s["valid"]
    assert any("audio clock fell behind" in r and "agent a1" in r for r in s["invalid_reasons"])


# --- Summary: the file as records -----------------------------------------------------------------

SUMMARY_KEYS = ["schema", "run_id", "scenario", "target", "concurrency", "started_at", "ended_at", "duration_s",
                "calls", "outcomes", "completion_rate", "turn_latency_ms", "turns", "greeting_onset_ms", "setup_ms",
                "sip_codes", "top_failures", "hangup_by", "source_addresses", "valid", "invalid_reasons", "generator"]


def test_summary_json_keys_in_order_and_the_post_run_keys_only_once_set() -> None:
    s = summarize([rec(0), rec(1, "failed", turns=[(None, False, "no_reply")])], run_id="r1", scenario_name="happy",
                  target="sip:bot@127.0.0.1", concurrency=2, calls_planned=2, started_at=0.0, ended_at=1.0,
                  health=healthy())
    assert list(s.to_dict()) == SUMMARY_KEYS
    assert list(s.to_dict()["turn_latency_ms"]) == ["p50", "p90", "p95", "p99", "max", "min", "mean", "count",
                                                    "out_of_range"]
    assert list(s.to_dict()["generator"]) == ["agents", "heartbeats", "max_cpu_percent", "max_pump_lag_ms",
                                              "max_media_lag_ms", "limits", "per_agent", "clock_slip_ms"]
    s.capacity = {"knee": 10}
    s.slo = evaluate(parse_slos(["completion_rate>=0.9"]), s)
    s.exit_code = 1
    body = s.to_dict()
    assert list(body) == [*SUMMARY_KEYS, "capacity", "slo", "exit_code"]
    assert body["slo"] == [{"expr": "completion_rate>=0.9", "metric": "completion_rate", "op": ">=",
                            "threshold": 0.9, "value": 0.5, "passed": False}]
    assert s.to_json() == json.dumps(body, indent=2) + "\n"
    assert Summary.from_dict(json.loads(s.to_json())) == s  # what `voiceload report` reads back


def test_an_older_or_partial_summary_reads_with_defaults() -> None:
    s = Summary.from_dict({"schema": 1, "run_id": "r0", "valid": True, "turns": [{"index": 0, "ok": 3}],
                           "turn_latency_ms": {"p50": 400.0, "count": 3}, "something_new": 1})
    assert (s.run_id, s.valid, s.turns[0].ok, s.turns[0].latency_ms.count) == ("r0", True, 3, 0)
    assert s.turn_latency_ms.p50 == 400.0 and s.setup_ms.count == 0 and s.generator.agents == 0
    assert s.slo is None and s.exit_code is None and "slo" not in s.to_dict()


def test_a_malformed_stored_slo_verdict_is_left_out_and_told() -> None:
    told: list[str] = []
    s = Summary.from_dict({"slo": [{"expr": "broken"}, {"expr": "a<=1", "metric": "a", "op": "<=", "threshold": 1,
                                                         "value": None, "passed": False}]}, on_bad_slo=told.append)
    assert s.slo == [SloResult("a<=1", "a", "<=", 1.0, None, False)]
    assert len(told) == 1 and "broken" in told[0]


# --- top failures: SIP endings by name --------------------------------------------------------------


def sip_end(n: int, outcome: str, code: int | None, reason: str, origin: str = "remote",
            retry_after: int | None = None) -> CallRecord:
    return CallRecord(run_id="r1", agent_id="a1", call_id=f"s{n}", seq=n, outcome=outcome, sip_code=code,
                      reason=reason, sip_origin=origin, retry_after_s=retry_after)


def test_sip_endings_are_named_with_their_codes() -> None:
    records = [rec(0)] + [
        sip_end(1 + i, "rejected", 407, "407 Proxy Authentication Required (credentials refused)") for i in range(3)
    ] + [
        sip_end(10, "rejected", 503, "503 Service Unavailable (Retry-After 5)", retry_after=5),
        sip_end(11, "rejected", 503, "transport error: Connection refused (local 503)", origin="local"),
        sip_end(12, "timeout", 408, "no final response (local 408 Request Timeout)", origin="local"),
        sip_end(13, "timeout", 487, "no answer within 5000 ms", origin="local"),
        rec(14, "failed", turns=[(3412.0, False, "bot took 3412 ms (max 3000)")]),
    ]
    for r in records[-1:]:
        r.reason = "turn 0: bot took 3412 ms (max 3000)"
    s = run(records)
    assert s["top_failures"] == {
        "rejected 407 Proxy Authentication Required (credentials refused)": 3,
        "rejected 503 Service Unavailable (Retry-After 5)": 1,
        "transport error: Connection refused (local 503)": 1,
        "timeout: no final response (local 408 Request Timeout)": 1,
        "timeout: no answer within 5000 ms": 1,
        "failed: turn N: bot took N ms (max N)": 1,
    }
    assert Summary.from_dict(json.loads(json.dumps(s))).top_failures == s["top_failures"]


def test_top_failures_keep_ten_and_count_the_rest() -> None:
    records = [sip_end(i, "rejected", 400 + i, f"{400 + i} Reason") for i in range(12)]
    records.append(sip_end(99, "rejected", 400, "400 Reason"))
    top = run(records)["top_failures"]
    assert len(top) == 11 and next(iter(top)) == "rejected 400 Reason" and top["rejected 400 Reason"] == 2
    assert top["other"] == 2


def test_an_older_summary_without_top_failures_still_reads() -> None:
    body = run([rec(0)])
    del body["top_failures"]
    assert Summary.from_dict(body).top_failures == {}


# --- media: codecs and call quality -----------------------------------------------------------------

def media_rec(n: int, *, codec: str | None = "PCMU", rx: int = 1000, lost: int = 0, jitter: float = 0.5,
              rtt: float | None = None, srtp: bool | None = None, outcome: str = "completed") -> CallRecord:
    r = rec(n, outcome)
    r.rtp = RtpStats(rx_packets=rx, rx_lost=lost, rx_jitter_ms_mean=jitter, rtt_ms_mean=rtt, codec=codec, srtp=srtp)
    r.quality = call_quality(r.rtp)
    return r


def test_no_media_section_without_rtp_counters() -> None:
    body = run([rec(0), rec(1)])
    assert "media" not in body and list(body) == SUMMARY_KEYS


def test_media_section_counts_codecs_and_rates_quality() -> None:
    records = [media_rec(i, codec="PCMA" if i % 4 == 0 else "PCMU", srtp=i < 3) for i in range(20)]
    records[7] = media_rec(7, lost=100, rtt=400.0)  # 9.1 % loss, 200 ms one way + 20 + 20
    records[11] = media_rec(11, lost=30)
    records.append(media_rec(20, rx=0))  # answered, but no audio came back
    records.append(rec(21, "rejected", sip=486))  # no media at all
    body = run(records)
    assert list(body) == [*SUMMARY_KEYS, "media"]
    m = body["media"]
    assert (m["calls"], m["rated"], m["no_audio"], m["srtp"]) == (21, 20, 1, 3)
    assert m["codecs"] == {"PCMU": 16, "PCMA": 5}
    assert m["mos"]["p50"] == 4.41 and m["mos"]["max"] == 4.41 and m["mos"]["count"] == 20
    q7, q11 = records[7].quality, records[11].quality
    assert q7 is not None and q11 is not None
    assert m["mos"]["min"] == q7.mos and m["r_factor"]["min"] == pytest.approx(q7.r_factor, abs=0.1)
    assert m["mos"]["p5"] == q7.mos  # 1 call in 20
    assert m["loss_pct"]["max"] == pytest.approx(100 / 1100 * 100, rel=REL) and m["loss_pct"]["p50"] == 0.0
    assert m["rtt_ms"]["count"] == 1 and m["rtt_ms"]["p50"] == 400.0
    assert m["jitter_ms"]["count"] == 20 and m["jitter_ms"]["mean"] == 0.5
    worst = m["worst_calls"]
    assert [w["call_id"] for w in worst] == ["c7", "c11", "c0", "c1", "c2"]  # lowest MOS, then the earlier record
    assert worst[0] == {"call_id": "c7", "agent_id": "a1", "codec": "PCMU", "mos": q7.mos, "r_factor": q7.r_factor,
                        "loss_pct": q7.loss_pct, "delay_ms": 240.0}


def test_media_section_reads_back_and_keeps_the_file_order() -> None:
    s = summarize([media_rec(0), media_rec(1, lost=50)], run_id="r1", scenario_name="happy", target="t",
                  concurrency=2, calls_planned=2, started_at=0.0, ended_at=1.0, health=healthy())
    s.slo = evaluate(parse_slos(["mos_p5>=3.8"]), s)
    body = json.loads(s.to_json())
    assert list(body) == [*SUMMARY_KEYS, "media", "slo"]
    assert list(body["media"]) == ["calls", "rated", "no_audio", "codecs", "srtp", "mos", "r_factor", "loss_pct",
                                   "jitter_ms", "rtt_ms", "worst_calls"]
    assert list(body["media"]["mos"]) == ["p50", "p10", "p5", "p1", "min", "max", "mean", "count"]
    assert Summary.from_dict(body) == s
    assert Summary.from_dict({"schema": 1}).media is None


def test_the_media_accumulator_is_bounded() -> None:
    stats = MediaStats()
    for i in range(2000):
        stats.observe(media_rec(i, lost=i % 50))
    out = stats.summary()
    assert out is not None and len(out.worst_calls) == 5 and out.rated == 2000
    assert [w.call_id for w in out.worst_calls] == ["c49", "c99", "c149", "c199", "c249"]  # 49 lost of 1049
