"""Real-time turn-taking of one call, as pure state machines driven by time and the remote's level.

The reference bot polls each call's received signal level (a C-side meter of the conference
bridge, one value per 20 ms frame) and feeds it here (`step`). A call agent's RTP engine keeps,
per call, when the far end was last loud: the agent hands that time over (`step_heard`) only
when `next_check_ms` says something can change, so a call costs Python nothing between events.
The flows answer with actions (play, hang up). They only decide *when* to act. Exact timing is
measured afterwards from the call tape (`voiceload.audio.analysis`), so a late poll can delay a
caller's reply but never falsify a latency.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path

# Level meters (pjmedia's bridge, the RTP engine): the µ-law code of a 20 ms frame's mean |sample|,
# 0..127; digital silence reads 0, speech 10..35. 5 is a mean of 36 (-59.2 dBFS): the default of
# the scenario's `speech.loud_dbfs` (audio/vad.py SpeechSettings.loud_level converts).
LEVEL_SPEECH = 5
# Real-time detection lags the wire by the jitter buffer and a poll; give the bot this much
# slack over max_wait before giving up in real time (the tape analysis has the final word).
DETECTION_SLACK_MS = 250
BOT_BYE_WAIT_MS = 5000  # when the bot is to hang up, how long the caller waits for its BYE
# While waiting for the bot, how often a caller driven by `step_heard` looks: the bot's speech is
# noticed afterwards from its exact time, so this only bounds how late a deadline is noticed.
CALLER_WAIT_CHECK_MS = 100.0


@dataclass(frozen=True)
class Play:
    """Start playing recording `index` (caller: turn index; bot: prompt index, 0 = greeting if any)."""

    index: int


@dataclass(frozen=True)
class Dial:
    """Caller: dial turn `index`'s DTMF digits now (instead of playing a recording).

    Bot: send prompt `index`'s `dtmf:` digits now, right after the prompt has played.
    """

    index: int


@dataclass(frozen=True)
class Hangup:
    reason: str | None  # None: the scenario's normal end


Action = Play | Dial | Hangup


@dataclass(frozen=True)
class Ask:
    """Bot with a brain: turn `turn`'s utterance ended; hand the call audio from `since_ms` on to the brain."""

    turn: int
    since_ms: float  # when the bot began listening (the caller's audio starts after it)
    speech_end_ms: float  # the last loud level poll: the caller's end of speech, as seen in real time


@dataclass(frozen=True)
class PlayFile:
    """Bot with a brain: start playing a recording made during the call (the brain's spoken reply)."""

    path: Path
    turn: int


BotAction = Action | Ask | PlayFile


class _Listener:
    """Tracks when the remote last spoke, from level polls."""

    def __init__(self, loud_level: int = LEVEL_SPEECH) -> None:
        self.loud_level = loud_level
        self.last_speech_ms: float | None = None
        self.speech_since: float | None = None  # first speech after `reset_at`
        self.reset_at = 0.0

    def reset(self, now: float) -> None:
        self.reset_at = now
        self.speech_since = None

    def feed(self, now: float, level: int) -> None:
        if level >= self.loud_level:
            self.heard(now)

    def heard(self, at: float) -> None:
        """The remote was loud at `at` (ms): evidence of speech when it is not older than the last reset."""
        if at < self.reset_at:
            return
        self.last_speech_ms = at if self.last_speech_ms is None else max(self.last_speech_ms, at)
        if self.speech_since is None:
            self.speech_since = at

    def silent_for(self, now: float) -> float:
        if self.speech_since is None or self.last_speech_ms is None:
            return 0.0
        return now - self.last_speech_ms


class CallerState(Enum):
    WAIT_BOT = "wait_bot"  # waiting for the bot to start speaking
    BOT_SPEAKING = "bot_speaking"  # heard the bot; waiting for it to finish (silence gap)
    SPEAKING = "speaking"  # our utterance is playing
    WAIT_BYE = "wait_bye"
    DONE = "done"


