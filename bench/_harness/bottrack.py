"""The bot a SIPp UAS plays (bench/density/uas.xml): one scripted track per call, and its scenario.

After the ACK the UAS streams a "bot track": a long greeting of the demo bot prompts, a pause the
caller answers in, a ~2 s reply, silence. No reference bot competes for the CPU, and the
voiceload scenario written next to it walks exactly that timeline.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from bench._harness import REPO
from voiceload.audio import g711
from voiceload.audio.wav import SAMPLE_RATE, load_wav, write_wav

Samples = npt.NDArray[np.int16]

RATE = SAMPLE_RATE  # G.711 and every voiceload recording
RECORDINGS = REPO / "recordings" / "demo"
BOT_PROMPTS = ("bot-00-welcome.wav", "bot-01-name.wav", "bot-02-bye.wav")  # the greeting cycles through them
REPLY_PROMPT = "bot-01-name.wav"  # ~1.7 s
CALLER = RECORDINGS / "caller-01-order.wav"
PROMPT_PAUSE_MS = 200  # between the prompts of the greeting: far below silence_gap_ms, so one greeting
SILENCE_GAP_MS = 500  # scenario silence_gap_ms: the caller speaks after this much silence
REPLY_DELAY_MS = 1000  # the bot track replies this long after the caller's utterance ends
TAIL_MS = 10_000  # silence after the reply: the caller hangs up in it
HANGUP_AFTER_MS = 300


def silence(ms: float) -> Samples:
    return np.zeros(round(ms * RATE / 1000), dtype=np.int16)


@dataclass(frozen=True)
class BotTrack:
    """The audio a UAS streams to each caller, and the call timeline it implies."""

    greeting: Samples
    reply: Samples
    caller_ms: float

    @property
    def greeting_ms(self) -> float:
        return len(self.greeting) * 1000 / RATE

    @property
    def reply_ms(self) -> float:
        return len(self.reply) * 1000 / RATE

    @property
    def gap_ms(self) -> float:
        """Greeting end to reply start: the caller waits the silence gap, speaks, the bot replies 1 s later."""
        return SILENCE_GAP_MS + self.caller_ms + REPLY_DELAY_MS

    @property
    def call_ms(self) -> float:
        """Answer to the caller's BYE in a voiceload call (it hangs up after max(gap, after_ms) of silence)."""
        return self.greeting_ms + self.gap_ms + self.reply_ms + max(SILENCE_GAP_MS, HANGUP_AFTER_MS)

    def samples(self) -> Samples:
        return np.concatenate((self.greeting, silence(self.gap_ms), self.reply, silence(TAIL_MS)))


def build_track(greeting_s: float) -> BotTrack:
    """Bot prompts with 200 ms pauses up to `greeting_s` long, then the timeline of one turn.

    Greeting and reply are kept as a call delivers them (through G.711): the reference WAVs must
    hold exactly the samples that arrive.
    """
    prompts = [load_wav(RECORDINGS / name) for name in BOT_PROMPTS]
    pieces: list[Samples] = []
    total = 0
    for i in range(10_000):  # bounded: a greeting of hours is not what anyone asked for
        if total >= greeting_s * RATE:
            break
        if pieces:
            pieces.append(silence(PROMPT_PAUSE_MS))
        pieces.append(prompts[i % len(prompts)])
        total = sum(len(p) for p in pieces)
    greeting = g711.round_trip(np.concatenate(pieces))
    reply = g711.round_trip(load_wav(RECORDINGS / REPLY_PROMPT))
    return BotTrack(greeting, reply, caller_ms=len(load_wav(CALLER)) * 1000 / RATE)


def scenario_yaml(track: BotTrack) -> str:
    """The voiceload scenario that walks the bot track: greeting, one turn, the caller hangs up."""
    return (
        "version: 1\n"
        "name: density\n"
        "description: bench/density.py - bot-first call against a SIPp UAS that streams a bot track\n"
        f"silence_gap_ms: {SILENCE_GAP_MS}\n"
        f"max_call_ms: {round(track.call_ms + 30_000)}\n"
        "greeting:\n"
        "  prompt: greeting.wav\n"
        "  max_wait_ms: 3000\n"
        "turns:\n"
        f"  - caller: {CALLER}\n"
        "    reply:\n"
        "      prompt: reply.wav\n"
        "      max_wait_ms: 4000\n"
        "hangup:\n"
        "  by: caller\n"
        f"  after_ms: {HANGUP_AFTER_MS}\n"
    )


def write_workdir(work: Path, track: BotTrack) -> Path:
    """greeting.wav, reply.wav, the scenario, and the raw µ-law SIPp streams (bot.ulaw, caller.ulaw).

    SIPp 3.6.1's rtp_stream sends the .ulaw bytes as they are.
    """
    work.mkdir(parents=True, exist_ok=True)
    write_wav(work / "greeting.wav", track.greeting)
    write_wav(work / "reply.wav", track.reply)
    (work / "bot.ulaw").write_bytes(g711.encode(track.samples()).tobytes())
    (work / "caller.ulaw").write_bytes(g711.encode(load_wav(CALLER)).tobytes())
    scenario = work / "scenario.yaml"
    scenario.write_text(scenario_yaml(track))
    return scenario
