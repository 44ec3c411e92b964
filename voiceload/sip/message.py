"""The one SIP message parser: start line, headers, body, and the few facts read off them.

Used on what arrives over UDP (`lite`), what a packet capture holds (`tools.referee`) and the
messages pjsua2 hands over as text (`ua`). Pure: no pjsua2, no I/O. Lenient where senders differ
(LF line ends, folded headers, compact names, spacing), strict where garbage would otherwise pass
for SIP (the start line): anything that is not a SIP request or response parses to None.
"""

from __future__ import annotations

import dataclasses
import re
import urllib.parse
from dataclasses import dataclass

# RFC 3261 §7.3.3 and the later RFCs' one-letter forms: a header may arrive under either name
COMPACT = {
    "a": "accept-contact", "b": "referred-by", "c": "content-type", "d": "request-disposition",
    "e": "content-encoding", "f": "from", "i": "call-id", "j": "reject-contact", "k": "supported",
    "l": "content-length", "m": "contact", "n": "identity-info", "o": "event", "r": "refer-to",
    "s": "subject", "t": "to", "u": "allow-events", "v": "via", "x": "session-expires", "y": "identity",
}
START_LINE_MAX = 2048  # bytes: a longer first line is not SIP (an RTP packet, say), and is not scanned on
_TOKEN = rb"[A-Za-z0-9.!%*_+`'~-]+"
_REQUEST = re.compile(rb"(" + _TOKEN + rb")[ \t]+(\S+)[ \t]+SIP/2\.0")
_RESPONSE = re.compile(rb"SIP/2\.0[ \t]+([1-6]\d\d)(?:[ \t]+(.*))?")
_BLANK_LINE = re.compile(rb"\r?\n\r?\n")
_TAG = re.compile(r";\s*tag\s*=\s*([^;\s>,]+)", re.IGNORECASE)


def canonical(name: str) -> str:
    """A header name as compared: lower case, compact forms spelt out."""
    key = name.strip().lower()
    return COMPACT.get(key, key)


@dataclass(frozen=True)
class SipMessage:
    """A parsed SIP request (`method`, `uri`) or response (`status`, `reason`)."""

    start_line: str
    method: str | None  # request method, None for responses
    uri: str | None  # request URI, None for responses
    status: int | None  # response code, None for requests
    reason: str  # response reason phrase ("" for requests)
    headers: tuple[tuple[str, str], ...]  # (name as sent, value), in order, folded lines joined
    body: bytes = b""

    @classmethod
    def parse(cls, data: bytes | str) -> SipMessage | None:
        """The message in `data`, or None when its first line is neither a SIP request nor a response."""
        raw = data.encode("utf-8", "replace") if isinstance(data, str) else data
        end = raw.find(b"\n", 0, START_LINE_MAX)
        if end < 0:
            return None
        first = raw[:end].strip()
        method: str | None = None
        uri: str | None = None
        status: int | None = None
        reason = ""
        if m := _RESPONSE.fullmatch(first):
            status = int(m.group(1))
            reason = (m.group(2) or b"").decode("utf-8", "replace").strip()
        elif m := _REQUEST.fullmatch(first):
            method, uri = m.group(1).decode("ascii"), m.group(2).decode("utf-8", "replace")
        else:
            return None
        blank = _BLANK_LINE.search(raw, max(end - 1, 0))  # from the start line's own CR: no headers at all
        head, body = (raw[end + 1 : blank.start()], raw[blank.end() :]) if blank else (raw[end + 1 :], b"")
        headers: list[tuple[str, str]] = []
        for raw_line in head.split(b"\n"):
            line = raw_line.rstrip(b"\r").decode("utf-8", "replace")
            if line[:1] in (" ", "\t"):  # a folded line continues the header above it
                if headers and line.strip():
                    name, value = headers[-1]
                    headers[-1] = (name, f"{value} {line.strip()}".strip())
                continue
            name, colon, value = line.partition(":")
            if colon and name.strip():
                headers.append((name.strip(), value.strip()))
        msg = cls(first.decode("utf-8", "replace"), method, uri, status, reason, tuple(headers), body)
        length = msg.content_length
        if length is not None and length < len(body):  # bytes past Content-Length are not the message's
            return dataclasses.replace(msg, body=body[:length])
        return msg

    @property
    def is_request(self) -> bool:
        return self.method is not None

    def get(self, name: str) -> str | None:
        """The first value of header `name` (any case, full or compact form), None if absent."""
        want = canonical(name)
        return next((v for k, v in self.headers if canonical(k) == want), None)

    def all(self, name: str) -> list[str]:
        """Every value of header `name`, one per header line, in order."""
        want = canonical(name)
        return [v for k, v in self.headers if canonical(k) == want]

    @property
    def call_id(self) -> str:
        return self.get("call-id") or ""

    @property
    def cseq(self) -> tuple[int, str] | None:
        """(sequence number, method) of the CSeq header, None if absent or malformed."""
        parts = (self.get("cseq") or "").split()
        if len(parts) != 2 or not parts[0].isdigit():
            return None
        return int(parts[0]), parts[1]

    @property
    def cseq_method(self) -> str | None:
        """The CSeq's method in upper case: which transaction a response belongs to."""
        cseq = self.cseq
        return None if cseq is None else cseq[1].upper()

    @property
    def from_tag(self) -> str | None:
        return tag(self.get("from"))

    @property
    def to_tag(self) -> str | None:
        return tag(self.get("to"))

    @property
    def content_length(self) -> int | None:
        value = (self.get("content-length") or "").strip()
        return int(value) if value.isdigit() else None

    @property
    def retry_after_s(self) -> int | None:
        """Retry-After's delta-seconds (RFC 3261 20.33: `120 (in a meeting);duration=3600`), None if absent or bad."""
        value = (self.get("retry-after") or "").strip()
        digits = value[: len(value) - len(value.lstrip("0123456789"))]
        return int(digits) if digits else None

    @property
    def audio_formats(self) -> AudioFormats | None:
        """The payload formats and SDES key of its SDP's first audio stream, None if it has none."""
        if b"m=audio" not in self.body:
            return None
        return parse_sdp_formats(self.body.decode("utf-8", "replace"))

    @property
    def media(self) -> tuple[str, int] | None:
        """(address, port) of the first audio stream its SDP body offers or answers, None if none."""
        if b"m=audio" not in self.body:
            return None
        return parse_sdp_audio(self.body.decode("utf-8", "replace"))


