"""The one SIP message parser, on the messages its three users meet: UDP datagrams, captures, pjsua2 text."""

from __future__ import annotations

import pytest

from voiceload.sip.message import SipMessage, canonical, parse_sdp_audio, tag

SDP = ("v=0\r\no=bot 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
       "m=audio 40002 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n")


def msg(*lines: str, body: str = "", end: str = "\r\n") -> SipMessage:
    parsed = SipMessage.parse((end.join(lines) + end + end + body).encode())
    assert parsed is not None
    return parsed


def test_a_request() -> None:
    m = msg("INVITE sip:bot@127.0.0.1:5080 SIP/2.0",
            "Via: SIP/2.0/UDP 127.0.0.1:5000;branch=z9hG4bK1;rport",
            "Via: SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bK0",
            "From: \"Agent\" <sip:agent@127.0.0.1>;tag=abc123",
            "To: <sip:bot@127.0.0.1>",
            "Call-ID: 1234@127.0.0.1",
            "CSeq: 1 INVITE",
            "X-Voiceload-Session: run-a0-7",
            "Content-Length: 0")
    assert m.is_request and (m.method, m.uri, m.status) == ("INVITE", "sip:bot@127.0.0.1:5080", None)
    assert m.start_line == "INVITE sip:bot@127.0.0.1:5080 SIP/2.0"
    assert m.call_id == "1234@127.0.0.1"
    assert (m.cseq, m.cseq_method) == ((1, "INVITE"), "INVITE")
    assert (m.from_tag, m.to_tag) == ("abc123", None)
    assert m.get("x-voiceload-session") == m.get("X-VOICELOAD-SESSION") == "run-a0-7"
    assert m.get("via") == "SIP/2.0/UDP 127.0.0.1:5000;branch=z9hG4bK1;rport"  # the first of several
    assert len(m.all("Via")) == 2
    assert m.get("Subject") is None and m.all("Subject") == []
    assert m.body == b"" and m.media is None


def test_responses() -> None:
    m = msg("SIP/2.0 180 Ringing", "Call-ID: x", "CSeq: 7 invite", "To: <sip:bot@h>;tag=t1")
    assert not m.is_request and (m.status, m.reason, m.method, m.uri) == (180, "Ringing", None, None)
    assert (m.cseq, m.cseq_method, m.to_tag) == ((7, "invite"), "INVITE", "t1")
    assert msg("SIP/2.0 200", "Call-ID: x").status == 200  # no reason phrase
    assert msg("SIP/2.0 503 Service  Unavailable").reason == "Service  Unavailable"  # and no headers at all


def test_compact_header_names() -> None:
    m = msg("BYE sip:bot@h SIP/2.0", "v: SIP/2.0/UDP a", "V: SIP/2.0/UDP b", "f: <sip:a@h>;tag=1",
            "t: <sip:b@h>;tag=2", "i: cid", "m: <sip:a@h:5000>", "l: 0", "CSeq: 2 BYE")
    assert m.get("via") == "SIP/2.0/UDP a" and m.all("VIA") == ["SIP/2.0/UDP a", "SIP/2.0/UDP b"]
    assert (m.call_id, m.from_tag, m.to_tag) == ("cid", "1", "2")
    assert m.get("contact") == "<sip:a@h:5000>" and m.get("m") == "<sip:a@h:5000>"
    assert m.content_length == 0
    assert canonical(" Call-ID ") == canonical("i") == "call-id"


def test_folded_headers_odd_spacing_and_bare_line_feeds() -> None:
    m = msg("OPTIONS  sip:bot@h  SIP/2.0 ",
            "Subject: one,",
            "  two,",
            "\tthree",
            "call-id   :   spaced-out  ",
            "CSeq:1 OPTIONS",
            "cseq: 99 OPTIONS",  # a second one is not the first
            "not a header line",
            "X-Empty:",
            end="\n")
    assert (m.method, m.uri) == ("OPTIONS", "sip:bot@h")
    assert m.get("subject") == "one, two, three"
    assert m.call_id == "spaced-out"
    assert m.cseq == (1, "OPTIONS")
    assert m.get("x-empty") == ""
    assert [name for name, _ in m.headers] == ["Subject", "call-id", "CSeq", "cseq", "X-Empty"]


