"""G.722 (64 kbit/s) encode and decode for test fixtures, through Debian's libspandsp by ctypes.

Why spandsp: sox has no G.722, Debian packages no Python binding for it, and ffmpeg's CLI is a
heavy install just to make a fixture; libspandsp2 is already on the machine (the engine's build
needs libspandsp-dev). 16 kHz linear in, 8000 bytes a second out; RTP carries it as PT 9 with an
8 kHz RTP clock (RFC 3551's historical error), 160 bytes per 20 ms packet.
"""

from __future__ import annotations

import ctypes
import ctypes.util
from functools import cache

import numpy as np
import numpy.typing as npt

RATE = 16000  # G.722's audio rate
BYTES_PER_20MS = 160


class G722Unavailable(RuntimeError):
    """libspandsp is not installed (Debian: libspandsp2)."""


@cache
def _lib() -> ctypes.CDLL:
    name = ctypes.util.find_library("spandsp") or "libspandsp.so.2"
    try:
        lib = ctypes.CDLL(name)
    except OSError as exc:
        raise G722Unavailable(f"libspandsp not found ({exc}); Debian package libspandsp2") from exc
    vp, i = ctypes.c_void_p, ctypes.c_int
    lib.g722_encode_init.restype = vp
    lib.g722_encode_init.argtypes = [vp, i, i]
    lib.g722_encode.restype = i
    lib.g722_encode.argtypes = [vp, ctypes.c_char_p, vp, i]
    lib.g722_encode_free.argtypes = [vp]
    lib.g722_decode_init.restype = vp
    lib.g722_decode_init.argtypes = [vp, i, i]
    lib.g722_decode.restype = i
    lib.g722_decode.argtypes = [vp, vp, ctypes.c_char_p, i]
    lib.g722_decode_free.argtypes = [vp]
    return lib


def encode(samples16k: npt.NDArray[np.integer]) -> bytes:
    """G.722 of 16 kHz mono samples, from a fresh encoder (two samples make one byte)."""
    lib = _lib()
    x = np.ascontiguousarray(samples16k, dtype=np.int16)
    state = lib.g722_encode_init(None, 64000, 0)
    try:
        out = ctypes.create_string_buffer(len(x) // 2 + 1)
        n = lib.g722_encode(state, out, x.ctypes.data, len(x))
        return out.raw[:n]
    finally:
        lib.g722_encode_free(state)


def decode(data: bytes) -> npt.NDArray[np.int16]:
    """16 kHz samples of a G.722 byte stream, from a fresh decoder."""
    lib = _lib()
    out = np.zeros(2 * len(data), dtype=np.int16)
    state = lib.g722_decode_init(None, 64000, 0)
    try:
        n = lib.g722_decode(state, out.ctypes.data, data, len(data))
        return out[:n]
    finally:
        lib.g722_decode_free(state)
