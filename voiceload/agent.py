"""Call agent: one process, one pjsua2 endpoint, up to the build's call limit of concurrent calls.

pjsua2 does the calls' SIP; their audio goes through the C media engine (`voiceload.media`),
which sends the caller's recordings, receives the bot's audio and writes each call's tape.
The agent keeps the coordinator's assigned number of calls in flight, walks each call through
the scenario (`CallerFlow`), records a tape per call, measures every turn from the tape once the
call ends (`analyse_caller_tape`) and publishes exactly one `CallRecord` per placed call.
Everything pjsua2 touches runs on the asyncio thread, which is also the pump.

`AgentBase` is the channel-independent half (assignments, spool, records, heartbeats, the Rasa
tracker check); `Agent` is the SIP channel and `restagent.RestAgent` the Rasa REST text channel.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import heapq
import logging
import os
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pjsua2 as pj

from voiceload import audio, bus
from voiceload.analysis import Played, Reference, analyse_caller_tape
from voiceload.calibration import AGENT_RX_DELAY_MS
from voiceload.callflow import LEVEL_SPEECH, CallerFlow, CallerState, Hangup, Play
from voiceload.errors import UserError
from voiceload.media import MediaEngine
from voiceload.messages import (
    OUTCOME_COMPLETED,
    OUTCOME_ERROR,
    OUTCOME_FAILED,
    OUTCOME_REJECTED,
    OUTCOME_TIMEOUT,
    Ack,
    AgentState,
    Assign,
    CallRecord,
    CallStarted,
    Heartbeat,
    TurnResult,
)
from voiceload.scenario import Scenario, load_scenario
from voiceload.siplite import local_address_for, parse_sip_uri, split_targets
from voiceload.sipua import CLOCK_RATE, SLOT_RETRY_S, SipCall, SipStack, SlotsBusy, read_tape
from voiceload.spool import Spool
from voiceload.stats import LatencyHistogram
from voiceload.tracker import TrackerCheck
from voiceload.vad import samples_to_ms

log = logging.getLogger("voiceload.agent")

# SIP events, call starts and due calls are handled every 20 ms. A call is stepped only when it is
# due: a SIP event, the end of its utterance, the silence gap after the bot's last loud packet (the
# media engine keeps that time), or a deadline. Polling every call every 40 ms was most of an
# agent's Python CPU at hundreds of calls; latency is measured from the tapes, not from these steps.
PUMP_PERIOD_S = 0.020
MAX_STARTS_PER_TICK = 4  # call starts a tick may catch up on, so the start rate can exceed 1/PUMP_PERIOD_S
HEARTBEAT_PERIOD_S = 1.0
MEDIA_WAIT_S = 2.0
SPOOL_DRAIN_S = 120.0  # how long a finished agent waits for the collector to acknowledge its records
SESSION_HEADER = "X-Voiceload-Session"
DEFAULT_REPLY_WAIT_MS = 3000  # a turn without a `reply` still needs the bot to say something by then
CHANNEL_SIP = "sip"
CHANNEL_REST = "rest"
CHANNELS = (CHANNEL_SIP, CHANNEL_REST)


def default_tape_dir() -> Path:
    """Tapes are written and read once per call: keep them in RAM when the box has a tmpfs."""
    shm = Path("/dev/shm")
    base = shm if shm.is_dir() and os.access(shm, os.W_OK) else Path(tempfile.gettempdir())
    return base / "voiceload"


@dataclass
class ScenarioAudio:
    """The scenario's recordings loaded once per agent: samples, speech spans, durations."""

    scenario: Scenario
    utterances: list[Reference] = field(default_factory=list)
    replies: list[Reference | None] = field(default_factory=list)
    greeting: Reference | None = None

    @classmethod
    def load(cls, scenario: Scenario) -> ScenarioAudio:
        sa = cls(scenario)
        sa.utterances = [Reference.of(audio.load_wav(t.caller)) for t in scenario.turns]
        sa.replies = [Reference.of(audio.load_wav(t.reply.path)) if t.reply else None for t in scenario.turns]
        if scenario.greeting is not None:
            sa.greeting = Reference.of(audio.load_wav(scenario.greeting.path))
        return sa

    @property
    def reply_waits_ms(self) -> list[int]:
        """Per turn, how long the bot may take to start its reply (the scenario's default without one)."""
        return [t.reply.max_wait_ms if t.reply else DEFAULT_REPLY_WAIT_MS for t in self.scenario.turns]

    def new_flow(self) -> CallerFlow:
        sc = self.scenario
        return CallerFlow(
            utterance_ms=[samples_to_ms(len(u.samples)) for u in self.utterances],
            max_waits_ms=self.reply_waits_ms,
            has_greeting=sc.greeting is not None,
            greeting_max_wait_ms=sc.greeting.max_wait_ms if sc.greeting else 0,
            silence_gap_ms=sc.silence_gap_ms,
            hangup_by=sc.hangup_by,
            hangup_after_ms=sc.hangup_after_ms,
        )



