"""The RTP engine adapter: SDP rewriting (pure), and the C engine on loopback sockets."""

from __future__ import annotations

import itertools
import socket
import struct
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from voiceload.audio import g711, wav
from voiceload.media.engine import FarEnd as NegotiatedFarEnd
from voiceload.media.engine import MediaEngine, encode_pcmu, far_end, offer_with_port, split_address
from voiceload.protocol import RtpStats

OFFER = (
    "v=0\r\no=- 3909 3909 IN IP4 127.0.0.1\r\ns=pjmedia\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
    "m=audio 4000 RTP/AVP 0 101\r\na=rtcp:4001 IN IP4 127.0.0.1\r\na=sendrecv\r\n"
    "a=rtpmap:0 PCMU/8000\r\na=rtpmap:101 telephone-event/8000\r\n"
)


def test_offer_carries_the_engine_port_and_no_rtcp_line() -> None:
    sdp = offer_with_port(OFFER, 31234)
    assert "m=audio 31234 RTP/AVP 0 101\r\n" in sdp
    assert "a=rtcp" not in sdp
    assert "c=IN IP4 127.0.0.1\r\n" in sdp and "a=rtpmap:0 PCMU/8000\r\n" in sdp


def test_offer_without_audio_is_refused() -> None:
    with pytest.raises(ValueError, match="m=audio"):
        offer_with_port("v=0\r\nm=video 4000 RTP/AVP 96\r\n", 1)


def test_split_address() -> None:
    assert split_address("127.0.0.1:4000") == ("127.0.0.1", 4000)
    with pytest.raises(ValueError):
        split_address("127.0.0.1")


def test_pcmu_encoding_is_g711() -> None:
    x = np.array([0, 1000, -1000, 32767, -32768], dtype=np.int16)
    assert encode_pcmu(x) == bytes([0xFF, 0xCE, 0x4E, 0x80, 0x00])


@pytest.mark.real
def test_two_channels_on_loopback_tape_each_others_audio_at_wire_time(tmp_path: Path) -> None:
    """Channel a plays a tone to channel b: b's tape has it where a's tape says it was sent."""
    eng = MediaEngine("127.0.0.1", 4, loud_level=5)
    try:
        a, b = eng.open(), eng.open()
        ta = a.start(f"127.0.0.1:{b.port}", tmp_path / "a.wav", ssrc=1)
        tb = b.start(f"127.0.0.1:{a.port}", tmp_path / "b.wav", ssrc=2)
        tone = (8000 * np.sin(2 * np.pi * 440 * np.arange(8000) / 8000)).astype(np.int16)
        wav.write_wav(tmp_path / "tone.wav", tone)
        time.sleep(0.3)
        assert b.last_loud() is None
        sent = a.play(tmp_path / "tone.wav")
        time.sleep(1.5)
        heard = b.last_loud()
        late_s = eng.health().late_max_ms / 1000  # a tick a busy box woke late sent its frame that much later
        assert heard is not None and sent < heard < sent + 1.1 + late_s
        sa, sb = a.close(), b.close()
        assert a.close() == RtpStats()  # idempotent
    finally:
        eng.shutdown()
    assert sb.rx_packets is not None and sb.rx_packets >= 80 and sb.rx_lost == 0
    assert sa.tx_packets is not None and sa.tx_packets >= 80
    tape_a, _ = sf.read(tmp_path / "a.wav", dtype="int16")
    tape_b, _ = sf.read(tmp_path / "b.wav", dtype="int16")
    on_a = ta + np.flatnonzero(np.abs(tape_a) > 1000)[0] / 8000  # sent, on a's tape
    on_b = tb + np.flatnonzero(np.abs(tape_b) > 1000)[0] / 8000  # received, on b's tape
    assert abs(on_b - on_a) < 0.002  # loopback: the same instant on both tapes
    assert 0 <= on_a - sent < 0.025  # the first frame leaves on the next 20 ms tick
    loud_b = np.flatnonzero(np.abs(tape_b) > 1000)
    assert 0.99 < (loud_b[-1] - loud_b[0]) / 8000 < 1.01  # contiguous: one second of tone