def tag(value: str | None) -> str | None:
    """The tag parameter of a From or To header value (after the name-addr's `>`), None if untagged."""
    if not value:
        return None
    params = value[value.rfind(">") + 1 :] if ">" in value else value
    t = _TAG.search(params)
    return t.group(1) if t else None


def name_addr(value: str | None) -> tuple[str | None, str | None, str | None]:
    """(display name, URI, user) of a From/To/Contact value; the user %-unescaped. Nones where absent.

    `"Alice \\"A\\"" <sip:+1555@gw;user=phone>;tag=x` -> ('Alice "A"', 'sip:+1555@gw;user=phone', '+1555').
    """
    if not value:
        return None, None, None
    value = value.strip()
    display: str | None = None
    if "<" in value:
        head, _, rest = value.partition("<")
        uri = rest.partition(">")[0].strip()
        head = head.strip()
        if head.startswith('"') and head.endswith('"') and len(head) >= 2:
            head = re.sub(r"\\(.)", r"\1", head[1:-1])
        display = head or None
    else:  # addr-spec: its parameters after ';' are the header's (the tag), not the URI's
        uri = value.split(";", 1)[0].strip()
    _scheme, colon, rest = uri.partition(":")
    if not colon or "@" not in rest.split(";", 1)[0]:
        return display, uri or None, None
    return display, uri, urllib.parse.unquote(rest.split(";", 1)[0].rpartition("@")[0])


def parse_sdp_audio(body: str) -> tuple[str, int] | None:
    """(connection address, port) of the first audio stream; media-level c= beats session-level."""
    session_ip: str | None = None
    media_ip: str | None = None
    port: int | None = None
    in_media = in_audio = False
    for raw in body.splitlines():
        line = raw.strip()
        if line.startswith("m="):
            if port is not None:
                break  # the first audio stream is complete
            parts = line[2:].split()
            in_media = True
            in_audio = len(parts) >= 2 and parts[0] == "audio"
            if in_audio:
                try:
                    port = int(parts[1].split("/")[0])
                except ValueError:
                    return None
        elif line.startswith("c="):
            parts = line[2:].split()
            if len(parts) >= 3 and parts[0] == "IN" and parts[1] == "IP4":
                if in_audio:
                    media_ip = parts[2].split("/")[0]
                elif not in_media:
                    session_ip = parts[2].split("/")[0]
    addr = media_ip or session_ip
    if port is None or port == 0 or addr is None or addr == "0.0.0.0":
        return None
    return addr, port


# RFC 3551's static audio payload types that voiceload speaks (an SDP may omit their rtpmap)
STATIC_PT = {0: ("PCMU", 8000), 8: ("PCMA", 8000), 9: ("G722", 8000), 13: ("CN", 8000)}


@dataclass(frozen=True)
class AudioFormats:
    """An SDP's first audio stream: its payload types in preference order, named, and its SDES key.

    In an answer the first payload type is the codec the call speaks (RFC 3264 §6).
    """

    profile: str  # "RTP/AVP", "RTP/SAVP", ...
    formats: tuple[tuple[int, str, int], ...]  # (payload type, encoding name as written, clock rate)
    crypto: tuple[str, str] | None  # the first a=crypto's (suite, key params after "inline:")

    @property
    def first(self) -> tuple[int, str, int] | None:
        return self.formats[0] if self.formats else None

    def name_of(self, pt: int) -> str | None:
        return next((name for p, name, _ in self.formats if p == pt), None)


def parse_sdp_formats(body: str) -> AudioFormats | None:
    """The first audio stream's formats (m= order, rtpmap names; static ones named by RFC 3551) and key."""
    pts: list[int] = []
    profile = ""
    rtpmap: dict[int, tuple[str, int]] = {}
    crypto: tuple[str, str] | None = None
    in_audio = seen = False
    for raw in body.splitlines():
        line = raw.strip()
        if line.startswith("m="):
            if seen:
                break
            parts = line[2:].split()
            in_audio = seen = len(parts) >= 3 and parts[0] == "audio"
            if in_audio:
                profile = parts[2]
                pts = [int(p) for p in parts[3:] if p.isdigit()]
        elif in_audio and line.startswith("a=rtpmap:"):
            pt, _, enc = line[9:].partition(" ")
            name, _, rate = enc.strip().partition("/")
            if pt.isdigit() and name:
                rtpmap[int(pt)] = (name, int(rate.split("/")[0]) if rate.split("/")[0].isdigit() else 8000)
        elif in_audio and line.startswith("a=crypto:") and crypto is None:
            parts = line.split()
            if len(parts) >= 3 and parts[2].startswith("inline:"):
                crypto = (parts[1], parts[2][7:])
    if not seen:
        return None
    named = [(pt, rtpmap.get(pt) or STATIC_PT.get(pt) or ("", 0)) for pt in pts]
    return AudioFormats(profile, tuple((pt, name, rate) for pt, (name, rate) in named), crypto)
