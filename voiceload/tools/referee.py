"""Independent latency referee: per-turn timing read from a packet capture of the calls.

The agent and the reference bot each time turns on their own audio tapes; both can be wrong in
the same way (jitter buffers, clock offsets, tape alignment). This module times the same turns on
the wire instead: it reads a libpcap capture, follows SIP to learn each call's media addresses and
answer instant, decodes the PCMU RTP of both directions and runs the very same `speech_segments`
rule on it. Every decoded sample carries the capture time of its packet (+ its offset inside the
packet), so a speech edge becomes a wire time.

Pure: bytes in, dataclasses out. No sockets, files or clocks.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from voiceload.audio import g711
from voiceload.audio.vad import SAMPLE_RATE, speech_segments
from voiceload.sip.message import SipMessage, parse_sdp_audio

HANGOVER_MS = 400  # same as the agent's and bot's reply analysis, so segments are comparable
PT_PCMU = 0
MAX_GAP_FILL_PACKETS = 50  # 1 s of silence for lost packets: more than any hangover, bounded memory

# link types
LINK_NULL = 0
LINK_EN10MB = 1
LINK_RAW = 101
LINK_LINUX_SLL = 113
LINK_LINUX_SLL2 = 276

ETH_IPV4 = 0x0800
ETH_VLAN = (0x8100, 0x88A8)


# ---------------------------------------------------------------- pcap -> UDP datagrams


class PcapError(ValueError):
    """The bytes are not a classic libpcap capture this reader understands."""


@dataclass(frozen=True)
class Datagram:
    """One IPv4/UDP datagram with its capture time (s, capture clock)."""

    time: float
    src: tuple[str, int]
    dst: tuple[str, int]
    payload: bytes


def _ip(b: bytes) -> str:
    return f"{b[0]}.{b[1]}.{b[2]}.{b[3]}"


def _ipv4_udp(pkt: bytes, time: float) -> Datagram | None:
    """The UDP datagram inside an IPv4 packet, or None (other protocol, fragment, truncated)."""
    if len(pkt) < 20 or pkt[0] >> 4 != 4:
        return None
    ihl = (pkt[0] & 0x0F) * 4
    total = int.from_bytes(pkt[2:4], "big")
    flags_frag = int.from_bytes(pkt[6:8], "big")
    if pkt[9] != 17 or ihl < 20 or flags_frag & 0x3FFF:  # not UDP, or MF set / non-zero offset
        return None
    if total > len(pkt) or total < ihl + 8:  # truncated by the snap length, or bogus
        return None
    udp = pkt[ihl:total]
    ulen = int.from_bytes(udp[4:6], "big")
    if ulen < 8 or ulen > len(udp):
        return None
    src = (_ip(pkt[12:16]), int.from_bytes(udp[0:2], "big"))
    dst = (_ip(pkt[16:20]), int.from_bytes(udp[2:4], "big"))
    return Datagram(time, src, dst, bytes(udp[8:ulen]))


def _network_layer(link: int, frame: bytes) -> tuple[int, bytes] | None:
    """(ethertype, network packet) of a link-layer frame; None when the link type is unknown."""
    if link == LINK_EN10MB:
        if len(frame) < 14:
            return None
        off, etype = 14, int.from_bytes(frame[12:14], "big")
        while etype in ETH_VLAN and len(frame) >= off + 4:
            etype = int.from_bytes(frame[off + 2 : off + 4], "big")
            off += 4
        return etype, frame[off:]
    if link == LINK_LINUX_SLL:
        return (int.from_bytes(frame[14:16], "big"), frame[16:]) if len(frame) >= 16 else None
    if link == LINK_LINUX_SLL2:
        return (int.from_bytes(frame[0:2], "big"), frame[20:]) if len(frame) >= 20 else None
    if link == LINK_RAW:
        return (ETH_IPV4 if frame[:1] and frame[0] >> 4 == 4 else 0), frame
    if link == LINK_NULL:  # BSD loopback: address family in the writer's byte order, AF_INET = 2
        if len(frame) < 4:
            return None
        fam = frame[:4]
        return (ETH_IPV4 if fam in (b"\x02\x00\x00\x00", b"\x00\x00\x00\x02") else 0), frame[4:]
    return None


def read_pcap(data: bytes) -> Iterator[Datagram]:
    """IPv4/UDP datagrams of a classic libpcap file, in file order; everything else is skipped."""
    if len(data) < 24:
        raise PcapError("too short for a pcap global header")
    magic = data[:4]
    formats = {
        b"\xd4\xc3\xb2\xa1": ("<", 1e-6), b"\xa1\xb2\xc3\xd4": (">", 1e-6),
        b"\x4d\x3c\xb2\xa1": ("<", 1e-9), b"\xa1\xb2\x3c\x4d": (">", 1e-9),
    }
    if magic == b"\x0a\x0d\x0d\x0a":
        raise PcapError("pcapng is not supported: capture with `tcpdump -w`, or `editcap -F pcap` it")
    if magic not in formats:
        raise PcapError(f"not a pcap file (magic {magic.hex()})")
    endian, frac = formats[magic]
    link = struct.unpack(endian + "I", data[20:24])[0] & 0x0FFFFFFF  # upper bits: FCS info
    if link not in (LINK_NULL, LINK_EN10MB, LINK_RAW, LINK_LINUX_SLL, LINK_LINUX_SLL2):
        raise PcapError(f"unsupported link type {link}")
    rec = struct.Struct(endian + "IIII")
    off = 24
    while off + 16 <= len(data):
        sec, sub, caplen, _wirelen = rec.unpack_from(data, off)
        off += 16
        frame = data[off : off + caplen]
        off += caplen
        if len(frame) < caplen:
            break  # file cut mid-record (capture still running or killed)
        net = _network_layer(link, frame)
        if net is None or net[0] != ETH_IPV4:
            continue
        dg = _ipv4_udp(net[1], sec + sub * frac)
        if dg is not None:
            yield dg


# ---------------------------------------------------------------- SIP


def parse_sip(payload: bytes) -> SipMessage | None:
    """A SIP request or response with a Call-ID and CSeq, or None when the payload is not SIP."""
    msg = SipMessage.parse(payload)
    return msg if msg is not None and msg.call_id and msg.cseq is not None else None


# ---------------------------------------------------------------- RTP (PCMU: voiceload.audio.g711)


@dataclass(frozen=True)
class RtpPacket:
    time: float
    ssrc: int
    seq: int
    payload: bytes  # PCMU bytes, one per sample


def parse_rtp_pcmu(payload: bytes, time: float) -> RtpPacket | None:
    """An RTP v2 PCMU packet, or None (other version or payload type, malformed)."""
    if len(payload) < 12 or payload[0] >> 6 != 2 or payload[1] & 0x7F != PT_PCMU:
        return None
    off = 12 + 4 * (payload[0] & 0x0F)
    end = len(payload)
    if payload[0] & 0x10:  # header extension
        if end < off + 4:
            return None
        off += 4 + 4 * int.from_bytes(payload[off + 2 : off + 4], "big")
    if payload[0] & 0x20:  # padding, count in the last byte
        end -= payload[-1]
    if off >= end:
        return None
    seq = int.from_bytes(payload[2:4], "big")
    ssrc = int.from_bytes(payload[8:12], "big")
    return RtpPacket(time, ssrc, seq, payload[off:end])


def _unwrap(packets: list[RtpPacket]) -> list[tuple[int, RtpPacket]]:
    """(extended sequence number, packet) in capture order; 16-bit wrap followed both ways."""
    out: list[tuple[int, RtpPacket]] = []
    ext = 0
    prev: int | None = None
    for p in packets:
        if prev is None:
            ext = p.seq
        else:
            delta = (p.seq - prev) & 0xFFFF
            ext += delta - 0x10000 if delta >= 0x8000 else delta
        prev = p.seq
        out.append((ext, p))
    return out


@dataclass
class Timeline:
    """Decoded samples of one stream plus the wire time of each packet's first sample."""

    samples: npt.NDArray[np.int16]
    starts: npt.NDArray[np.int64]  # sample index where each packet (or gap filler) begins
    times: npt.NDArray[np.float64]  # capture time of that packet

    def wire_time(self, index: int) -> float:
        """Capture time of the packet holding sample `index` + the sample's offset in the packet."""
        k = int(np.searchsorted(self.starts, index, side="right")) - 1
        return float(self.times[k]) + (index - int(self.starts[k])) / SAMPLE_RATE


