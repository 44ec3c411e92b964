"""The numpy µ-law coder (voiceload.audio.g711) against the C engine's own, on every int16."""

from __future__ import annotations

import numpy as np

from voiceload.audio import g711
from voiceload.media.engine import encode_pcmu

EVERY_INT16 = np.arange(-32768, 32768, dtype=np.int32).astype(np.int16)
TOP = 32124  # the largest µ-law code point


def test_encode_equals_the_c_engines_on_every_int16() -> None:
    assert g711.encode(EVERY_INT16).tobytes() == encode_pcmu(EVERY_INT16)


def test_decode_inverts_the_c_encoder_on_every_code() -> None:
    codes = np.frombuffer(encode_pcmu(g711.ULAW_TABLE), dtype=np.uint8)
    expected = np.arange(256, dtype=np.uint8)
    expected[0x7F] = 0xFF  # negative zero decodes to 0, which codes as positive zero
    assert np.array_equal(codes, expected)


def test_round_trip_within_quantisation() -> None:
    codes = g711.encode(EVERY_INT16)
    x = EVERY_INT16.astype(np.int32)
    y = g711.decode(codes).astype(np.int32)
    half_step = 4 << ((~codes.astype(np.int32) >> 4) & 7)  # steps double every segment (8 << segment)
    inside = np.abs(x) <= TOP + half_step
    # within half a step of the code point, plus the two low bits G.711 drops
    assert np.all(np.abs(y - x)[inside] <= half_step[inside] + 3)
    assert np.all(np.abs(y[~inside]) == TOP)  # beyond the top code: clipped to it
    assert np.array_equal(g711.round_trip(y), y)  # decoded values are code points
    assert np.array_equal(g711.round_trip(EVERY_INT16), y)


def test_table_extremes() -> None:
    assert g711.ULAW_TABLE.dtype == np.int16 and len(g711.ULAW_TABLE) == 256
    assert g711.ULAW_TABLE.max() == TOP and g711.ULAW_TABLE.min() == -TOP
    assert g711.decode(b"\xff\x7f").tolist() == [0, 0]  # positive and negative zero
    assert g711.round_trip(np.array([32767, -32768], dtype=np.int16)).tolist() == [TOP, -TOP]
    assert g711.encode(np.zeros(1, dtype=np.int16)).tolist() == [0xFF]
    small = g711.round_trip(np.array([100, -100], dtype=np.int16))
    assert abs(int(small[0]) - 100) <= 4 and small[1] == -small[0]  # symmetric, fine near zero
