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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from voiceload.audio import wav
from voiceload.media import _rtpengine  # the C engine; types in _rtpengine.pyi
from voiceload.protocol import RtpStats

_M_AUDIO = re.compile(r"^m=audio \d+ ", re.MULTILINE)
_A_RTCP = re.compile(r"^a=rtcp:[^\r\n]*\r?\n", re.MULTILINE)


def offer_with_port(sdp: str, port: int) -> str:
    """pjsua's SDP with the audio stream moved to `port` (the engine's socket).

    The `a=rtcp` line goes too: the engine sends no RTCP, and the far end's reports would go to
    pjsua's socket. The address (`c=`) stays: pjsua's stream and the engine's socket are bound to the
    call's source address, and pjsua already wrote the advertised address there when there is one.
    """
    if not _M_AUDIO.search(sdp):
        raise ValueError("SDP offer has no m=audio line")
    return _A_RTCP.sub("", _M_AUDIO.sub(f"m=audio {port} ", sdp, count=1))


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


@dataclass
class RtpChannel:
    """One call's RTP socket in the engine."""

    engine: MediaEngine
    index: int
    port: int
    started: float | None = None  # monotonic time of the tape's sample 0, once started
    closed: bool = False
    moves: int = 0  # times `follow` moved it to another address

    def start(self, remote: str, tape_path: Path | None, ssrc: int) -> float:
        """Send to `remote` ('ip:port') and tape the call from now; returns the tape's start (monotonic s)."""
        host, port = split_address(remote)
        self.started = float(self.engine._engine.start(self.index, host, port, tape_path, ssrc & 0xFFFFFFFF))
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
        """Play a recording into the call now (replacing any still playing); when its first frame goes out."""
        return float(self.engine._engine.play(self.index, self.engine.pcmu(path)))

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
        for key in ("rx_jitter_ms_mean", "rx_jitter_ms_max", "rx_delay_ms_max"):
            stats[key] = round(stats[key], 2)
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
        index, port = self._engine.open(host or self.host)
        return RtpChannel(self, int(index), int(port))

    @functools.cache  # noqa: B019 - one engine per process, a handful of recordings
    def pcmu(self, path: Path) -> bytes:
        """A recording as PCMU, encoded once per process."""
        return encode_pcmu(wav.load_wav(path))

    def health(self) -> EngineHealth:
        return EngineHealth(**self._engine.health())

    def shutdown(self) -> None:
        self._engine.shutdown()
