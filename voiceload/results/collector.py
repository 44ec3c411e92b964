"""The collector: receives a run's results from the bus and writes the run dir (calls.jsonl, summary.json).

QoS 1 delivers at least once, so records are deduplicated by `call_id`. Every new record is
appended and flushed at once: if the run dies, calls.jsonl holds everything received so far
(`load_calls` + `summarize` rebuild the summary), and a restarted collector resumes from it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from voiceload.core.stats import LatencyHistogram
from voiceload.core.summary import (
    DEFAULT_THRESHOLDS,
    GeneratorHealth,
    HealthThresholds,
    MediaStats,
    Summary,
    summarize,
)
from voiceload.errors import UserError
from voiceload.protocol import (
    OUTCOME_AGENT_LOST,
    OUTCOME_COMPLETED,
    Ack,
    AgentState,
    CallQuality,
    CallRecord,
    CallStarted,
    GreetingResult,
    Heartbeat,
    ProtocolError,
    RtpStats,
    TurnResult,
)
from voiceload.results import bus as busmod

log = logging.getLogger(__name__)

CALLS_FILE = "calls.jsonl"
ACK_BATCH_S = 0.3  # acks wait this long to travel in batches
ACK_TIMEOUT_S = 5.0
SUMMARY_FILE = "summary.json"


@dataclass(frozen=True)
class Progress:
    expected: int
    received: int  # distinct call records
    completed: int
    failed: int
    duplicates: int
    rejected: int  # messages that were not valid for this run

    def line(self) -> str:
        """One line for a live view or a plain log."""
        pct = f" ({100 * self.completed / self.received:.1f} % completed)" if self.received else ""
        extra = f", {self.rejected} rejected" if self.rejected else ""
        return (f"calls {self.received}/{self.expected}: {self.completed} completed, "
                f"{self.failed} failed{pct}{extra}")


class Collector:
    """Collects one run: `await Collector().run(bus, ...)` returns the summary it also wrote."""

    def __init__(self, *, on_record: Callable[[CallRecord], None] | None = None,
                 on_heartbeat: Callable[[Heartbeat], None] | None = None,
                 thresholds: HealthThresholds = DEFAULT_THRESHOLDS) -> None:
        self.on_record = on_record
        self.on_heartbeat = on_heartbeat
        self.thresholds = thresholds
        self.health = GeneratorHealth()
        self.agent_states: dict[str, AgentState] = {}
        self.records: list[CallRecord] = []
        self.expected_calls = 0  # may be lowered by the coordinator if the run stops early
        self.completed = 0
        self.duplicates = 0
        self.rejected = 0
        self.run_id = ""
        self.ready = asyncio.Event()  # set once subscribed: agents may start publishing
        self._seen: set[str] = set()
        self._out: IO[str] | None = None
        self._done = asyncio.Event()
        # no lost results: which calls each agent placed, which of them have a record, what to ack
        self.started: dict[str, dict[int, CallStarted]] = {}
        self.recorded_seqs: dict[str, set[int]] = {}
        self._to_ack: dict[str, set[int]] = {}
        self._ack_wake = asyncio.Event()
        self.lost_agents: set[str] = set()
        self.latest_heartbeats: dict[str, Heartbeat] = {}  # for the live view
        self._turn_hist: dict[int, LatencyHistogram] = {}
        self.media = MediaStats()  # codecs and call quality so far, for the live view

    @property
    def received(self) -> int:
        return len(self.records)

    @property
    def failed(self) -> int:
        return self.received - self.completed

    def progress(self) -> Progress:
        """A snapshot of the counters, for a live line (`progress().line()`)."""
        return Progress(self.expected_calls, self.received, self.completed, self.failed,
                        self.duplicates, self.rejected)

    def finish(self) -> None:
        """End the collection now (e.g. the coordinator knows every agent is done)."""
        self._done.set()

    async def run(
        self,
        bus: busmod.Bus | busmod.BrokerAddress,
        *,
        run_id: str,
        out_dir: Path,
        expected_calls: int,
        deadline_s: float,
        scenario_name: str = "",
        target: str = "",
        concurrency: int = 0,
        started_at: float | None = None,
    ) -> Summary:
        """Collect until `expected_calls` distinct records arrived, `finish()`, or `deadline_s` passed.

        Given a broker address rather than a Bus, the collector opens its own persistent session
        (`clean_session=False`), so records sent while it reconnects are queued for it, not lost.
        """
        if isinstance(bus, busmod.BrokerAddress):
            client_id = f"vl-collector-{run_id}"
            async with busmod.Bus(bus, client_id=client_id, clean_session=False) as own:
                summary = await self.run(own, run_id=run_id, out_dir=out_dir, expected_calls=expected_calls,
                                         deadline_s=deadline_s, scenario_name=scenario_name, target=target,
                                         concurrency=concurrency, started_at=started_at)
            # Don't leave the persistent session (and its subscriptions) on the broker after the run.
            with contextlib.suppress(UserError):
                async with busmod.Bus(bus, client_id=client_id, clean_session=True):
                    pass
            return summary
        self.run_id = run_id
        self.expected_calls = expected_calls
        started = time.time() if started_at is None else started_at
        out_dir.mkdir(parents=True, exist_ok=True)
        calls_path = out_dir / CALLS_FILE
        if calls_path.exists():
            for rec in load_calls(calls_path):
                if rec.run_id != run_id:
                    raise UserError(f"{calls_path} holds calls of run {rec.run_id!r}, not {run_id!r}: "
                                    "use a fresh output directory")
                if rec.call_id not in self._seen:
                    self._add(rec)
            if self.records:
                log.info("resuming %s: %d calls already recorded", calls_path, self.received)
        for topic in (busmod.topic_calls(run_id), busmod.topic_heartbeat(run_id),
                      busmod.topic_agent_state(run_id), busmod.topic_started(run_id)):
            await bus.subscribe(topic, qos=1)
        self.ready.set()
        with open(calls_path, "a", encoding="utf-8") as out:
            self._out = out
            consumer = asyncio.create_task(self._consume(bus))
            acker = asyncio.create_task(self._acker(bus))
            try:
                if self.received < self.expected_calls:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._done.wait(), max(deadline_s, 0.0))
                await self._flush_acks(bus)  # the last agents are waiting for these to exit
            finally:
                for task in (consumer, acker):
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await task
                self._out = None
        missing = self.expected_calls - self.received
        summary = summarize(
            self.records, run_id=run_id, scenario_name=scenario_name, target=target, concurrency=concurrency,
            calls_planned=self.expected_calls, started_at=started, ended_at=time.time(), health=self.health,
            thresholds=self.thresholds,
            extra_invalid_reasons=([f"{missing} calls missing"] if missing > 0 else [])
            + [f"agent {a} lost during the run (its unfinished calls are recorded as agent_lost)"
               for a in sorted(self.lost_agents)],
        )
        write_summary(out_dir / SUMMARY_FILE, summary)
        return summary

    async def _acker(self, bus: busmod.Bus) -> None:
        """Tell agents which records are safely written, a few times a second, batched."""
        while True:
            await self._ack_wake.wait()
            await asyncio.sleep(ACK_BATCH_S)
            await self._flush_acks(bus)

    async def _flush_acks(self, bus: busmod.Bus) -> None:
        self._ack_wake.clear()
        pending, self._to_ack = self._to_ack, {}
        for agent_id, seqs in pending.items():
            try:
                await bus.publish(busmod.topic_ack(self.run_id, agent_id),
                                  Ack(self.run_id, agent_id, sorted(seqs)), qos=1, timeout_s=ACK_TIMEOUT_S)
            except busmod.BusError:
                # not acked: the agent re-sends those records later and they are acked then
                log.warning("acks for agent %s not delivered yet", agent_id)

    def mark_agent_lost(self, agent_id: str, placed: int = 0) -> tuple[int, int]:
        """An agent died: each call it placed that has no record yet becomes one `agent_lost` record.

        Calls are known from call-started notices and from the agent's own counter (`placed`, from
        its last heartbeat or state), so none is missed even when a notice was lost. Returns
        (records added, calls the agent placed in all).
        """
        self.lost_agents.add(agent_id)
        started = self.started.get(agent_id, {})
        done = self.recorded_seqs.get(agent_id, set())
        hb_placed = self.health.per_agent_placed(agent_id)
        last = max([placed, hb_placed, *started.keys(), *done, 0])
        added = 0
        for seq in range(1, last + 1):
            if seq in done:
                continue
            notice = started.get(seq)
            rec = CallRecord(
                run_id=self.run_id, agent_id=agent_id,
                call_id=notice.call_id if notice and notice.call_id else f"lost-{self.run_id}-{agent_id}-{seq}",
                seq=seq, outcome=OUTCOME_AGENT_LOST, started_at=notice.started_at if notice else 0.0,
                reason="agent process lost before the call's record arrived",
            )
            if rec.call_id in self._seen:
                continue
            self._accept(rec)
            added += 1
        return added, last

    async def _consume(self, bus: busmod.Bus) -> None:
        async for topic, payload in bus.messages():
            self.handle(topic, payload)

    def handle(self, topic: str, payload: bytes) -> None:
        """Validate and take in one message; a bad one costs one warning line and is dropped."""
        try:
            parts = busmod.parse_topic(topic)
            if parts.run_id != self.run_id:
                raise ProtocolError(f"run {parts.run_id!r} is not this run")
            if parts.kind == busmod.KIND_CALLS:
                rec = CallRecord.from_json(payload)
                _check_sender(rec.run_id, rec.agent_id, self.run_id, parts.agent_id)
                _check_record(rec)
                self._to_ack.setdefault(rec.agent_id, set()).add(rec.seq)  # duplicates too: it resent
                self._ack_wake.set()
                if rec.call_id in self._seen:
                    self.duplicates += 1
                    return
                self._accept(rec)
            elif parts.kind == busmod.KIND_STARTED:
                notice = CallStarted.from_json(payload)
                _check_sender(notice.run_id, notice.agent_id, self.run_id, parts.agent_id)
                self.started.setdefault(notice.agent_id, {})[notice.seq] = notice
            elif parts.kind == busmod.KIND_HEARTBEAT:
                hb = Heartbeat.from_json(payload)
                _check_sender(hb.run_id, hb.agent_id, self.run_id, parts.agent_id)
                self.health.observe(hb)
                self.latest_heartbeats[hb.agent_id] = hb
                if self.on_heartbeat is not None:
                    self.on_heartbeat(hb)
                for index, blob in hb.latency_hdr.items():  # interval histograms: decode and add
                    self._turn_hist.setdefault(int(index), LatencyHistogram()).merge(LatencyHistogram.decode(blob))
            elif parts.kind == busmod.KIND_STATE:
                st = AgentState.from_json(payload)
                _check_sender(st.run_id, st.agent_id, self.run_id, parts.agent_id)
                self.agent_states[st.agent_id] = st
        except (ProtocolError, ValueError, TypeError) as exc:
            # TypeError/ValueError: fields missing or of the wrong type in an otherwise valid envelope
            self.rejected += 1
            log.warning("ignored message on %s: %s", topic, exc)

    def _accept(self, rec: CallRecord) -> None:
        """A new record: count it, write it, tell the hook, and finish when all are in."""
        self._add(rec)
        self._write(rec)
        if self.on_record is not None:
            try:
                self.on_record(rec)
            except Exception:
                log.exception("on_record callback failed (record kept)")
        if self.received >= self.expected_calls:
            self._done.set()

    def turn_percentiles(self) -> dict[int, dict[str, float | None]]:
        """Latency percentiles per turn index so far, merged from the agents' interval histograms."""
        return {i: h.percentiles() for i, h in sorted(self._turn_hist.items())}

    def _add(self, rec: CallRecord) -> None:
        self._seen.add(rec.call_id)
        self.records.append(rec)
        self.recorded_seqs.setdefault(rec.agent_id, set()).add(rec.seq)
        self.completed += rec.outcome == OUTCOME_COMPLETED
        self.media.observe(rec)

    def _write(self, rec: CallRecord) -> None:
        if self._out is not None:
            self._out.write(json.dumps(rec.to_dict(), separators=(",", ":")) + "\n")
            self._out.flush()


