"""Wire messages between coordinator, agents and collector: versioned dataclasses as JSON.

Every message carries `kind` and `v` (the protocol version). A peer that receives another
version refuses it with a clear error instead of guessing at fields.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, field, fields
from typing import Any, ClassVar, TypeVar

PROTOCOL_VERSION = 1

# Protocol facts every role shares (agents, the reference bot, gateways in front of a bot).
SESSION_HEADER = "X-Voiceload-Session"  # carries a call's session id to the far end
CHANNEL_SIP = "sip"  # calls through pjsua2
CHANNEL_REST = "rest"  # the same turns as text to Rasa's REST channel
CHANNELS = (CHANNEL_SIP, CHANNEL_REST)


def session_id(run_id: str, agent_id: str, seq: int) -> str:
    """A call's conversation name: sent as SESSION_HEADER, a gateway's Rasa sender, the REST channel's sender."""
    return f"{run_id}-{agent_id}-{seq}"


# Outcomes of a placed call. `completed` means the whole happy path was walked.
OUTCOME_COMPLETED = "completed"
OUTCOME_FAILED = "failed"  # connected, but a turn was not answered (or not with the expected prompt)
OUTCOME_REJECTED = "rejected"  # final SIP error response to the INVITE
OUTCOME_TIMEOUT = "timeout"  # no final response / no answer in time
OUTCOME_ERROR = "error"  # the agent itself could not place or run the call
OUTCOME_AGENT_LOST = "agent_lost"  # the agent process died with the call in flight or unreported
OUTCOMES = (OUTCOME_COMPLETED, OUTCOME_FAILED, OUTCOME_REJECTED, OUTCOME_TIMEOUT, OUTCOME_ERROR, OUTCOME_AGENT_LOST)

# Where a call's final SIP status came from (CallRecord.sip_origin)
SIP_ORIGIN_REMOTE = "remote"  # a response the far end (or a proxy on the way) sent
SIP_ORIGIN_LOCAL = "local"  # our own SIP stack: a transport error, a transaction timeout, our CANCEL


def sip_rejection(code: int, reason: str, *, remote: bool, retry_after_s: int | None = None,
                  credentials: bool | None = None) -> str:
    """A final error status in words, e.g. `503 Service Unavailable (Retry-After 5)`; the record's `reason`.

    A status our own stack made (no response came) says so: `transport error: Connection refused (local 503)`.
    `credentials` (whether the agent had any) tells a refused password from a missing one on 401/407.
    """
    if not remote:
        if code == 408:  # a transaction timeout: nothing came back
            return f"no final response (local 408 {reason or 'Request Timeout'})"
        if code == 503:  # pjsip's status for a transport failure, with the socket's error as its text
            return f"transport error: {reason or 'unknown'} (local 503)"
        return f"{reason or 'error'} (local {code})"
    text = f"{code} {reason}".rstrip()
    if retry_after_s is not None:
        text += f" (Retry-After {retry_after_s})"
    if code in (401, 407) and credentials is not None:
        text += " (credentials refused)" if credentials else " (no credentials: give --auth)"
    return text


class ProtocolError(ValueError):
    """A message that is not ours, or of another protocol version."""


M = TypeVar("M", bound="Message")


@dataclass
class Message:
    """Base of all wire messages; subclasses set `KIND`."""

    KIND: ClassVar[str] = ""

    def to_json(self) -> bytes:
        body = {"kind": self.KIND, "v": PROTOCOL_VERSION, **self.to_dict()}
        return json.dumps(body, separators=(",", ":")).encode()

    def to_dict(self) -> dict[str, Any]:
        """The wire body without the envelope fields."""
        return asdict(self)

    @classmethod
    def from_json(cls: type[M], payload: bytes | str) -> M:
        try:
            body = json.loads(payload)
        except (ValueError, UnicodeDecodeError) as exc:
            raise ProtocolError(f"not JSON: {exc}") from exc
        if not isinstance(body, dict):
            raise ProtocolError("message is not a JSON object")
        if body.get("v") != PROTOCOL_VERSION:
            raise ProtocolError(
                f"protocol version {body.get('v')!r} refused (this voiceload speaks v{PROTOCOL_VERSION})"
            )
        if body.get("kind") != cls.KIND:
            raise ProtocolError(f"expected a {cls.KIND!r} message, got {body.get('kind')!r}")
        try:
            return cls._from_dict(body)
        except (TypeError, ValueError) as exc:  # a missing field or a malformed nested one
            raise ProtocolError(f"malformed {cls.KIND!r} message: {exc}") from exc

    @classmethod
    def parse_or_warn(cls: type[M], payload: bytes | str, log: logging.Logger) -> M | None:
        """Decode, or log one line saying why the message was ignored (a peer's problem, not ours)."""
        try:
            return cls.from_json(payload)
        except ProtocolError as exc:
            log.warning("ignored %s message: %s", cls.KIND, exc)
            return None

    @classmethod
    def _from_dict(cls: type[M], body: dict[str, Any]) -> M:
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in body.items() if k in names})


