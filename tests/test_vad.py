"""Speech segmentation, alignment and prompt matching on synthetic signals with known edges."""

from __future__ import annotations

import numpy as np

from voiceload.audio.vad import locate, match_score, ms_to_samples, speech_segments, speech_span


def tone(n: int, amp: int = 8000, freq: float = 300.0, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(n) / 8000
    x = (amp * np.sin(2 * np.pi * freq * t) * (0.6 + 0.4 * rng.random(n))).astype(np.int16)
    x[0] = x[-1] = amp  # loud edges: speech starts and ends exactly at the burst's ends
    return x


def place(total: int, *parts: tuple[int, np.ndarray]) -> np.ndarray:
    x = np.zeros(total, dtype=np.int32)
    for at, sig in parts:
        x[at : at + len(sig)] += sig
    return np.clip(x, -32768, 32767).astype(np.int16)


def test_segments_have_sample_accurate_edges() -> None:
    burst = tone(4000)
    x = place(20000, (1234, burst))
    segs = speech_segments(x)
    assert len(segs) == 1
    assert segs[0].start == 1234
    assert segs[0].end == 1234 + 4000


def test_short_pauses_are_bridged_long_ones_split() -> None:
    a, b = tone(2000), tone(2000, seed=1)
    near = place(20000, (1000, a), (1000 + 2000 + ms_to_samples(150), b))
    far = place(20000, (1000, a), (1000 + 2000 + ms_to_samples(600), b))
    assert len(speech_segments(near, hangover_ms=300)) == 1
    assert len(speech_segments(far, hangover_ms=300)) == 2


def test_clicks_are_not_speech_and_silence_is_empty() -> None:
    x = np.zeros(8000, dtype=np.int16)
    assert speech_segments(x) == []
    x[100:104] = 20000  # 0.5 ms click
    assert speech_segments(x) == []


def test_speech_span_of_a_recording() -> None:
    x = place(16000, (800, tone(3000)), (800 + 3000 + 1000, tone(2000, seed=2)))
    span = speech_span(x)
    assert (span.onset, span.length) == (800, 16000)
    assert span.end == 800 + 3000 + 1000 + 2000


def test_locate_finds_a_player_inside_a_mix() -> None:
    needle = tone(6000, seed=3)
    other = tone(6000, amp=3000, freq=700, seed=4)
    hay = place(40000, (10007, needle), (9000, other))
    idx, score = locate(hay, needle, lo=9500, hi=10500)
    assert idx == 10007
    assert score > 0.8


def test_match_score_separates_same_from_different_prompt() -> None:
    ref = tone(6000, seed=5)
    # the same prompt through G.711-like quantisation noise, 13 samples late
    noisy = (ref.astype(np.int32) + np.random.default_rng(6).integers(-60, 60, len(ref))).astype(np.int16)
    received = np.concatenate((np.zeros(13, dtype=np.int16), noisy))
    assert match_score(received, ref) > 0.95
    assert match_score(tone(6000, freq=170, seed=7), ref) < 0.5


def test_match_score_survives_a_jitter_buffer_frame_mid_prompt() -> None:
    ref = tone(16000, seed=8, freq=230)
    # the receiver's jitter buffer inserted one 20 ms PLC-like frame of silence after 0.7 s
    received = np.concatenate((ref[:5600], np.zeros(160, dtype=np.int16), ref[5600:]))
    assert match_score(received, ref) > 0.9
    other = tone(16000, seed=9, freq=170)
    assert match_score(other, ref) < 0.5
