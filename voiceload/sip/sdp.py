"""The little of SDP (RFC 4566) the engine's calls need beyond pjsua's negotiation: crypto and RTCP.

pjsua negotiates the codec (its stream info names it and its payload type); what the engine must
also know is in the SDP lines pjsua keeps to itself: the far end's SRTP key (`a=crypto`, RFC
4568), whether it takes RTCP multiplexing (`a=rtcp-mux`, RFC 5761), and telephone-event's
payload type. Our own offer gets the engine's ports, and an SRTP key of ours when the run asks for
SRTP and pjsua did not offer one. Pure text handling, no pjsua2.
"""

from __future__ import annotations

import base64
import os
import re
from dataclasses import dataclass

from voiceload.media.engine import SRTP_KEY_LEN, ChannelMedia, offer_with_port

SUITE = "AES_CM_128_HMAC_SHA1_80"  # the one SDES suite the engine speaks (and every SRTP gateway offers)
_CRYPTO = re.compile(r"^a=crypto:(\d+) (\S+) inline:([A-Za-z0-9+/=]+)\S*[^\r\n]*\r?\n", re.MULTILINE)
_RTPMAP = re.compile(r"^a=rtpmap:(\d+) ([^/\s]+)/(\d+)", re.MULTILINE)
_M_AUDIO = re.compile(r"^m=audio (\d+) (\S+)", re.MULTILINE)


class SdpError(ValueError):
    """What the far end's SDP asks that the engine cannot do: the call fails with this as its reason."""


@dataclass(frozen=True)
class Offer:
    """Our SDP offer as it goes out, and the SRTP key it carries (None: plain RTP)."""

    sdp: str
    srtp_key: bytes | None


def _key_of(inline: str) -> bytes | None:
    try:
        key = base64.b64decode(inline, validate=True)
    except ValueError:
        return None
    return key if len(key) == SRTP_KEY_LEN else None


def make_offer(sdp: str, port: int, rtcp_port: int, srtp: str, key: bytes | None = None) -> Offer:
    """pjsua's offer with the engine's ports and, when `srtp` is not off, one `a=crypto` line of ours.

    pjsua's own crypto lines (a build with SRTP, an account that asks for it) are replaced: the
    engine does the call's SRTP and must know the key, and it speaks one suite. `required` makes the
    profile RTP/SAVP, so a far end without SRTP refuses the call; `optional` keeps RTP/AVP with the
    key offered (RFC 4568 best effort: most gateways take it, the others ignore it). A later SDP of
    the call (our answer to a re-INVITE) passes the call's `key`: the engine's streams keep theirs.
    """
    out = _CRYPTO.sub("", offer_with_port(sdp, port, rtcp_port))
    if srtp == "off":
        return Offer(re.sub(r"^(m=audio \d+ )RTP/SAVP", r"\1RTP/AVP", out, flags=re.MULTILINE), None)
    key = key or os.urandom(SRTP_KEY_LEN)
    eol = "\r\n" if "\r\n" in out else "\n"
    profile = "RTP/SAVP" if srtp == "required" else "RTP/AVP"
    out = re.sub(r"^(m=audio \d+ )RTP/S?AVP", rf"\g<1>{profile}", out, count=1, flags=re.MULTILINE)
    m_end = out.index(eol, _M_AUDIO.search(out).start()) + len(eol)  # type: ignore[union-attr]
    line = f"a=crypto:1 {SUITE} inline:{base64.b64encode(key).decode()}{eol}"
    return Offer(out[:m_end] + line + out[m_end:], key)


@dataclass(frozen=True)
class Answer:
    """What the far end's SDP says beyond pjsua's stream info."""

    srtp_key: bytes | None  # its key, for the suite it chose
    rtcp_mux: bool
    event_pt: int | None  # telephone-event's payload type at the codec's clock rate


def read_answer(sdp: str, *, codec_rate: int, srtp: str) -> Answer:
    """The far end's SDP (its answer, or a later offer) as the engine must follow it, for a run whose
    `--srtp` is `srtp`; SdpError if it chose an SRTP suite the engine does not speak, took SRTP
    without a usable key, or answered plain RTP to a run that requires SRTP."""
    we_offered_srtp = srtp != "off"
    m = _M_AUDIO.search(sdp)
    audio = sdp[m.start():] if m else sdp
    nxt = re.search(r"^m=", audio[2:], re.MULTILINE)
    if nxt:
        audio = audio[:nxt.start() + 2]
    cryptos = _CRYPTO.findall(audio)
    key = None
    if cryptos and we_offered_srtp:
        tag, suite, inline = cryptos[0]
        if suite != SUITE:
            raise SdpError(f"the far end chose SRTP suite {suite}; voiceload speaks {SUITE}")
        key = _key_of(inline)
        if key is None:
            raise SdpError(f"the far end's SRTP key (a=crypto:{tag}) is not a {SRTP_KEY_LEN}-byte key")
    elif m and "SAVP" in m.group(2) and we_offered_srtp:
        raise SdpError(f"the far end answered {m.group(2)} without an a=crypto key (DTLS-SRTP is not supported)")
    if key is None and srtp == "required":
        raise SdpError("SRTP is required (--srtp required) but the far end answered plain RTP")
    event_pt = next((int(pt) for pt, name, rate in _RTPMAP.findall(audio)
                     if name.lower() == "telephone-event" and int(rate) == codec_rate), None)
    return Answer(srtp_key=key, rtcp_mux=bool(re.search(r"^a=rtcp-mux\s*$", audio, re.MULTILINE)), event_pt=event_pt)


def channel_media(codec: str, pt: int, answer: Answer, our_key: bytes | None, rtcp: str | None,
                  *, stereo: bool = False) -> ChannelMedia:
    """The engine's media for a call: pjsua's codec and payload type, the keys, where RTCP goes."""
    srtp = our_key is not None and answer.srtp_key is not None
    return ChannelMedia(codec=codec, pt=pt, event_pt=answer.event_pt,
                        srtp_tx=our_key if srtp else None, srtp_rx=answer.srtp_key if srtp else None,
                        rtcp=None if answer.rtcp_mux else rtcp, rtcp_mux=answer.rtcp_mux, stereo=stereo)