@dataclass
class TurnResult:
    """Timing of one caller utterance and the bot's reply, in ms from call answer (wire-referenced)."""

    index: int
    utterance_start_ms: float | None = None
    utterance_end_ms: float | None = None
    bot_onset_ms: float | None = None
    bot_end_ms: float | None = None
    latency_ms: float | None = None
    ok: bool = False
    reason: str | None = None
    prompt_score: float | None = None  # similarity of the bot's reply to the expected prompt (0..1)
    held_ms: float | None = None  # the far end held the call this long while the reply was awaited (not in latency_ms)
    # a DTMF turn's digits (the caller dialled instead of speaking): utterance_start_ms/utterance_end_ms
    # are then its first digit's start and last digit's end, as the sender timed them
    dtmf: str | None = None


@dataclass
class GreetingResult:
    """The bot's first prompt, spoken before the caller's first turn."""

    bot_onset_ms: float | None = None
    bot_end_ms: float | None = None
    ok: bool = False
    reason: str | None = None
    prompt_score: float | None = None


@dataclass
class RtpStats:
    """A call's RTP counters, read before its stream is torn down (docs/results.md, `rtp` keys).

    The agents' C engine and pjsua's own stream (the reference bot) count different things: a key
    its source did not report stays None and is left out of the JSON, so records read as they were
    written. Keys this version does not know are kept in `extra`, in their order, after the known ones.
    """

    rx_packets: int | None = None
    rx_lost: int | None = None
    rx_other_pt: int | None = None  # engine: packets of another payload type (e.g. telephone-event)
    rx_discarded: int | None = None  # pjsua
    rx_jitter_ms_mean: float | None = None
    rx_jitter_ms_max: float | None = None
    rx_delay_ms_max: float | None = None  # engine: the most a packet was taped ahead of its arrival
    rx_sources: int | None = None  # engine: SSRCs the far end sent from (early media and answer may differ)
    tx_packets: int | None = None
    tx_errors: int | None = None  # engine: sends the kernel refused
    late_samples: int | None = None  # engine: received after their part of the tape was written
    # media in the field (engine): what was negotiated, what the far end said in RTCP
    codec: str | None = None  # the negotiated codec (core/mediaprofile.py's names: PCMU, PCMA, G722, opus)
    srtp: bool | None = None  # the call's media was SRTP (AES_CM_128_HMAC_SHA1_80)
    rx_cn: int | None = None  # comfort-noise packets (PT 13): taped as silence
    rx_dtmf: int | None = None  # telephone-event packets (RFC 4733) received
    rx_foreign: int | None = None  # packets from another address than the far end's negotiated one
    rx_auth_failed: int | None = None  # SRTP packets that failed authentication or replay checks (dropped)
    rtcp_tx: int | None = None  # RTCP reports sent
    rtcp_rx: int | None = None  # RTCP reports received
    rtt_ms_mean: float | None = None  # round trip from the far end's RTCP reports (LSR/DLSR), when it sent any
    rtt_ms_max: float | None = None
    far_lost: int | None = None  # the far end's last report: packets of ours it lost, cumulative
    far_jitter_ms: float | None = None  # the far end's last report: its interarrival jitter of our stream
    jbuf_delay_ms_mean: int | None = None  # pjsua's jitter buffer
    jbuf_empty: int | None = None
    jbuf_discard: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        known = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "extra"}
        return {**{k: v for k, v in known.items() if v is not None}, **self.extra}

    @classmethod
    def from_dict(cls, body: dict[str, Any]) -> RtpStats:
        names = {f.name for f in fields(cls)} - {"extra"}
        return cls(**{k: v for k, v in body.items() if k in names},
                   extra={k: v for k, v in body.items() if k not in names})


@dataclass
class CallQuality:
    """ITU-T G.107 E-model of one call's audio as we received it (core/emodel.py says how)."""

    r_factor: float  # 0..100 (93.2: G.711 with no loss and little delay)
    mos: float  # 1..4.5, the listening quality estimated from R
    loss_pct: float  # packet loss the estimate used (ours as receiver)
    delay_ms: float  # one-way delay it used: half the RTCP round trip (when known), packetisation, a jitter buffer
    codec: str | None = None


@dataclass
class DtmfEvent:
    """A DTMF digit the far end sent."""

    digit: str  # 0-9, *, #, A-D
    at_ms: float  # its start, ms after the answer (tape time)
    duration_ms: float
    method: str = "rfc4733"  # rfc4733 | info