@dataclass
class CallerFlow:
    """The caller's side of the happy path: greeting -> (utterance -> reply)* -> hang-up."""

    utterance_ms: list[float]  # duration of each turn's recording (a DTMF turn: its digits and gaps)
    max_waits_ms: list[int]  # per turn: how long the bot may take to reply
    has_greeting: bool
    greeting_max_wait_ms: int
    silence_gap_ms: int
    hangup_by: str  # "caller" | "bot"
    hangup_after_ms: int
    dtmf: list[bool] = field(default_factory=list)  # per turn: it dials digits (`Dial`) instead of speaking
    loud_level: int = LEVEL_SPEECH  # a level poll at least this loud is the far end speaking
    state: CallerState = CallerState.WAIT_BOT
    turn: int = 0  # next utterance to play
    failure: str | None = None
    _listener: _Listener = field(default_factory=_Listener)
    _deadline: float = 0.0
    _speak_end: float = 0.0
    _held_since: float | None = None  # the far end holds the call since (ms); None: it does not

    def __post_init__(self) -> None:
        self._listener.loud_level = self.loud_level

    def on_answer(self, now: float, listen_from: float | None = None) -> Action | None:
        """The call is answered at `now`; the far end's speech counts from `listen_from` (ms) on.

        `listen_from` is the answer itself by default, so audio heard before the 200 OK (early
        media, a ringback or "please hold" announcement) is never the greeting; a scenario with
        `early_media: listen` passes the start of media instead.
        """
        self._listener.reset(now if listen_from is None else listen_from)
        if self.has_greeting:
            self._deadline = now + self.greeting_max_wait_ms + DETECTION_SLACK_MS
            self.state = CallerState.WAIT_BOT
            return None
        return self._speak(now)

    def _speak(self, now: float) -> Action:
        self.state = CallerState.SPEAKING
        self._speak_end = now + self.utterance_ms[self.turn]
        self.turn += 1
        index = self.turn - 1
        return Dial(index) if index < len(self.dtmf) and self.dtmf[index] else Play(index)

    def spoke_until(self, end: float) -> None:
        """Our current utterance or digits end at `end` (ms), as the sender reports it, not as planned.

        A DTMF step's digits start on the engine's next tick (or the next pump turn, for SIP INFO):
        the wait for the reply starts from when the last digit really ends.
        """
        if self.state is CallerState.SPEAKING:
            self._speak_end = end

    def _fail(self, reason: str) -> Action:
        self.failure = reason
        self.state = CallerState.DONE
        return Hangup(reason)

    @property
    def held(self) -> bool:
        return self._held_since is not None

    def set_held(self, held: bool, now: float) -> None:
        """The far end put the call on hold (sendonly, inactive, c=0.0.0.0) or took it off hold, at `now`.

        A hold is not the bot failing: while held, the caller neither speaks (nothing would be
        sent) nor gives up, and the wait it was in resumes afterwards with the hold's length added
        to its deadline. What the far end plays on hold (music, an announcement) is not the reply:
        a caller waiting for the bot starts listening afresh at the resume.
        """
        if held and self._held_since is None:
            self._held_since = now
        elif not held and self._held_since is not None:
            self._deadline += now - self._held_since
            self._held_since = None
            if self.state is CallerState.WAIT_BOT:
                self._listener.reset(now)
            elif self.state is CallerState.BOT_SPEAKING:
                self._listener.heard(now)  # the silence gap counts from the resume, not through the hold

    def step(self, now: float, level: int) -> Action | None:
        """Advance on one level poll; returns the action to take now, if any."""
        self._listener.feed(now, level)
        return self._advance(now)

    def step_heard(self, now: float, last_loud_ms: float | None) -> Action | None:
        """Advance knowing when the bot was last loud (ms, same clock as `now`; None: never)."""
        if last_loud_ms is not None:
            self._listener.heard(last_loud_ms)
        return self._advance(now)

    def next_check_ms(self, now: float) -> float:
        """The earliest time (ms) a `step_heard` can act, given what was heard up to `now`."""
        lis = self._listener
        if self.state is CallerState.SPEAKING:
            return self._speak_end
        if self._held_since is not None and self.state is not CallerState.DONE:
            return now + CALLER_WAIT_CHECK_MS
        if self.state is CallerState.WAIT_BOT:
            return min(self._deadline, now + min(CALLER_WAIT_CHECK_MS, self.silence_gap_ms))
        if self.state is CallerState.BOT_SPEAKING:
            last = lis.last_speech_ms if lis.last_speech_ms is not None else now
            final_by_caller = self.turn >= len(self.utterance_ms) and self.hangup_by == "caller"
            gap = max(self.silence_gap_ms, self.hangup_after_ms) if final_by_caller else self.silence_gap_ms
            return max(now, last + gap)
        if self.state is CallerState.WAIT_BYE:
            return self._deadline
        return float("inf")

    def _advance(self, now: float) -> Action | None:
        lis = self._listener
        if self._held_since is not None and self.state is not CallerState.SPEAKING:
            return None  # on hold: no utterance, no deadline (set_held)
        if self.state is CallerState.SPEAKING:
            if now >= self._speak_end:
                lis.reset(now)
                self.state = CallerState.WAIT_BOT
                self._deadline = now + self.max_waits_ms[self.turn - 1] + DETECTION_SLACK_MS
            return None
        if self.state is CallerState.WAIT_BOT:
            if lis.speech_since is not None:
                self.state = CallerState.BOT_SPEAKING
            elif now > self._deadline:
                what = "greeting" if self.turn == 0 else f"reply to turn {self.turn - 1}"
                return self._fail(f"no bot speech: {what} did not start in time")
            return None
        if self.state is CallerState.BOT_SPEAKING:
            quiet = lis.silent_for(now)
            if self.turn < len(self.utterance_ms):
                return self._speak(now) if quiet >= self.silence_gap_ms else None
            if self.hangup_by == "caller":
                if quiet >= max(self.silence_gap_ms, self.hangup_after_ms):
                    self.state = CallerState.DONE
                    return Hangup(None)
                return None
            if quiet >= self.silence_gap_ms:
                self.state = CallerState.WAIT_BYE
                self._deadline = now + self.hangup_after_ms + BOT_BYE_WAIT_MS
            return None
        if self.state is CallerState.WAIT_BYE and now > self._deadline:
            return self._fail("bot did not hang up after its last prompt")
        return None

    def on_remote_hangup(self) -> None:
        """The bot hung up: fine only once the happy path is walked and it was the bot's job."""
        walked = self.turn >= len(self.utterance_ms) and self.state in (
            CallerState.BOT_SPEAKING,
            CallerState.WAIT_BYE,
        )
        if not (walked and self.hangup_by == "bot") and self.failure is None and self.state is not CallerState.DONE:
            self.failure = f"bot hung up early (state {self.state.value}, turn {self.turn})"
        self.state = CallerState.DONE