@dataclass
class CallerCall:
    """Per-call state of the agent role, hung on `SipCall.app`."""

    seq: int
    flow: CallerFlow
    started_at: float  # unix time of the INVITE
    played: list[Played] = field(default_factory=list)
    reason: str | None = None  # why the agent ended the call early, if it did
    answered: bool = False
    due: float = float("inf")  # monotonic time of the call's next step (see Agent._step_due); inf: none


@dataclass(frozen=True)
class TapeJob:
    """What the analysis thread needs of a finished call, copied off the recycled SipCall."""

    path: Path | None
    offset_ms: float  # tape start relative to answer
    played: list[Played]
    reason: str | None  # why the call ended early, if it did


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
    bind: str | None = None  # local IP for SIP and RTP; None: the address that routes to the target
    max_starts_per_s: float = 20.0
    channel: str = CHANNEL_SIP  # sip: calls through pjsua2; rest: the same turns as text to Rasa's REST channel
    rasa_url: str | None = None  # check each completed call's Rasa tracker here (and the REST channel's server)
    rasa_token: str | None = None


def session_id(run_id: str, agent_id: str, seq: int) -> str:
    """A call's conversation name: sent as SESSION_HEADER, a gateway's Rasa sender, the REST channel's sender."""
    return f"{run_id}-{agent_id}-{seq}"


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
        await self._open()
        run_id, agent_id = self.s.run_id, self.s.agent_id
        async with bus.Bus(self.s.broker, client_id=f"vl-agent-{run_id}-{agent_id}") as b:
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

    def _emit(self, rec: CallRecord) -> None:
        """Hand a finished call's record to the spool; a completed call goes through the tracker check first."""
        if self.tracker is not None and rec.outcome == OUTCOME_COMPLETED:
            self._verifying += 1
            task = asyncio.get_running_loop().create_task(self._verify(rec))
            self._checks.add(task)
            task.add_done_callback(self._checks.discard)
            return
        self._spool_record(rec)

    async def _verify(self, rec: CallRecord) -> None:
        """Off the pump: fetch the call's tracker; a mismatch or a fetch error makes the call failed.

        The record is spooled whatever happens here (even if the agent is torn down mid-fetch).
        """
        assert self.tracker is not None
        reason: str | None = "tracker: check interrupted"
        try:
            reason = await self.tracker.reason(session_id(self.s.run_id, self.s.agent_id, rec.seq))
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