@dataclass
class CallRecord(Message):
    """Exactly one per placed call: the unit the collector counts and deduplicates."""

    KIND: ClassVar[str] = "call"

    run_id: str
    agent_id: str
    call_id: str  # SIP Call-ID
    seq: int  # the agent's call counter, for tracing
    outcome: str
    sip_code: int | None = None
    reason: str | None = None
    # the final SIP status in parts (new in 1, optional: records without them read as None)
    sip_reason: str | None = None  # its reason phrase; pjsip's error text when local, e.g. "Connection refused"
    sip_origin: str | None = None  # SIP_ORIGIN_REMOTE | SIP_ORIGIN_LOCAL; None: unknown (no SIP, older agent)
    retry_after_s: int | None = None  # the final response's Retry-After, when it carried one
    started_at: float = 0.0  # unix time the INVITE was sent
    setup_ms: float | None = None  # INVITE sent -> 200 OK received
    ringing_ms: float | None = None  # INVITE sent -> first 18x received
    duration_ms: float | None = None  # answer -> disconnect
    hangup_by: str | None = None  # "caller" | "bot" | None
    greeting: GreetingResult | None = None
    turns: list[TurnResult] = field(default_factory=list)
    rtp: RtpStats | None = None  # rx/tx packet counts, loss, jitter, read before stream teardown
    clock_slip_ms: float | None = None  # generator health: the agent's audio clock vs wall time
    source_address: str | None = None  # the local IP the call's SIP and RTP came from (--bind)
    held_ms: float | None = None  # the far end held the call (sendonly, inactive, c=0.0.0.0) this long in all
    media_moves: int | None = None  # times the far end moved its RTP address after media started
    quality: CallQuality | None = None  # the E-model's estimate of the call's listening quality (core/emodel.py)
    dtmf_received: list[DtmfEvent] = field(default_factory=list)  # digits the far end sent (RFC 4733 or INFO)
    # the call's tape when kept (--keep-tapes): its path relative to the run dir (OUT), e.g.
    # "tapes/<run>-<agent>/3.wav", and where its sample 0 lies in ms from the answer (turn times are from the answer)
    tape: str | None = None
    tape_start_ms: float | None = None

    @classmethod
    def _from_dict(cls, body: dict[str, Any]) -> CallRecord:
        rec = super()._from_dict(body)
        if isinstance(rec.greeting, dict):
            rec.greeting = GreetingResult(**rec.greeting)
        rec.turns = [TurnResult(**t) if isinstance(t, dict) else t for t in rec.turns]
        if isinstance(rec.rtp, dict):
            rec.rtp = RtpStats.from_dict(rec.rtp)
        if isinstance(rec.quality, dict):
            rec.quality = CallQuality(**rec.quality)
        rec.dtmf_received = [DtmfEvent(**d) if isinstance(d, dict) else d for d in rec.dtmf_received]
        return rec

    def to_dict(self) -> dict[str, Any]:
        """The calls.jsonl line (schema 1): the wire body without the envelope fields."""
        body = asdict(self)
        body["rtp"] = None if self.rtp is None else self.rtp.to_dict()
        return body

    @classmethod
    def from_dict(cls, body: dict[str, Any]) -> CallRecord:
        """A calls.jsonl line back into a record (TypeError/ValueError when malformed)."""
        return cls._from_dict(body)


@dataclass
class Heartbeat(Message):
    """Periodic agent health; the collector uses it to judge whether the generator was overloaded."""

    KIND: ClassVar[str] = "heartbeat"

    run_id: str
    agent_id: str
    at: float  # unix time
    active_calls: int
    placed: int
    finished: int
    cpu_percent: float  # this agent process, share of one core, over the last interval
    pump_lag_ms_max: float  # worst lateness of the event pump over the last interval
    max_calls: int  # this agent's call capacity
    # worst lateness of the agent's media clock (the RTP engine's 20 ms tick) over the last interval:
    # a late tick sends its frames late, which the tape shows but a turn's latency then carries
    media_lag_ms_max: float = 0.0
    # turn index -> encoded HDR histogram (integer µs) of the turn latencies measured in this
    # interval; the live view merges these. calls.jsonl records stay the summary's source of truth.
    latency_hdr: dict[str, str] = field(default_factory=dict)


@dataclass
class Assign(Message):
    """Coordinator -> agent: keep `concurrency` calls in flight until `calls` have been placed."""

    KIND: ClassVar[str] = "assign"

    run_id: str
    agent_id: str
    concurrency: int
    calls: int
    stop: bool = False  # stop placing new calls (in-flight calls finish)
    max_starts_per_s: float | None = None  # this agent's share of the run's call-start cap; None: its default


@dataclass
class AgentState(Message):
    """Agent lifecycle: `ready` once its SIP stack is up, `done` once its quota is finished, or `error`."""

    KIND: ClassVar[str] = "agent_state"

    run_id: str
    agent_id: str
    state: str  # "ready" | "done" | "error"
    placed: int = 0
    finished: int = 0
    detail: str | None = None


@dataclass
class CallStarted(Message):
    """Agent -> collector when a call is placed: lets a lost agent's calls still end as records."""

    KIND: ClassVar[str] = "call_started"

    run_id: str
    agent_id: str
    seq: int
    call_id: str
    started_at: float


@dataclass
class Ack(Message):
    """Collector -> agent: records (by the agent's `seq`) written to calls.jsonl; the agent may forget them."""

    KIND: ClassVar[str] = "ack"

    run_id: str
    agent_id: str
    seqs: list[int] = field(default_factory=list)
