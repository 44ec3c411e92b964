"""The reference voice bot: a SIP UAS that behaves like a voice gateway fronting a bot.

It answers, speaks the scenario's greeting, detects the end of each caller utterance (level
meter + endpointing hangover), waits a think time, then speaks the turn's reply prompt; after
the last reply it hangs up or waits for the caller's BYE, as the scenario says. Every call is
taped like an agent's, and at its end the bot writes its own ground truth per turn (caller
speech end and reply start, wire-referenced) to the truth file: the yardstick voiceload's
measurements are checked against.

When the pjsua2 build caps calls per process below `--max-calls`, the bot runs worker
processes and a stateless 302 front on the public port (`siplite.RedirectFront`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import os
import random
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import numpy as np
import pjsua2 as pj

from voiceload import audio
from voiceload.agent import default_tape_dir
from voiceload.analysis import Played, Reference, analyse_bot_tape
from voiceload.calibration import BOT_RX_DELAY_MS
from voiceload.callflow import BotFlow, Hangup, Play, ThinkTime
from voiceload.scenario import load_scenario
from voiceload.siplite import RedirectFront
from voiceload.sipua import CLOCK_RATE, SipCall, SipStack, read_tape
from voiceload.vad import samples_to_ms

log = logging.getLogger("voiceload.bot")

PUMP_PERIOD_S = 0.005
DEFAULT_ENDPOINT_MS = 350  # silence that ends a caller utterance; pauses inside one are shorter


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
    rx_delay_ms: float = BOT_RX_DELAY_MS
    tape_dir: Path = field(default_factory=default_tape_dir)
    keep_tapes: bool = False


def beep(ms: int = 400) -> np.ndarray:
    """A plain tone for turns that have no reply prompt: any speech will do for such turns."""
    t = np.arange(int(CLOCK_RATE * ms / 1000)) / CLOCK_RATE
    return (8000 * np.sin(2 * np.pi * 440 * t)).astype(np.int16)


@dataclass
class BotCall:
    flow: BotFlow
    played: list[Played] = field(default_factory=list)
    answered: bool = False


class BotWorker:
    """One pjsua2 process serving calls; writes truth lines for each finished call."""

    def __init__(self, settings: BotSettings, *, announce: IO[str] | None = None) -> None:
        self.s = settings
        self.scenario = load_scenario(settings.scenario_path)
        self.tape_dir = settings.tape_dir / f"bot-{os.getpid()}"
        self.prompt_paths: list[Path] = []
        sc = self.scenario
        if sc.greeting is not None:
            self.prompt_paths.append(sc.greeting.path)
        for turn in sc.turns:
            if turn.reply is not None:
                self.prompt_paths.append(turn.reply.path)
            else:
                path = self.tape_dir / "beep.wav"
                self.prompt_paths.append(path)
        self.stack = SipStack(host=settings.host, port=settings.port, max_calls=settings.max_calls, user="bot")
        self.rng = random.Random(settings.seed)
        self.announce = announce
        self.stopping = False
        self.truth: IO[str] | None = None
        self._load = -1
        self._analysing = 0
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tape")

    def _prompts(self) -> list[Reference]:
        return [Reference.of(audio.load_wav(p)) for p in self.prompt_paths]

    async def run(self) -> None:
        self.tape_dir.mkdir(parents=True, exist_ok=True)
        if any(not p.exists() for p in self.prompt_paths):
            audio.write_wav(self.tape_dir / "beep.wav", beep())
        self.refs = self._prompts()
        self.stack.tape_dir = self.tape_dir
        self.stack.start()
        if self.s.truth_path is not None:
            self.truth = open(self.s.truth_path, "a", buffering=1)  # noqa: SIM115 (lives as long as the worker)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._stop)
        self._say(f"READY {self.stack.address} {self.stack.max_calls}")
        log.info("bot worker on %s (call limit %d)", self.stack.address, self.stack.max_calls)
        try:
            await self._pump()
            await self._drain()
        finally:
            self.stack.shutdown()
            self._pool.shutdown(wait=True)
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
            if bc is None or call.state == pj.PJSIP_INV_STATE_DISCONNECTED:
                continue
            if not bc.answered:  # media and CONFIRMED arrive in either order: wait for both
                if call.tape is not None and call.times.confirmed is not None:
                    bc.answered = True
                    bc.flow.on_answer(now * 1000)
                continue
            try:
                self._act(call, bc, bc.flow.step(now * 1000, call.level()))
            except pj.Error as exc:  # one call's media failure ends that call, not the bot
                log.error("call %s: %s; hanging up", call.sip_call_id, exc.info().strip())
                call.hangup_now(500)
        self.stack.collect()
        # pjsua frees a call slot at DISCONNECTED, before our tape is measured
        load = sum(1 for c in self.stack.calls if c.state != pj.PJSIP_INV_STATE_DISCONNECTED)
        if load != self._load:
            self._load = load
            self._say(f"LOAD {load}")

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
        )

    def _dispatch(self, now: float) -> None:
        events = self.stack.events
        while events:
            call, kind = events.popleft()
            if kind == "incoming":
                call.app = BotCall(self._new_flow())
                self.stack.answer(call, 200)
                continue
            bc: BotCall | None = call.app
            if bc is None:
                continue
            if kind == "state" and call.state == pj.PJSIP_INV_STATE_DISCONNECTED:
                self.stack.close(call, self._closed)

    def _act(self, call: SipCall, bc: BotCall, action: Play | Hangup | None) -> None:
        if isinstance(action, Play):
            started = call.play(self.prompt_paths[action.index])
            assert call.tape is not None
            bc.played.append(Played(self.refs[action.index], round((started - call.tape.started) * CLOCK_RATE)))
        elif isinstance(action, Hangup):
            call.hangup_now()

    def _closed(self, call: SipCall) -> None:
        """Snapshot the finished call, recycle its SipCall, and measure its tape off the pump."""
        bc: BotCall = call.app
        answered = call.times.confirmed or call.times.answered
        tape = call.tape
        if tape is not None and answered is not None:
            job = (tape.path, (tape.started - answered) * 1000, list(bc.played), bc.flow.first_reply,
                   list(bc.flow.think_ms), call.sip_call_id)
            self._analysing += 1
            fut = asyncio.get_running_loop().run_in_executor(self._pool, self._truth, *job)
            fut.add_done_callback(self._write_truth)
        elif tape is not None and not self.s.keep_tapes:
            tape.path.unlink(missing_ok=True)
        self.stack.release(call)

    def _truth(self, path: Path, offset_ms: float, played: list[Played], first_reply: int,
               think_ms: list[float], call_id: str) -> list[dict[str, Any]]:
        """Worker thread: this call's ground truth per turn, as truth-file lines."""
        samples = read_tape(path)
        if not self.s.keep_tapes:
            path.unlink(missing_ok=True)
        truth = analyse_bot_tape(samples, tape_offset_ms=offset_ms, rx_delay_ms=self.s.rx_delay_ms,
                                 prompts=played, first_reply=first_reply)
        return [
            {"call_id": call_id, "turn": t.index, "caller_end_ms": t.caller_end_ms,
             "response_start_ms": t.response_start_ms, "latency_ms": t.latency_ms,
             "think_ms": think_ms[t.index] if t.index < len(think_ms) else None}
            for t in truth
        ]

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


