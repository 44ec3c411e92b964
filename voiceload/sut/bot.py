"""The reference voice bot: a SIP UAS that behaves like a voice gateway fronting a bot.

It answers, speaks the scenario's greeting, detects the end of each caller utterance (level
meter + endpointing hangover), waits a think time, then speaks the turn's reply prompt; after
the last reply it hangs up or waits for the caller's BYE, as the scenario says. Every call is
taped like an agent's, and at its end the bot writes its own ground truth per turn (caller
speech end and reply start, wire-referenced) to the truth file: the yardstick voiceload's
measurements are checked against.

When the pjsua2 build caps calls per process below `--max-calls`, the bot runs worker
processes and a stateless 302 front on the public port (`siplite.RedirectFront`).

With `--capacity C` every utterance waits for one of C workers (`botmodel.WorkerPool`); behind a
front the front owns the one pool and serves it to the workers over loopback UDP (docs/bot-model.md).

With `--brain rasa` the bot is a reference voice gateway in front of a real Rasa server instead
(`gateway.RasaGateway`): the greeting is still the scenario's, but each reply is what Rasa answers
to the recognised utterance, synthesised in the bot's voice. The caller's audio is read off the
growing call tape at the end of speech; recognition, the HTTP request and synthesis run as an
asyncio task (CPU work in thread pools), so the pump never waits for them.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import logging
import math
import os
import random
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, cast

import numpy as np

from voiceload.audio import wav
from voiceload.audio.analysis import Played, Reference, analyse_bot_tape
from voiceload.audio.calibration import bot_rx_delay_ms
from voiceload.audio.vad import samples_to_ms
from voiceload.audio.wav import default_tape_dir, read_tape
from voiceload.core.callflow import Ask, BotAction, BotFlow, Dial, Hangup, Play, PlayFile, Scheduler, ThinkTime
from voiceload.core.mediaprofile import CODECS, MediaProfile, check_srtp
from voiceload.core.scenario import DEFAULT_DTMF_DURATION_MS, DEFAULT_DTMF_GAP_MS, load_scenario
from voiceload.errors import UserError
from voiceload.sip.lite import RedirectFront, call_limit, pjsua2_build
from voiceload.sip.ua import (
    CLOCK_RATE,
    DTMF_INFO,
    FRAME_MS,
    PJMEDIA_DTMF_MS,
    CallEvent,
    HeardDigit,
    SipCall,
    SipError,
    SipStack,
)
from voiceload.sut.botmodel import DEFAULT_ENDPOINT_MS, WorkerPool
from voiceload.sut.gateway import BrainReply, RasaGateway, rasa_sender

log = logging.getLogger("voiceload.sut.bot")

PUMP_PERIOD_S = 0.005
LISTEN_GUARD_S = 0.1  # the caller's audio is read from this long after listening began: past our own prompt's tail
SPEECH_END_MARGIN_S = 0.06  # the level meter's last loud frame vs the tape: a few frames either way
RASA_TOKEN_ENV = "VOICELOAD_RASA_TOKEN"  # how a front hands the token to its workers (not on their command line)
# Calls per bot worker process: with a dense pjsua2 build one process could hold 1024, but its bridge
# clock holds the bridge lock through each 20 ms cycle and signalling waits behind it (docs/density.md)
WORKER_CALLS_MAX = 200
PENDING_TTL_S = 2.0  # a 302-redirected INVITE reaches its worker within milliseconds on loopback
QUEUE_TIMEOUT_S = 0.1  # a loopback round trip is ~0.1 ms; this only bounds a stuck or gone front


@dataclass
class BotSettings:
    host: str
    port: int
    scenario_path: Path
    think: ThinkTime
    truth_path: Path | None = None
    max_calls: int = 32
    endpoint_ms: int = DEFAULT_ENDPOINT_MS
    seed: int | None = None
    rx_delay_ms: float | None = None  # None: the measured one of each call's codec (audio/calibration.py)
    # what the bot accepts, preferred first; None: every codec of ours this pjsua2 build has, PCMU first
    codecs: tuple[str, ...] | None = None
    srtp: str | None = None  # off, optional (SRTP when offered) or required; None: optional if the build has SRTP
    tape_dir: Path = field(default_factory=default_tape_dir)
    keep_tapes: bool = False
    capacity: int | None = None  # workers serving utterances; None: unbounded
    calls_per_worker: int | None = None  # worker processes' size; None: min(build limit, WORKER_CALLS_MAX)
    queue: tuple[str, int] | None = None  # a front's WorkerPool (worker processes only)
    brain: str = "scripted"  # "scripted": the scenario's prompts; "rasa": a voice gateway to `rasa_url`
    rasa_url: str | None = None
    rasa_token: str | None = None
    rasa_sender: str = "session"  # the Rasa sender: session header, From user or Call-ID (gateway.rasa_sender)


def beep(ms: int = 400) -> np.ndarray:
    """A plain tone for turns that have no reply prompt: any speech will do for such turns."""
    t = np.arange(int(CLOCK_RATE * ms / 1000)) / CLOCK_RATE
    return (8000 * np.sin(2 * np.pi * 440 * t)).astype(np.int16)


@dataclass
class BotCall:
    flow: BotFlow
    played: list[Played] = field(default_factory=list)
    answered: bool = False
    sender: str = ""  # the brain's conversation id for this call
    brain: dict[int, BrainReply] = field(default_factory=dict)  # per turn: what the brain did
    reply_turns: list[int] = field(default_factory=list)  # per played reply, the turn it answers
    codec: str | None = None  # what the call negotiated, read at the answer (its receive delay depends on it)
    ready: BrainReply | None = None  # a finished brain reply, handed to the flow on the next pump turn
    digits_fed: int = 0  # the call's received DTMF digits (SipCall.dtmf_heard) handed to the flow so far
    turn_digits: dict[int, list[HeardDigit]] = field(default_factory=dict)  # per turn: the digits it heard


def sent_dtmf_ms(digits: str, method: str) -> float:
    """How long the bot's own digits last: the scenario defaults by SIP INFO, pjmedia's 200 ms per digit by RFC 4733."""
    n = len(digits)
    if method == DTMF_INFO:
        return float(n * DEFAULT_DTMF_DURATION_MS + (n - 1) * DEFAULT_DTMF_GAP_MS)
    return float(n * PJMEDIA_DTMF_MS)


class BotWorker:
    """One pjsua2 process serving calls; writes truth lines for each finished call."""

    def __init__(self, settings: BotSettings, *, announce: IO[str] | None = None) -> None:
        self.s = settings
        self.scenario = load_scenario(settings.scenario_path)
        self.tape_dir = settings.tape_dir / f"bot-{os.getpid()}"
        self.prompt_paths: list[Path] = []
        self.prompt_dtmf: list[str | None] = []  # per prompt: the digits sent after it (`dtmf:`)
        sc = self.scenario
        if sc.greeting is not None:
            self.prompt_paths.append(sc.greeting.path)
            self.prompt_dtmf.append(sc.greeting.dtmf)
        for turn in sc.turns:
            if turn.reply is not None:
                self.prompt_paths.append(turn.reply.path)
            else:
                path = self.tape_dir / "beep.wav"
                self.prompt_paths.append(path)
            self.prompt_dtmf.append(turn.reply.dtmf if turn.reply is not None else None)
        self.dtmf_method = sc.sip.media.dtmf  # how the bot sends its own digits: the scenario's `media.dtmf`
        media = MediaProfile(codecs=settings.codecs or tuple(c.name for c in CODECS.values()),
                             srtp=check_srtp(settings.srtp or "optional"))
        self.stack = SipStack(host=settings.host, port=settings.port, max_calls=settings.max_calls, user="bot",
                              media_profile=media)
        self.rng = random.Random(settings.seed)
        self.announce = announce
        self.stopping = False
        self.truth: IO[str] | None = None
        self._load = -1
        self._analysing = 0
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tape")
        self.gateway: RasaGateway | None = None
        if settings.brain == "rasa":
            assert settings.rasa_url is not None
            self.gateway = RasaGateway(self.scenario, settings.rasa_url, token=settings.rasa_token,
                                       cache_dir=settings.tape_dir / "tts-cache")
        self._tasks: set[asyncio.Task[None]] = set()
        self.scheduler: Scheduler | None = None
        if settings.queue is not None:
            self.scheduler = QueueClient(*settings.queue)
        elif settings.capacity is not None:
            self.scheduler = WorkerPool(settings.capacity).due

    def _prompts(self) -> list[Reference]:
        return [Reference.of(wav.load_wav(p), self.scenario.speech) for p in self.prompt_paths]

    async def run(self) -> None:
        self.tape_dir.mkdir(parents=True, exist_ok=True)
        if any(not p.exists() for p in self.prompt_paths):
            wav.write_wav(self.tape_dir / "beep.wav", beep())
        self.refs = self._prompts()
        self.stack.tape_dir = self.tape_dir
        self.stack.start()
        if self.s.truth_path is not None:
            self.truth = open(self.s.truth_path, "a", buffering=1)  # noqa: SIM115 (lives as long as the worker)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._stop)
        if self.gateway is not None:
            await self.gateway.start()
        self._say(f"READY {self.stack.address} {self.stack.max_calls}")
        log.info("bot worker on %s (call limit %d, brain %s)", self.stack.address, self.stack.max_calls, self.s.brain)
        try:
            await self._pump()
            await self._drain()
        finally:
            for task in self._tasks:
                task.cancel()
            self.stack.shutdown()
            self._pool.shutdown(wait=True)
            if self.gateway is not None:
                await self.gateway.close()
                log.info("rasa brain: %d utterances, %d without a reply", self.gateway.utterances,
                         self.gateway.errors)
            if self.truth is not None:
                self.truth.close()
            if not self.s.keep_tapes:
                for p in self.tape_dir.glob("*"):
                    p.unlink(missing_ok=True)
                with contextlib.suppress(OSError):
                    self.tape_dir.rmdir()

    def _stop(self) -> None:
        self.stopping = True

    def _say(self, line: str) -> None:
        if self.announce is not None:
            self.announce.write(line + "\n")
            self.announce.flush()

    async def _pump(self) -> None:
        while not self.stopping:
            self._pump_once()
            await asyncio.sleep(PUMP_PERIOD_S)

    async def _drain(self, timeout_s: float = 10.0) -> None:
        """After a stop: finish closing calls that already ended and write their truth (bounded)."""
        end = time.monotonic() + timeout_s
        while (self.stack.closing or self._analysing) and time.monotonic() < end:
            self._pump_once()
            await asyncio.sleep(PUMP_PERIOD_S)

    def _pump_once(self) -> None:
        self.stack.pump(0)
        now = time.monotonic()
        self._dispatch(now)
        for call in list(self.stack.calls):
            bc: BotCall | None = call.app
            if bc is None or call.ended:
                continue
            if not bc.answered:  # media and CONFIRMED arrive in either order: wait for both
                if call.tape is not None and call.times.confirmed is not None:
                    bc.answered = True
                    bc.codec = call.codec()
                    bc.flow.on_answer(now * 1000)
                continue
            self._feed_digits(call, bc)
            if bc.ready is not None:
                reply, bc.ready = bc.ready, None
                if reply.speech is not None:
                    bc.flow.on_reply(now * 1000, reply.speech, reply.duration_ms)
                else:
                    bc.flow.on_no_reply(now * 1000)
            try:
                self._act(call, bc, bc.flow.step(now * 1000, call.level()))
            except SipError as exc:  # one call's media failure ends that call, not the bot
                log.error("call %s: %s; hanging up", call.sip_call_id, exc)
                call.hangup_now(500)
        self.stack.collect()
        # our live calls, or the slots pjsua still holds for calls whose BYE is unanswered, if more
        live = sum(1 for c in self.stack.calls if not c.ended)
        load = max(live, self.stack.slots_in_use())
        if load != self._load:
            self._load = load
            self._say(f"LOAD {load}")

    @staticmethod
    def _feed_digits(call: SipCall, bc: BotCall) -> None:
        """Hand the flow each received digit once its end is known (RFC 4733's end event, an INFO at once)."""
        heard = call.dtmf_heard
        while bc.digits_fed < len(heard) and heard[bc.digits_fed].ended is not None:
            digit = heard[bc.digits_fed]
            bc.digits_fed += 1
            assert digit.ended is not None
            turn = bc.flow.on_dtmf(digit.ended * 1000)
            if turn is not None:
                bc.turn_digits.setdefault(turn, []).append(digit)

    def _new_flow(self) -> BotFlow:
        sc = self.scenario
        return BotFlow(
            prompt_ms=[samples_to_ms(len(r.samples)) for r in self.refs],
            has_greeting=sc.greeting is not None,
            n_turns=len(sc.turns),
            think=self.s.think,
            endpoint_ms=self.s.endpoint_ms,
            hangup_by=sc.hangup_by,
            hangup_after_ms=sc.hangup_after_ms,
            rng=self.rng,
            scheduler=self.scheduler,
            brain=self.gateway is not None,
            dtmf_digits=[len(t.dtmf.digits) if t.dtmf is not None else 0 for t in sc.turns],
            prompt_dtmf_ms=[sent_dtmf_ms(d, self.dtmf_method) if d else 0.0 for d in self.prompt_dtmf],
            loud_level=sc.speech.loud_level,
        )

    def _dispatch(self, now: float) -> None:
        events = self.stack.events
        while events:
            call, kind = events.popleft()
            if kind is CallEvent.INCOMING:
                call.app = BotCall(self._new_flow(), sender=rasa_sender(self.s.rasa_sender, call.invite,
                                                                           call.sip_call_id))
                try:
                    self.stack.answer(call, 200)
                except SipError as exc:  # the caller cancelled first: that call ends, the worker serves on
                    log.info("could not answer %s: %s", call.sip_call_id, exc)
                continue
            bc: BotCall | None = call.app
            if bc is None:
                continue
            if kind is CallEvent.STATE and call.ended:
                self.stack.close(call, self._closed)

    def _act(self, call: SipCall, bc: BotCall, action: BotAction | None) -> None:
        if isinstance(action, Play):
            started = call.play(self.prompt_paths[action.index])
            assert call.tape is not None
            bc.played.append(Played(self.refs[action.index], call.tape.index_at(started)))
            if action.index >= bc.flow.first_reply:
                bc.reply_turns.append(action.index - bc.flow.first_reply)
        elif isinstance(action, PlayFile):
            reply = bc.brain[action.turn]
            assert call.tape is not None and reply.ref is not None
            started = call.play(action.path)
            bc.played.append(Played(reply.ref, call.tape.index_at(started)))
            bc.reply_turns.append(action.turn)
        elif isinstance(action, Dial):
            digits = self.prompt_dtmf[action.index]
            if digits:
                call.send_dtmf(digits, DEFAULT_DTMF_DURATION_MS, DEFAULT_DTMF_GAP_MS, method=self.dtmf_method)
        elif isinstance(action, Ask):
            self._ask(call, bc, action)
        elif isinstance(action, Hangup):
            call.hangup_now()

    def _ask(self, call: SipCall, bc: BotCall, ask: Ask) -> None:
        """Hand the utterance to the brain as a task; its reply reaches the flow through `bc.ready`."""
        assert self.gateway is not None and call.tape is not None
        tape = call.tape
        # skip the tail of our own last prompt; before the first reply of a call without a greeting
        # there is none, and the caller starts speaking at answer: a guard would cut its first word
        spoke_before = ask.turn > 0 or bc.flow.has_greeting
        start = tape.index_at(ask.since_ms / 1000 + (LISTEN_GUARD_S if spoke_before else 0.0))
        stop = tape.index_at(time.monotonic())
        needed = tape.index_at(ask.speech_end_ms / 1000 + SPEECH_END_MARGIN_S)
        gateway = self.gateway

        async def work() -> None:
            try:
                reply = await gateway.respond(turn=ask.turn, sender=bc.sender, tape=tape.path, start=start,
                                              stop=stop, needed=needed)
            except Exception as exc:  # a bug here must cost one turn, not leave the call waiting forever
                log.exception("call %s turn %d: the brain failed", bc.sender, ask.turn)
                reply = BrainReply(turn=ask.turn, sender=bc.sender, error=f"{type(exc).__name__}: {exc}")
            bc.brain[ask.turn] = reply
            bc.ready = reply  # bc outlives its SipCall: a call that ended meanwhile just never reads it

        task = asyncio.get_running_loop().create_task(work())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _closed(self, call: SipCall) -> None:
        """Snapshot the finished call, recycle its SipCall, and measure its tape off the pump."""
        bc: BotCall = call.app
        answered = call.times.confirmed or call.times.answered
        tape = call.tape
        if tape is not None and answered is not None:
            # a DTMF turn's caller end is its last digit's end, from the received events, placed on the
            # tape by the wall clock: sample 0 was written on the first bridge tick after `tape.started`,
            # on average half a tick later, so the figure is good to ±half a tick (10 ms)
            dialled = {turn: (tape.index_at(max(d.ended or d.at for d in digits) - FRAME_MS / 2000),
                              "".join(d.digit for d in digits),
                              digits[-1].method) for turn, digits in bc.turn_digits.items() if digits}
            job = (tape.path, (tape.started - answered) * 1000, list(bc.played), bc.flow.first_reply,
                   list(bc.flow.think_ms), list(bc.flow.queued_ms), call.sip_call_id, list(bc.reply_turns),
                   {turn: r.truth() for turn, r in bc.brain.items()}, dialled, bc.codec)
            self._analysing += 1
            fut = asyncio.get_running_loop().run_in_executor(self._pool, self._truth, *job)
            fut.add_done_callback(self._write_truth)
        elif tape is not None and not self.s.keep_tapes:
            tape.path.unlink(missing_ok=True)
        self.stack.release(call)

    def _truth(self, path: Path, offset_ms: float, played: list[Played], first_reply: int,
               think_ms: list[float], queued_ms: list[float], call_id: str, reply_turns: list[int],
               brain: dict[int, dict[str, Any]],
               dialled: dict[int, tuple[int, str, str]], codec: str | None) -> list[dict[str, Any]]:
        """Worker thread: this call's ground truth per turn, as truth-file lines.

        With a brain, each line also carries what the brain did for its turn; a turn the brain
        left without a reply gets a line of its own, with no timing. A turn the caller dialled
        carries its digits and method (`dtmf`, `dtmf_method`), its caller end the last digit's end.
        """
        samples = read_tape(path)
        if not self.s.keep_tapes:
            path.unlink(missing_ok=True)
        rx_delay_ms = self.s.rx_delay_ms if self.s.rx_delay_ms is not None else bot_rx_delay_ms(codec)
        truth = analyse_bot_tape(samples, tape_offset_ms=offset_ms, rx_delay_ms=rx_delay_ms,
                                 prompts=played, first_reply=first_reply, speech=self.scenario.speech,
                                 dialled={turn: end for turn, (end, _, _) in dialled.items()})
        lines: list[dict[str, Any]] = []
        for t in truth:
            turn = reply_turns[t.index] if t.index < len(reply_turns) else t.index
            lines.append({"call_id": call_id, "turn": turn, "caller_end_ms": t.caller_end_ms,
                          "response_start_ms": t.response_start_ms, "latency_ms": t.latency_ms,
                          "think_ms": think_ms[turn] if turn < len(think_ms) else None,
                          "queued_ms": queued_ms[turn] if turn < len(queued_ms) else None,
                          "codec": codec, **brain.get(turn, {})})
            if turn in dialled:
                lines[-1].update(dtmf=dialled[turn][1], dtmf_method=dialled[turn][2])
        timed = {line["turn"] for line in lines}
        for turn in sorted(set(brain) - timed):
            lines.append({"call_id": call_id, "turn": turn, "caller_end_ms": None, "response_start_ms": None,
                          "latency_ms": None, "think_ms": None, "queued_ms": None, **brain[turn]})
        return sorted(lines, key=lambda line: int(line["turn"]))

    def _write_truth(self, fut: asyncio.Future[list[dict[str, Any]]]) -> None:
        self._analysing -= 1
        try:
            lines = fut.result()
        except Exception:  # a bad tape must not take the bot down
            log.exception("measuring a call's tape failed")
            return
        if self.truth is not None:
            for line in lines:
                self.truth.write(json.dumps(line) + "\n")


class QueueClient:
    """A worker's scheduler: asks the front's WorkerPool, one datagram per job, on the pump thread.

    Blocking is fine: a loopback round trip is ~0.1 ms. Without an answer in time the utterance
    goes unqueued (a warning), so a lost front degrades the model, never the calls.
    """

    def __init__(self, host: str, port: int, timeout_s: float = QUEUE_TIMEOUT_S) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.connect((host, port))
        self.sock.settimeout(timeout_s)
        self.seq = 0

    def __call__(self, arrival_ms: float, think_ms: float, speak_ms: float) -> float:
        self.seq += 1
        try:
            self.sock.send(f"J {self.seq} {arrival_ms!r} {think_ms!r} {speak_ms!r}".encode())
            while True:  # an answer to an earlier, timed-out job may still be in the buffer
                parts = self.sock.recv(256).split()
                if len(parts) == 3 and parts[0] == b"S" and parts[1] == str(self.seq).encode():
                    return float(parts[2]) + think_ms
        except (OSError, ValueError) as exc:  # socket.timeout is an OSError
            log.warning("work queue did not answer (%r); utterance not queued", exc)
            return arrival_ms + think_ms


class QueueServer(asyncio.DatagramProtocol):
    """The front's side: one WorkerPool for all worker processes (they share `time.monotonic()`)."""

    def __init__(self, pool: WorkerPool) -> None:
        self.pool = pool
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        parts = data.split()
        if len(parts) != 5 or parts[0] != b"J" or self.transport is None:
            return
        try:
            arrival, think, speak = (float(p) for p in parts[2:])
        except ValueError:
            return
        start = self.pool.schedule(arrival, think, speak)
        self.transport.sendto(b"S " + parts[1] + f" {start!r}".encode(), addr)


def _worker_cmd(s: BotSettings, port: int, queue: str | None = None, max_calls: int | None = None) -> list[str]:
    cmd = [
        sys.executable, "-m", "voiceload", "bot", "--worker", "--listen", f"{s.host}:{port}",
        "--max-calls", str(max_calls or s.max_calls),
        "--scenario", str(s.scenario_path), "--think-ms", f"{s.think.mean_ms:g}:{s.think.jitter_ms:g}",
        "--endpoint-ms", str(s.endpoint_ms), "--tape-dir", str(s.tape_dir),
    ]
    if s.truth_path is not None:
        cmd += ["--truth", str(s.truth_path)]
    if s.seed is not None:
        cmd += ["--seed", str(s.seed)]
    if s.keep_tapes:
        cmd += ["--keep-tapes"]
    if queue is not None:
        cmd += ["--queue", queue]
    if s.brain != "scripted":
        cmd += ["--brain", s.brain]
    if s.rasa_url is not None:
        cmd += ["--rasa-url", s.rasa_url]  # the token goes by environment (RASA_TOKEN_ENV): not in `ps`
    if s.rasa_sender != "session":
        cmd += ["--rasa-sender", s.rasa_sender]
    if s.codecs is not None:
        cmd += ["--codecs", ",".join(s.codecs)]
    if s.srtp is not None:
        cmd += ["--srtp", s.srtp]
    return cmd


def _worker_env(s: BotSettings) -> dict[str, str] | None:
    if s.rasa_token is None:
        return None
    return {**os.environ, RASA_TOKEN_ENV: s.rasa_token}


async def _read_ready(stream: asyncio.StreamReader) -> list[str]:
    """Skip what pjlib prints before its log level is set; return the READY line's fields."""
    async for raw in stream:
        parts = raw.decode(errors="replace").split()
        if parts and parts[0] == "READY":
            return parts
    return []


@dataclass
class _Worker:
    proc: asyncio.subprocess.Process
    address: str = ""
    limit: int = 0
    load: int = 0
    # monotonic times of redirects to this worker not yet seen in its LOAD. They expire: a call whose
    # load rise and fall land in one pump turn is never reported, and a caller may not follow the 302.
    pending: collections.deque[float] = field(default_factory=collections.deque)

    def expected_load(self, now: float) -> int:
        while self.pending and now - self.pending[0] > PENDING_TTL_S:
            self.pending.popleft()
        return self.load + len(self.pending)


async def _serve_front(s: BotSettings, limit: int) -> None:
    # one spare worker absorbs calls that start while finished ones are still being torn down
    n = math.ceil(s.max_calls / limit) + 1
    loop = asyncio.get_running_loop()
    queue: asyncio.DatagramTransport | None = None
    queue_addr: str | None = None
    if s.capacity is not None:  # the one pool of all workers; they reach it on loopback
        pool = WorkerPool(s.capacity)
        queue, _ = await loop.create_datagram_endpoint(lambda: QueueServer(pool), local_addr=("127.0.0.1", 0))
        queue_addr = f"127.0.0.1:{queue.get_extra_info('sockname')[1]}"
    workers: list[_Worker] = []
    for i in range(n):
        proc = await asyncio.create_subprocess_exec(
            *_worker_cmd(s, 0, queue_addr, limit), stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, env=_worker_env(s),
        )
        w = _Worker(proc)
        workers.append(w)
        assert proc.stdout is not None
        line = await asyncio.wait_for(_read_ready(proc.stdout), 30)
        if len(line) != 3:
            raise RuntimeError(f"bot worker {i} failed to start (exit code {proc.returncode})")
        w.address, w.limit = line[1], int(line[2])

    async def follow(w: _Worker) -> None:
        assert w.proc.stdout is not None
        async for raw in w.proc.stdout:
            parts = raw.decode().split()
            if len(parts) == 2 and parts[0] == "LOAD":
                new = int(parts[1])
                for _ in range(max(0, new - w.load)):
                    if w.pending:
                        w.pending.popleft()
                w.load = new

    def pick() -> str | None:
        now = time.monotonic()
        free = [w for w in workers if w.expected_load(now) < w.limit and w.proc.returncode is None]
        if not free:
            return None
        best = min(free, key=lambda w: w.expected_load(now))
        best.pending.append(now)
        return best.address

    followers = [asyncio.create_task(follow(w)) for w in workers]
    transport, _ = await loop.create_datagram_endpoint(lambda: RedirectFront(pick), local_addr=(s.host, s.port))
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    port = transport.get_extra_info("sockname")[1]
    print(f"READY {s.host}:{port} {n * limit}", flush=True)
    log.info("bot front on %s:%d -> %d workers x %d calls (work queue %s)", s.host, port, n, limit, queue_addr)
    try:
        await stop.wait()
    finally:
        transport.close()
        if queue is not None:
            queue.close()
        for w in workers:
            if w.proc.returncode is None:
                w.proc.send_signal(signal.SIGTERM)
        for w in workers:
            try:
                await asyncio.wait_for(w.proc.wait(), 10)
            except TimeoutError:
                w.proc.kill()
        for f in followers:
            f.cancel()


def spawn(args: Sequence[str], *, cwd: Path | None = None,
          timeout_s: float = 60.0) -> tuple[subprocess.Popen[str], str]:
    """`voiceload bot ARGS` as a child process; returns it and its SIP URI once it printed READY.

    For scripts and tests that need a bot on a free port (`--listen 127.0.0.1:0`). The wait ends
    at `timeout_s` or when the bot exits; its stdout is left non-blocking for LOAD lines nobody reads.
    """
    proc = subprocess.Popen([sys.executable, "-m", "voiceload", "bot", *args], stdout=subprocess.PIPE, text=True,
                            cwd=cwd)
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        if line.startswith("READY"):
            os.set_blocking(proc.stdout.fileno(), False)
            return proc, f"sip:bot@{line.split()[1]}"
    proc.kill()
    raise RuntimeError(f"voiceload bot {' '.join(args)} did not start")


def resolve_media(settings: BotSettings) -> None:
    """Fill the defaults of --codecs and --srtp from what this pjsua2 build has; a codec or SRTP asked
    for that it lacks is a `UserError` (one line, before any worker starts)."""
    build = pjsua2_build()
    if settings.codecs is None:
        settings.codecs = tuple(c.name for c in CODECS.values() if c.name in build.codecs)
    if settings.srtp is None:
        settings.srtp = "optional" if build.srtp else "off"
    problem = build.media_problem(MediaProfile(codecs=settings.codecs, srtp=check_srtp(settings.srtp)))
    if problem:
        raise UserError(problem)


def run(settings: BotSettings, *, worker: bool = False) -> None:
    """Entry point of `voiceload bot`."""
    if settings.brain == "rasa" and not worker:  # bad transcripts are the user's to fix, before any worker starts
        from voiceload.sut.asr import Recogniser

        Recogniser.for_scenario(load_scenario(settings.scenario_path))
    if worker:
        asyncio.run(BotWorker(settings, announce=sys.stdout).run())
        return
    resolve_media(settings)
    per_worker = min(call_limit(), settings.calls_per_worker or WORKER_CALLS_MAX)
    if per_worker > settings.max_calls:  # one spare slot: a new call may arrive while an old one tears down
        asyncio.run(BotWorker(settings, announce=sys.stdout).run())
    else:
        asyncio.run(_serve_front(settings, per_worker))