def build_timeline(packets: list[RtpPacket]) -> Timeline:
    """One SSRC's packets in sequence order; duplicates dropped, lost packets filled with silence.

    Duplicates happen with `tcpdump -i any` (loopback packets seen twice); the earliest copy wins.
    """
    best: dict[int, RtpPacket] = {}
    for ext, p in _unwrap(packets):
        if ext not in best or p.time < best[ext].time:
            best[ext] = p
    chunks: list[npt.NDArray[np.int16]] = []
    starts: list[int] = []
    times: list[float] = []
    n = 0
    prev_ext: int | None = None
    for ext in sorted(best):
        p = best[ext]
        if prev_ext is not None and ext - prev_ext > 1:
            # silence for the lost packets, timed as if they had arrived on schedule
            per = len(best[prev_ext].payload)
            fill = min(ext - prev_ext - 1, MAX_GAP_FILL_PACKETS) * per
            starts.append(n)
            times.append(times[-1] + per / SAMPLE_RATE)
            chunks.append(np.zeros(fill, dtype=np.int16))
            n += fill
        starts.append(n)
        times.append(p.time)
        x = g711.decode(p.payload)
        chunks.append(x)
        n += len(x)
        prev_ext = ext
    samples = np.concatenate(chunks) if chunks else np.zeros(0, dtype=np.int16)
    return Timeline(samples, np.asarray(starts, dtype=np.int64), np.asarray(times, dtype=np.float64))


