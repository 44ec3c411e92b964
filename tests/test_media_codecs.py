"""The C engine speaks PCMU, PCMA, G.722 and Opus, SRTP, RTCP and RFC 4733 DTMF: two real channels
on 127.0.0.1 talk to each other, and each one's tape and stats are checked against what the other sent."""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import pytest

from voiceload.audio import wav
from voiceload.media.engine import ChannelMedia, MediaEngine, RtpChannel

pytestmark = pytest.mark.real  # real sockets and the engine's clock thread: timing on a shared box

RECORDING = sorted(Path(__file__).resolve().parent.parent.joinpath("recordings").rglob("*.wav"))[0]
PT = {"PCMU": 0, "PCMA": 8, "G722": 9, "opus": 111}


def _pair(engine: MediaEngine, tmp: Path, codec: str, *, srtp_a: bool, srtp_b: bool,
          stereo: bool = False) -> tuple[RtpChannel, RtpChannel, float]:
    a, b = engine.open(), engine.open()
    ka, kb = os.urandom(30), os.urandom(30)
    ma = ChannelMedia(codec=codec, pt=PT[codec], event_pt=101, srtp_tx=ka if srtp_a else None,
                      srtp_rx=kb if srtp_a else None, rtcp=f"127.0.0.1:{b.rtcp_port}")
    mb = ChannelMedia(codec=codec, pt=PT[codec], event_pt=101, srtp_tx=kb if srtp_b else None,
                      srtp_rx=ka if srtp_b else None, rtcp=f"127.0.0.1:{a.rtcp_port}", stereo=stereo)
    a.start(f"127.0.0.1:{b.port}", tmp / "a.wav", 1111, ma)
    tb = b.start(f"127.0.0.1:{a.port}", tmp / "b.wav", 2222, mb)
    return a, b, tb


def _where(tape: np.ndarray, x: np.ndarray, expected: int) -> tuple[int, float]:
    """Offset (samples) from `expected` where `x` best matches `tape`, and the normalised correlation there."""
    lo = max(0, expected - 400)
    window = tape[lo: expected + 400 + len(x)].astype(float)
    c = np.correlate(window, x.astype(float), mode="valid")
    at = int(np.argmax(c)) + lo
    seg = tape[at: at + len(x)].astype(float)
    return at - expected, float(np.dot(seg, x) / np.sqrt(np.dot(seg, seg) * np.dot(x, x.astype(float)) + 1e-9))


@pytest.mark.parametrize("codec,srtp", [("PCMU", False), ("PCMA", False), ("G722", False), ("opus", False),
                                        ("PCMU", True), ("opus", True)])
def test_codec_loopback_tapes_the_recording_where_it_was_sent(tmp_path: Path, codec: str, srtp: bool) -> None:
    engine = MediaEngine("127.0.0.1", 4, loud_level=5)
    try:
        a, b, tb = _pair(engine, tmp_path, codec, srtp_a=srtp, srtp_b=srtp)
        time.sleep(0.3)
        first = a.play(RECORDING)
        x = wav.load_wav(RECORDING)
        time.sleep(0.3 + len(x) / 8000)
        start, end = a.send_dtmf("12#", 100, 60)
        time.sleep(0.8)
        health = engine.health()  # a clock held back sends late (the receiver's anchor moves) or skips frames
        sa, sb = a.close(), b.close()
    finally:
        engine.shutdown()
    tape = wav.load_wav(tmp_path / "b.wav")
    offset, corr = _where(tape, x, round((first - tb) * 8000))
    # on loopback the packet's transit is well under a millisecond: the recording sits where it was sent
    assert abs(offset) <= 16, offset
    # 1.0 for G.711 on an idle box (Opus 0.97); a late clock's bursts move the far end's anchor mid-clip
    # (seen on a busy box: 0.89), and skipped ticks put gaps into what was sent
    steady = health.skipped_ticks == 0 and health.late_max_ms < 10
    assert corr > (0.9 if steady else 0.5), (corr, health)
    assert sb.codec == codec and sb.rx_lost == 0 and sb.rx_other_pt == 0 and not sb.rx_auth_failed
    assert bool(sb.srtp) == srtp
    assert [d.digit for d in b.dtmf_received] == ["1", "2", "#"]
    assert all(d.duration_ms == 100 for d in b.dtmf_received)
    gaps = [d.at - start for d in b.dtmf_received]
    # each digit's first packet leaves on its tick (exact on an idle box: ±0.2 ms); a busy box wakes a tick late
    assert gaps == pytest.approx([0.0, 0.16, 0.32], abs=0.025), gaps
    assert end - start == pytest.approx(0.40)  # the last end packet leaves 20 ms before the digit's nominal end
    assert sa.rtcp_tx and sa.rtcp_rx and sb.rtcp_rx  # a report each way after the first second


