"""The RTP engine adapter: SDP rewriting (pure), and the C engine on loopback sockets."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from voiceload.audio import g711, wav
from voiceload.media.engine import MediaEngine, encode_pcmu, offer_with_port, split_address
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