def speech_times(packets: list[RtpPacket]) -> list[tuple[float, float]]:
    """Speech segments of a direction's packets as (start, end) wire times, sorted.

    Each SSRC is its own timeline (a new SSRC restarts sequence numbers). The end is the wire time
    of the last speech sample plus one sample period, matching the exclusive sample end on tapes.
    """
    by_ssrc: dict[int, list[RtpPacket]] = {}
    for p in packets:
        by_ssrc.setdefault(p.ssrc, []).append(p)
    out: list[tuple[float, float]] = []
    for stream in by_ssrc.values():
        tl = build_timeline(stream)
        for seg in speech_segments(tl.samples, hangover_ms=HANGOVER_MS):
            out.append((tl.wire_time(seg.start), tl.wire_time(seg.end - 1) + 1 / SAMPLE_RATE))
    return sorted(out)


# ---------------------------------------------------------------- calls


@dataclass
class CallWire:
    """One call as seen on the wire; times in capture-clock seconds."""

    call_id: str
    answer_time: float | None
    caller_speech: list[tuple[float, float]]
    bot_speech: list[tuple[float, float]]


@dataclass
class WireTurn:
    """One caller utterance and the bot's reply onset, in ms from the wire answer."""

    index: int
    caller_end_ms: float
    bot_onset_ms: float
    latency_ms: float


@dataclass
class _CallState:
    caller_tag: str | None = None
    caller_media: tuple[str, int] | None = None
    callee_media: tuple[str, int] | None = None
    answer_time: float | None = None
    to_caller: list[RtpPacket] = field(default_factory=list)  # bot -> caller
    to_callee: list[RtpPacket] = field(default_factory=list)  # caller -> bot


