"""Turn timing from a call tape: the one recording per call that both sides of the truth rest on.

A *tape* is a mono recording, on the conference bridge's clock, of everything a call carried:
the remote party's audio (after the jitter buffer) mixed with whatever we played into the call.
Our own players feed the same bridge tick that sends their RTP, so a played sample's tape index
*is* its wire send time; we find each player's exact position by correlating the known file
against the tape. Received audio reaches the tape `rx_delay_ms` after its packet reached us
(jitter buffer and bridge-tick phase); that measured constant is subtracted to refer received
speech to the wire (docs/accuracy.md). Latency is then a difference of two wire times.

Pure: arrays in, dataclasses out.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from voiceload.audio import g711
from voiceload.audio.vad import (
    DEFAULT_SPEECH,
    SAMPLE_RATE,
    Samples,
    Segment,
    SpeechSettings,
    SpeechSpan,
    locate,
    match_score,
    ms_to_samples,
    samples_to_ms,
    speech_segments,
    speech_span,
)
from voiceload.protocol import GreetingResult, TurnResult

# How far from its wall-clock estimate a player's start is searched for on the tape. The estimate
# is off by the bridge tick (20 ms) plus pump lateness; a generous window costs microseconds.
SEARCH_WINDOW_MS = 250
MIN_LOCATE_SCORE = 0.8  # below this the played audio is not on the tape: the call did not carry it
PROMPT_MATCH_THRESHOLD = 0.5  # the same prompt through G.711 scores > 0.95; any other shipped one < 0.38


@dataclass(frozen=True)
class Reference:
    """A known recording with its speech span precomputed once per run, not per call."""

    samples: Samples
    span: SpeechSpan

    @classmethod
    def of(cls, samples: Samples, speech: SpeechSettings = DEFAULT_SPEECH) -> Reference:
        return cls(samples, speech_span(samples, speech))


@dataclass(frozen=True)
class Played:
    """A recording we started playing into the call, with its wall-clock estimate of tape position."""

    ref: Reference
    expected_index: int


@dataclass(frozen=True)
class Dialled:
    """A DTMF turn: digits sent as RFC 4733 events or SIP INFO, which put none of our audio on the tape.

    Its span is the sender's own timing (the engine's first digit start and last digit end, or
    the INFO send times plus the last digit's duration), as tape indices: exact, nothing to locate.
    """

    digits: str
    start: int
    end: int


@dataclass(frozen=True)
class _Span:
    """Where one turn's caller part sits on the tape: a located recording's speech, or dialled digits."""

    start: int  # the recording's sample 0, or the first digit's start
    speech_start: int
    speech_end: int
    dtmf: str | None = None


def _spans(tape: Samples, utterances: Sequence[Played | Dialled]) -> tuple[list[_Span | None], list[Located | None]]:
    """Per turn its span (None: the recording is not on the tape), and the located recordings alone."""
    played = [u for u in utterances if isinstance(u, Played)]
    located = locate_played(tape, played)
    found = iter(located)
    spans: list[_Span | None] = []
    for u in utterances:
        if isinstance(u, Dialled):
            spans.append(_Span(u.start, u.start, u.end, u.digits))
        else:
            loc = next(found)
            spans.append(None if loc is None else _Span(loc.start, loc.speech_start, loc.speech_end))
    return spans, located


def _digits_between(received: Sequence[tuple[str, int]], lo: int, hi: int) -> str:
    return "".join(d for d, at in received if lo <= at < hi)


@dataclass(frozen=True)
class Located:
    start: int  # exact tape index of the file's sample 0
    score: float
    ref: Reference

    @property
    def speech_start(self) -> int:
        return self.start + self.ref.span.onset

    @property
    def speech_end(self) -> int:
        return self.start + self.ref.span.end


def locate_played(tape: Samples, played: list[Played]) -> list[Located | None]:
    """Exact tape positions of our own players (None when the audio is not on the tape)."""
    win = ms_to_samples(SEARCH_WINDOW_MS)
    out: list[Located | None] = []
    for p in played:
        idx, score = locate(tape, p.ref.samples, lo=p.expected_index - win, hi=p.expected_index + win)
        out.append(Located(idx, score, p.ref) if idx >= 0 and score >= MIN_LOCATE_SCORE else None)
    return out


def remove_played(tape: Samples, located: list[Located | None]) -> np.ndarray:
    """The received audio alone: the tape minus our own players (the bridge summed them).

    A pjmedia tape holds what a player produced; the RTP engine's holds what went out, i.e. the
    PCMU round trip of it. Subtracting the wrong one leaves the µ-law error (about 38 dB under the
    utterance, well above the edge level of speech_segments), so whichever leaves less is taken.
    """
    rx = tape.astype(np.int32)
    for loc in located:
        if loc is None:
            continue
        raw = loc.ref.samples[: max(0, len(rx) - loc.start)]
        span = rx[loc.start : loc.start + len(raw)]
        plain = span - raw.astype(np.int32)
        coded = span - g711.round_trip(raw).astype(np.int32)
        rx[loc.start : loc.start + len(raw)] = coded if _energy(coded) < _energy(plain) else plain
    return rx


def _energy(x: np.ndarray) -> float:
    return float(np.dot(x.astype(np.float64), x.astype(np.float64)))


def _reply_after(segments: list[Segment], t: int, until: int) -> tuple[Segment | None, int | None]:
    """First received speech starting at or after tape index t, and where that reply ends before `until`."""
    first = next((s for s in segments if s.start >= t and s.start < until), None)
    if first is None:
        return None, None
    end = max(s.end for s in segments if s.start >= first.start and s.start < until)
    return first, min(end, until)


@dataclass(frozen=True)
class CallerTapeResult:
    greeting: GreetingResult | None
    turns: list[TurnResult]
    clock_slip_ms: float | None  # worst |tape position - wall-clock position| of our players


def clock_slip_ms(located: list[Located | None], played: list[Played]) -> float | None:
    """How far the bridge's audio clock strayed from wall time, judged by our own players.

    A player started at wall time t lands on the tape at the next 20 ms tick after t. When the
    clock thread is starved of CPU, ticks fall behind (or catch up in bursts) and the tape stops
    being a faithful timeline: that is the generator being overloaded, measured where it hurts.
    """
    slips = [abs(loc.start - p.expected_index) for loc, p in zip(located, played, strict=True) if loc is not None]
    return round(samples_to_ms(max(slips)), 1) if slips else None


def analyse_caller_tape(
    tape: Samples,
    *,
    tape_offset_ms: float,
    rx_delay_ms: float,
    greeting: Reference | None,
    greeting_max_wait_ms: int,
    utterances: Sequence[Played | Dialled],
    replies: list[Reference | None],
    max_waits_ms: list[int],
    listen_from: int = 0,
    holds: Sequence[tuple[int, int]] = (),
    reply_dtmf: Sequence[str | None] = (),
    dtmf_received: Sequence[tuple[str, int]] = (),
    speech: SpeechSettings = DEFAULT_SPEECH,
) -> CallerTapeResult:
    """Per-turn timing on the caller's tape; offsets in ms from answer, received speech wire-referenced.

    `utterances` are the turns actually played (possibly fewer than the scenario's); `replies[i]`
    and `max_waits_ms[i]` describe what the bot had to say after utterance i.

    Received audio before tape index `listen_from` (the answer, unless the scenario listens to early
    media) and inside `holds` (tape index spans the far end held the call) is no bot speech: a
    ringback, an announcement before the 200 OK, music on hold. A turn whose wait for its reply
    spans a hold has that hold's time taken out of its latency (and reported as `held_ms`).

    A DTMF turn (`Dialled`) has no audio of ours on the tape: its span is the sender's, and the
    reply is timed from its last digit's end like from the end of speech. `reply_dtmf[i]` are the
    digits the bot must send after its reply to turn i; `dtmf_received` (digit, tape index) are
    the digits it sent, which must arrive before the caller's next turn.

    `speech` is the scenario's detector (the references must have been measured with the same).
    """
    spans, located = _spans(tape, utterances)
    rx = remove_played(tape, located)
    rx[: max(0, min(listen_from, len(rx)))] = 0
    for a, b in holds:
        rx[max(0, a) : max(0, b)] = 0
    segments = speech_segments(rx, speech)
    rx_delay = ms_to_samples(rx_delay_ms)

    def to_ms(index: int, *, received: bool) -> float:
        return round(tape_offset_ms + samples_to_ms(index - (rx_delay if received else 0)), 1)

    def score(ref: Reference | None, onset: Segment) -> float | None:
        if ref is None:
            return None
        got = rx[max(0, onset.start - 200) : onset.start + ref.span.end - ref.span.onset + 400]
        return round(match_score(got, ref.samples[ref.span.onset : ref.span.end]), 3)

    greet: GreetingResult | None = None
    if greeting is not None:
        first_utt = next((u.start for u in spans if u is not None), len(tape))
        onset, end = _reply_after(segments, 0, first_utt)
        if onset is None or end is None:
            greet = GreetingResult(reason="no bot speech before the first turn")
        else:
            s = score(greeting, onset)
            at = to_ms(onset.start, received=True)
            reason = None
            if at > greeting_max_wait_ms:
                reason = f"greeting started {at:.0f} ms after answer (max {greeting_max_wait_ms})"
            elif s is not None and s < PROMPT_MATCH_THRESHOLD:
                reason = f"greeting does not match the expected prompt (score {s:.2f})"
            greet = GreetingResult(
                bot_onset_ms=at, bot_end_ms=to_ms(end, received=True), ok=reason is None, reason=reason,
                prompt_score=s,
            )

    turns: list[TurnResult] = []
    for i, loc in enumerate(spans):
        if loc is None:
            turns.append(TurnResult(index=i, reason="caller audio not found on the call tape"))
            continue
        nxt = next((u.start for u in spans[i + 1 :] if u is not None), len(tape))
        # received speech that started before our utterance ended is not this turn's reply
        onset, end = _reply_after(segments, loc.speech_end + rx_delay, nxt)
        turn = TurnResult(
            index=i,
            utterance_start_ms=to_ms(loc.speech_start, received=False),
            utterance_end_ms=to_ms(loc.speech_end, received=False),
            dtmf=loc.dtmf,
        )
        if onset is None or end is None:
            turn.reason = f"no bot speech after turn {i}"
            turns.append(turn)
            continue
        turn.bot_onset_ms = to_ms(onset.start, received=True)
        turn.bot_end_ms = to_ms(end, received=True)
        held = sum(max(0, min(b, onset.start) - max(a, loc.speech_end)) for a, b in holds)
        turn.held_ms = round(samples_to_ms(held), 1) if held else None
        turn.latency_ms = round(samples_to_ms(onset.start - rx_delay - loc.speech_end - held), 1)
        turn.prompt_score = score(replies[i] if i < len(replies) else None, onset)
        if turn.latency_ms > max_waits_ms[i]:
            turn.reason = f"bot took {turn.latency_ms:.0f} ms (max {max_waits_ms[i]})"
        elif turn.prompt_score is not None and turn.prompt_score < PROMPT_MATCH_THRESHOLD:
            turn.reason = f"reply does not match the expected prompt (score {turn.prompt_score:.2f})"
        elif i < len(reply_dtmf) and reply_dtmf[i] is not None:
            got = _digits_between(dtmf_received, onset.start, nxt)
            if got != reply_dtmf[i]:
                turn.reason = f"bot DTMF after the reply: expected {reply_dtmf[i]!r}, received {got!r}"
        turn.ok = turn.reason is None
        turns.append(turn)
    played = [u for u in utterances if isinstance(u, Played)]
    return CallerTapeResult(greeting=greet, turns=turns, clock_slip_ms=clock_slip_ms(located, played))


@dataclass(frozen=True)
class TruthTurn:
    """The reference bot's own view of one turn, wire-referenced like the agent's."""

    index: int
    caller_end_ms: float  # ms from answer
    response_start_ms: float
    latency_ms: float


def analyse_bot_tape(
    tape: Samples,
    *,
    tape_offset_ms: float,
    rx_delay_ms: float,
    prompts: list[Played],
    first_reply: int,
    dialled: Mapping[int, int] | None = None,
    speech: SpeechSettings = DEFAULT_SPEECH,
) -> list[TruthTurn]:
    """Ground truth per turn on the bot's tape: caller speech end (received) -> our reply onset (sent).

    `prompts` are every prompt the bot played in order; prompts from `first_reply` on are turn
    replies (the ones before are the greeting). `dialled` maps a DTMF turn to the tape index where
    its last digit ended, from the received events: that is its caller end, since a digit is no
    speech on the tape. The index comes from the event's arrival time (`Tape.index_at`), so it
    carries the tape start's uncertainty (a bridge tick) that a located prompt does not.
    """
    dialled = dialled or {}
    located = locate_played(tape, prompts)
    rx = remove_played(tape, located)
    segments = speech_segments(rx, speech)
    rx_delay = ms_to_samples(rx_delay_ms)
    out: list[TruthTurn] = []
    prev_start = 0
    for k, loc in enumerate(located):
        if loc is None:
            continue
        if k >= first_reply:
            heard = [s for s in segments if s.start >= prev_start and s.end <= loc.speech_start + rx_delay]
            caller_end: int | None = dialled.get(k - first_reply)
            if caller_end is None and heard:
                caller_end = heard[-1].end - rx_delay
            if caller_end is not None:
                out.append(
                    TruthTurn(
                        index=k - first_reply,
                        caller_end_ms=round(tape_offset_ms + samples_to_ms(caller_end), 1),
                        response_start_ms=round(tape_offset_ms + samples_to_ms(loc.speech_start), 1),
                        latency_ms=round(samples_to_ms(loc.speech_start - caller_end), 1),
                    )
                )
        prev_start = loc.speech_end
    return out


__all__ = [
    "SAMPLE_RATE",
    "CallerTapeResult",
    "Dialled",
    "Played",
    "Reference",
    "TruthTurn",
    "analyse_bot_tape",
    "analyse_caller_tape",
]