class Agent(AgentBase):
    """The SIP channel: one pjsua2 endpoint, up to the build's call limit of concurrent calls."""

    def __init__(self, settings: AgentSettings) -> None:
        super().__init__(settings)
        self.audio = ScenarioAudio.load(self.scenario)
        # several targets (bot instances): calls go round-robin, each agent starting at its own one
        self.targets = split_targets(settings.target)
        self._first_target = sum(map(ord, settings.agent_id)) % len(self.targets)
        first = parse_sip_uri(self.targets[0])
        host = settings.bind or local_address_for(first.host, first.port)
        # pjsua slots beyond the assigned calls: an ended call holds its slot until its BYE is answered
        wanted = settings.max_calls + max(1, settings.max_calls // 8) if settings.max_calls else 1024
        self.media = MediaEngine(host, wanted, loud_level=LEVEL_SPEECH)
        self.stack = SipStack(host=host, max_calls=wanted, user=f"agent-{settings.agent_id}", media=self.media)
        self.tape_dir = settings.tape_dir / f"{settings.run_id}-{settings.agent_id}"
        self._due: list[tuple[float, int, SipCall]] = []  # (when, seq, call): a heap of calls to step
        # tapes are measured off the pump thread: numpy releases the GIL in its heavy loops
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tape")

    @property
    def active(self) -> int:
        return len(self.stack.calls)

    async def _open(self) -> None:
        self.tape_dir.mkdir(parents=True, exist_ok=True)
        self.stack.tape_dir = self.tape_dir
        self.stack.start()
        cap = self.stack.max_calls if self.s.max_calls is None else min(self.s.max_calls, self.stack.max_calls)
        self.capacity = cap
        log.info("agent %s up: pjsua2 call limit %d, SIP %s", self.s.agent_id, cap, self.stack.address)

    async def _close(self) -> None:
        self.stack.shutdown()
        self.media.shutdown()
        self._pool.shutdown(wait=True)
        if not self.s.keep_tapes:
            with contextlib.suppress(OSError):
                self.tape_dir.rmdir()

    def _media_lag_ms(self) -> float:
        return self.media.health().late_max_ms

    # --- the pump ---------------------------------------------------------------------------
    async def _pump(self) -> None:
        await self._paced(PUMP_PERIOD_S, self._tick)

    def _tick(self, now: float) -> None:
        self.stack.pump(0)
        now = time.monotonic()  # events may have taken a while
        self._dispatch(now)
        self._step_due(now)
        self._start_calls(now)
        self.stack.collect()

    def _place_call(self) -> None:
        seq = self.placed + 1
        session = session_id(self.s.run_id, self.s.agent_id, seq)
        started_at = time.time()
        target = self.targets[(self._first_target + seq) % len(self.targets)]  # a refused start keeps its seq
        try:
            call = self.stack.make_call(target, {SESSION_HEADER: session})
        except SlotsBusy:
            # an ended call's slot is still held (its BYE/CANCEL is unanswered): nothing was placed,
            # so nothing is counted or reported, and the start is tried again shortly
            self._next_start = min(self._next_start, time.monotonic() + SLOT_RETRY_S)
            return
        except (pj.Error, OSError) as exc:
            self.placed = seq
            why = f"makeCall failed: {exc.info().strip()}" if isinstance(exc, pj.Error) else f"no RTP socket: {exc}"
            self._emit(
                CallRecord(
                    run_id=self.s.run_id, agent_id=self.s.agent_id, call_id=f"unplaced-{session}", seq=seq,
                    outcome=OUTCOME_ERROR, reason=why, started_at=started_at,
                )
            )
            self.finished += 1
            return
        self.placed = seq
        call.app = CallerCall(seq=seq, flow=self.audio.new_flow(), started_at=started_at)
        self._schedule(call, call.app, time.monotonic())
        self.notices.put_nowait(CallStarted(self.s.run_id, self.s.agent_id, seq, call.sip_call_id, started_at))

    def _dispatch(self, now: float) -> None:
        events = self.stack.events
        while events:
            call, kind = events.popleft()
            cc: CallerCall | None = call.app
            if cc is None or call.closed:  # a call's earlier events may all read DISCONNECTED
                continue
            if kind == "state" and call.state == pj.PJSIP_INV_STATE_DISCONNECTED:
                if call.remote_hangup:
                    cc.flow.on_remote_hangup()
                self.stack.close(call, self._closed)
            else:  # answered, confirmed, media up: step it now
                self._schedule(call, cc, now)

    def _closed(self, call: SipCall) -> None:
        """The call's tape is complete: snapshot what the SIP stack knows, measure the tape off the pump."""
        cc: CallerCall = call.app
        self.finished += 1
        rec = self._signalling_record(call, cc)
        job = None
        if rec.outcome == OUTCOME_FAILED:  # it was answered: the tape decides
            job = TapeJob(
                path=call.tape.path if call.tape is not None else None,
                offset_ms=(call.tape.started - call.times.answered) * 1000
                if call.tape is not None and call.times.answered is not None else 0.0,
                played=list(cc.played),
                reason=cc.reason or cc.flow.failure,
            )
        elif call.tape is not None and not self.s.keep_tapes:  # early media, never answered
            call.tape.path.unlink(missing_ok=True)
        self.stack.release(call)  # the SipCall object is recycled from here on
        self._analysing += 1
        fut = asyncio.get_running_loop().run_in_executor(self._pool, self._measure, rec, job)
        fut.add_done_callback(lambda f: self._measured(f, rec))

    def _measured(self, fut: asyncio.Future[CallRecord], rec: CallRecord) -> None:
        self._analysing -= 1
        try:
            measured = fut.result()
            for turn in measured.turns:
                if turn.latency_ms is not None:
                    self._interval.setdefault(turn.index, LatencyHistogram()).record(turn.latency_ms)
            self._emit(measured)
        except Exception as exc:  # one bad tape must not take the agent (and its records) down
            log.exception("measuring call %s failed", rec.call_id)
            rec.outcome, rec.reason = OUTCOME_ERROR, f"agent error while measuring: {exc}"
            self._emit(rec)

    def _schedule(self, call: SipCall, cc: CallerCall, when: float) -> None:
        """Step `call` at `when` (monotonic s), unless it is due sooner already; later heap entries go stale."""
        if when < cc.due:
            cc.due = when
            heapq.heappush(self._due, (when, cc.seq, call))

    def _step_due(self, now: float) -> None:
        """Step the calls whose time has come; each says when it is next due."""
        due = self._due
        while due and due[0][0] <= now:
            when, seq, call = heapq.heappop(due)
            cc: CallerCall | None = call.app
            if cc is None or cc.seq != seq or cc.due != when or call.closed:
                continue  # the call ended, its object was reused, or it was rescheduled
            if call.state == pj.PJSIP_INV_STATE_DISCONNECTED:
                continue
            try:
                nxt = self._step_call(call, cc, now)
            except pj.Error as exc:  # one call's media failure ends that call, not the agent
                cc.reason = f"agent media error: {exc.info().strip()}"
                call.hangup_now()
                continue
            cc.due = float("inf")
            self._schedule(call, cc, max(nxt, now + PUMP_PERIOD_S / 2))

    def _step_call(self, call: SipCall, cc: CallerCall, now: float) -> float:
        """One step of a call's signalling timers and its flow; returns when it is next due (monotonic s)."""
        sc = self.scenario
        t = call.times
        if t.answered is None:
            if t.invite is not None and now - t.invite > sc.answer_timeout_ms / 1000:
                cc.reason = f"no answer within {sc.answer_timeout_ms} ms"
                call.hangup_now(487)
                return float("inf")
            return (t.invite or now) + sc.answer_timeout_ms / 1000 + PUMP_PERIOD_S  # or a SIP event, sooner
        give_up_at = t.answered + sc.max_call_ms / 1000
        if now > give_up_at:
            cc.reason = f"call exceeded max_call_ms {sc.max_call_ms}"
            call.hangup_now()
            return float("inf")
        if t.confirmed is None or cc.flow.state is CallerState.DONE:
            return give_up_at
        if call.tape is None:  # media and CONFIRMED arrive in either order
            if now - t.confirmed > MEDIA_WAIT_S:
                cc.reason = "call confirmed but no audio stream became active"
                call.hangup_now()
                return float("inf")
            return t.confirmed + MEDIA_WAIT_S + PUMP_PERIOD_S
        # the flow decides as of the moment up to which the engine has read everything that arrived, so
        # a bot still speaking in packets not read yet never looks quiet
        lag_ms = self.media.read_lag_ms
        known_ms = now * 1000 - lag_ms
        if not cc.answered:
            cc.answered = True
            action = cc.flow.on_answer(known_ms)
        else:
            action = cc.flow.step_heard(known_ms, call.last_loud_ms())
        self._act(call, cc, action, now)
        return min(give_up_at, (cc.flow.next_check_ms(known_ms) + lag_ms) / 1000)

    def _act(self, call: SipCall, cc: CallerCall, action: Play | Hangup | None, now: float) -> None:
        if isinstance(action, Play):
            ref = self.audio.utterances[action.index]
            started = call.play(self.scenario.turns[action.index].caller)
            assert call.tape is not None
            cc.played.append(Played(ref, round((started - call.tape.started) * CLOCK_RATE)))
        elif isinstance(action, Hangup):
            if action.reason:
                cc.reason = action.reason
            call.hangup_now()

    def _signalling_record(self, call: SipCall, cc: CallerCall) -> CallRecord:
        """Everything about the call except the tape; outcome `failed` here means "answered, measure it"."""
        log.debug("call %s ended: code %s, local hangup %s, reason %s / %s", call.sip_call_id, call.status_code,
                  call.local_hangup, cc.reason, cc.flow.failure)
        t = call.times
        rec = CallRecord(
            run_id=self.s.run_id, agent_id=self.s.agent_id, call_id=call.sip_call_id or f"unknown-{cc.seq}",
            seq=cc.seq, outcome=OUTCOME_FAILED, sip_code=call.status_code, started_at=cc.started_at,
            rtp=call.rtp,
        )
        if t.invite is not None and t.answered is not None:
            rec.setup_ms = round((t.answered - t.invite) * 1000, 1)
        if t.invite is not None and t.ringing is not None:
            rec.ringing_ms = round((t.ringing - t.invite) * 1000, 1)
        if t.answered is None:  # never connected: the final response tells why
            if cc.reason or call.status_code in (None, 408):
                rec.outcome = OUTCOME_TIMEOUT
                rec.reason = cc.reason or f"no final response ({call.status_text or 'timeout'})"
            else:
                rec.outcome = OUTCOME_REJECTED
                rec.reason = f"{call.status_code} {call.status_text}"
            return rec
        rec.sip_code = 200
        if t.disconnected is not None:
            rec.duration_ms = round((t.disconnected - t.answered) * 1000, 1)
        rec.hangup_by = "caller" if call.local_hangup else "bot"
        return rec

    def _measure(self, rec: CallRecord, job: TapeJob | None) -> CallRecord:
        """Worker thread: the tape analysis, its CPU time kept apart from the agent's live load (see `_beat`)."""
        started = time.thread_time()
        try:
            return self._analyse(rec, job)
        finally:
            self._offline_cpu_s += time.thread_time() - started

    def _analyse(self, rec: CallRecord, job: TapeJob | None) -> CallRecord:
        """Read and analyse the tape, fill the turns and the verdict. Pure but for the file."""
        if job is None:
            return rec
        sc = self.scenario
        if job.path is None:
            rec.reason = job.reason or "no media: the call never carried audio"
            return rec
        tape = read_tape(job.path)
        if not self.s.keep_tapes:
            job.path.unlink(missing_ok=True)
        n = len(job.played)
        result = analyse_caller_tape(
            tape,
            tape_offset_ms=job.offset_ms,
            rx_delay_ms=self.s.rx_delay_ms,
            greeting=self.audio.greeting,
            greeting_max_wait_ms=sc.greeting.max_wait_ms if sc.greeting else 0,
            utterances=job.played,
            replies=self.audio.replies[:n],
            max_waits_ms=self.audio.reply_waits_ms[:n],
        )
        rec.greeting = result.greeting
        rec.clock_slip_ms = result.clock_slip_ms
        rec.turns = result.turns + [TurnResult(index=i, reason="not reached") for i in range(n, len(sc.turns))]
        problems = [job.reason] if job.reason else []
        if rec.greeting is not None and not rec.greeting.ok:
            problems.append(f"greeting: {rec.greeting.reason}")
        problems += [f"turn {t.index}: {t.reason}" for t in rec.turns if not t.ok and t.reason != "not reached"]
        if n < len(sc.turns) and not problems:
            problems.append(f"only {n} of {len(sc.turns)} turns reached")
        if problems:
            rec.outcome, rec.reason = OUTCOME_FAILED, "; ".join(problems)
        else:
            rec.outcome = OUTCOME_COMPLETED
        return rec



def run(
    *, run_id: str, agent_id: str, scenario: Path, target: str | None, broker_url: str, tape_dir: Path | None = None,
    keep_tapes: bool = False, max_calls: int | None = None, rx_delay_ms: float | None = None,
    bind: str | None = None, channel: str = CHANNEL_SIP, rasa_url: str | None = None, rasa_token: str | None = None,
) -> None:
    """Entry point of `voiceload agent` (the coordinator spawns these, containers run them directly)."""
    from voiceload.restagent import RestAgent, parse_rasa_url  # it builds on this module

    if channel not in CHANNELS:
        raise UserError(f"--channel {channel!r}: must be one of {', '.join(CHANNELS)}")
    if rasa_url is not None:
        rasa_url = parse_rasa_url(rasa_url)
    if channel == CHANNEL_REST:
        if rasa_url is None:
            raise UserError("--channel rest needs --rasa-url")
        target = target or rasa_url
    elif target is None:
        raise UserError("--target is required with --channel sip")
    settings = AgentSettings(
        run_id=run_id, agent_id=agent_id, scenario_path=scenario, target=target,
        broker=bus.parse_broker_url(broker_url), keep_tapes=keep_tapes, max_calls=max_calls, bind=bind,
        channel=channel, rasa_url=rasa_url, rasa_token=rasa_token,
    )
    if tape_dir is not None:
        settings.tape_dir = tape_dir
    if rx_delay_ms is not None:
        settings.rx_delay_ms = rx_delay_ms
    agent: AgentBase = RestAgent(settings) if channel == CHANNEL_REST else Agent(settings)
    asyncio.run(agent.run())
