"""G.711 µ-law (PCMU) in numpy: the project's one table and coder outside the C engine.

The agents' engine (`voiceload.media._rtpengine`) encodes in C; everything else that needs µ-law
(the referee's decoder, the bot's recogniser hearing what a call does to audio, benchmarks, tests)
uses this module. `tests/test_g711.py` checks it against the C engine on every int16.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

Samples = npt.NDArray[np.int16]
Codes = npt.NDArray[np.uint8]

_BIAS = 0x84
_CLIP = 8159  # on 14-bit magnitudes, as G.711 codes them

def _decode_table() -> Samples:
    """The 256 ITU-T G.711 µ-law code words as linear int16 samples."""
    u = ~np.arange(256, dtype=np.int32) & 0xFF
    exponent = (u >> 4) & 0x07
    mantissa = u & 0x0F
    magnitude = (((mantissa << 3) + _BIAS) << exponent) - _BIAS
    table: Samples = np.where(u & 0x80, -magnitude, magnitude).astype(np.int16)
    return table


ULAW_TABLE = _decode_table()


def encode(x: npt.NDArray[np.integer]) -> Codes:
    """Linear 16-bit samples → µ-law code words, bit-identical to pjmedia's and the C engine's coder.

    Coded on 14-bit samples with the bias of 33: eight segments of 16 steps each (also equal to
    audioop's lin2ulaw on every int16).
    """
    s = np.asarray(x).astype(np.int32) >> 2
    negative = s < 0
    magnitude = np.minimum(np.where(negative, -s, s), _CLIP) + (_BIAS >> 2)
    segment = np.maximum(np.floor(np.log2(magnitude)).astype(np.int32) - 5, 0)
    step = np.where(segment > 7, 0x0F, (magnitude >> (segment + 1)) & 0x0F)  # beyond the top: the top code
    segment = np.minimum(segment, 7)
    mask = np.where(negative, 0x7F, 0xFF)
    codes: Codes = (((segment << 4) | step) ^ mask).astype(np.uint8)
    return codes


def decode(codes: bytes | Codes) -> Samples:
    """µ-law code words (an RTP payload or an array) → linear int16 samples."""
    u = np.frombuffer(codes, dtype=np.uint8) if isinstance(codes, bytes | bytearray | memoryview) else codes
    out: Samples = ULAW_TABLE[u]
    return out


def round_trip(x: npt.NDArray[np.integer]) -> Samples:
    """What a PCMU call delivers of `x`: encode then decode."""
    return decode(encode(x))