def _check_sender(run_id: str, agent_id: str, want_run: str, topic_agent: str) -> None:
    if run_id != want_run:
        raise ProtocolError(f"message of run {run_id!r} on this run's topic")
    if agent_id != topic_agent:
        raise ProtocolError(f"agent {agent_id!r} published on agent {topic_agent!r}'s topic")


def _check_record(rec: CallRecord) -> None:
    """The shape summarize relies on; messages.py checks the envelope, not field types."""
    if not isinstance(rec.call_id, str) or not rec.call_id:
        raise ProtocolError("call record without call_id")
    if not isinstance(rec.outcome, str):
        raise ProtocolError("call record without outcome")
    if not isinstance(rec.turns, list) or not all(isinstance(t, TurnResult) for t in rec.turns):
        raise ProtocolError("call record with malformed turns")
    if rec.greeting is not None and not isinstance(rec.greeting, GreetingResult):
        raise ProtocolError("call record with a malformed greeting")
    if rec.rtp is not None and not isinstance(rec.rtp, RtpStats):
        raise ProtocolError("call record with malformed rtp stats")
    q = rec.quality
    if q is not None and (not isinstance(q, CallQuality)
                          or not all(_is_number(v) for v in (q.mos, q.r_factor, q.loss_pct, q.delay_ms))):
        raise ProtocolError("call record with a malformed quality estimate")


def _is_number(v: object) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def write_summary(path: Path, summary: Summary) -> None:
    """Write atomically: a reader never sees half a summary."""
    _write_atomic(path, summary.to_json())


def write_json(path: Path, body: dict[str, Any]) -> None:
    """Another JSON file of the run dir (capacity.json), written as summary.json is."""
    _write_atomic(path, json.dumps(body, indent=2) + "\n")


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def load_calls(path: Path) -> list[CallRecord]:
    """Read calls.jsonl back (to rebuild a summary, or resume); a torn last line (a crash) is skipped."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise UserError(f"{path}: cannot read ({exc.strerror})") from None
    lines = text.split("\n")
    records = []
    for lineno, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            body = json.loads(line)
            if not isinstance(body, dict):
                raise ValueError("not a JSON object")
            rec = CallRecord.from_dict(body)
            _check_record(rec)
            records.append(rec)
        except (ValueError, TypeError) as exc:  # ProtocolError is a ValueError
            if lineno == len(lines):  # no newline after it: the writer died mid-line
                log.warning("%s:%d: ignored an incomplete last line", path, lineno)
                continue
            raise UserError(f"{path}:{lineno}: not a call record ({exc})") from None
    return records
