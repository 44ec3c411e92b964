"""Call agent: one process, one pjsua2 endpoint, up to the build's call limit of concurrent calls.

pjsua2 does the calls' SIP; their audio goes through the C media engine (`voiceload.media.engine`),
which sends the caller's recordings, receives the bot's audio and writes each call's tape.
The agent keeps the coordinator's assigned number of calls in flight, walks each call through
the scenario (`CallerFlow`), records a tape per call, measures every turn from the tape once the
call ends (`analyse_caller_tape`) and publishes exactly one `CallRecord` per placed call.
Everything pjsua2 touches runs on the asyncio thread, which is also the pump.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import logging
import random
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from voiceload.agent.base import PUMP_PERIOD_S, AgentBase, AgentSettings
from voiceload.audio.analysis import Dialled, Played, analyse_caller_tape
from voiceload.audio.wav import read_tape
from voiceload.core.addresses import ANY, Addresses
from voiceload.core.callflow import CallerFlow, CallerState, Dial, Hangup, Play
from voiceload.core.emodel import call_quality
from voiceload.core.identity import (
    CallFields,
    IdentityError,
    IdentityRows,
    parse_identities,
    sender_of,
    with_user,
)
from voiceload.core.scenario_audio import ScenarioAudio
from voiceload.core.sipprofile import SipUri, parse_sip_uri
from voiceload.core.stats import LatencyHistogram
from voiceload.errors import UserError
from voiceload.media.engine import MediaEngine
from voiceload.protocol import (
    OUTCOME_COMPLETED,
    OUTCOME_ERROR,
    OUTCOME_FAILED,
    OUTCOME_REJECTED,
    OUTCOME_TIMEOUT,
    SESSION_HEADER,
    SIP_ORIGIN_LOCAL,
    SIP_ORIGIN_REMOTE,
    CallRecord,
    CallStarted,
    DtmfEvent,
    TurnResult,
    session_id,
    sip_rejection,
)
from voiceload.sip.lite import local_address_for, split_targets
from voiceload.sip.ua import (
    CALL_AUTH_HEADER,
    CLOCK_RATE,
    DTMF_INFO,
    SLOT_RETRY_S,
    CallEvent,
    HeardDigit,
    SipCall,
    SipError,
    SipStack,
    SlotsBusy,
)

log = logging.getLogger("voiceload.agent")

REGISTER_TIMEOUT_S = 10.0  # a registrar that does not answer within this fails the agent's start
MEDIA_WAIT_S = 2.0  # how long an answered call may wait for its media to come up


@dataclass(frozen=True)
class DialStep:
    """A DTMF turn as the agent sent it: planned times, and where its INFO digits are in `SipCall.dtmf_sent`."""

    digits: str
    start: float  # monotonic s, the first digit's start as the sender reported it
    end: float  # the last digit's end, as planned
    method: str  # rfc4733 | info
    first_sent: int = 0  # SIP INFO: index of its first digit in SipCall.dtmf_sent


@dataclass
class CallerCall:
    """Per-call state of the agent role, hung on `SipCall.app`."""

    seq: int
    flow: CallerFlow
    started_at: float  # unix time of the INVITE
    source: str = ""  # the local address its SIP and RTP use
    played: list[Played | DialStep] = field(default_factory=list)  # per turn reached: a recording or digits
    reason: str | None = None  # why the agent ended the call early, if it did
    answered: bool = False
    holds_done: int = 0  # the call's holds (SipCall.holds) whose end the flow was told of
    due: float = float("inf")  # monotonic time of the call's next step (see Agent._step_due); inf: none


@dataclass(frozen=True)
class TapeJob:
    """What the analysis thread needs of a finished call, copied off the recycled SipCall."""

    path: Path | None
    offset_ms: float  # tape start relative to answer
    played: list[Played | Dialled]
    reason: str | None  # why the call ended early, if it did
    listen_from: int = 0  # tape index from which received audio may be bot speech (the answer, by default)
    holds: tuple[tuple[int, int], ...] = ()  # tape index spans the far end held the call
    dtmf_received: tuple[tuple[str, int], ...] = ()  # (digit, tape index of its start) the far end sent



class Agent(AgentBase):
    """The SIP channel: one pjsua2 endpoint, up to the build's call limit of concurrent calls."""

    def __init__(self, settings: AgentSettings) -> None:
        super().__init__(settings)
        self.audio = ScenarioAudio.load(self.scenario)
        # several targets (bot instances): calls go round-robin, each agent starting at its own one
        self.targets = split_targets(settings.target)
        self._first_target = sum(map(ord, settings.agent_id)) % len(self.targets)
        first = parse_sip_uri(self.targets[0])
        profile = settings.sip
        hop = parse_sip_uri(profile.proxy, "--proxy") if profile.proxy else first  # where our packets go
        # several source addresses (--bind): calls take them in turn, each agent starting at its own one
        addresses = Addresses(settings.bind, settings.advertise)
        routed = local_address_for(hop.host, hop.port)
        self.hosts = settings.bind or (routed,)
        self._first_host = sum(map(ord, settings.agent_id)) % len(self.hosts)
        public = {h: p for h in self.hosts if (p := addresses.public(h)) is not None}
        # a socket on every address (0.0.0.0) sends from the routed one: pjsua would announce the host's
        # default address instead (and `0.0.0.0` in From), which need not be where our packets come from
        self._source = {h: routed if h == ANY else h for h in self.hosts}  # what a record names
        if ANY in self.hosts:
            public.setdefault(ANY, routed)
        # pjsua slots beyond the assigned calls: an ended call holds its slot until its BYE is answered
        wanted = settings.max_calls + max(1, settings.max_calls // 8) if settings.max_calls else 1024
        self.media = MediaEngine(self.hosts[0], wanted, loud_level=self.scenario.speech.loud_level)
        registrar = str(SipUri("", first.host, first.port, first.transport, first.secure))
        self.stack = SipStack(host=self.hosts[0], hosts=self.hosts, public=public, max_calls=wanted,
                              user=f"agent-{settings.agent_id}", media=self.media, profile=profile,
                              transports=profile.transports(self.targets), domain=first.host, registrar=registrar)
        self.tape_dir = settings.tape_dir / f"{settings.run_id}-{settings.agent_id}"
        self._due: list[tuple[float, int, SipCall]] = []  # (when, seq, call): a heap of calls to step
        # tapes are measured off the pump thread: numpy releases the GIL in its heavy loops
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tape")
        self.identity = profile.identity
        self.identity_rows: IdentityRows | None = None  # the identities file, read in _open
        self._rng = random.Random()  # {digits:N}
        self._from_users: dict[int, str] = {}  # seq -> the From user sent, for the tracker (sender from-user)

    @property
    def active(self) -> int:
        return len(self.stack.calls)

    def _read_identities(self) -> None:
        """The identities file, as the coordinator checked it; a file gone bad since is the user's to fix."""
        path = self.identity.identities
        if path is None:
            return
        try:
            rows = parse_identities(Path(path).read_text(encoding="utf-8-sig"), path)
            self.identity.check_rows(rows)
        except OSError as exc:
            raise UserError(f"identities file {path}: cannot read it: {exc.strerror or exc}") from None
        except (IdentityError, UnicodeDecodeError) as exc:
            raise UserError(str(exc)) from None
        self.identity_rows = rows

    async def _open(self) -> None:
        self._read_identities()
        self.tape_dir.mkdir(parents=True, exist_ok=True)
        self.stack.tape_dir = self.tape_dir
        self.stack.stereo_tapes = self.s.keep_tapes  # tapes for people: the caller left, the bot right
        self.stack.start()
        if self.s.sip.register:
            await self._registered()
        cap = self.stack.max_calls if self.s.max_calls is None else min(self.s.max_calls, self.stack.max_calls)
        self.capacity = cap
        log.info("agent %s up: pjsua2 call limit %d, SIP %s", self.s.agent_id, cap,
                 ", ".join(f"{h}:{p['udp']}" + (f" (advertised as {self.stack.public[h]})" if h in self.stack.public
                                                  else "") for h, p in self.stack.host_ports.items()))

    async def _registered(self) -> None:
        """Wait (bounded) for the agent's REGISTER to succeed; a refusal is the user's to fix."""
        end = time.monotonic() + REGISTER_TIMEOUT_S
        while self.stack.registration is None and time.monotonic() < end:
            self.stack.pump(20)
            await asyncio.sleep(0)
        reg = self.stack.registration
        where = self.stack.registrar
        if reg is None:
            raise UserError(f"REGISTER to {where}: no answer within {REGISTER_TIMEOUT_S:.0f} s")
        if not reg.ok:
            raise UserError(f"REGISTER to {where}: {reg.code} {reg.reason}")
        log.info("agent %s registered at %s for %d s", self.s.agent_id, where, reg.expires_s)

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
        # the address steps once per round of targets, so every (address, target) pair comes up
        source = self.hosts[(self._first_host + seq // len(self.targets)) % len(self.hosts)]
        headers = {SESSION_HEADER: session}
        if self.identity.active:
            who = self.identity.expand(CallFields(seq, self.s.agent_id, session, self.s.run_id),
                                       self.identity_rows, self._rng)
            headers.update(who.headers)
            if who.auth is not None:  # never sent: the stack answers this call's challenges with it
                headers[CALL_AUTH_HEADER] = f"{who.auth[0]}:{who.auth[1]}"
            from_header = who.from_header(self.stack.from_user, self.stack.from_hosts.get(source, self.stack.from_host))
            if from_header is not None:
                headers["From"] = from_header
            if who.to_user is not None:
                target = with_user(target, who.to_user)
            if who.from_user_part is not None:
                self._from_users[seq] = who.from_user_part
        try:
            call = self.stack.make_call(target, headers, host=source)
        except SlotsBusy:
            # an ended call's slot is still held (its BYE/CANCEL is unanswered): nothing was placed,
            # so nothing is counted or reported, and the start is tried again shortly
            self._next_start = min(self._next_start, time.monotonic() + SLOT_RETRY_S)
            return
        except (SipError, OSError) as exc:
            self.placed = seq
            why = f"makeCall failed: {exc}" if isinstance(exc, SipError) else f"no RTP socket: {exc}"
            self._emit(
                CallRecord(
                    run_id=self.s.run_id, agent_id=self.s.agent_id, call_id=f"unplaced-{session}", seq=seq,
                    outcome=OUTCOME_ERROR, reason=why, started_at=started_at,
                    source_address=self._source[source],
                )
            )
            self.finished += 1
            return
        self.placed = seq
        call.app = CallerCall(seq=seq, flow=self.audio.new_flow(), started_at=started_at,
                              source=self._source[source])
        self._schedule(call, call.app, time.monotonic())
        self.notices.put_nowait(CallStarted(self.s.run_id, self.s.agent_id, seq, call.sip_call_id, started_at))

    def _dispatch(self, now: float) -> None:
        events = self.stack.events
        while events:
            call, kind = events.popleft()
            cc: CallerCall | None = call.app
            if cc is None or call.closed:  # a call's earlier events may all read DISCONNECTED
                continue
            if kind is CallEvent.STATE and call.ended:
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
            tape, answered = call.tape, call.times.answered
            listen_from = 0
            holds: tuple[tuple[int, int], ...] = ()
            if tape is not None and answered is not None:
                if self.scenario.early_media == "ignore":
                    listen_from = tape.index_at(answered)
                holds = tuple((tape.index_at(a), tape.index_at(b)) for a, b in _holds_after_answer(call))
            job = TapeJob(
                path=tape.path if tape is not None else None,
                offset_ms=(tape.started - answered) * 1000 if tape is not None and answered is not None else 0.0,
                played=[_dialled(call, p) if isinstance(p, DialStep) else p for p in cc.played],
                reason=cc.reason or cc.flow.failure,
                listen_from=listen_from,
                holds=holds,
                dtmf_received=tuple((d.digit, tape.index_at(d.at)) for d in _heard(call)) if tape is not None else (),
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
            if call.ended:
                continue
            try:
                nxt = self._step_call(call, cc, now)
            except SipError as exc:  # one call's media failure ends that call, not the agent
                cc.reason = f"agent media error: {exc}"
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
        if call.media_error is not None:  # negotiated, but nothing the engine can send or read
            cc.reason = f"media: {call.media_error}"
            call.hangup_now(488 if t.confirmed is None else 200)
            return float("inf")
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
            # early media: by default the far end's speech counts from the 200 OK on, with
            # `early_media: listen` from the first media (the tape's start)
            listen_from = t.answered if sc.early_media == "ignore" else call.tape.started
            action = cc.flow.on_answer(known_ms, listen_from=listen_from * 1000)
        else:
            self._sync_hold(call, cc)
            action = cc.flow.step_heard(known_ms, call.last_loud_ms())
        self._act(call, cc, action, now)
        return min(give_up_at, (cc.flow.next_check_ms(known_ms) + lag_ms) / 1000)

    @staticmethod
    def _sync_hold(call: SipCall, cc: CallerCall) -> None:
        """Tell the flow of each hold the far end put the call in since it was answered, at the hold's own times."""
        for k, (start, end) in enumerate(_holds_after_answer(call, open_end=True)):
            if k < cc.holds_done:
                continue
            cc.flow.set_held(True, start * 1000)
            if end == float("inf"):
                return
            cc.flow.set_held(False, end * 1000)
            cc.holds_done = k + 1

    def _act(self, call: SipCall, cc: CallerCall, action: Play | Dial | Hangup | None, now: float) -> None:
        if isinstance(action, Play):
            ref, path = self.audio.utterances[action.index], self.scenario.turns[action.index].caller
            assert ref is not None and path is not None  # a DTMF turn is a Dial
            started = call.play(path)
            assert call.tape is not None
            cc.played.append(Played(ref, round((started - call.tape.started) * CLOCK_RATE)))
        elif isinstance(action, Dial):
            dtmf = self.scenario.turns[action.index].dtmf
            assert dtmf is not None
            method = self.s.sip.media.dtmf
            first = len(call.dtmf_sent)
            start, end = call.send_dtmf(dtmf.digits, dtmf.duration_ms, dtmf.gap_ms, method=method)
            cc.played.append(DialStep(dtmf.digits, start, end, method, first))
            cc.flow.spoke_until(end * 1000)
        elif isinstance(action, Hangup):
            if action.reason:
                cc.reason = action.reason
            call.hangup_now()

    def _sender(self, rec: CallRecord) -> str:
        """The Rasa sender the gateway gives this call (`sip.sender`): session id, From user or Call-ID."""
        return sender_of(self.identity.sender, session=session_id(self.s.run_id, self.s.agent_id, rec.seq),
                         call_id=rec.call_id, from_user=self._from_users.pop(rec.seq, None))

    def _signalling_record(self, call: SipCall, cc: CallerCall) -> CallRecord:
        """Everything about the call except the tape; outcome `failed` here means "answered, measure it"."""
        log.debug("call %s ended: code %s, local hangup %s, reason %s / %s", call.sip_call_id, call.status_code,
                  call.local_hangup, cc.reason, cc.flow.failure)
        t = call.times
        rec = CallRecord(
            run_id=self.s.run_id, agent_id=self.s.agent_id, call_id=call.sip_call_id or f"unknown-{cc.seq}",
            seq=cc.seq, outcome=OUTCOME_FAILED, sip_code=call.status_code, started_at=cc.started_at,
            rtp=call.rtp, source_address=cc.source or None,
        )
        rec.quality = call_quality(call.rtp) if call.rtp is not None else None
        if t.invite is not None and t.answered is not None:
            rec.setup_ms = round((t.answered - t.invite) * 1000, 1)
        if t.invite is not None and t.ringing is not None:
            rec.ringing_ms = round((t.ringing - t.invite) * 1000, 1)
        final = call.final
        if final is not None:
            rec.sip_reason = final.reason or None
            rec.sip_origin = SIP_ORIGIN_REMOTE if final.remote else SIP_ORIGIN_LOCAL
            rec.retry_after_s = final.retry_after_s
        if t.answered is None:  # never connected: the final response tells why
            code = final.code if final is not None and final.code else call.status_code
            rec.sip_code = code
            if cc.reason:  # we gave up (answer_timeout_ms): our CANCEL ended it
                rec.outcome, rec.reason = OUTCOME_TIMEOUT, cc.reason
                rec.sip_origin = SIP_ORIGIN_LOCAL
            elif code is None:
                rec.outcome, rec.reason = OUTCOME_TIMEOUT, f"no final response ({call.status_text or 'timeout'})"
            else:
                remote = final is None or final.remote
                rec.reason = sip_rejection(code, final.reason if final is not None else call.status_text,
                                           remote=remote, retry_after_s=rec.retry_after_s,
                                           credentials=self.s.sip.auth is not None)
                rec.outcome = OUTCOME_TIMEOUT if code == 408 else OUTCOME_REJECTED
            return rec
        rec.sip_code = 200
        held = _holds_after_answer(call)
        if held:
            rec.held_ms = round(sum(b - a for a, b in held) * 1000, 1)
        if call.media_moves:
            rec.media_moves = call.media_moves
        if t.disconnected is not None:
            rec.duration_ms = round((t.disconnected - t.answered) * 1000, 1)
        rec.hangup_by = "caller" if call.local_hangup else "bot"
        rec.dtmf_received = [DtmfEvent(d.digit, round((d.at - t.answered) * 1000, 1), round(d.duration_ms, 1), d.method)
                             for d in _heard(call)]
        return rec

    def _measure(self, rec: CallRecord, job: TapeJob | None) -> CallRecord:
        """Worker thread: the tape analysis, its CPU time kept apart from the agent's live load (see `_beat`)."""
        started = time.thread_time()
        try:
            return self._analyse(rec, job)
        finally:
            self._offline_cpu_s += time.thread_time() - started

    def _kept_tape_name(self, path: Path) -> str:
        """A kept tape's path as the record names it: relative to the tape dir's parent, which is the
        run dir when `voiceload run --keep-tapes` chose the tape dir (OUT/tapes)."""
        base = self.s.tape_dir
        try:
            return str(Path(base.name) / path.relative_to(base))
        except ValueError:
            return str(path)

    def _analyse(self, rec: CallRecord, job: TapeJob | None) -> CallRecord:
        """Read and analyse the tape, fill the turns and the verdict. Pure but for the file."""
        if job is None:
            return rec
        sc = self.scenario
        if job.path is None:
            rec.reason = job.reason or "no media: the call never carried audio"
            return rec
        tape = read_tape(job.path)
        if self.s.keep_tapes:
            rec.tape, rec.tape_start_ms = self._kept_tape_name(job.path), round(job.offset_ms, 1)
        else:
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
            listen_from=job.listen_from,
            holds=job.holds,
            reply_dtmf=[t.reply.dtmf if t.reply else None for t in sc.turns[:n]],
            dtmf_received=job.dtmf_received,
            speech=sc.speech,
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




def _heard(call: SipCall) -> list[HeardDigit]:
    """The digits the far end sent, in order: SIP INFO and the engine's RFC 4733 events (SipCall.close_media)."""
    return sorted(call.dtmf_heard, key=lambda d: d.at)


def _dialled(call: SipCall, step: DialStep) -> Dialled:
    """A DTMF turn's span on the tape: the engine's times (RFC 4733), or the INFOs' real send times plus
    the last digit's duration. Digits never sent (the call ended first) keep their planned end."""
    assert call.tape is not None
    start, end = step.start, step.end
    if step.method == DTMF_INFO:
        sent = call.dtmf_sent[step.first_sent : step.first_sent + len(step.digits)]
        if sent:
            start = sent[0].at
        if len(sent) == len(step.digits):
            end = sent[-1].at + sent[-1].duration_ms / 1000
    return Dialled(step.digits, call.tape.index_at(start), call.tape.index_at(end))


def _holds_after_answer(call: SipCall, *, open_end: bool = False) -> list[tuple[float, float]]:
    """The far end's holds (monotonic s) from the answer on; one still open ends at the hang-up
    (or stays open, `open_end`). A direction before the 200 OK is early media's (a 183 with
    `a=sendonly` is a common ringback), not a hold, so each span is clipped to the answer."""
    answered = call.times.answered
    if answered is None:
        return []
    out = []
    for start, end in call.holds:
        if end == float("inf") and not open_end:
            end = call.times.disconnected or time.monotonic()
        start = max(start, answered)
        if end > start:
            out.append((start, end))
    return out
