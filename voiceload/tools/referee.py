"""Independent latency referee: per-turn timing read from a packet capture of the calls.

The agent and the reference bot each time turns on their own audio tapes; both can be wrong in
the same way (jitter buffers, clock offsets, tape alignment). This module times the same turns on
the wire instead: it reads a libpcap capture, follows SIP to learn each call's media addresses,
answer instant and codec (the first payload type of the 200 OK's SDP answer), decrypts SRTP with
the SDES keys the SDP carries (`tools/srtp.py`), decodes both directions with the agents' engine's
own decoders (PCMU, PCMA, G.722, Opus; telephone-event, comfort noise and RTCP are ignored) and runs
the very same `speech_segments` rule on it. Every decoded sample carries the capture time of its
packet (+ its offset inside the packet, − the codec's look-ahead: Opus's 52 samples, as the engine
tapes it), so a speech edge becomes a wire time.

Pure: bytes in, dataclasses out. No sockets, files or clocks.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from voiceload.audio.vad import SAMPLE_RATE, speech_segments
from voiceload.media.engine import codec_delay_samples, stream_decoder
from voiceload.sip.message import AudioFormats, SipMessage, parse_sdp_audio, parse_sdp_formats
from voiceload.tools import srtp

HANGOVER_MS = 400  # same as the agent's and bot's reply analysis, so segments are comparable
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


# ---------------------------------------------------------------- RTP (decoded by the engine's coders)

# The SDP encoding names (case-insensitive) of the codecs the referee decodes -> the engine's names
CODECS = {"pcmu": "PCMU", "pcma": "PCMA", "g722": "G722", "opus": "opus"}


@dataclass(frozen=True)
class RtpPacket:
    time: float
    ssrc: int
    seq: int
    pt: int
    payload: bytes  # after the header, extension and padding


def is_rtcp(data: bytes) -> bool:
    """RFC 5761 §4: a second byte of 192-223 is RTCP (SR 200, RR 201, ...), on a muxed port too."""
    return len(data) >= 2 and 192 <= data[1] <= 223


def parse_rtp(data: bytes, time: float) -> RtpPacket | None:
    """An RTP v2 packet of any payload type, or None (RTCP, other version, malformed)."""
    if len(data) < 12 or data[0] >> 6 != 2 or is_rtcp(data):
        return None
    off = 12 + 4 * (data[0] & 0x0F)
    end = len(data)
    if data[0] & 0x10:  # header extension
        if end < off + 4:
            return None
        off += 4 + 4 * int.from_bytes(data[off + 2 : off + 4], "big")
    if data[0] & 0x20:  # padding, count in the last byte
        end -= data[-1]
    if off >= end:
        return None
    seq = int.from_bytes(data[2:4], "big")
    ssrc = int.from_bytes(data[8:12], "big")
    return RtpPacket(time, ssrc, seq, data[1] & 0x7F, data[off:end])


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
    delay_s: float = 0.0  # the codec's look-ahead: decoded audio lags the sender's timeline by this

    def wire_time(self, index: int) -> float:
        """Capture time of the packet holding sample `index` + the sample's offset in the packet, less
        the codec's delay (Opus: where the sender's encoder took the sample, as the agents' engine tapes it)."""
        k = int(np.searchsorted(self.starts, index, side="right")) - 1
        return float(self.times[k]) + (index - int(self.starts[k])) / SAMPLE_RATE - self.delay_s


def build_timeline(packets: list[RtpPacket], codec: str = "PCMU") -> Timeline:
    """One SSRC's packets of `codec` in sequence order, decoded by one decoder of the engine's;
    duplicates dropped, lost packets filled with silence.

    Duplicates happen with `tcpdump -i any` (loopback packets seen twice); the earliest copy wins.
    G.722 and Opus decoders keep state, so one decoder reads the stream from its first packet on.
    """
    best: dict[int, RtpPacket] = {}
    for ext, p in _unwrap(packets):
        if ext not in best or p.time < best[ext].time:
            best[ext] = p
    decoder = stream_decoder(codec)
    chunks: list[npt.NDArray[np.int16]] = []
    starts: list[int] = []
    times: list[float] = []
    n = 0
    per = 0  # samples in the last decoded packet
    prev_ext: int | None = None
    for ext in sorted(best):
        p = best[ext]
        if prev_ext is not None and ext - prev_ext > 1 and per:
            # silence for the lost packets, timed as if they had arrived on schedule
            fill = min(ext - prev_ext - 1, MAX_GAP_FILL_PACKETS) * per
            starts.append(n)
            times.append(times[-1] + per / SAMPLE_RATE)
            chunks.append(np.zeros(fill, dtype=np.int16))
            n += fill
        x = np.frombuffer(decoder.decode(p.payload), dtype=np.int16)  # native order, as the C wrote them
        prev_ext = ext
        if not len(x):
            continue  # undecodable: the next packet's time still places what follows
        starts.append(n)
        times.append(p.time)
        chunks.append(x)
        n += len(x)
        per = len(x)
    samples = np.concatenate(chunks) if chunks else np.zeros(0, dtype=np.int16)
    return Timeline(samples, np.asarray(starts, dtype=np.int64), np.asarray(times, dtype=np.float64),
                    delay_s=codec_delay_samples(codec) / SAMPLE_RATE)


