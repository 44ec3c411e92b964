"""SRTP receive (RFC 3711, SDES AES_CM_128_HMAC_SHA1_80) for the referee: a capture's packets, decrypted.

The engine does its SRTP in libsrtp, which its C module does not expose for reading captures; the
suite is small enough to do here: AES-128 in counter mode from the OpenSSL libcrypto that Python's
own `hashlib` links (through ctypes), HMAC-SHA1 from the standard library. Key derivation rate 0
(the SDES default), no MKI. Each packet's authentication tag is checked, so a wrong key gives no
packets rather than noise decoded as speech.
"""

from __future__ import annotations

import base64
import ctypes
import ctypes.util
import hashlib
import hmac
from functools import cache

SUITE = "AES_CM_128_HMAC_SHA1_80"
MASTER_KEY_LEN, MASTER_SALT_LEN = 16, 14
TAG_LEN = 10  # HMAC-SHA1 truncated to 80 bits


class SrtpUnavailable(RuntimeError):
    """No libcrypto with AES-128-CTR on this machine: SRTP calls stay undecoded."""


@cache
def _libcrypto() -> ctypes.CDLL:
    name = ctypes.util.find_library("crypto")
    if name is None:
        raise SrtpUnavailable("libcrypto not found")
    try:
        lib = ctypes.CDLL(name)
        lib.EVP_CIPHER_CTX_new.restype = ctypes.c_void_p
        lib.EVP_CIPHER_CTX_free.argtypes = [ctypes.c_void_p]
        lib.EVP_aes_128_ctr.restype = ctypes.c_void_p
        lib.EVP_EncryptInit_ex.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p,
                                           ctypes.c_char_p, ctypes.c_char_p]
        lib.EVP_EncryptUpdate.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.POINTER(ctypes.c_int),
                                          ctypes.c_char_p, ctypes.c_int]
    except (OSError, AttributeError) as e:
        raise SrtpUnavailable(f"{name}: {e}") from e
    return lib


def available() -> bool:
    try:
        _libcrypto()
    except SrtpUnavailable:
        return False
    return True


def aes_ctr(key: bytes, iv: bytes, data: bytes) -> bytes:
    """`data` XOR the AES-128 counter-mode key stream from `iv` (encrypt and decrypt alike)."""
    lib = _libcrypto()
    ctx = lib.EVP_CIPHER_CTX_new()
    if not ctx:
        raise SrtpUnavailable("EVP_CIPHER_CTX_new failed")
    try:
        out = ctypes.create_string_buffer(len(data) + 16)
        n = ctypes.c_int(0)
        if lib.EVP_EncryptInit_ex(ctx, lib.EVP_aes_128_ctr(), None, key, iv) != 1 or \
                lib.EVP_EncryptUpdate(ctx, out, ctypes.byref(n), data, len(data)) != 1:
            raise SrtpUnavailable("AES-128-CTR failed")
        return out.raw[: n.value]
    finally:
        lib.EVP_CIPHER_CTX_free(ctx)


def _derive(master_key: bytes, master_salt: bytes, label: int, length: int) -> bytes:
    """RFC 3711 §4.3.1 with key_derivation_rate 0: AES-CM of zeros from (salt XOR label at byte 7) · 2^16."""
    x = bytearray(master_salt)
    x[7] ^= label
    return aes_ctr(master_key, bytes(x) + b"\x00\x00", bytes(length))


def key_of_inline(inline: str) -> bytes | None:
    """The 30-byte master key + salt of an SDP `inline:` value (lifetime and MKI after '|' ignored)."""
    try:
        key = base64.b64decode(inline.split("|", 1)[0], validate=True)
    except ValueError:
        return None
    return key if len(key) == MASTER_KEY_LEN + MASTER_SALT_LEN else None


class SrtpStream:
    """One sender's SRTP (one master key), for every SSRC it uses; `unprotect` gives back plain RTP."""

    def __init__(self, master: bytes) -> None:
        key, salt = master[:MASTER_KEY_LEN], master[MASTER_KEY_LEN:]
        self._key = _derive(key, salt, 0x00, 16)
        self._auth = _derive(key, salt, 0x01, 20)
        self._salt = _derive(key, salt, 0x02, 14)
        self.auth_failed = 0

    def unprotect(self, packet: bytes, index: int) -> bytes | None:
        """The plain RTP packet of an SRTP one whose 48-bit packet index (ROC · 2^16 + SEQ) is `index`;
        None when its tag does not check (another key, a rollover guessed wrong, a damaged packet)."""
        if len(packet) < 12 + TAG_LEN or index < 0:
            self.auth_failed += 1
            return None
        body, tag = packet[:-TAG_LEN], packet[-TAG_LEN:]
        roc = (index >> 16) & 0xFFFFFFFF
        mac = hmac.new(self._auth, body + roc.to_bytes(4, "big"), hashlib.sha1).digest()[:TAG_LEN]
        if not hmac.compare_digest(mac, tag):
            self.auth_failed += 1
            return None
        off = 12 + 4 * (body[0] & 0x0F)
        if body[0] & 0x10 and len(body) >= off + 4:
            off += 4 + 4 * int.from_bytes(body[off + 2 : off + 4], "big")
        if off > len(body):
            self.auth_failed += 1
            return None
        return body[:off] + aes_ctr(self._key, self._iv(body, index), body[off:])

    def _iv(self, header: bytes, index: int) -> bytes:
        """RFC 3711 §4.1.1: (session salt · 2^16) XOR (SSRC · 2^64) XOR (index · 2^16)."""
        iv = bytearray(self._salt + b"\x00\x00")
        for i, b in enumerate(header[8:12]):
            iv[4 + i] ^= b
        for i, b in enumerate(index.to_bytes(6, "big")):
            iv[8 + i] ^= b
        return bytes(iv)

    def protect(self, packet: bytes, index: int) -> bytes:
        """A plain RTP packet as this sender sends it (tests write captures with it)."""
        off = 12 + 4 * (packet[0] & 0x0F)
        body = packet[:off] + aes_ctr(self._key, self._iv(packet, index), packet[off:])
        roc = (index >> 16) & 0xFFFFFFFF
        return body + hmac.new(self._auth, body + roc.to_bytes(4, "big"), hashlib.sha1).digest()[:TAG_LEN]

