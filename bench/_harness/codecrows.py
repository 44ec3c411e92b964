"""The codec rows of bench/density.py: what the agents offer, what the SIPp UAS answers, what streams back.

A row is a codec, optionally with SRTP (`PCMU`, `PCMA`, `G722`, `opus`, `PCMU+srtp`), or
`PCMU@sipp`: the density run's own far end (uas.xml as it is, SIPp streaming bot.ulaw; no
telephone-event, no RTCP), the control that the streamer's far end costs the agents the same. Its agents
offer only that codec (`--codecs X`, and `--srtp required` for an SRTP row, so a call that fell
back to plain RTP fails instead of being counted). The UAS (bench/density/uas.xml, with its SDP
and media action rewritten here) answers with that one codec and telephone-event, RTCP muxed, and
for SRTP an `a=crypto` key of its own; the bot track comes from bench/_harness/streamer.py, one
of voiceload's engines, in the row's codec (see there why not SIPp's own media).
"""

from __future__ import annotations

import base64
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bench._harness.streamer import Streamed
from voiceload.media import _rtpengine
from voiceload.media.engine import CODEC_IDS
from voiceload.sip.sdp import SUITE

UAS_TEMPLATE = Path(__file__).resolve().parents[1] / "density" / "uas.xml"
EVENT_PT = 120  # pjsua's number for telephone-event when it offers one clock rate
# codec: (payload type as pjsua offers it, rtpmap)
WIRE = {"PCMU": (0, "PCMU/8000"), "PCMA": (8, "PCMA/8000"), "G722": (9, "G722/8000"), "opus": (96, "opus/48000/2")}


@dataclass(frozen=True)
class CodecRow:
    """One row: a codec, over SRTP or not."""

    codec: str
    srtp: bool = False
    sipp_media: bool = False  # PCMU@sipp: SIPp's UAS streams the track itself (uas.xml unchanged)

    @property
    def name(self) -> str:
        return f"{self.codec}@sipp" if self.sipp_media else f"{self.codec}+srtp" if self.srtp else self.codec

    @property
    def pt(self) -> int:
        return WIRE[self.codec][0]

    @property
    def event_rate(self) -> int:
        return 48000 if self.codec == "opus" else 8000

    def agent_args(self) -> list[str]:
        """The `voiceload run` options that make the agents offer this row's media, and only it."""
        return ["--codecs", self.codec, "--srtp", "required" if self.srtp else "off"]

    def streamed(self, key: bytes | None) -> Streamed:
        return Streamed(self.codec, self.pt, EVENT_PT, key if self.srtp else None)


def parse_rows(spec: str) -> list[CodecRow]:
    """`PCMU,PCMA,G722,opus,PCMU+srtp,PCMU@sipp` -> rows; ValueError names what is not a row."""
    rows = []
    for item in (s.strip() for s in spec.split(",")):
        if not item:
            continue
        if item.lower() == "pcmu@sipp":
            rows.append(CodecRow("PCMU", sipp_media=True))
            continue
        codec, _, extra = item.partition("+")
        name = next((c for c in WIRE if c.lower() == codec.lower()), None)
        if name is None or extra.lower() not in ("", "srtp"):
            raise ValueError(f"{item!r}: a codec of {', '.join(WIRE)}, optionally +srtp, or PCMU@sipp")
        rows.append(CodecRow(name, extra.lower() == "srtp"))
    if not rows:
        raise ValueError("no codec rows")
    if len({r.name for r in rows}) < len(rows):
        raise ValueError("a row appears twice")
    return rows


def new_srtp_key() -> bytes:
    return os.urandom(_rtpengine.SRTP_KEY_LEN)


def _replace(text: str, old: str, new: str) -> str:
    if text.count(old) != 1:
        raise ValueError(f"{UAS_TEMPLATE}: expected one {old.strip()!r}")
    return text.replace(old, new)


def uas_xml(row: CodecRow, key: bytes | None, events: Path) -> str:
    """uas.xml answering with this row's codec on the streamer's port (`[field1]` of the injection
    file) and telling the streamer at the ACK and the BYE (`[field0]`: its channel)."""
    text = UAS_TEMPLATE.read_text()
    srtp = row.srtp and key is not None
    ereg = '        <ereg regexp="{}" search_in="body" check_it="true" assign_to="{}"/>\n'
    grab = ereg.format("m=audio ([0-9]+)", "m,rport")  # the agent's RTP port, from its offer
    if srtp:
        grab += ereg.format("inline:([A-Za-z0-9+/=]+)", "k,akey")  # and its SRTP key
    text = _replace(text, '  <recv request="INVITE" crlf="true"/>\n',
                    f'  <recv request="INVITE" crlf="true">\n    <action>\n{grab}    </action>\n  </recv>\n')
    pt, rtpmap = WIRE[row.codec]
    media = [f"m=audio [field1] {'RTP/SAVP' if srtp else 'RTP/AVP'} {pt} {EVENT_PT}", f"a=rtpmap:{pt} {rtpmap}",
             f"a=rtpmap:{EVENT_PT} telephone-event/{row.event_rate}", f"a=fmtp:{EVENT_PT} 0-16", "a=ptime:20",
             "a=rtcp-mux"]
    if srtp:
        media.append(f"a=crypto:1 {SUITE} inline:{base64.b64encode(key).decode()}")  # type: ignore[arg-type]
    text = _replace(text, "      m=audio [media_port] RTP/AVP 0\n      a=rtpmap:0 PCMU/8000\n      a=ptime:20\n",
                    "".join(f"      {line}\n" for line in media))
    ack = f"ack [field0] [$rport]{' [$akey]' if srtp else ''}"
    text = _replace(text, '      <exec rtp_stream="bot.ulaw,1,0"/>\n',
                    f'      <exec command="echo {ack} >> {events}"/>\n')
    text = _replace(text, '  <recv request="BYE"/>\n',
                    f'  <recv request="BYE">\n    <action>\n      <exec command="echo bye [field0] >> {events}"/>\n'
                    '    </action>\n  </recv>\n')
    used = "m,k" if srtp else "m"
    return _replace(text, "  <label id=\"done\"/>\n", f'  <label id="done"/>\n  <Reference variables="{used}"/>\n')


def decoded(row: CodecRow, samples: np.ndarray) -> np.ndarray:
    """`samples` as the agents' engine hears them in this codec (the reference for the tapes' dropouts)."""
    pcm = np.ascontiguousarray(samples, dtype="<i2")
    out = np.frombuffer(_rtpengine.encode_clip(CODEC_IDS[row.codec], pcm.tobytes())[3], dtype="<i2")
    return out[: len(pcm)].astype(np.int16)