def speech_times(packets: list[RtpPacket], codec: str = "PCMU") -> list[tuple[float, float]]:
    """Speech segments of a direction's packets of `codec` as (start, end) wire times, sorted.

    Each SSRC is its own timeline (a new SSRC restarts sequence numbers). The end is the wire time
    of the last speech sample plus one sample period, matching the exclusive sample end on tapes.
    """
    by_ssrc: dict[int, list[RtpPacket]] = {}
    for p in packets:
        by_ssrc.setdefault(p.ssrc, []).append(p)
    out: list[tuple[float, float]] = []
    for stream in by_ssrc.values():
        tl = build_timeline(stream, codec)
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
    codec: str | None = "PCMU"  # the engine's name of the codec its SDP answer chose; None: one not decoded
    srtp: bool = False  # both SDPs carried an SDES key: the RTP was SRTP
    undecoded: str | None = None  # why its audio was not read ("SRTP: not decoded", ...); None: it was


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
    offer: AudioFormats | None = None  # the caller's last dialog-creating INVITE's SDP
    answer: AudioFormats | None = None  # the first 200 OK's SDP (else the last early answer's, a 18x)
    answer_final: bool = False
    to_caller: list[tuple[float, bytes]] = field(default_factory=list)  # bot -> caller: (capture time, UDP payload)
    to_callee: list[tuple[float, bytes]] = field(default_factory=list)  # caller -> bot


@dataclass(frozen=True)
class _Media:
    """How to read a call's RTP, from its SDP offer and answer."""

    codec: str | None
    pts: frozenset[int]  # the payload types of that codec (either side's number): all else is ignored
    srtp: bool
    caller_key: bytes | None = None  # what the caller encrypts with (its offer's a=crypto)
    callee_key: bytes | None = None  # what the bot encrypts with (its answer's)
    undecoded: str | None = None


def _media_of(offer: AudioFormats | None, answer: AudioFormats | None) -> _Media:
    """The answer's first format is the call's codec (RFC 3264 §6); telephone-event, CN and RTCP are
    other payload types and drop out. No SDP at all (a capture cut short): PCMU, payload type 0."""
    chosen = answer or offer
    first = chosen.first if chosen else (0, "PCMU", 8000)
    if first is None:
        return _Media(None, frozenset(), False, undecoded="SDP: no audio format")
    codec = CODECS.get(first[1].lower())
    if codec is None:
        return _Media(None, frozenset(), False, undecoded=f"codec {first[1] or first[0]}: not decoded")
    pts = {first[0]} | {pt for sdp in (offer, answer) if sdp for pt, name, _ in sdp.formats
                        if CODECS.get(name.lower()) == codec}
    if offer is None or answer is None or offer.crypto is None or answer.crypto is None:
        if answer is not None and "SAVP" in answer.profile:  # DTLS-SRTP, or SDES with a key missing
            return _Media(codec, frozenset(pts), True, undecoded="SRTP: not decoded (no SDES key in the SDP)")
        return _Media(codec, frozenset(pts), False)
    keys = [srtp.key_of_inline(c[1]) if c[0] == srtp.SUITE else None for c in (offer.crypto, answer.crypto)]
    if keys[0] is None or keys[1] is None or not srtp.available():
        return _Media(codec, frozenset(pts), True, undecoded="SRTP: not decoded")
    return _Media(codec, frozenset(pts), True, keys[0], keys[1])


