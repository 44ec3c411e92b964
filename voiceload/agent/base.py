"""The channel-independent half of a call agent: assignments, the spool, records, heartbeats and the
Rasa tracker check. `caller.Agent` (SIP) and `rest.RestAgent` (Rasa REST text) build on it.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import logging
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from voiceload.agent.tracker import TrackerCheck
from voiceload.audio.calibration import AGENT_RX_DELAY_MS
from voiceload.audio.wav import default_tape_dir
from voiceload.core.scenario import load_scenario
from voiceload.core.sipprofile import SipProfile
from voiceload.core.stats import LatencyHistogram
from voiceload.errors import UserError
from voiceload.protocol import (
    CHANNEL_SIP,
    OUTCOME_COMPLETED,
    OUTCOME_FAILED,
    Ack,
    AgentState,
    Assign,
    CallRecord,
    CallStarted,
    Heartbeat,
    session_id,
)
from voiceload.results import bus
from voiceload.results.spool import Spool

log = logging.getLogger("voiceload.agent")

# SIP events, call starts and due calls are handled every 20 ms. A call is stepped only when it is
# due: a SIP event, the end of its utterance, the silence gap after the bot's last loud packet (the
# media engine keeps that time), or a deadline. Polling every call every 40 ms was most of an
# agent's Python CPU at hundreds of calls; latency is measured from the tapes, not from these steps.
PUMP_PERIOD_S = 0.020
MAX_STARTS_PER_TICK = 4  # call starts a tick may catch up on, so the start rate can exceed 1/PUMP_PERIOD_S
HEARTBEAT_PERIOD_S = 1.0
SPOOL_DRAIN_S = 120.0  # how long a finished agent waits for the collector to acknowledge its records


@dataclass
class AgentSettings:
    run_id: str
    agent_id: str
    scenario_path: Path
    target: str
    broker: bus.BrokerAddress
    tape_dir: Path = field(default_factory=default_tape_dir)
    keep_tapes: bool = False
    rx_delay_ms: float = AGENT_RX_DELAY_MS
    max_calls: int | None = None  # None: the pjsua2 build's per-process limit
    bind: tuple[str, ...] = ()  # source addresses for SIP and RTP, taken in turn; (): the one routing to the target
    advertise: tuple[str, ...] = ()  # what they tell the far end (NAT): one for all, or one each; (): themselves
    max_starts_per_s: float = 20.0
    channel: str = CHANNEL_SIP  # sip: calls through pjsua2; rest: the same turns as text to Rasa's REST channel
    rasa_url: str | None = None  # check each completed call's Rasa tracker here (and the REST channel's server)
    rasa_token: str | None = None
    sip: SipProfile = field(default_factory=SipProfile)  # credentials, proxy, TLS, registration



class AgentBase(abc.ABC):
    """The part of an agent that does not depend on how calls are made.

    It takes assignments, spools each record until the collector acknowledges it, sends heartbeats
    and, with a Rasa URL, holds a completed call's record back until its tracker is checked. A
    channel brings itself up (`_open`), places calls from its `_pump` and hands every call's
    record to `_emit`, so every channel keeps the no-lost-results guarantee of protocol.md.
    """

    def __init__(self, settings: AgentSettings) -> None:
        self.s = settings
        self.scenario = load_scenario(settings.scenario_path)
        self.capacity = 0  # calls in flight at most; the channel sets it in `_open`
        self.concurrency = 0
        self.quota = 0
        self.placed = 0
        self.finished = 0
        self.stopping = False
        self.spool = Spool(Path(tempfile.gettempdir()) / "voiceload-spool" / f"{settings.run_id}-{settings.agent_id}")
        self._spool_changed = asyncio.Event()
        self.notices: asyncio.Queue[CallStarted] = asyncio.Queue()
        self._lag_max_ms = 0.0
        self._next_start = 0.0
        self._offline_cpu_s = 0.0  # CPU spent measuring finished calls (worker thread), not live calls
        self.starts_per_s = settings.max_starts_per_s
        self._analysing = 0
        self._interval: dict[int, LatencyHistogram] = {}  # turn latencies since the last heartbeat
        self.tracker = TrackerCheck.for_scenario(self.scenario, settings.rasa_url, settings.rasa_token)
        self._verifying = 0  # completed calls whose tracker is being fetched: their records are not spooled yet
        self._checks: set[asyncio.Task[None]] = set()
        self._beat_clock = (time.process_time(), time.monotonic())  # CPU and wall time of the last heartbeat
        self._beats = 0

    @property
    @abc.abstractmethod
    def active(self) -> int:
        """Calls in flight now."""

    @abc.abstractmethod
    async def _open(self) -> None:
        """Bring the channel up and set `capacity`."""

    @abc.abstractmethod
    async def _close(self) -> None:
        """Release the channel (every call has ended)."""

    @abc.abstractmethod
    async def _pump(self) -> None:
        """Place and run calls as assigned until `_done()`."""

    @abc.abstractmethod
    def _place_call(self) -> None:
        """Start one call now (or leave `placed` as it is when the channel refuses it for the moment)."""

    async def _paced(self, period_s: float, tick: Callable[[float], None]) -> None:
        """Run `tick(now)` every `period_s` until `_done()`; a late tick is the pump lag heartbeats report."""
        next_tick = time.monotonic()
        while not self._done():
            tick(time.monotonic())
            next_tick += period_s
            delay = next_tick - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            else:
                self._lag_max_ms = max(self._lag_max_ms, -delay * 1000)
                next_tick = time.monotonic()
                await asyncio.sleep(0)

    def _start_calls(self, now: float) -> None:
        """The calls due by the start rate (a few per tick at most), within the assigned concurrency and quota."""
        for _ in range(MAX_STARTS_PER_TICK):
            if self.stopping or now < self._next_start:
                return
            if not (self.active < self.concurrency and self.placed < self.quota and not self.spool.full):
                return
            # the schedule, not the tick, sets the rate; a start skipped for long does not bring a burst
            self._next_start = max(self._next_start, now - MAX_STARTS_PER_TICK / self.starts_per_s) \
                + 1.0 / self.starts_per_s
            before = self.placed
            self._place_call()
            if self.placed == before:  # refused for the moment (no free slot): try on a later tick
                return

    async def run(self) -> None:
        run_id, agent_id = self.s.run_id, self.s.agent_id
        async with bus.Bus(self.s.broker, client_id=f"vl-agent-{run_id}-{agent_id}") as b:
            try:
                await self._open()
            except UserError as exc:  # e.g. a refused REGISTER: the run reports it and exits 2
                await self._state(b, "error", str(exc))
                await self._close()
                raise
            await b.subscribe(bus.topic_control(run_id, agent_id))
            await b.subscribe(bus.topic_ack(run_id, agent_id))
            await self._state(b, "ready")
            self._beat_clock = (time.process_time(), time.monotonic())
            tasks = [
                asyncio.create_task(self._inbox(b)),
                asyncio.create_task(self._publisher(b)),
                asyncio.create_task(self._notices(b)),
                asyncio.create_task(self._heartbeat(b)),
            ]
            try:
                await self._pump()
                await self._drain_spool()
                await self._state(b, "done")
            finally:
                for t in tasks:
                    t.cancel()
                for t in tasks:
                    with contextlib.suppress(asyncio.CancelledError):
                        await t
                await self._close()
                if self.tracker is not None:
                    await self.tracker.close()
                self.spool.remove_dir_if_empty()

    async def _state(self, b: bus.Bus, state: str, detail: str | None = None) -> None:
        msg = AgentState(self.s.run_id, self.s.agent_id, state, self.placed, self.finished, detail)
        try:
            await b.publish(bus.topic_agent_state(self.s.run_id, self.s.agent_id), msg, qos=1)
        except bus.BusError as exc:
            log.warning("could not announce state %s: %s", state, exc)

    async def _inbox(self, b: bus.Bus) -> None:
        """Assignments from the coordinator and acknowledgements from the collector."""
        async for topic, payload in b.messages():
            if bus.parse_topic(topic).kind == bus.KIND_ACK:
                ack = Ack.parse_or_warn(payload, log)
                if ack is not None and ack.agent_id == self.s.agent_id:
                    self.spool.ack(ack.seqs)
                    self._spool_changed.set()
                continue
            cmd = Assign.parse_or_warn(payload, log)
            if cmd is None:
                continue
            self.concurrency = min(cmd.concurrency, self.capacity)
            self.quota = cmd.calls
            self.stopping = self.stopping or cmd.stop
            self.starts_per_s = cmd.max_starts_per_s or self.s.max_starts_per_s
            log.info("assigned concurrency %d, calls %d, stop %s", self.concurrency, self.quota, cmd.stop)

    async def _publisher(self, b: bus.Bus) -> None:
        """Send spooled records; re-send the ones the collector has not acknowledged in a while."""
        topic = bus.topic_calls(self.s.run_id, self.s.agent_id)
        while True:
            due = self.spool.due()
            if due and (self._beats == 0 or self._done()):
                # the collector may end the run on the last record: the health of calls shorter than a
                # heartbeat period (text calls) must reach it first, or the run is judged unknown
                await self._beat(b, qos=1)
            for seq, payload in due:
                try:
                    await b.publish_raw(topic, payload, qos=1)
                except bus.BusError as exc:
                    log.warning("record %d not sent yet (%s); it stays spooled", seq, exc)
                    break
                self.spool.sent(seq)
            self._spool_changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._spool_changed.wait(), 1.0)

    async def _notices(self, b: bus.Bus) -> None:
        """Call-started notices: best effort (the spool guards the records themselves)."""
        topic = bus.topic_started(self.s.run_id, self.s.agent_id)
        while True:
            notice = await self.notices.get()
            try:
                await b.publish(topic, notice, qos=1)
            except bus.BusError as exc:
                log.warning("call-started notice for %s lost: %s", notice.call_id, exc)

    async def _drain_spool(self) -> None:
        """Before saying done: every record acknowledged by the collector (bounded wait)."""
        end = time.monotonic() + SPOOL_DRAIN_S
        while len(self.spool) and time.monotonic() < end:
            await asyncio.sleep(0.1)
        if len(self.spool):
            log.error("%d call records not acknowledged by the collector; they stay in %s",
                      len(self.spool), self.spool.directory)

    async def _heartbeat(self, b: bus.Bus) -> None:
        while True:
            await asyncio.sleep(HEARTBEAT_PERIOD_S)
            await self._beat(b)

    async def _beat(self, b: bus.Bus, qos: int = 0) -> None:
        """One heartbeat covering the time since the previous one (CPU, pump lag, turn latencies)."""
        # Measuring a finished call's tape cannot distort it, and calls that end together bring a burst
        # of it (100 tapes at once can fill a core for a second): the overload check counts live work only.
        # Live calls starved by that burst still show, as pump lag and audio-clock slip.
        cpu1, wall1 = time.process_time() - self._offline_cpu_s, time.monotonic()
        cpu0, wall0 = self._beat_clock
        # an early beat (see `_publisher`) covers less than a period: a few ms of work must not read as a busy core
        cpu = 100.0 * (cpu1 - cpu0) / max(wall1 - wall0, HEARTBEAT_PERIOD_S)
        self._beat_clock = (cpu1, wall1)
        hb = Heartbeat(
            run_id=self.s.run_id, agent_id=self.s.agent_id, at=time.time(), active_calls=self.active,
            placed=self.placed, finished=self.finished, cpu_percent=round(cpu, 1),
            pump_lag_ms_max=round(self._lag_max_ms, 1), max_calls=self.capacity,
            media_lag_ms_max=round(self._media_lag_ms(), 1),
            latency_hdr={str(i): h.encode() for i, h in sorted(self._interval.items())},
        )
        self._lag_max_ms = 0.0
        self._interval = {}
        with contextlib.suppress(bus.BusError):
            await b.publish(bus.topic_heartbeat(self.s.run_id, self.s.agent_id), hb, qos=qos,
                            timeout_s=HEARTBEAT_PERIOD_S)
            self._beats += 1

    def _media_lag_ms(self) -> float:
        """Worst media-clock lateness since the last heartbeat (0 for a channel without media)."""
        return 0.0

    def _done(self) -> bool:
        no_more = self.stopping or (self.quota > 0 and self.placed >= self.quota)
        return no_more and self.active == 0 and self._analysing == 0 and self._verifying == 0

    def _sender(self, rec: CallRecord) -> str:
        """The call's Rasa sender, as the gateway names the conversation: the session id here (a channel
        whose gateway may name it otherwise overrides this; it is asked once per record)."""
        return session_id(self.s.run_id, self.s.agent_id, rec.seq)

    def _emit(self, rec: CallRecord) -> None:
        """Hand a finished call's record to the spool; a completed call goes through the tracker check first."""
        sender = self._sender(rec)
        if self.tracker is not None and rec.outcome == OUTCOME_COMPLETED:
            self._verifying += 1
            task = asyncio.get_running_loop().create_task(self._verify(rec, sender))
            self._checks.add(task)
            task.add_done_callback(self._checks.discard)
            return
        self._spool_record(rec)

    async def _verify(self, rec: CallRecord, sender: str) -> None:
        """Off the pump: fetch the call's tracker; a mismatch or a fetch error makes the call failed.

        The record is spooled whatever happens here (even if the agent is torn down mid-fetch).
        """
        assert self.tracker is not None
        reason: str | None = "tracker: check interrupted"
        try:
            reason = await self.tracker.reason(sender)
        except Exception as exc:  # a bug in the check must cost one call, not the agent
            log.exception("tracker check of call %s failed", rec.call_id)
            reason = f"tracker: {type(exc).__name__}: {exc}"
        finally:
            if reason is not None:
                rec.outcome, rec.reason = OUTCOME_FAILED, reason
            self._verifying -= 1
            self._spool_record(rec)

    def _spool_record(self, rec: CallRecord) -> None:
        self.spool.put(rec.seq, rec.to_json())
        self._spool_changed.set()