@pytest.mark.real
def test_audio_played_right_at_start_is_whole_on_the_tape(tmp_path: Path) -> None:
    """A caller who speaks first plays at once: no frame of it may fall before the tape's sample 0.

    Seen before the fix: a channel started while a due tick waited for the engine's lock got the
    utterance's first frame at a negative tape position, and the turn's caller audio was "not found".
    """
    tone = (8000 * np.sin(2 * np.pi * 440 * np.arange(4000) / 8000)).astype(np.int16)
    wav.write_wav(tmp_path / "tone.wav", tone)
    sink = MediaEngine("127.0.0.1", 1, loud_level=5).open()  # a socket to send to
    eng = MediaEngine("127.0.0.1", 30, loud_level=5)
    try:
        chans = []
        for i in range(30):
            ch = eng.open()
            ch.start(f"127.0.0.1:{sink.port}", tmp_path / f"{i}.wav", ssrc=i)
            ch.play(tmp_path / "tone.wav")
            chans.append(ch)
            time.sleep(0.0137)  # walk the starts across the 20 ms tick
        time.sleep(0.8)
        for ch in chans:
            ch.close()
    finally:
        eng.shutdown()
        sink.engine.shutdown()
    sent = g711.decode(encode_pcmu(tone))  # what went out, exactly
    for i in range(30):
        tape, _ = sf.read(tmp_path / f"{i}.wav", dtype="int16")
        assert np.count_nonzero(tape) == np.count_nonzero(sent), f"tape {i}: part of the utterance is missing"


# --- following the far end: moves, holds, new sources ---------------------------------------------

LOUD = bytes(g711.encode(np.full(160, 8000, dtype=np.int16)))  # one 20 ms frame of a loud square
QUIET = b"\xff" * 160


class FarEnd:
    """A scripted far end on a loopback UDP socket: sends RTP with the SSRC and timestamps a test picks."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.setblocking(False)
        self.address = f"127.0.0.1:{self.sock.getsockname()[1]}"

    def send(self, to: int, *, ssrc: int, seq: int, ts: int, payload: bytes, marker: bool = False) -> None:
        hdr = struct.pack("!BBHII", 0x80, (0x80 if marker else 0) | 0, seq & 0xFFFF, ts & 0xFFFFFFFF, ssrc)
        self.sock.sendto(hdr + payload, ("127.0.0.1", to))

    def stream(self, to: int, *, ssrc: int, seq0: int, ts0: int, frames: list[bytes]) -> float:
        """Send `frames` paced at 20 ms; the monotonic time the first loud one left (or -1)."""
        first_loud = -1.0
        start = time.monotonic()
        for k, frame in enumerate(frames):
            while time.monotonic() < start + k * 0.02:
                time.sleep(0.002)
            if frame == LOUD and first_loud < 0:
                first_loud = time.monotonic()
            self.send(to, ssrc=ssrc, seq=seq0 + k, ts=ts0 + 160 * k, payload=frame)
        return first_loud

    def received(self) -> list[bytes]:
        out = []
        while True:
            try:
                out.append(self.sock.recv(2048))
            except BlockingIOError:
                return out

    def close(self) -> None:
        self.sock.close()


def loud_onsets_s(path: Path, started: float) -> list[float]:
    """Monotonic times where loud stretches begin on a tape (after >= 100 ms of quiet)."""
    tape, _ = sf.read(path, dtype="int16")
    loud = np.flatnonzero(np.abs(tape) > 4000)
    starts = [int(loud[0])] + [int(b) for a, b in itertools.pairwise(loud) if b - a > 800]
    return [started + i / 8000 for i in starts]


@pytest.mark.parametrize("jump", ["new_ssrc_back", "new_ssrc_ahead", "same_ssrc_back"])
def test_a_new_sender_timeline_is_taped_at_its_arrival(tmp_path: Path, jump: str) -> None:
    """After the far end's source or timestamp base changes, its audio still lands where it arrived."""
    eng = MediaEngine("127.0.0.1", 2, loud_level=5)
    far = FarEnd()
    try:
        ch = eng.open()
        t0 = ch.start(far.address, tmp_path / "t.wav", ssrc=7)
        first = far.stream(ch.port, ssrc=1111, seq0=100, ts0=50_000_000,
                           frames=[QUIET] * 10 + [LOUD] * 10 + [QUIET] * 20)
        ssrc2, ts2 = {"new_ssrc_back": (2222, 1_000), "new_ssrc_ahead": (2222, 3_000_000_000),
                      "same_ssrc_back": (1111, 1_000)}[jump]
        second = far.stream(ch.port, ssrc=ssrc2, seq0=140 if ssrc2 == 1111 else 9, ts0=ts2,
                            frames=[QUIET] * 10 + [LOUD] * 10 + [QUIET] * 10)
        time.sleep(0.2)
        stats = ch.close()
    finally:
        eng.shutdown()
        far.close()
    onsets = loud_onsets_s(tmp_path / "t.wav", t0)
    assert len(onsets) == 2, onsets
    assert abs(onsets[0] - first) < 0.010
    assert abs(onsets[1] - second) < 0.010, (onsets[1] - second, stats)  # not lost as late, not early
    assert stats.rx_sources == (2 if ssrc2 != 1111 else 1)
    assert stats.rx_lost == 0
    assert stats.rx_delay_ms_max is not None and stats.rx_delay_ms_max < 20  # the jump is no delay
    assert stats.rx_packets == 70


