"""Did Rasa understand the call? The scenario's expectations checked against what Rasa said and recorded.

Two checks, both pure so they can be tested without a server: a reply text against the prompt's
transcript (`judge_reply`, text channel), and a conversation's tracker against the turns' `intent:`
and `action:` fields (`compare`). `TrackerCheck` is the one piece with I/O: a bounded fetch of the
tracker once a call has ended, shared by the SIP and the REST agents.
"""

from __future__ import annotations

import difflib
import unicodedata
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from voiceload import rasa
from voiceload.core.scenario import Scenario

TRACKER_TIMEOUT_S = 5.0  # a tracker fetch is one small GET; longer means Rasa is in trouble, and the call failed
REASON_PREFIX = "tracker: "


# --- reply texts ---------------------------------------------------------------------------------

def normalise(text: str) -> str:
    """Text as a listener hears it: case, punctuation and spacing do not change what a bot said."""
    kept = "".join(" " if unicodedata.category(c)[0] in "PS" else c for c in text.casefold())
    return " ".join(kept.split())


@dataclass(frozen=True)
class ReplyVerdict:
    ok: bool
    reason: str | None  # why the reply is not the expected one
    score: float | None  # similarity of the normalised texts (0..1); None when nothing was expected


def judge_reply(expected: str | None, replies: Sequence[str]) -> ReplyVerdict:
    """The bot's reply texts of one turn (joined, as a voice gateway would speak them) against the expected prompt.

    Without an expected transcript any non-empty reply counts, as any speech does on a voice call.
    """
    said = " ".join(r.strip() for r in replies if r.strip())
    if not said:
        return ReplyVerdict(False, "no reply text", None if expected is None else 0.0)
    if expected is None:
        return ReplyVerdict(True, None, None)
    got, want = normalise(said), normalise(expected)
    if got == want:
        return ReplyVerdict(True, None, 1.0)
    score = round(difflib.SequenceMatcher(None, got, want, autojunk=False).ratio(), 3)
    return ReplyVerdict(False, f"replied {_quote(said)}, expected {_quote(expected)}", score)


def _quote(text: str, limit: int = 80) -> str:
    return repr(text if len(text) <= limit else text[: limit - 3] + "...")


# --- trackers ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Expectation:
    """What one turn promises about Rasa's side of the conversation."""

    turn: int
    intent: str | None
    action: str | None


def expectations(scenario: Scenario) -> tuple[Expectation, ...]:
    """One per turn; empty when no turn says anything about intents or actions (then nothing is fetched)."""
    out = tuple(Expectation(t.index, t.intent, t.action) for t in scenario.turns)
    return out if any(e.intent or e.action for e in out) else ()


@dataclass
class CallerMessage:
    """One of the caller's messages in a tracker, with every bot action that ran after it."""

    text: str | None
    intent: str | None
    actions_after: list[str] = field(default_factory=list)


def caller_messages(tracker: Mapping[str, Any]) -> list[CallerMessage]:
    """The caller's messages in order.

    Messages whose text starts with `/` are intents injected directly (how a gateway triggers a
    greeting, say); the caller did not say them, so they are left out. Bookkeeping actions
    (`action_listen`, session start) are not actions the bot chose and are left out too.
    """
    out: list[CallerMessage] = []
    events = tracker.get("events") or []
    for e in events:
        if not isinstance(e, Mapping):
            continue
        if e.get("event") == "user":
            text = e.get("text")
            if isinstance(text, str) and text.startswith("/"):
                continue
            intent = ((e.get("parse_data") or {}).get("intent") or {}).get("name")
            out.append(CallerMessage(text if isinstance(text, str) else None,
                                     intent if isinstance(intent, str) else None))
        elif e.get("event") == "action":
            name = e.get("name")
            if isinstance(name, str) and name not in rasa.NOISE_ACTIONS:
                for m in out:
                    m.actions_after.append(name)
    return out


def compare(expected: Sequence[Expectation], tracker: Mapping[str, Any]) -> list[str]:
    """Every way the tracker differs from the turns' expectations, one line each; empty when it meets them.

    With intents, the caller's messages must be exactly one per turn, each classified as its turn's
    `intent:` (a turn without one accepts any). A turn's `action:` must appear after its message.
    """
    messages = caller_messages(tracker)
    problems: list[str] = []
    if any(e.intent for e in expected):
        for e in expected:
            if e.intent is None:
                continue
            if e.turn >= len(messages):
                problems.append(f"turn {e.turn} expected intent {e.intent}, got no user message")
            elif messages[e.turn].intent != e.intent:
                problems.append(f"turn {e.turn} expected intent {e.intent}, got {messages[e.turn].intent or 'none'}")
        extra = messages[len(expected):]
        if extra:
            problems.append(f"{len(messages)} user messages for {len(expected)} turns (extra intents: "
                            f"{', '.join(m.intent or 'none' for m in extra)})")
    for e in expected:
        if e.action is None:
            continue
        if e.turn >= len(messages):
            problems.append(f"turn {e.turn} expected action {e.action}, got no user message")
        elif e.action not in messages[e.turn].actions_after:
            ran = ", ".join(dict.fromkeys(messages[e.turn].actions_after)) or "none"
            problems.append(f"turn {e.turn} expected action {e.action}, got {ran}")
    return problems


class TrackerCheck:
    """After a completed call: fetch its tracker (bounded) and say why it fails the scenario, if it does.

    One per agent process; it owns the aiohttp session, created on first use inside the running loop.
    """

    def __init__(self, url: str, expected: Sequence[Expectation], *, token: str | None = None,
                 timeout_s: float = TRACKER_TIMEOUT_S) -> None:
        self.url, self.expected, self.token, self.timeout_s = url, tuple(expected), token, timeout_s
        self._session: aiohttp.ClientSession | None = None

    @classmethod
    def for_scenario(cls, scenario: Scenario, url: str | None, token: str | None) -> TrackerCheck | None:
        """None when there is no Rasa URL or nothing to check."""
        expected = expectations(scenario)
        return cls(url, expected, token=token) if url and expected else None

    async def reason(self, sender: str) -> str | None:
        """None: the tracker meets the expectations; otherwise the call's failure reason (`tracker: ...`)."""
        if self._session is None:
            self._session = aiohttp.ClientSession()
        try:
            tracker = await rasa.fetch_tracker(self._session, self.url, sender, token=self.token,
                                               timeout_s=self.timeout_s)
        except (rasa.RasaError, aiohttp.ClientError, TimeoutError) as exc:
            return f"{REASON_PREFIX}{str(exc) or type(exc).__name__}"
        problems = compare(self.expected, tracker)
        return REASON_PREFIX + "; ".join(problems) if problems else None

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
