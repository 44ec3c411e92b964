"""The one adapter around the caller-side RTP engine (`voiceload/media/engine.c`, bound by `module.c`).

A call agent's media does not go through pjmedia: pjsua2 does the call's SIP, and this engine
sends the caller's audio, receives the bot's and writes the call's tape, all on one C clock thread
per process (docs/density.md says why: CPU, and a tape on the wire's own timeline).

How a call uses it:
1. `MediaEngine.open()` binds the call's RTP socket before the INVITE is sent;
2. `offer_with_port()` puts that socket's port in pjsua's SDP offer (`Call.onCallSdpCreated`), so
   the far end sends its RTP to the engine, never to pjsua's own (idle) stream;
3. once the call's media is up, `RtpChannel.start()` aims the channel at the far end's RTP address
   and starts the tape; `play()` queues a recording; `last_loud()` feeds real-time turn-taking;
   `follow()` moves it when a later negotiation (the 200 OK after a 183, a re-INVITE, an UPDATE)
   names another address or puts the call on hold (`far_end`);
4. `close()` stops the channel, completes the tape (WAV header included) and returns RTP stats.

On the tape, received audio sits at the packet's kernel arrival time and sent audio at its send
time, so no jitter-buffer or bridge delay lies between the wire and the analysis
(`calibration.AGENT_RX_DELAY_MS` is 0).
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from voiceload.audio import wav
from voiceload.media import _rtpengine  # the C engine; types in _rtpengine.pyi
from voiceload.protocol import RtpStats

_M_AUDIO = re.compile(r"^m=audio \d+ ", re.MULTILINE)
_A_RTCP = re.compile(r"^a=rtcp(?:-mux)?(?::[^\r\n]*)?\r?\n", re.MULTILINE)
CODEC_IDS = {"PCMU": _rtpengine.PCMU, "PCMA": _rtpengine.PCMA, "G722": _rtpengine.G722, "opus": _rtpengine.OPUS}
SRTP_KEY_LEN = _rtpengine.SRTP_KEY_LEN


def offer_with_port(sdp: str, port: int, rtcp_port: int | None = None) -> str:
    """pjsua's SDP with the audio stream moved to `port` (the engine's socket).

    pjsua's `a=rtcp` line goes too, or the far end's reports would go to pjsua's socket; with
    `rtcp_port` (the engine's RTCP socket) it names that one instead, with `a=rtcp-mux` offered
    (RFC 5761: a far end that takes it sends its reports to `port`). The address (`c=`) stays:
    pjsua's stream and the engine's sockets are bound to the call's source address, and pjsua
    already wrote the advertised address there when there is one.
    """
    match = _M_AUDIO.search(sdp)
    if not match:
        raise ValueError("SDP offer has no m=audio line")
    out = _A_RTCP.sub("", _M_AUDIO.sub(f"m=audio {port} ", sdp, count=1))
    if rtcp_port is None:
        return out
    eol = "\r\n" if "\r\n" in out else "\n"
    m_line_end = out.index(eol, out.index(f"m=audio {port} ")) + len(eol)
    return out[:m_line_end] + f"a=rtcp:{rtcp_port}{eol}a=rtcp-mux{eol}" + out[m_line_end:]


def split_address(address: str) -> tuple[str, int]:
    """'127.0.0.1:4000' (pjsua's form of an RTP address) -> ('127.0.0.1', 4000)."""
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"not an IPv4 host:port address: {address!r}")
    return host, int(port)


@dataclass(frozen=True)
class FarEnd:
    """Where the far end wants our RTP, as the call's latest SDP negotiation left it."""

    remote: str | None  # its RTP address 'ip:port'; None: none given (inactive, c=0.0.0.0): keep the last
    sending: bool  # False while it holds the call: we send nothing

    @property
    def held(self) -> bool:
        return not self.sending


def far_end(*, we_send: bool, remote: str | None) -> FarEnd:
    """The negotiated direction and address of a call's audio, as the engine must follow them.

    `we_send` is the negotiated direction from our side (pjmedia's ENCODING bit): it is off when
    the far end's SDP says `a=sendonly` (it plays, e.g. hold music, and wants nothing back),
    `a=inactive`, or the old-style hold `c=0.0.0.0`. Each of those is a hold. An address of
    0.0.0.0 or port 0 is never a destination: on Linux, 0.0.0.0 would reach our own host.
    """
    if remote is not None:
        host, port = split_address(remote)
        if host in ("0.0.0.0", "") or port == 0:
            remote = None
    return FarEnd(remote=remote, sending=we_send and remote is not None)


@dataclass(frozen=True)
class ChannelMedia:
    """What a call's SDP negotiation left for its media: the engine sends and expects exactly this."""

    codec: str = "PCMU"  # core/mediaprofile.py's name: PCMU, PCMA, G722, opus
    pt: int = 0  # the payload type we send (the far end's number for the codec) and accept
    event_pt: int | None = None  # telephone-event (RFC 4733) payload type, when both sides offered it
    srtp_tx: bytes | None = None  # SRTP AES_CM_128_HMAC_SHA1_80: our master key + salt (30 bytes), None: plain RTP
    srtp_rx: bytes | None = None  # the far end's master key + salt, from its a=crypto
    rtcp: str | None = None  # where our RTCP goes ('ip:port'); None: no RTCP (the far end offered none)
    rtcp_mux: bool = False  # RTCP on the RTP socket (RFC 5761), both ways
    stereo: bool = False  # tape: caller left, far end right (--keep-tapes), instead of one mixed track


@dataclass(frozen=True)
class DtmfReceived:
    """A digit the far end sent as RFC 4733 events."""

    digit: str
    at: float  # its first packet's arrival, monotonic s
    duration_ms: float


def encode_pcmu(samples: np.ndarray) -> bytes:
    """16-bit samples -> G.711 mu-law bytes (what goes on the wire)."""
    return bytes(_rtpengine.encode_pcmu(np.ascontiguousarray(samples, dtype="<i2").tobytes()))


def stream_decoder(codec: str) -> _rtpengine.Decoder:
    """A decoder of one RTP stream of `codec` (engine's names), 8 kHz out, in the engine's own coders:
    for reading a capture as the engine would have heard it (`tools/referee.py`)."""
    return _rtpengine.Decoder(CODEC_IDS[codec])


def codec_delay_samples(codec: str) -> int:
    """Tape samples by which `codec`'s decoded audio lags its sender's timeline (codec.h: rtpe_codec_delay)."""
    return _rtpengine.OPUS_DELAY if codec == "opus" else 0


Clip = tuple[bytes, bytes, bytes, bytes]  # encode_clip's frames, offsets, sizes, tape samples


@dataclass
class RtpChannel:
    """One call's RTP and RTCP sockets in the engine."""

    engine: MediaEngine
    index: int
    port: int
    rtcp_port: int = 0
    started: float | None = None  # monotonic time of the tape's sample 0, once started
    closed: bool = False
    moves: int = 0  # times `follow` moved it to another address
    media: ChannelMedia = field(default_factory=lambda: ChannelMedia())
    dtmf_received: list[DtmfReceived] = field(default_factory=list)  # what the far end sent, filled by close()

    def start(self, remote: str, tape_path: Path | None, ssrc: int, media: ChannelMedia | None = None) -> float:
        """Send `media` to `remote` ('ip:port') and tape the call from now; returns the tape's start (monotonic s)."""
        media = media or ChannelMedia()
        host, port = split_address(remote)
        rtcp_mode, rtcp_host, rtcp_port = 0, None, 0
        if media.rtcp_mux:
            rtcp_mode = 2
        elif media.rtcp is not None:
            rtcp_mode = 1
            rtcp_host, rtcp_port = split_address(media.rtcp)
        self.media = media
        self.started = float(self.engine._engine.start(
            self.index, host, port, tape_path, ssrc & 0xFFFFFFFF, CODEC_IDS[media.codec], media.pt,
            -1 if media.event_pt is None else media.event_pt, media.srtp_tx, media.srtp_rx,
            rtcp_mode, rtcp_host, rtcp_port, media.stereo))
        return self.started

    def follow(self, far: FarEnd) -> bool:
        """Send where the far end now wants our RTP, or nothing while it holds the call; True if moved.

        Started channels only. A move first tapes what arrived by the old path, then starts a new
        anchor for the received stream (engine.c: rtpe_set_remote).
        """
        host, port = split_address(far.remote) if far.remote is not None else (None, 0)
        moved = bool(self.engine._engine.set_remote(self.index, host, port, far.sending))
        self.moves += moved
        return moved

    def play(self, path: Path) -> float:
        """Play a recording into the call now (replacing any still playing); when its first frame is due."""
        return float(self.engine._engine.play(self.index, self.engine.clip(path, self.media.codec)))

    def send_dtmf(self, digits: str, duration_ms: int = 100, gap_ms: int = 60, volume: int = 10) -> tuple[float, float]:
        """Send `digits` as RFC 4733 events from the next tick on (durations in whole 20 ms packets, gaps
        of at least 40 ms); (start of the first, end of the last), monotonic s. ValueError when no
        telephone-event was negotiated or digits are still being sent."""
        start, end = self.engine._engine.dtmf(self.index, digits, duration_ms, gap_ms, volume)
        return float(start), float(end)

    def last_loud(self) -> float | None:
        """When (monotonic s, the packet's arrival) the far end was last loud; None if it never was."""
        t = float(self.engine._engine.last_loud(self.index))
        return t if t > 0 else None

    def close(self) -> RtpStats:
        """Stop sending, complete the tape, free the socket; the call's RTP stats. Idempotent."""
        if self.closed:
            return RtpStats()
        self.closed = True
        stats: dict[str, Any] = dict(self.engine._engine.close(self.index))
        stats.pop("moves", None)  # the call's record counts them (`moves`)
        self.dtmf_received = [DtmfReceived(d, at, round(ms, 1)) for d, at, ms in stats.pop("dtmf")]
        for key in ("rx_jitter_ms_mean", "rx_jitter_ms_max", "rx_delay_ms_max", "rtt_ms_mean", "rtt_ms_max",
                    "far_jitter_ms"):
            stats[key] = round(stats[key], 2) if stats[key] >= 0 else None  # < 0: not measured
        if stats["far_lost"] < 0:
            stats["far_lost"] = None
        if not stats["rtcp_tx"] and not stats["rtcp_rx"]:
            stats["rtcp_tx"] = stats["rtcp_rx"] = None
        for key in ("rx_cn", "rx_dtmf", "rx_foreign", "rx_auth_failed"):  # only when something happened
            stats[key] = stats[key] or None
        stats["codec"] = self.media.codec
        stats["srtp"] = True if self.media.srtp_tx is not None else None
        return RtpStats.from_dict(stats)


@dataclass(frozen=True)
class EngineHealth:
    """The clock thread since the previous reading: how late its ticks woke, how long they took."""

    late_max_ms: float
    busy_mean_ms: float
    busy_max_ms: float
    skipped_ticks: int
    ticks: int
    running: int


class MediaEngine:
    """The process's RTP engine: one clock thread, up to `capacity` channels."""

    # How old the engine's picture of what arrived can be: sockets are read every 4th 20 ms tick.
    # `RtpChannel.last_loud` is complete up to this long ago (packet times themselves are exact).
    read_lag_ms = float(_rtpengine.READ_LAG_MS)

    def __init__(self, host: str, capacity: int, loud_level: int) -> None:
        self.host = host
        self.capacity = capacity
        self._engine = _rtpengine.Engine(capacity, loud_level)

    def open(self, host: str | None = None) -> RtpChannel:
        """A call's RTP socket on `host` (one of the agent's source addresses; default: the engine's)."""
        index, port, rtcp_port = self._engine.open(host or self.host)
        return RtpChannel(self, int(index), int(port), int(rtcp_port))

    @functools.cache  # noqa: B019 - one engine per process, a handful of recordings
    def clip(self, path: Path, codec: str = "PCMU") -> Clip:
        """A recording as `codec`'s 20 ms frames, encoded once per process and codec; the tape shows
        the recording itself (so a played utterance is found on the tape whatever the codec)."""
        samples = np.ascontiguousarray(wav.load_wav(path), dtype="<i2")
        frames, offsets, sizes, _decoded = _rtpengine.encode_clip(CODEC_IDS[codec], samples.tobytes())
        pcm = np.zeros(len(sizes) // 2 * _rtpengine.FRAME_SAMPLES, dtype="<i2")
        pcm[:len(samples)] = samples
        return frames, offsets, sizes, pcm.tobytes()

    def health(self) -> EngineHealth:
        return EngineHealth(**self._engine.health())

    def shutdown(self) -> None:
        self._engine.shutdown()