def test_the_channel_follows_a_move_and_sends_nothing_on_hold(tmp_path: Path) -> None:
    """A connect()ed channel moved to a new address sends there and hears it; on hold it sends nothing."""
    eng = MediaEngine("127.0.0.1", 2, loud_level=5)
    old, new = FarEnd(), FarEnd()
    try:
        ch = eng.open()
        ch.start(old.address, tmp_path / "t.wav", ssrc=7)
        # the far end sends from the address it advertised: the engine connect()s its socket to it
        old.stream(ch.port, ssrc=1, seq0=0, ts0=0, frames=[QUIET] * 10)
        time.sleep(0.2)
        assert len(old.received()) >= 15
        assert ch.follow(far_end(we_send=True, remote=new.address))
        assert not ch.follow(far_end(we_send=True, remote=new.address))  # the same address: no move
        old.received()
        time.sleep(0.3)
        assert old.received() == []
        assert len(new.received()) >= 10
        # a connected socket would drop what the new address sends
        new.stream(ch.port, ssrc=1, seq0=10, ts0=1600, frames=[LOUD] * 5)
        time.sleep(0.2)
        heard = ch.last_loud()
        assert heard is not None and heard > time.monotonic() - 0.5
        # hold (c=0.0.0.0): nothing goes out, to nowhere
        held = far_end(we_send=False, remote="0.0.0.0:4000")
        assert held.held and held.remote is None
        assert not ch.follow(held)
        time.sleep(0.06)
        new.received()
        time.sleep(0.3)
        assert new.received() == []
        # resumed: sending again, the first packet a talkspurt's start (marker bit)
        ch.follow(far_end(we_send=True, remote=new.address))
        time.sleep(0.2)
        got = new.received()
        assert len(got) >= 5 and got[0][1] & 0x80
        stats = ch.close()
    finally:
        eng.shutdown()
        old.close()
        new.close()
    assert ch.moves == 1 and stats.tx_errors == 0


def test_far_end_from_negotiated_direction() -> None:
    live = far_end(we_send=True, remote="10.0.0.5:4000")
    assert live == NegotiatedFarEnd(remote="10.0.0.5:4000", sending=True) and not live.held
    assert far_end(we_send=False, remote="10.0.0.5:4000").held  # a=sendonly / a=inactive from the far end
    assert far_end(we_send=True, remote="0.0.0.0:4000") == NegotiatedFarEnd(remote=None, sending=False)  # c=0.0.0.0
    assert far_end(we_send=True, remote="10.0.0.5:0").held  # port 0: the stream was refused
    assert far_end(we_send=False, remote=None).held  # no stream at all (inactive)