@dataclass(frozen=True)
class ThinkTime:
    """The reference bot's think time: uniform in [mean - jitter, mean + jitter] ms, never negative."""

    mean_ms: float
    jitter_ms: float = 0.0

    @classmethod
    def parse(cls, text: str) -> ThinkTime:
        """`MEAN` or `MEAN:JITTER` in ms, e.g. `400` or `900:300`."""
        parts = text.split(":")
        if len(parts) > 2 or not all(p.strip().replace(".", "", 1).isdigit() for p in parts):
            raise ValueError(f"think time {text!r}: expected MEAN or MEAN:JITTER in ms, e.g. 400 or 900:300")
        mean = float(parts[0])
        jitter = float(parts[1]) if len(parts) == 2 else 0.0
        if jitter > mean:
            raise ValueError(f"think time {text!r}: jitter must not exceed the mean")
        return cls(mean, jitter)

    def sample(self, rng: random.Random) -> float:
        return max(0.0, self.mean_ms + rng.uniform(-self.jitter_ms, self.jitter_ms))


class BotState(Enum):
    SPEAKING = "speaking"
    LISTENING = "listening"
    THINKING = "thinking"
    WAITING = "waiting"  # for the brain's reply (speech recognition, the bot's answer, synthesis)
    DONE = "done"