def test_a_message_with_sdp() -> None:
    m = msg("SIP/2.0 200 OK", "Call-ID: c", "CSeq: 1 INVITE", "Content-Type: application/sdp",
            f"Content-Length: {len(SDP)}", body=SDP)
    assert m.body == SDP.encode()
    assert m.media == ("127.0.0.1", 40002)
    # bytes past Content-Length are not the message's; pjsua2's text parses the same as the datagram
    padded = SipMessage.parse(f"SIP/2.0 200 OK\r\nCall-ID: c\r\nContent-Length: {len(SDP)}\r\n\r\n{SDP}junk")
    assert padded is not None and padded.body == SDP.encode()


def test_sdp_audio_address() -> None:
    media_level = "v=0\r\nc=IN IP4 10.0.0.1\r\nm=audio 4000 RTP/AVP 0\r\nc=IN IP4 10.0.0.2\r\n"
    assert parse_sdp_audio(media_level) == ("10.0.0.2", 4000)
    assert parse_sdp_audio("c=IN IP4 10.0.0.1\nm=video 5000 RTP/AVP 96\nm=audio 4002 RTP/AVP 0\n") == ("10.0.0.1", 4002)
    assert parse_sdp_audio("c=IN IP4 0.0.0.0\r\nm=audio 4000 RTP/AVP 0\r\n") is None  # on hold
    assert parse_sdp_audio("c=IN IP4 10.0.0.1\r\nm=audio 0 RTP/AVP 0\r\n") is None  # stream declined
    assert parse_sdp_audio("m=audio 4000 RTP/AVP 0\r\n") is None  # no address


def test_tags() -> None:
    assert tag("<sip:a@h;tag=inside-uri>") is None  # a URI parameter, not the header's tag
    assert tag("<sip:a@h;transport=udp>;foo=1;TAG = x9 ") == "x9"
    assert tag("sip:a@h;tag=bare") == "bare"
    assert tag('"a>b" <sip:a@h>;tag=q') == "q"
    assert tag(None) is None and tag("") is None


@pytest.mark.parametrize("data", [
    b"",
    b"hello",
    b"hello\r\nworld\r\n\r\n",
    b"\x80\x00\x00\x01" + bytes(range(256)) * 2,  # an RTP packet, with line feeds in its payload
    b"SIP/2.0 abc OK\r\nCall-ID: x\r\n\r\n",
    b"SIP/2.0 99 Too Low\r\n\r\n",
    b"INVITE sip:bot@h SIP/3.0\r\n\r\n",
    b"INVITE sip:bot@h\r\n\r\n",
    b"INVITE sip:bot@h SIP/2.0",  # no line end: not even a start line
    b"INVITE sip:" + b"a" * 4096 + b"@h SIP/2.0\r\n\r\n",
    b"\r\nINVITE sip:bot@h SIP/2.0\r\n\r\n",
])
def test_garbage_is_none(data: bytes) -> None:
    assert SipMessage.parse(data) is None


def test_invalid_utf8_is_replaced_not_fatal() -> None:
    m = SipMessage.parse(b"MESSAGE sip:bot@h SIP/2.0\r\nFrom: \xff\xfe <sip:a@h>;tag=1\r\nCall-ID: c\r\n\r\n\xff")
    assert m is not None and m.from_tag == "1" and m.body == b"\xff"


@pytest.mark.parametrize(("value", "seconds"), [
    ("5", 5), ("120 (I'm in a meeting)", 120), ("18000;duration=3600", 18000), (" 30 ", 30),
    ("soon", None), ("", None), (None, None),
])
def test_retry_after(value: str | None, seconds: int | None) -> None:
    extra = f"Retry-After: {value}\r\n" if value is not None else ""
    msg = SipMessage.parse(f"SIP/2.0 503 Service Unavailable\r\nCSeq: 1 INVITE\r\n{extra}Content-Length: 0\r\n\r\n")
    assert msg is not None and msg.retry_after_s == seconds
