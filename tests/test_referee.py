"""The wire referee on synthetic captures whose every packet time is known."""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

import numpy as np
import pytest

from voiceload.audio import g711
from voiceload.audio.vad import SAMPLE_RATE
from voiceload.tools import referee

PTIME = 160  # samples per 20 ms packet
Addr = tuple[str, int]


# ---------------------------------------------------------------- writers (test-only)


def ipv4_udp(src: Addr, dst: Addr, payload: bytes) -> bytes:
    udp = struct.pack("!HHHH", src[1], dst[1], 8 + len(payload), 0) + payload
    ip = struct.pack(
        "!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 0, 0x4000, 64, 17, 0,
        bytes(map(int, src[0].split("."))), bytes(map(int, dst[0].split("."))),
    )
    return ip + udp


def frame(link: int, packet: bytes) -> bytes:
    if link == 1:  # Ethernet as on lo: zero MACs
        return b"\x00" * 12 + b"\x08\x00" + packet
    if link == 113:  # Linux cooked v1
        return struct.pack("!HHH8sH", 0, 772, 6, b"\x00" * 8, 0x0800) + packet
    if link == 276:  # Linux cooked v2
        return struct.pack("!HHIHBB8s", 0x0800, 0, 1, 772, 0, 6, b"\x00" * 8) + packet
    assert link == 101
    return packet


def pcap(records: list[tuple[float, bytes]], *, link: int = 1, endian: str = "<", ns: bool = False) -> bytes:
    magic = 0xA1B23C4D if ns else 0xA1B2C3D4
    out = [struct.pack(endian + "IHHiIII", magic, 2, 4, 0, 0, 65535, link)]
    scale = 1_000_000_000 if ns else 1_000_000
    for t, pkt in records:
        f = frame(link, pkt)
        sec = int(t)
        sub = round((t - sec) * scale)
        out.append(struct.pack(endian + "IIII", sec, sub, len(f), len(f)) + f)
    return b"".join(out)


def sdp(port: int) -> str:
    lines = ["v=0", "o=- 1 1 IN IP4 127.0.0.1", "s=-", "c=IN IP4 127.0.0.1", "t=0 0"]
    lines.append(f"m=audio {port} RTP/AVP 0")
    return "\r\n".join(lines) + "\r\n"


def sip(first: str, headers: list[str], body: str = "") -> bytes:
    lines = [first, *headers, f"Content-Length: {len(body)}"]
    if body:
        lines.insert(-1, "Content-Type: application/sdp")
    return ("\r\n".join(lines) + "\r\n\r\n" + body).encode()


def rtp(seq: int, ts: int, ssrc: int, payload: bytes) -> bytes:
    return struct.pack("!BBHII", 0x80, 0, seq & 0xFFFF, ts & 0xFFFFFFFF, ssrc) + payload


def tone(n: int) -> np.ndarray:
    """2 kHz at a 45° phase: every sample is ±0.707 of full scale, so edges are exact to the sample."""
    k = np.arange(n)
    return (12000 * np.sin(np.pi * k / 2 + np.pi / 4)).astype(np.int16)


