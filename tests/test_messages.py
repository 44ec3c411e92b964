"""Wire messages: every kind survives JSON, and a peer of another protocol version is refused."""

from __future__ import annotations

import json

import pytest

from voiceload.protocol import (
    PROTOCOL_VERSION,
    SIP_ORIGIN_REMOTE,
    AgentState,
    Assign,
    CallRecord,
    GreetingResult,
    Heartbeat,
    ProtocolError,
    RtpStats,
    TurnResult,
    sip_rejection,
)


def full_record() -> CallRecord:
    return CallRecord(
        run_id="r1", agent_id="a1", call_id="abc@127.0.0.1", seq=7, outcome="completed", sip_code=200,
        started_at=1_700_000_000.25, setup_ms=12.5, ringing_ms=3.0, duration_ms=9000.0, hangup_by="caller",
        greeting=GreetingResult(bot_onset_ms=310.0, bot_end_ms=2100.0, ok=True, prompt_score=0.93),
        turns=[
            TurnResult(index=0, utterance_start_ms=2600.0, utterance_end_ms=4100.0, bot_onset_ms=4650.0,
                       bot_end_ms=6000.0, latency_ms=550.0, ok=True, prompt_score=0.9),
            TurnResult(index=1, ok=False, reason="no_reply"),
        ],
        rtp=RtpStats(rx_packets=450, tx_packets=449, rx_jitter_ms_max=1.25),
    )


def test_call_record_roundtrip_keeps_nested_results() -> None:
    rec = full_record()
    back = CallRecord.from_json(rec.to_json())
    assert back == rec
    assert isinstance(back.greeting, GreetingResult)
    assert all(isinstance(t, TurnResult) for t in back.turns)
    assert isinstance(back.rtp, RtpStats) and back.rtp.rx_packets == 450


ENGINE_RTP = {"rx_packets": 592, "rx_lost": 0, "rx_other_pt": 1, "rx_jitter_ms_mean": 0.3,
              "rx_jitter_ms_max": 1.1, "rx_delay_ms_max": 2.4, "tx_packets": 590, "tx_errors": 0, "late_samples": 0}
PJSUA_RTP = {"rx_packets": 450, "rx_lost": 2, "rx_discarded": 0, "rx_jitter_ms_mean": 0.25, "rx_jitter_ms_max": 3.0,
             "tx_packets": 449, "jbuf_delay_ms_mean": 40, "jbuf_empty": 3, "jbuf_discard": 0}


@pytest.mark.parametrize("rtp", [
    ENGINE_RTP, PJSUA_RTP, {}, None,
    {"rx_packets": 450, "tx_packets": 449},  # an older record: fewer keys
    {"rx_packets": 450, "tx_packets": 449, "loss": 0, "jitter_ms": 0.4},  # keys this version does not know
])
def test_rtp_stats_json_is_what_was_written(rtp: dict[str, object] | None) -> None:
    """Each source's keys, in its order, and nothing else: calls.jsonl lines read back as they were."""
    line = json.dumps({**full_record().to_dict(), "rtp": rtp}, separators=(",", ":"))
    rec = CallRecord.from_dict(json.loads(line))
    assert rec.rtp is None if rtp is None else isinstance(rec.rtp, RtpStats)
    assert json.dumps(rec.to_dict(), separators=(",", ":")) == line
    assert json.loads(CallRecord.from_json(rec.to_json()).to_json())["rtp"] == rtp
    if rtp == ENGINE_RTP:
        assert rec.rtp is not None and (rec.rtp.rx_other_pt, rec.rtp.late_samples, rec.rtp.jbuf_empty) == (1, 0, None)


@pytest.mark.parametrize("msg", [
    Heartbeat(run_id="r1", agent_id="a1", at=1.5, active_calls=3, placed=10, finished=7, cpu_percent=41.5,
              pump_lag_ms_max=12.0, max_calls=4),
    Assign(run_id="r1", agent_id="a1", concurrency=4, calls=100, stop=False),
    AgentState(run_id="r1", agent_id="a1", state="done", placed=100, finished=100, detail=None),
])
def test_other_kinds_roundtrip(msg: Heartbeat | Assign | AgentState) -> None:
    assert type(msg).from_json(msg.to_json()) == msg


def test_envelope_carries_kind_and_version_but_to_dict_does_not() -> None:
    body = json.loads(full_record().to_json())
    assert body["kind"] == "call" and body["v"] == PROTOCOL_VERSION
    line = full_record().to_dict()
    assert "kind" not in line and "v" not in line and line["call_id"] == "abc@127.0.0.1"


def test_other_protocol_version_is_refused_by_name() -> None:
    body = json.loads(full_record().to_json())
    body["v"] = PROTOCOL_VERSION + 1
    with pytest.raises(ProtocolError, match="version"):
        CallRecord.from_json(json.dumps(body))
    del body["v"]
    with pytest.raises(ProtocolError, match="version"):
        CallRecord.from_json(json.dumps(body))


def test_wrong_kind_and_garbage_are_protocol_errors() -> None:
    hb = Heartbeat("r1", "a1", 1.0, 0, 0, 0, 0.0, 0.0, 4)
    with pytest.raises(ProtocolError, match="expected a 'call' message"):
        CallRecord.from_json(hb.to_json())
    with pytest.raises(ProtocolError, match="not JSON"):
        CallRecord.from_json(b"\xff{")
    with pytest.raises(ProtocolError, match="not a JSON object"):
        CallRecord.from_json(b"[1, 2]")


def test_unknown_fields_of_the_same_version_are_ignored() -> None:
    body = json.loads(AgentState("r1", "a1", "ready").to_json())
    body["added_later"] = 1
    assert AgentState.from_json(json.dumps(body)) == AgentState("r1", "a1", "ready")


def test_call_record_sip_fields_are_optional_both_ways() -> None:
    """Records of an older agent (no sip_reason/sip_origin/retry_after_s) still read; new ones round-trip."""
    old = {"kind": "call", "v": 1, "run_id": "r", "agent_id": "a0", "call_id": "c", "seq": 1,
           "outcome": "rejected", "sip_code": 486, "reason": "486 Busy Here"}
    rec = CallRecord.from_json(json.dumps(old))
    assert (rec.sip_reason, rec.sip_origin, rec.retry_after_s) == (None, None, None)
    rec.sip_reason, rec.sip_origin, rec.retry_after_s = "Service Unavailable", SIP_ORIGIN_REMOTE, 5
    back = CallRecord.from_json(rec.to_json())
    assert (back.sip_reason, back.sip_origin, back.retry_after_s) == ("Service Unavailable", "remote", 5)


def test_sip_rejection_in_words() -> None:
    assert sip_rejection(486, "Busy Here", remote=True) == "486 Busy Here"
    assert sip_rejection(503, "Service Unavailable", remote=True, retry_after_s=5) == \
        "503 Service Unavailable (Retry-After 5)"
    assert sip_rejection(407, "Proxy Authentication Required", remote=True, credentials=True) == \
        "407 Proxy Authentication Required (credentials refused)"
    assert sip_rejection(401, "Unauthorized", remote=True, credentials=False) == \
        "401 Unauthorized (no credentials: give --auth)"
    assert sip_rejection(403, "Forbidden", remote=True, credentials=True) == "403 Forbidden"
    assert sip_rejection(503, "Connection refused", remote=False) == "transport error: Connection refused (local 503)"
    assert sip_rejection(408, "Request Timeout", remote=False) == "no final response (local 408 Request Timeout)"