def _worker_cmd(s: BotSettings, port: int) -> list[str]:
    cmd = [
        sys.executable, "-m", "voiceload", "bot", "--worker", "--listen", f"{s.host}:{port}",
        "--scenario", str(s.scenario_path), "--think-ms", f"{s.think.mean_ms:g}:{s.think.jitter_ms:g}",
        "--endpoint-ms", str(s.endpoint_ms), "--tape-dir", str(s.tape_dir),
    ]
    if s.truth_path is not None:
        cmd += ["--truth", str(s.truth_path)]
    if s.seed is not None:
        cmd += ["--seed", str(s.seed)]
    if s.keep_tapes:
        cmd += ["--keep-tapes"]
    return cmd


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
    pending: int = 0  # redirected but not yet reported as load


async def _serve_front(s: BotSettings, limit: int) -> None:
    # one spare worker absorbs calls that start while finished ones are still being torn down
    n = math.ceil(s.max_calls / limit) + 1
    workers: list[_Worker] = []
    for i in range(n):
        proc = await asyncio.create_subprocess_exec(
            *_worker_cmd(s, 0), stdout=subprocess.PIPE, stdin=subprocess.DEVNULL,
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
                w.pending = max(0, w.pending - max(0, new - w.load))
                w.load = new

    def pick() -> str | None:
        free = [w for w in workers if w.load + w.pending < w.limit and w.proc.returncode is None]
        if not free:
            return None
        best = min(free, key=lambda w: w.load + w.pending)
        best.pending += 1
        return best.address

    followers = [asyncio.create_task(follow(w)) for w in workers]
    loop = asyncio.get_running_loop()
    transport, _ = await loop.create_datagram_endpoint(lambda: RedirectFront(pick), local_addr=(s.host, s.port))
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    port = transport.get_extra_info("sockname")[1]
    print(f"READY {s.host}:{port} {n * limit}", flush=True)
    log.info("bot front on %s:%d -> %d workers x %d calls", s.host, port, n, limit)
    try:
        await stop.wait()
    finally:
        transport.close()
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


def call_limit() -> int:
    """The installed pjsua2's per-process call limit, probed in a child (one Endpoint per process)."""
    out = subprocess.run(
        [sys.executable, "-m", "voiceload.sipua"], capture_output=True, text=True, timeout=30, check=True
    )
    return int(out.stdout.strip().splitlines()[-1])


def run(settings: BotSettings, *, worker: bool = False) -> None:
    """Entry point of `voiceload bot`."""
    if worker:
        asyncio.run(BotWorker(settings, announce=sys.stdout).run())
        return
    limit = call_limit()
    if limit > settings.max_calls:  # one spare slot: a new call may arrive while an old one tears down
        asyncio.run(BotWorker(settings, announce=sys.stdout).run())
    else:
        asyncio.run(_serve_front(settings, limit))
