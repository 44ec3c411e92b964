"""The reference voice gateway: the bot's Rasa brain (`voiceload bot --brain rasa`).

A voice gateway (jambonz, AudioCodes VoiceAI Connect, Twilio + a bridge) sits between the phone
call and a text bot: it detects the end of each caller utterance, recognises the speech, sends the
text to the bot, synthesises the bot's answer and plays it into the call. This module does the
middle part for one utterance, off the SIP pump thread: recognition (`asr`) and synthesis (`tts`)
in thread pools, the Rasa REST exchange on the event loop (`rasa.send_message`). The bot's pump
(`bot.BotWorker`) does the rest: endpointing, reading the caller's audio off the call tape, and
playing the reply.

Timings per utterance (asr_ms, rasa_ms, tts_ms) go into the bot's truth file, so a load test of a
real bot can tell the gateway's share of a turn's latency from the bot's.
"""

from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from voiceload.audio import wav
from voiceload.audio.analysis import Reference
from voiceload.audio.wav import read_tape_span
from voiceload.core.identity import SENDER_CALL_ID, SENDER_FROM_USER
from voiceload.core.scenario import Scenario
from voiceload.errors import UserError
from voiceload.protocol import SESSION_HEADER
from voiceload.sip.message import SipMessage, name_addr
from voiceload.sut.asr import Recogniser
from voiceload.sut.tts import Synthesiser

log = logging.getLogger("voiceload.sut.gateway")

BRAINS = ("scripted", "rasa")
RASA_TIMEOUT_S = 10.0  # a turn that waits this long has failed for any caller anyway
TTS_THREADS = 2  # espeak-ng + sox are subprocesses: two overlap well on a small box
# pjmedia's WAV writer buffers its output (measured: the file trails the bridge by 200-250 ms). With
# the default 350 ms endpointing the caller's speech is on disk when asked for; with a shorter one,
# wait (bounded) until the speech end is, rather than cut the last word.
TAPE_WAIT_S = 0.5
TAPE_POLL_S = 0.01


def session_id(header_value: str | None, call_id: str) -> str:
    """The conversation id sent to the bot as Rasa's `sender`: the caller's session header, else the Call-ID.

    Real gateways do the same with their own call ids (jambonz's call_sid, AudioCodes' conversation
    id, Twilio's CallSid): one Rasa conversation per phone call. voiceload's agents put
    `X-Voiceload-Session` on their INVITEs so that the bot's tracker can be matched to the agent's
    call record.
    """
    value = (header_value or "").strip()
    return value or call_id


def rasa_sender(mode: str, invite: str, call_id: str) -> str:
    """A call's Rasa sender by the gateway's `--rasa-sender` (docs/gateways.md): the session header
    (else the Call-ID), the From user (jambonz's and Twilio's caller number; else the Call-ID) or the Call-ID."""
    if mode == SENDER_CALL_ID:
        return call_id
    msg = SipMessage.parse(invite)
    if mode == SENDER_FROM_USER:
        user = name_addr(msg.get("From") if msg is not None else None)[2]
        return user or call_id
    return session_id(msg.get(SESSION_HEADER) if msg is not None else None, call_id)


@dataclass
class BrainReply:
    """One utterance through the gateway; `speech` is None when there is nothing to play."""

    turn: int
    sender: str
    asr_text: str = ""
    asr_ms: float | None = None
    rasa_ms: float | None = None
    tts_ms: float | None = None
    reply_text: str | None = None
    speech: Path | None = None
    ref: Reference | None = None  # the reply's samples, for the call's truth
    error: str | None = None

    @property
    def duration_ms(self) -> float:
        return 0.0 if self.ref is None else len(self.ref.samples) * 1000 / wav.SAMPLE_RATE

    def truth(self) -> dict[str, Any]:
        """The fields this turn adds to the bot's truth line."""
        out: dict[str, Any] = {"sender": self.sender, "asr_text": self.asr_text, "asr_ms": self.asr_ms,
                               "rasa_ms": self.rasa_ms, "tts_ms": self.tts_ms, "reply_text": self.reply_text}
        if self.error is not None:
            out["brain_error"] = self.error
        return out