def analyse_pcap(data: bytes) -> dict[str, CallWire]:
    """Every SIP call in the capture with its answer time and both directions' speech on the wire.

    Media addresses are bound to a call when its SDP is seen and rebound when a later call's SDP
    claims them, so RTP ports reused over a long load run go to the right call.
    """
    calls: dict[str, _CallState] = {}
    # media address -> (call id, True when packets sent there are caller -> bot)
    routes: dict[tuple[str, int], tuple[str, bool]] = {}

    def bind(call_id: str, st: _CallState, addr: tuple[str, int], *, of_caller: bool) -> None:
        old = st.caller_media if of_caller else st.callee_media
        if old is not None and old != addr and routes.get(old) == (call_id, not of_caller):
            del routes[old]
        if of_caller:
            st.caller_media = addr
        else:
            st.callee_media = addr
        routes[addr] = (call_id, not of_caller)

    for dg in read_pcap(data):
        route = routes.get(dg.dst)
        if route is not None:
            pkt = parse_rtp_pcmu(dg.payload, dg.time)
            if pkt is not None:
                st = calls[route[0]]
                (st.to_callee if route[1] else st.to_caller).append(pkt)
                continue
        msg = parse_sip(dg.payload)
        if msg is None or msg.cseq_method != "INVITE":
            continue
        st = calls.setdefault(msg.call_id, _CallState())
        if msg.method == "INVITE":
            if msg.to_tag is None:  # dialog-creating INVITE (first, or re-sent after a 3xx): the caller
                st.caller_tag = msg.from_tag
                from_caller = True
            else:  # re-INVITE: the caller's unless the bot sent it
                from_caller = st.caller_tag is None or msg.from_tag == st.caller_tag
            if msg.media is not None:
                bind(msg.call_id, st, msg.media, of_caller=from_caller)
        elif msg.status == 200:
            # a 200 to an INVITE answers whoever sent that INVITE (same From tag)
            answered_caller = st.caller_tag is None or msg.from_tag == st.caller_tag
            if msg.media is not None:
                bind(msg.call_id, st, msg.media, of_caller=not answered_caller)
            if st.answer_time is None:  # later 200s are retransmissions or re-INVITE answers
                st.answer_time = dg.time
    return {
        cid: CallWire(cid, st.answer_time, speech_times(st.to_callee), speech_times(st.to_caller))
        for cid, st in calls.items()
    }


def wire_turns(call: CallWire) -> list[WireTurn]:
    """Turn i = the i-th caller speech segment, with the first bot onset after it and before the next.

    A caller segment with no such bot onset gives no turn (its index is skipped, not reused).
    """
    if call.answer_time is None:
        return []
    t0 = call.answer_time
    out: list[WireTurn] = []
    for i, (_start, end) in enumerate(call.caller_speech):
        until = call.caller_speech[i + 1][0] if i + 1 < len(call.caller_speech) else float("inf")
        onset = next((s for s, _ in call.bot_speech if end <= s < until), None)
        if onset is None:
            continue
        out.append(
            WireTurn(
                index=i,
                caller_end_ms=round((end - t0) * 1000, 2),
                bot_onset_ms=round((onset - t0) * 1000, 2),
                latency_ms=round((onset - end) * 1000, 2),
            )
        )
    return out


# ---------------------------------------------------------------- comparison


def compare(wire: dict[str, list[WireTurn]], measured: dict[tuple[str, int], float]) -> list[float]:
    """Errors (measured − wire latency, ms) for every turn present on both sides."""
    errors: list[float] = []
    for call_id, turns in wire.items():
        for t in turns:
            got = measured.get((call_id, t.index))
            if got is not None:
                errors.append(got - t.latency_ms)
    return errors


def summary(errors: list[float]) -> dict[str, float | int | None]:
    """Count, mean (signed bias), |error| percentiles and the shares within the ±20/±40 ms goals."""
    if not errors:
        return {
            "count": 0, "mean_ms": None, "p50_abs_ms": None, "p95_abs_ms": None, "max_abs_ms": None,
            "within_20ms": None, "within_40ms": None,
        }
    e = np.asarray(errors, dtype=np.float64)
    a = np.abs(e)
    return {
        "count": len(errors),
        "mean_ms": round(float(e.mean()), 2),
        "p50_abs_ms": round(float(np.percentile(a, 50)), 2),
        "p95_abs_ms": round(float(np.percentile(a, 95)), 2),
        "max_abs_ms": round(float(a.max()), 2),
        "within_20ms": round(float((a <= 20).mean()), 4),
        "within_40ms": round(float((a <= 40).mean()), 4),
    }


__all__ = [
    "CallWire",
    "Datagram",
    "PcapError",
    "RtpPacket",
    "SipMessage",
    "WireTurn",
    "analyse_pcap",
    "build_timeline",
    "compare",
    "parse_rtp_pcmu",
    "parse_sdp_audio",
    "parse_sip",
    "read_pcap",
    "speech_times",
    "summary",
    "wire_turns",
]
