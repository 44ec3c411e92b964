"""The collector: dedup, calls.jsonl, summary.json, against a real broker; plus its pure helpers."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from io import StringIO
from pathlib import Path
from typing import Any, TypeVar

import pytest
from rich.console import Console

from voiceload.core.emodel import call_quality
from voiceload.core.summary import GeneratorHealth, Summary, summarize
from voiceload.errors import UserError
from voiceload.protocol import AgentState, CallRecord, Heartbeat, RtpStats, TurnResult
from voiceload.report.text import render_summary
from voiceload.results import bus
from voiceload.results.bus import BrokerAddress, Bus
from voiceload.results.collector import CALLS_FILE, SUMMARY_FILE, Collector, load_calls

T = TypeVar("T")
RUN = "run-42"


def run(coro_fn: Callable[[], Awaitable[T]], timeout_s: float = 30.0) -> T:
    async def bounded() -> T:
        return await asyncio.wait_for(coro_fn(), timeout_s)
    return asyncio.run(bounded())


def record(n: int, agent: str = "a1", outcome: str | None = None) -> CallRecord:
    ok = outcome is None
    return CallRecord(
        run_id=RUN, agent_id=agent, call_id=f"{agent}-call-{n}", seq=n,
        outcome=outcome or "completed", sip_code=200, setup_ms=15.0 + n,
        turns=[TurnResult(index=0, latency_ms=400.0 + 10 * n, ok=ok, reason=None if ok else "no_reply")],
    )


def heartbeat(agent: str, cpu: float = 25.0) -> Heartbeat:
    return Heartbeat(run_id=RUN, agent_id=agent, at=time.time(), active_calls=2, placed=5, finished=3,
                     cpu_percent=cpu, pump_lag_ms_max=4.0, max_calls=4)


async def fake_agent(addr: BrokerAddress, agent: str, records: list[CallRecord], duplicates: int = 0) -> None:
    async with Bus(addr, client_id=f"fake-{agent}") as b:
        await b.publish(bus.topic_agent_state(RUN, agent), AgentState(RUN, agent, "ready"))
        await b.publish(bus.topic_heartbeat(RUN, agent), heartbeat(agent))
        for rec in records:
            await b.publish(bus.topic_calls(RUN, agent), rec)
        for rec in records[:duplicates]:  # QoS 1 redelivery looks exactly like this
            await b.publish(bus.topic_calls(RUN, agent), rec)
        await b.publish(bus.topic_heartbeat(RUN, agent), heartbeat(agent, cpu=30.0))
        await b.publish(bus.topic_agent_state(RUN, agent), AgentState(RUN, agent, "done", len(records)))


async def collect(addr: BrokerAddress, out: Path, expected: int, deadline_s: float,
                  agents: Callable[[], Awaitable[None]], collector: Collector | None = None,
                  ) -> dict[str, Any]:
    col = collector or Collector()
    async with Bus(addr, client_id="collector") as b:
        task = asyncio.create_task(col.run(b, run_id=RUN, out_dir=out, expected_calls=expected,
                                           deadline_s=deadline_s, scenario_name="happy", target="sip:bot",
                                           concurrency=4))
        await asyncio.wait_for(col.ready.wait(), 10)
        await agents()
        return (await task).to_dict()  # summary.json's content


@pytest.mark.real
def test_collects_dedups_and_summarizes(mosquitto_broker: BrokerAddress, tmp_path: Path) -> None:
    a1 = [record(i, "a1") for i in range(6)]
    a2 = [record(i, "a2") for i in range(2)] + [record(i, "a2", outcome="failed") for i in (2, 3)]
    n = len(a1) + len(a2)
    seen: list[str] = []
    col = Collector(on_record=lambda r: seen.append(r.call_id))

    async def agents() -> None:  # one after the other: a1's duplicates arrive before the count is reached
        await fake_agent(mosquitto_broker, "a1", a1, duplicates=2)
        await fake_agent(mosquitto_broker, "a2", a2)

    t0 = time.monotonic()
    summary = run(lambda: collect(mosquitto_broker, tmp_path, n, 120.0, agents, col), timeout_s=150.0)
    assert time.monotonic() - t0 < 60.0  # finished on the count, long before the deadline

    lines = (tmp_path / CALLS_FILE).read_text().splitlines()
    assert len(lines) == n
    assert {json.loads(line)["call_id"] for line in lines} == {r.call_id for r in a1 + a2}
    assert sorted(seen) == sorted(r.call_id for r in a1 + a2)
    assert summary == json.loads((tmp_path / SUMMARY_FILE).read_text())
    assert summary["calls"] == {"planned": n, "placed": n, "completed": n - 2, "failed": 2}
    assert summary["turns"][0]["reasons"] == {"no_reply": 2}
    assert summary["valid"] is True, summary["invalid_reasons"]
    assert summary["generator"]["agents"] == 2
    assert col.duplicates == 2
    assert col.progress().received == n
    assert col.rejected == 0


@pytest.mark.real
def test_deadline_marks_missing_calls_invalid(embedded_broker: BrokerAddress, tmp_path: Path) -> None:
    async def agents() -> None:
        await fake_agent(embedded_broker, "a1", [record(i) for i in range(3)])

    t0 = time.monotonic()
    summary = run(lambda: collect(embedded_broker, tmp_path, 5, 1.5, agents))
    assert 1.0 < time.monotonic() - t0 < 20.0  # waited for the deadline, and no longer than a busy box makes it
    assert summary["calls"]["placed"] == 3
    assert summary["valid"] is False
    assert summary["invalid_reasons"] == ["2 calls missing"]
    assert len((tmp_path / CALLS_FILE).read_text().splitlines()) == 3


# --- without a broker -----------------------------------------------------------------------------


def test_handle_rejects_foreign_and_malformed_messages() -> None:
    col = Collector()
    col.run_id, col.expected_calls = RUN, 10
    good = record(1)
    col.handle(bus.topic_calls(RUN, "a1"), good.to_json())
    col.handle(bus.topic_calls(RUN, "a1"), good.to_json())  # duplicate
    bad_version = json.loads(good.to_json())
    bad_version["v"] = 99
    col.handle(bus.topic_calls(RUN, "a1"), json.dumps(bad_version).encode())
    col.handle(bus.topic_calls(RUN, "a1"), b"{nope")
    col.handle(bus.topic_calls(RUN, "a2"), record(2, agent="a1").to_json())  # agent mismatch
    col.handle(bus.topic_calls("other-run", "a1"), record(3).to_json())
    missing_field = json.loads(record(4).to_json())
    del missing_field["outcome"]
    col.handle(bus.topic_calls(RUN, "a1"), json.dumps(missing_field).encode())
    col.handle("some/other/topic", b"{}")
    col.handle(bus.topic_heartbeat(RUN, "a1"), heartbeat("a1").to_json())
    p = col.progress()
    assert (p.received, p.duplicates, p.rejected) == (1, 1, 6)
    assert col.health.heartbeats == 1
    assert "calls 1/10: 1 completed, 0 failed" in p.line()


def test_resume_from_an_existing_calls_file(tmp_path: Path) -> None:
    (tmp_path / CALLS_FILE).write_text("".join(json.dumps(record(i).to_dict()) + "\n" for i in range(3)))
    col = Collector()

    class NoBus:
        async def subscribe(self, topic: str, qos: int = 1) -> None:
            pass

        async def messages(self):  # type: ignore[no-untyped-def]
            await asyncio.sleep(3600)
            yield ("", b"")

    summary = run(lambda: col.run(NoBus(), run_id=RUN, out_dir=tmp_path, expected_calls=3,  # type: ignore[arg-type]
                                  deadline_s=5.0))
    assert summary.calls.placed == 3 and summary.valid is False  # no heartbeats from a1
    with pytest.raises(UserError, match="holds calls of run"):
        run(lambda: Collector().run(NoBus(), run_id="another", out_dir=tmp_path,  # type: ignore[arg-type]
                                    expected_calls=1, deadline_s=1.0))


def test_load_calls_skips_a_torn_last_line_and_rebuilds_the_summary(tmp_path: Path) -> None:
    path = tmp_path / CALLS_FILE
    body = "".join(json.dumps(record(i).to_dict()) + "\n" for i in range(4))
    path.write_text(body + '{"run_id": "run-42", "agent_')
    recs = load_calls(path)
    assert [r.call_id for r in recs] == [f"a1-call-{i}" for i in range(4)]
    assert recs[0] == record(0)
    health = GeneratorHealth()
    health.observe(heartbeat("a1"))
    s = summarize(recs, run_id=RUN, scenario_name="happy", target="sip:bot", concurrency=1, calls_planned=4,
                  started_at=0.0, ended_at=1.0, health=health)
    assert s.calls.completed == 4 and s.valid is True


def test_load_calls_names_the_bad_line(tmp_path: Path) -> None:
    path = tmp_path / CALLS_FILE
    path.write_text(json.dumps(record(0).to_dict()) + "\n[1]\n" + json.dumps(record(1).to_dict()) + "\n")
    with pytest.raises(UserError, match=r"calls.jsonl:2: not a call record"):
        load_calls(path)


def test_render_summary_reads_in_a_plain_log() -> None:
    recs = [record(i) for i in range(9)] + [record(9, outcome="failed")]
    s = summarize(recs, run_id=RUN, scenario_name="happy", target="sip:bot", concurrency=4, calls_planned=12,
                  started_at=0.0, ended_at=30.0, health=GeneratorHealth(),
                  extra_invalid_reasons=["2 calls missing"])
    buf = StringIO()
    Console(file=buf, width=120, force_terminal=False, color_system=None).print(render_summary(s))
    text = buf.getvalue()
    assert "INVALID" in text and "2 calls missing" in text
    assert "agent a1: placed calls but sent no heartbeat" in text
    assert "Completion 90.0 %" in text
    assert "placed 10 of 12 planned, completed 9, failed 1" in text
    assert "no_reply (1)" in text
    assert "200 x10" in text
    assert "\x1b[" not in text  # no escape codes in a log


@pytest.mark.real
def test_run_with_a_broker_address_opens_its_own_session(
    embedded_broker: BrokerAddress, tmp_path: Path
) -> None:
    col = Collector()

    async def main() -> Summary:
        task = asyncio.create_task(col.run(embedded_broker, run_id=RUN, out_dir=tmp_path, expected_calls=2,
                                           deadline_s=20.0))
        await asyncio.wait_for(col.ready.wait(), 10)
        await fake_agent(embedded_broker, "a1", [record(0), record(1)])
        return await task

    summary = run(main)
    assert summary.calls.completed == 2 and summary.valid is True


def test_interval_histograms_from_heartbeats_are_merged_per_turn() -> None:
    from voiceload.core.stats import LatencyHistogram

    col = Collector()
    col.run_id, col.expected_calls = RUN, 10
    for agent, values in (("a1", [400.0, 420.0]), ("a2", [900.0])):
        h = LatencyHistogram()
        for v in values:
            h.record(v)
        hb = heartbeat(agent)
        hb.latency_hdr = {"0": h.encode()}
        col.handle(bus.topic_heartbeat(RUN, agent), hb.to_json())
    merged = col.turn_percentiles()[0]
    assert merged["count"] == 3
    assert merged["max"] == pytest.approx(900.0, rel=0.01)
    assert merged["p50"] == pytest.approx(420.0, rel=0.01)


def test_render_summary_names_the_sip_failures() -> None:
    rejected = [CallRecord(run_id=RUN, agent_id="a1", call_id=f"r{i}", seq=100 + i, outcome="rejected", sip_code=407,
                           reason="407 Proxy Authentication Required (credentials refused)", sip_origin="remote")
                for i in range(20)]
    busy = [CallRecord(run_id=RUN, agent_id="a1", call_id=f"b{i}", seq=200 + i, outcome="rejected", sip_code=503,
                       reason="503 Service Unavailable (Retry-After 5)", sip_origin="remote", retry_after_s=5)
            for i in range(3)]
    s = summarize([record(0), *rejected, *busy], run_id=RUN, scenario_name="happy", target="sip:bot", concurrency=4,
                  calls_planned=24, started_at=0.0, ended_at=30.0, health=GeneratorHealth())
    buf = StringIO()
    Console(file=buf, width=120, force_terminal=False, color_system=None).print(render_summary(s))
    text = buf.getvalue()
    assert "Top failures:\n  rejected 407 Proxy Authentication Required (credentials refused): 20 calls\n" \
           "  rejected 503 Service Unavailable (Retry-After 5): 3 calls\n" in text


def test_records_with_quality_feed_the_live_mos_and_a_malformed_one_is_rejected() -> None:
    col = Collector()
    col.run_id, col.expected_calls = RUN, 10
    for n, lost in enumerate((0, 0, 100)):
        rec = record(n)
        rec.rtp = RtpStats(rx_packets=1000, rx_lost=lost, rx_jitter_ms_mean=0.4, codec="PCMA")
        rec.quality = call_quality(rec.rtp)
        col.handle(bus.topic_calls(RUN, "a1"), rec.to_json())
    bad = json.loads(record(5).to_json())
    bad["quality"] = {"r_factor": "high", "mos": 4.4, "loss_pct": 0.0, "delay_ms": 40.0}
    col.handle(bus.topic_calls(RUN, "a1"), json.dumps(bad).encode())
    assert (col.received, col.rejected) == (3, 1)
    assert col.media.rated == 3 and col.media.mos.value_at(50) == 4.41
    worst = col.media.mos.value_at(0)
    assert worst is not None and worst < 4.0


def test_render_summary_has_a_call_quality_line() -> None:
    recs = []
    for n in range(4):
        rec = record(n)
        rec.rtp = RtpStats(rx_packets=1000, rx_lost=50 * n, codec="PCMU" if n else "G722")
        rec.quality = call_quality(rec.rtp)
        recs.append(rec)
    s = summarize(recs, run_id=RUN, scenario_name="happy", target="sip:bot", concurrency=4, calls_planned=4,
                  started_at=0.0, ended_at=30.0, health=GeneratorHealth())
    buf = StringIO()
    Console(file=buf, width=120, force_terminal=False, color_system=None).print(render_summary(s))
    line = next(x for x in buf.getvalue().splitlines() if x.startswith("Call quality"))
    assert line.startswith("Call quality (E-model, 4 calls rated): MOS p50 ")
    assert "worst" in line and "loss p95" in line and "PCMU x3, G722 x1" in line
    assert "Call quality" not in _plain(summarize([record(0)], run_id=RUN, scenario_name="", target="",
                                                  concurrency=1, calls_planned=1, started_at=0.0, ended_at=1.0,
                                                  health=GeneratorHealth()))


def _plain(s: Summary) -> str:
    buf = StringIO()
    Console(file=buf, width=120, force_terminal=False, color_system=None).print(render_summary(s))
    return buf.getvalue()
