"""A scenario's recordings loaded once per process: samples, speech spans, durations, and the caller's
turn-taking machine built from them. Used by the agents and, to check a run before any call, the coordinator.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from voiceload.audio import wav
from voiceload.audio.analysis import Reference
from voiceload.audio.vad import samples_to_ms
from voiceload.core.callflow import CallerFlow
from voiceload.core.scenario import Scenario

DEFAULT_REPLY_WAIT_MS = 3000  # a turn without a `reply` still needs the bot to say something by then


@dataclass
class ScenarioAudio:
    """The scenario's recordings loaded once per agent: samples, speech spans, durations."""

    scenario: Scenario
    utterances: list[Reference | None] = field(default_factory=list)  # None: a DTMF turn (no recording)
    replies: list[Reference | None] = field(default_factory=list)
    greeting: Reference | None = None

    @classmethod
    def load(cls, scenario: Scenario) -> ScenarioAudio:
        sa = cls(scenario)
        speech = scenario.speech
        sa.utterances = [Reference.of(wav.load_wav(t.caller), speech) if t.caller is not None else None
                         for t in scenario.turns]
        sa.replies = [Reference.of(wav.load_wav(t.reply.path), speech) if t.reply else None for t in scenario.turns]
        if scenario.greeting is not None:
            sa.greeting = Reference.of(wav.load_wav(scenario.greeting.path), speech)
        return sa

    @property
    def utterance_ms(self) -> list[float]:
        """Per turn, how long the caller's part lasts: its recording, or its DTMF digits and gaps."""
        return [samples_to_ms(len(u.samples)) if u is not None else float(t.dtmf.length_ms if t.dtmf else 0)
                for u, t in zip(self.utterances, self.scenario.turns, strict=True)]

    @property
    def reply_waits_ms(self) -> list[int]:
        """Per turn, how long the bot may take to start its reply (the scenario's default without one)."""
        return [t.reply.max_wait_ms if t.reply else DEFAULT_REPLY_WAIT_MS for t in self.scenario.turns]

    def new_flow(self) -> CallerFlow:
        sc = self.scenario
        return CallerFlow(
            utterance_ms=self.utterance_ms,
            dtmf=[t.dtmf is not None for t in sc.turns],
            max_waits_ms=self.reply_waits_ms,
            has_greeting=sc.greeting is not None,
            greeting_max_wait_ms=sc.greeting.max_wait_ms if sc.greeting else 0,
            silence_gap_ms=sc.silence_gap_ms,
            hangup_by=sc.hangup_by,
            hangup_after_ms=sc.hangup_after_ms,
            loud_level=sc.speech.loud_level,
        )
