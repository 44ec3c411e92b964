"""The text baseline: the scenario's turns as text over Rasa's REST channel, one conversation per call.

Comparing a voice run with this run of the same scenario against the same Rasa tells how much of a
turn's latency is the voice path (gateway, speech recognition and synthesis) and how much is Rasa.
The agent is an `AgentBase`, like the SIP agent, so assignments, spool, acknowledgements, heartbeats,
tracker checks and the collector's reports work the same; only placing a call differs.
"""

from __future__ import annotations

import asyncio
import logging
import time

import aiohttp

from voiceload import rasa
from voiceload.agent.base import AgentBase, AgentSettings
from voiceload.agent.tracker import judge_reply
from voiceload.core.scenario import rest_problems
from voiceload.core.scenario_audio import DEFAULT_REPLY_WAIT_MS
from voiceload.core.stats import LatencyHistogram
from voiceload.errors import UserError
from voiceload.protocol import (
    OUTCOME_COMPLETED,
    OUTCOME_ERROR,
    OUTCOME_FAILED,
    OUTCOME_REJECTED,
    OUTCOME_TIMEOUT,
    CallRecord,
    CallStarted,
    TurnResult,
    session_id,
)
from voiceload.rasa import REST_CALL_LIMIT

log = logging.getLogger("voiceload.agent.rest")

TICK_S = 0.01  # how often new calls may start; starts are paced by `starts_per_s` anyway


class RestAgent(AgentBase):
    """Calls as conversations: a fresh sender per call, each turn's transcript POSTed, the reply judged.

    A turn's latency is the REST request sent → its response received. Between turns the caller
    waits the scenario's `silence_gap_ms`, so calls last and overlap roughly as on a voice run.
    """

    def __init__(self, settings: AgentSettings) -> None:
        super().__init__(settings)
        if settings.rasa_url is None:
            raise UserError("--channel rest needs --rasa-url")
        problems = rest_problems(self.scenario)
        if problems:
            raise UserError(problems[0])
        self.url = settings.rasa_url
        self._session: aiohttp.ClientSession | None = None
        self._calls: set[asyncio.Task[None]] = set()

    @property
    def active(self) -> int:
        return len(self._calls)

    async def _open(self) -> None:
        self.capacity = min(self.s.max_calls or REST_CALL_LIMIT, REST_CALL_LIMIT)
        # one connection per call in flight: a request never queues for a connection inside the agent
        self._session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=self.capacity))
        log.info("agent %s up: REST channel to %s, %d calls at most", self.s.agent_id, self.url, self.capacity)

    async def _close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def _pump(self) -> None:
        await self._paced(TICK_S, self._start_calls)

    def _place_call(self) -> None:
        self.placed += 1
        seq = self.placed
        sender = session_id(self.s.run_id, self.s.agent_id, seq)
        started_at = time.time()
        self.notices.put_nowait(CallStarted(self.s.run_id, self.s.agent_id, seq, sender, started_at))
        task = asyncio.get_running_loop().create_task(self._call(seq, sender, started_at))
        self._calls.add(task)
        task.add_done_callback(self._calls.discard)

    async def _call(self, seq: int, sender: str, started_at: float) -> None:
        """One conversation; exactly one record, whatever happens."""
        rec = CallRecord(run_id=self.s.run_id, agent_id=self.s.agent_id, call_id=sender, seq=seq,
                         outcome=OUTCOME_FAILED, started_at=started_at)
        try:
            await self._converse(rec, sender)
        except asyncio.CancelledError:
            rec.outcome, rec.reason = OUTCOME_ERROR, "agent stopped mid-call"
            raise
        except Exception as exc:  # one broken call must not take the agent (and its records) down
            log.exception("call %s failed inside the agent", sender)
            rec.outcome, rec.reason = OUTCOME_ERROR, f"agent error: {type(exc).__name__}: {exc}"
        finally:
            self.finished += 1
            for turn in rec.turns:
                if turn.latency_ms is not None:
                    self._interval.setdefault(turn.index, LatencyHistogram()).record(turn.latency_ms)
            self._emit(rec)

    async def _converse(self, rec: CallRecord, sender: str) -> None:
        """Walk the turns; times in the turn results are ms from the first request."""
        assert self._session is not None
        sc = self.scenario
        t0 = time.monotonic()
        problems: list[str] = []
        for turn in sc.turns:
            if turn.index > 0:
                await asyncio.sleep(sc.silence_gap_ms / 1000)
            assert turn.transcript is not None  # rest_problems
            wait_ms = turn.reply.max_wait_ms if turn.reply else DEFAULT_REPLY_WAIT_MS
            sent = time.monotonic()
            at_ms = round((sent - t0) * 1000, 1)
            try:
                replies = await rasa.send_message(self._session, self.url, sender, turn.transcript,
                                                  token=self.s.rasa_token, timeout_s=wait_ms / 1000)
            except (rasa.RasaError, aiohttp.ClientError) as exc:
                timed_out = isinstance(exc.__cause__, TimeoutError)
                why = f"no reply within {wait_ms} ms" if timed_out else str(exc)
                rec.turns.append(TurnResult(index=turn.index, utterance_start_ms=at_ms, utterance_end_ms=at_ms,
                                            reason=why))
                rec.turns += [TurnResult(index=t.index, reason="not reached") for t in sc.turns[turn.index + 1:]]
                rec.duration_ms = round((time.monotonic() - t0) * 1000, 1)
                if turn.index == 0:  # nothing was exchanged: like a call that was never answered
                    rec.outcome, rec.reason = (OUTCOME_TIMEOUT if timed_out else OUTCOME_REJECTED), why
                else:
                    rec.outcome, rec.reason = OUTCOME_FAILED, "; ".join([*problems, f"turn {turn.index}: {why}"])
                return
            received = time.monotonic()
            done_ms = round((received - t0) * 1000, 1)
            verdict = judge_reply(turn.reply.transcript if turn.reply else None, replies)
            rec.turns.append(TurnResult(
                index=turn.index, utterance_start_ms=at_ms, utterance_end_ms=at_ms, bot_onset_ms=done_ms,
                bot_end_ms=done_ms, latency_ms=round((received - sent) * 1000, 1), ok=verdict.ok,
                reason=verdict.reason, prompt_score=verdict.score,
            ))
            if not verdict.ok:
                problems.append(f"turn {turn.index}: {verdict.reason}")
        rec.duration_ms = round((time.monotonic() - t0) * 1000, 1)
        rec.outcome, rec.reason = (OUTCOME_FAILED, "; ".join(problems)) if problems else (OUTCOME_COMPLETED, None)