# (arrival_ms, think_ms, speak_ms) -> due_ms: when a bot utterance may start (botmodel.WorkerPool.due)
Scheduler = Callable[[float, float, float], float]


@dataclass
class BotFlow:
    """The reference bot: greeting, then after each caller utterance (+ think time) the next prompt.

    Prompt indices: 0 is the greeting when there is one; reply to turn i is `i + first_reply`.
    The caller's end of speech is taken as the last loud frame once `endpoint_ms` of silence
    followed it; the reply is due `think` after that end, so a think time longer than the
    endpointing delay is honoured exactly (shorter ones are late by the difference).
    With a `scheduler` (`bot --capacity`), each utterance is a job for a bounded pool of workers
    and is due `think` after the job's start instead (docs/bot-model.md).

    With `brain` (a voice gateway in front of a real bot), the replies are not the scenario's: at
    the end of an utterance the flow answers `Ask` and waits (no think time: the brain's own time
    is the delay) until `on_reply` hands it a recording to play (`PlayFile`) or `on_no_reply` says
    there is none, when it listens again and the caller's wait for a reply runs out.

    A DTMF turn (`dtmf_digits[i]` > 0) is heard through `on_dtmf`, one call per digit with the
    time the digit ended: once all the turn's digits are in, its last digit's end is the end of
    the caller's turn (no endpointing wait: the bot knows how many digits to expect); fewer
    digits end the turn like speech, `endpoint_ms` after the last one. A prompt with digits to
    send (`prompt_dtmf_ms[k]` > 0, their length) is followed by `Dial(k)` when it has played.
    """

    prompt_ms: list[float]
    has_greeting: bool
    n_turns: int
    think: ThinkTime
    endpoint_ms: int
    hangup_by: str
    hangup_after_ms: int
    rng: random.Random
    greeting_delay_ms: float = 200.0
    scheduler: Scheduler | None = None  # None: a worker is always free (infinite capacity)
    brain: bool = False  # replies come from a brain (Ask → on_reply), not from the scenario's prompts
    dtmf_digits: list[int] = field(default_factory=list)  # per turn: digits the caller dials (0: it speaks)
    prompt_dtmf_ms: list[float] = field(default_factory=list)  # per prompt: length of the digits sent after it
    loud_level: int = LEVEL_SPEECH  # a level poll at least this loud is the caller speaking
    state: BotState = BotState.THINKING
    replies_done: int = 0
    think_ms: list[float] = field(default_factory=list)  # the think time drawn for each reply
    queued_ms: list[float] = field(default_factory=list)  # per reply: waited for a free worker
    greeting_queued_ms: float = 0.0
    _listener: _Listener = field(default_factory=_Listener)
    _due: float = 0.0
    _next_prompt: int = 0
    _speak_end: float = 0.0
    _reply: tuple[Path, float] | None = None  # the brain's reply to play next: (recording, its length in ms)
    _digits_heard: int = 0  # DTMF digits of the current turn heard so far
    _dialled: bool = False  # the current prompt's own digits went out

    def on_dtmf(self, end_ms: float) -> int | None:
        """The caller sent a DTMF digit that ended (or will end) at `end_ms`: evidence of the caller's turn.

        Returns the turn it counts for, or None when the bot was not listening (it is ignored then).
        """
        if end_ms < self._listener.reset_at or self.state is not BotState.LISTENING:
            return None
        self._listener.heard(end_ms)
        self._digits_heard += 1
        return self.replies_done

    def _dtmf_turn_done(self) -> bool:
        turn = self.replies_done
        expected = self.dtmf_digits[turn] if turn < len(self.dtmf_digits) else 0
        return expected > 0 and self._digits_heard >= expected

    def __post_init__(self) -> None:
        self._listener.loud_level = self.loud_level

    @property
    def first_reply(self) -> int:
        return 1 if self.has_greeting else 0

    def _schedule(self, arrival: float, think: float, prompt: int) -> tuple[float, float]:
        """(due, queued): when the prompt may start, and how long its job waited for a worker."""
        if self.scheduler is None:
            return arrival + think, 0.0
        due = self.scheduler(arrival, think, self.prompt_ms[prompt])
        return due, round(max(0.0, due - arrival - think), 1)

    def on_answer(self, now: float) -> None:
        if self.has_greeting:
            self._due, self.greeting_queued_ms = self._schedule(now, self.greeting_delay_ms, 0)
            self.state, self._next_prompt = BotState.THINKING, 0
        else:
            self.state = BotState.LISTENING
            self._listener.reset(now)

    def on_reply(self, now: float, path: Path, duration_ms: float) -> None:
        """The brain's reply to the utterance `Ask`ed about is ready: play it on the next step."""
        if self.state is BotState.WAITING:
            self.state, self._due = BotState.THINKING, now
            self._reply = (path, duration_ms)

    def on_no_reply(self, now: float) -> None:
        """The brain had nothing to say (or failed): listen again; the caller gives up on its own."""
        if self.state is BotState.WAITING:
            self.state = BotState.LISTENING
            self._listener.reset(now)
            self._digits_heard = 0

    def step(self, now: float, level: int) -> BotAction | None:
        lis = self._listener
        lis.feed(now, level)
        if self.state is BotState.THINKING and now >= self._due:
            self.state = BotState.SPEAKING
            if self._reply is not None:
                path, duration = self._reply
                self._reply = None
                self._speak_end = now + duration
                self._dialled = True  # the brain's replies are speech only
                return PlayFile(path, self._next_prompt - self.first_reply)
            self._speak_end = now + self.prompt_ms[self._next_prompt]
            self._dialled = False
            return Play(self._next_prompt)
        if self.state is BotState.SPEAKING and now >= self._speak_end:
            k = self._next_prompt
            if not self._dialled and k < len(self.prompt_dtmf_ms) and self.prompt_dtmf_ms[k] > 0:
                self._dialled = True
                self._speak_end = now + self.prompt_dtmf_ms[k]
                return Dial(k)
            if self._next_prompt >= self.first_reply:
                self.replies_done += 1
            if self.replies_done >= self.n_turns:
                if self.hangup_by == "bot":
                    self.state, self._due = BotState.DONE, now + self.hangup_after_ms
                else:
                    self.state = BotState.DONE
                    self._due = float("inf")
                return None
            self.state = BotState.LISTENING
            lis.reset(now)
            self._digits_heard = 0
            return None
        if self.state is BotState.LISTENING and lis.speech_since is not None:
            ended = self._dtmf_turn_done() or lis.silent_for(now) >= self.endpoint_ms
            if ended and lis.last_speech_ms is not None:
                self._next_prompt = self.replies_done + self.first_reply
                if self.brain:
                    self.state = BotState.WAITING
                    return Ask(self.replies_done, lis.reset_at, lis.last_speech_ms)
                self.state = BotState.THINKING
                self.think_ms.append(round(self.think.sample(self.rng), 1))
                self._due, queued = self._schedule(lis.last_speech_ms, self.think_ms[-1], self._next_prompt)
                self.queued_ms.append(queued)
            return None
        if self.state is BotState.DONE and now >= self._due:
            self._due = float("inf")
            return Hangup(None)
        return None