@dataclass
class Stream:
    """One RTP direction: samples and a packet schedule with known capture times."""

    src: Addr
    dst: Addr
    samples: np.ndarray
    t0: float
    seq0: int = 1000
    ssrc: int = 0x1234
    jitter: list[float] = field(default_factory=lambda: [0.0, 0.0013, 0.0031, 0.0007, 0.0022])
    drop: set[int] = field(default_factory=set)
    duplicate: set[int] = field(default_factory=set)

    def time(self, k: int) -> float:
        return self.t0 + k * 0.020 + self.jitter[k % len(self.jitter)]

    def sample_time(self, index: int) -> float:
        return self.time(index // PTIME) + (index % PTIME) / SAMPLE_RATE

    def records(self) -> list[tuple[float, bytes]]:
        out = []
        for k in range(len(self.samples) // PTIME):
            if k in self.drop:
                continue
            payload = g711.encode(self.samples[k * PTIME : (k + 1) * PTIME]).tobytes()
            pkt = ipv4_udp(self.src, self.dst, rtp(self.seq0 + k, k * PTIME, self.ssrc, payload))
            out.append((self.time(k), pkt))
            if k in self.duplicate:
                out.append((self.time(k) + 0.0001, pkt))
        return out


def speech(total_s: float, spans: list[tuple[int, int]]) -> np.ndarray:
    """Silence with tone bursts over the given [start, end) sample spans."""
    x = np.zeros(round(total_s * SAMPLE_RATE), dtype=np.int16)
    for s, e in spans:
        x[s:e] = tone(e - s)
    return x


CALLER_SIP: Addr = ("127.0.0.1", 5062)
BOT_SIP: Addr = ("127.0.0.1", 5060)


def invite(call_id: str, to: Addr, media_port: int, *, compact: bool = False, cseq: int = 1) -> bytes:
    cid = f"i: {call_id}" if compact else f"Call-ID: {call_id}"
    return sip(
        f"INVITE sip:bot@{to[0]}:{to[1]} SIP/2.0",
        [
            f"Via: SIP/2.0/UDP 127.0.0.1:{CALLER_SIP[1]};branch=z9hG4bK{cseq}",
            "From: <sip:caller@127.0.0.1>;tag=caller1", f"To: <sip:bot@{to[0]}>", cid, f"CSeq: {cseq} INVITE",
        ],
        sdp(media_port),
    )


def response(
    code: str, call_id: str, *, cseq: int = 1, media_port: int | None = None, compact: bool = False
) -> bytes:
    cid = f"i: {call_id}" if compact else f"Call-ID: {call_id}"
    headers = [
        f"Via: SIP/2.0/UDP 127.0.0.1:{CALLER_SIP[1]};branch=z9hG4bK{cseq}",
        "From: <sip:caller@127.0.0.1>;tag=caller1", "To: <sip:bot@127.0.0.1>;tag=bot1", cid,
        f"CSeq: {cseq} INVITE",
    ]
    if code.startswith("302"):
        headers.append("Contact: <sip:bot@127.0.0.1:5070>")
    return sip(f"SIP/2.0 {code}", headers, sdp(media_port) if media_port else "")


# Caller: turn 0 at 1.0-2.2 s, turn 1 at 4.0-4.9 s. Bot: greeting 0.2-0.8 s (before turn 0, so no
# turn), reply 0 starts mid-packet at 3.01 s, reply 1 at 5.5 s.
CALLER_SPANS = [(8000, 17600), (32000, 39200)]
BOT_SPANS = [(1600, 6400), (24080, 30480), (44000, 50400)]


def one_call(
    call_id: str, *, t_invite: float, caller_media: Addr, bot_media: Addr, redirect: bool = False,
    caller_seq0: int = 65400,
) -> tuple[list[tuple[float, bytes]], float, Stream, Stream]:
    """Records of a whole call plus its answer time and the two streams (for expected values)."""
    recs: list[tuple[float, bytes]] = []
    bot_sip = BOT_SIP
    if redirect:
        recs.append((t_invite, ipv4_udp(CALLER_SIP, BOT_SIP, invite(call_id, BOT_SIP, 39998))))
        moved = response("302 Moved Temporarily", call_id)
        recs.append((t_invite + 0.002, ipv4_udp(BOT_SIP, CALLER_SIP, moved)))
        bot_sip = ("127.0.0.1", 5070)
        t_invite += 0.005
    recs.append((t_invite, ipv4_udp(CALLER_SIP, bot_sip, invite(call_id, bot_sip, caller_media[1],
                                                              compact=redirect, cseq=2 if redirect else 1))))
    recs.append((t_invite + 0.001, ipv4_udp(bot_sip, CALLER_SIP, response("100 Trying", call_id))))
    answer = t_invite + 0.030
    ok = response("200 OK", call_id, media_port=bot_media[1], compact=redirect, cseq=2 if redirect else 1)
    recs.append((answer, ipv4_udp(bot_sip, CALLER_SIP, ok)))
    recs.append((answer + 0.5, ipv4_udp(bot_sip, CALLER_SIP, ok)))  # retransmission: not the answer
    up = Stream(caller_media, bot_media, speech(7.0, CALLER_SPANS), t0=answer + 0.012, seq0=caller_seq0,
                drop={120}, duplicate={60})
    down = Stream(bot_media, caller_media, speech(7.0, BOT_SPANS), t0=answer + 0.004, seq0=7, ssrc=0x9999)
    recs += up.records() + down.records()
    return sorted(recs, key=lambda r: r[0]), answer, up, down


def expected_turns(answer: float, up: Stream, down: Stream) -> list[tuple[int, float, float]]:
    ends = [up.sample_time(e - 1) + 1 / SAMPLE_RATE for _, e in CALLER_SPANS]
    onsets = [down.sample_time(BOT_SPANS[1][0]), down.sample_time(BOT_SPANS[2][0])]
    return [(i, (ends[i] - answer) * 1000, (onsets[i] - answer) * 1000) for i in range(2)]


def check(wire: referee.CallWire, answer: float, up: Stream, down: Stream) -> None:
    assert wire.answer_time == pytest.approx(answer, abs=2e-6)
    assert len(wire.caller_speech) == 2 and len(wire.bot_speech) == 3
    turns = referee.wire_turns(wire)
    assert [t.index for t in turns] == [0, 1]
    for t, (i, end_ms, onset_ms) in zip(turns, expected_turns(answer, up, down), strict=True):
        assert t.index == i
        assert t.caller_end_ms == pytest.approx(end_ms, abs=1.0)
        assert t.bot_onset_ms == pytest.approx(onset_ms, abs=1.0)
        assert t.latency_ms == pytest.approx(onset_ms - end_ms, abs=1.0)


# ---------------------------------------------------------------- tests


@pytest.mark.parametrize(("link", "endian", "ns"), [(1, "<", False), (1, ">", True), (113, "<", False),
                                                    (276, ">", False), (101, "<", True)])
def test_call_turns_from_capture(link: int, endian: str, ns: bool) -> None:
    recs, answer, up, down = one_call(
        "abc@host", t_invite=1700000000.25, caller_media=("127.0.0.1", 40000), bot_media=("127.0.0.1", 41000)
    )
    calls = referee.analyse_pcap(pcap(recs, link=link, endian=endian, ns=ns))
    assert set(calls) == {"abc@host"}
    check(calls["abc@host"], answer, up, down)


def test_redirect_uses_the_last_invite_media() -> None:
    recs, answer, up, down = one_call(
        "redir-1", t_invite=1000.0, caller_media=("127.0.0.1", 40002), bot_media=("127.0.0.1", 42000),
        redirect=True, caller_seq0=10,
    )
    calls = referee.analyse_pcap(pcap(recs))
    check(calls["redir-1"], answer, up, down)


def test_reused_media_ports_go_to_the_later_call() -> None:
    a, ans_a, up_a, down_a = one_call(
        "call-a", t_invite=100.0, caller_media=("127.0.0.1", 40000), bot_media=("127.0.0.1", 41000)
    )
    b, ans_b, up_b, down_b = one_call(
        "call-b", t_invite=110.0, caller_media=("127.0.0.1", 40000), bot_media=("127.0.0.1", 41000)
    )
    calls = referee.analyse_pcap(pcap(a + b))
    check(calls["call-a"], ans_a, up_a, down_a)
    check(calls["call-b"], ans_b, up_b, down_b)


def test_non_matching_traffic_is_ignored() -> None:
    recs, answer, up, down = one_call(
        "x", t_invite=50.0, caller_media=("127.0.0.1", 40000), bot_media=("127.0.0.1", 41000)
    )
    noise = [
        (50.1, ipv4_udp(("127.0.0.1", 1), ("127.0.0.1", 41000), b"\x00" * 40)),  # not RTP v2
        (50.2, ipv4_udp(("127.0.0.1", 1), ("127.0.0.1", 43000), rtp(1, 0, 5, b"\x00" * 160))),  # unknown port
        (50.3, ipv4_udp(("127.0.0.1", 1), ("127.0.0.1", 5060), b"\x16\x03\x01garbage")),
    ]
    frag = bytearray(ipv4_udp(("127.0.0.1", 1), ("127.0.0.1", 41000), rtp(3, 0, 5, b"\x00" * 160)))
    frag[6:8] = b"\x20\x00"  # more fragments
    noise.append((50.4, bytes(frag)))
    calls = referee.analyse_pcap(pcap(sorted(recs + noise, key=lambda r: r[0])))
    check(calls["x"], answer, up, down)


def test_rejects_pcapng() -> None:
    with pytest.raises(referee.PcapError):
        referee.analyse_pcap(b"\x0a\x0d\x0d\x0a" + b"\x00" * 40)


def test_sdp_media_level_connection_wins() -> None:
    body = "\r\n".join(
        ["v=0", "c=IN IP4 10.0.0.1", "m=audio 4000 RTP/AVP 0", "c=IN IP4 10.0.0.2",
         "m=video 5000 RTP/AVP 96", "c=IN IP4 10.0.0.3", ""]
    )
    assert referee.parse_sdp_audio(body) == ("10.0.0.2", 4000)
    assert referee.parse_sdp_audio("c=IN IP4 0.0.0.0\r\nm=audio 4000 RTP/AVP 0\r\n") is None


def test_compare_and_summary() -> None:
    wire = {"c": [referee.WireTurn(0, 1000.0, 1500.0, 500.0), referee.WireTurn(2, 3000.0, 3700.0, 700.0)]}
    errors = referee.compare(wire, {("c", 0): 510.0, ("c", 1): 1.0, ("c", 2): 665.0, ("d", 0): 9.0})
    assert errors == [10.0, -35.0]
    s = referee.summary(errors)
    assert s["count"] == 2 and s["mean_ms"] == -12.5 and s["max_abs_ms"] == 35.0
    assert s["within_20ms"] == 0.5 and s["within_40ms"] == 1.0
    assert referee.summary([])["count"] == 0