def _plain_packets(raw: list[tuple[float, bytes]], key: bytes | None) -> tuple[list[RtpPacket], int]:
    """A direction's RTP packets in the clear, and how many SRTP packets failed their tag.

    SRTP's packet index is the sender's rollover count and sequence number; its rollovers are
    followed per SSRC from the first packet, as a receiver that saw the stream start does.
    """
    if key is None:
        return [p for t, d in raw if (p := parse_rtp(d, t)) is not None], 0
    stream = srtp.SrtpStream(key)
    by_ssrc: dict[int, list[RtpPacket]] = {}
    for t, d in raw:
        if len(d) >= 12 and d[0] >> 6 == 2 and not is_rtcp(d):  # header in the clear; d kept whole
            by_ssrc.setdefault(int.from_bytes(d[8:12], "big"), []).append(
                RtpPacket(t, 0, int.from_bytes(d[2:4], "big"), d[1] & 0x7F, d))
    out: list[RtpPacket] = []
    for packets in by_ssrc.values():
        for index, p in _unwrap(packets):
            plain = stream.unprotect(p.payload, index)
            if plain is not None and (q := parse_rtp(plain, p.time)) is not None:
                out.append(q)
    return sorted(out, key=lambda p: p.time), stream.auth_failed


def _speech(raw: list[tuple[float, bytes]], media: _Media, key: bytes | None) -> tuple[list[tuple[float, float]], bool]:
    """A direction's speech on the wire, and False when SRTP packets came but none checked."""
    if media.codec is None or media.undecoded:
        return [], True
    packets, failed = _plain_packets(raw, key)
    ours = [p for p in packets if p.pt in media.pts]
    return speech_times(ours, media.codec), not (failed and not packets)


def _call_wire(call_id: str, st: _CallState) -> CallWire:
    media = _media_of(st.offer, st.answer)
    caller, ok_up = _speech(st.to_callee, media, media.caller_key)
    bot, ok_down = _speech(st.to_caller, media, media.callee_key)
    undecoded = media.undecoded
    if undecoded is None and not (ok_up and ok_down):
        undecoded = "SRTP: not decoded (no packet's authentication tag checked with the SDP's key)"
    return CallWire(call_id, st.answer_time, caller, bot, codec=media.codec, srtp=media.srtp, undecoded=undecoded)


def analyse_pcap(data: bytes) -> dict[str, CallWire]:
    """Every SIP call in the capture with its answer time, codec and both directions' speech on the wire.

    Media addresses are bound to a call when its SDP is seen and rebound when a later call's SDP
    claims them, so RTP ports reused over a long load run go to the right call. RTP is kept as it
    came and read once the call's SIP is known: early media arrives before the answer names the codec.
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
        if route is not None and len(dg.payload) >= 12 and dg.payload[0] >> 6 == 2:
            st = calls[route[0]]
            (st.to_callee if route[1] else st.to_caller).append((dg.time, dg.payload))
            continue
        msg = parse_sip(dg.payload)
        if msg is None or msg.cseq_method != "INVITE":
            continue
        st = calls.setdefault(msg.call_id, _CallState())
        if msg.method == "INVITE":
            if msg.to_tag is None:  # dialog-creating INVITE (first, or re-sent after a 3xx): the caller
                st.caller_tag = msg.from_tag
                from_caller = True
                st.offer = msg.audio_formats or st.offer
            else:  # re-INVITE: the caller's unless the bot sent it
                from_caller = st.caller_tag is None or msg.from_tag == st.caller_tag
            if msg.media is not None:
                bind(msg.call_id, st, msg.media, of_caller=from_caller)
        elif msg.status is not None and (msg.status == 200 or 180 <= msg.status < 200):
            # a response to an INVITE answers whoever sent that INVITE (same From tag)
            answered_caller = st.caller_tag is None or msg.from_tag == st.caller_tag
            if msg.media is not None:
                bind(msg.call_id, st, msg.media, of_caller=not answered_caller)
            formats = msg.audio_formats
            if answered_caller and formats is not None and not st.answer_final:
                st.answer, st.answer_final = formats, msg.status == 200
            if msg.status == 200 and st.answer_time is None:  # later 200s: retransmissions, re-INVITE answers
                st.answer_time = dg.time
    return {cid: _call_wire(cid, st) for cid, st in calls.items()}


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
    "CODECS",
    "CallWire",
    "Datagram",
    "PcapError",
    "RtpPacket",
    "SipMessage",
    "WireTurn",
    "analyse_pcap",
    "build_timeline",
    "compare",
    "parse_rtp",
    "parse_sdp_audio",
    "parse_sdp_formats",
    "parse_sip",
    "read_pcap",
    "speech_times",
    "summary",
    "wire_turns",
]