def test_rtcp_round_trip_and_far_end_reports(tmp_path: Path) -> None:
    """After two reports each way, each side knows the round trip (LSR/DLSR) and the other's view of its stream."""
    engine = MediaEngine("127.0.0.1", 4, loud_level=5)
    try:
        a, b, _ = _pair(engine, tmp_path, "PCMA", srtp_a=True, srtp_b=True)
        time.sleep(6.6)
        sa, sb = a.close(), b.close()
    finally:
        engine.shutdown()
    for s in (sa, sb):
        assert s.rtcp_rx is not None and s.rtcp_rx >= 2
        assert s.rtt_ms_mean is not None and 0 <= s.rtt_ms_mean < 5  # loopback
        assert s.far_lost == 0 and s.far_jitter_ms is not None and s.far_jitter_ms < 30


def test_srtp_required_drops_plain_rtp(tmp_path: Path) -> None:
    """A channel that expects SRTP tapes nothing of a plain stream and counts each packet as failed."""
    engine = MediaEngine("127.0.0.1", 4, loud_level=5)
    try:
        a, b, _ = _pair(engine, tmp_path, "PCMU", srtp_a=False, srtp_b=True)
        a.play(RECORDING)
        time.sleep(0.6)
        _, sb = a.close(), b.close()
    finally:
        engine.shutdown()
    assert sb.rx_packets == 0 and sb.rx_auth_failed and sb.rx_auth_failed > 20
    assert np.abs(wav.load_wav(tmp_path / "b.wav")).max() == 0


def test_stereo_tape_keeps_caller_left_far_end_right(tmp_path: Path) -> None:
    engine = MediaEngine("127.0.0.1", 4, loud_level=5)
    try:
        a, b, tb = _pair(engine, tmp_path, "PCMU", srtp_a=False, srtp_b=False, stereo=True)
        first = a.play(RECORDING)  # a's audio arrives at b: b's right channel
        time.sleep(0.2 + len(wav.load_wav(RECORDING)) / 8000)
        a.close(), b.close()
    finally:
        engine.shutdown()
    import wave
    with wave.open(str(tmp_path / "b.wav")) as w:
        assert w.getnchannels() == 2 and w.getframerate() == 8000
        frames = np.frombuffer(w.readframes(w.getnframes()), "<i2").reshape(-1, 2)
    assert np.abs(frames[:, 0]).max() == 0  # b played nothing
    offset, corr = _where(frames[:, 1].copy(), wav.load_wav(RECORDING), round((first - tb) * 8000))
    assert abs(offset) <= 16 and corr > 0.9, (offset, corr)


def test_dtmf_refused_without_telephone_event(tmp_path: Path) -> None:
    engine = MediaEngine("127.0.0.1", 2, loud_level=5)
    try:
        a = engine.open()
        a.start("127.0.0.1:9", None, 1, ChannelMedia(codec="PCMA", pt=8))
        with pytest.raises(ValueError, match="telephone-event"):
            a.send_dtmf("1")
        a.close()
    finally:
        engine.shutdown()