class RasaGateway:
    """Recognise → Rasa → synthesise, one utterance at a time per call, many calls at once."""

    def __init__(self, scenario: Scenario, url: str, *, token: str | None = None, cache_dir: Path,
                 timeout_s: float = RASA_TIMEOUT_S) -> None:
        self.url = url
        self.token = token
        self.timeout_s = timeout_s
        self.recogniser = Recogniser.for_scenario(scenario)  # a UserError now, not at the first call
        self.synth = Synthesiser(cache_dir)
        self._asr_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="asr")  # one decoder per process
        self._tts_pool = ThreadPoolExecutor(max_workers=TTS_THREADS, thread_name_prefix="tts")
        self._refs: dict[Path, Reference] = {}
        self._speech = scenario.speech  # the brain's replies are timed with the scenario's detector
        self._session: Any = None  # aiohttp.ClientSession, made on the running loop
        self.utterances = 0
        self.errors = 0

    async def start(self) -> None:
        import aiohttp

        self._session = aiohttp.ClientSession()

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
        self._asr_pool.shutdown(wait=True, cancel_futures=True)
        self._tts_pool.shutdown(wait=True, cancel_futures=True)

    async def respond(self, *, turn: int, sender: str, tape: Path, start: int, stop: int,
                      needed: int | None = None) -> BrainReply:
        """The reply to tape samples [start, stop) of a call, of which [start, needed) must be read.

        Failures are logged and counted, never raised.
        """
        from voiceload.rasa import RasaError, send_message

        self.utterances += 1
        reply = BrainReply(turn=turn, sender=sender)
        loop = asyncio.get_running_loop()
        try:
            rec = await loop.run_in_executor(self._asr_pool, self._recognise, tape, start, stop,
                                             stop if needed is None else min(needed, stop))
            reply.asr_text, reply.asr_ms = rec.text, rec.decode_ms
            if not rec.text:
                raise _NoReply("nothing recognised")
            t0 = time.perf_counter()
            assert self._session is not None, "start() the gateway first"
            texts = await send_message(self._session, self.url, sender, rec.text, token=self.token,
                                       timeout_s=self.timeout_s)
            reply.rasa_ms = round((time.perf_counter() - t0) * 1000, 1)
            text = " ".join(t.strip() for t in texts if t.strip())
            if not text:
                raise _NoReply("Rasa answered no text")
            reply.reply_text = text
            reply.speech, reply.ref, reply.tts_ms = await loop.run_in_executor(self._tts_pool, self._speak, text)
        except (_NoReply, RasaError, UserError, OSError, RuntimeError, ValueError) as exc:
            self.errors += 1
            reply.error = str(exc) or type(exc).__name__
            log.warning("call %s turn %d: no reply played: %s", sender, turn, reply.error)
        return reply

    def _recognise(self, tape: Path, start: int, stop: int, needed: int) -> Any:
        samples: npt.NDArray[np.int16] = read_tape_span(tape, start, stop)
        deadline = time.monotonic() + TAPE_WAIT_S
        while start + len(samples) < needed and time.monotonic() < deadline:
            time.sleep(TAPE_POLL_S)
            samples = read_tape_span(tape, start, stop)
        log.debug("tape %s: %d of %d samples on disk (%d needed)", tape, len(samples), stop - start, needed - start)
        return self.recogniser.recognise(samples)

    def _speak(self, text: str) -> tuple[Path, Reference, float]:
        speech = self.synth.speak(text)
        t0 = time.perf_counter()
        ref = self._refs.get(speech.path)
        if ref is None:  # loaded once per reply text and process
            ref = Reference.of(wav.load_wav(speech.path), self._speech)
            self._refs[speech.path] = ref
        return speech.path, ref, round(speech.synth_ms + (time.perf_counter() - t0) * 1000, 1)


class _NoReply(Exception):
    """The utterance gets no reply (nothing recognised, nothing said back)."""
