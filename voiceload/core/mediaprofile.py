"""What a run's calls offer for media: codecs in order, SRTP, how DTMF is sent (pure).

A real gateway picks from what the caller offers: an A-law-only Asterisk answers 488 to a
µ-law-only offer. The scenario's `media:` section says what the calls offer, the command line
(`--codecs`, `--srtp`, `--dtmf`) overrides it, and the result travels to the agents inside the
SIP profile (core/sipprofile.py), since the offer is part of the INVITE. Parsing and validation
only: a bad value is a `UserError` naming the field, before any call is placed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from voiceload.errors import UserError


@dataclass(frozen=True)
class Codec:
    """A codec the media engine speaks: its SDP name, pjsua's codec id, and its RTP clock."""

    name: str  # as the `--codecs` list and records spell it
    pjsua_id: str  # pjsua's codec id prefix (codecEnum2's codecId starts with it)
    static_pt: int | None  # its static RTP payload type; None: dynamic (the SDP names it)
    rtp_rate: int  # its RTP timestamp clock (G.722's is 8000, RFC 3551 4.5.2, although it samples at 16 kHz)
    audio_rate: int  # what it carries
    ie: float  # G.113 equipment impairment at no loss (E-model, core/emodel.py)
    bpl: float  # G.113 packet-loss robustness (with the decoder's loss concealment)


# G.113 Appendix I values; Opus has none there: its figures are the usual narrowband-equivalent ones
# for a 20-32 kbit/s VoIP setting (the E-model is a planning tool; docs/media.md says so).
CODECS: dict[str, Codec] = {c.name.lower(): c for c in (
    Codec("PCMU", "PCMU/8000", 0, 8000, 8000, ie=0.0, bpl=25.1),
    Codec("PCMA", "PCMA/8000", 8, 8000, 8000, ie=0.0, bpl=25.1),
    Codec("G722", "G722/16000", 9, 8000, 16000, ie=0.0, bpl=25.1),
    Codec("opus", "opus/48000", None, 48000, 48000, ie=0.0, bpl=35.0),
)}
SRTP_MODES = ("off", "optional", "required")
DTMF_METHODS = ("rfc4733", "info")
DEFAULT_CODECS: tuple[str, ...] = ("PCMU",)


def codec(name: str) -> Codec:
    """The codec of that name (any case); KeyError if the engine does not speak it."""
    return CODECS[name.lower()]


def parse_codecs(value: str | list[Any] | tuple[Any, ...], what: str = "--codecs") -> tuple[str, ...]:
    """'PCMA,PCMU' or a list -> canonical names in offer order; a UserError names an unknown one."""
    items = value.split(",") if isinstance(value, str) else list(value)
    names: list[str] = []
    for item in items:
        text = str(item).strip()
        if not text:
            continue
        if text.lower() not in CODECS:
            known = ", ".join(c.name for c in CODECS.values())
            raise UserError(f"{what}: unknown codec {text!r} (known: {known})")
        name = CODECS[text.lower()].name
        if name not in names:
            names.append(name)
    if not names:
        raise UserError(f"{what}: name at least one codec")
    return tuple(names)


@dataclass(frozen=True)
class MediaProfile:
    """The calls' media offer. `srtp`: off (plain RTP/AVP), optional (RTP/AVP with a=crypto: the far
    end may take it or not), required (RTP/SAVP: a far end without SRTP refuses the call)."""

    codecs: tuple[str, ...] = DEFAULT_CODECS
    srtp: Literal["off", "optional", "required"] = "off"
    dtmf: Literal["rfc4733", "info"] = "rfc4733"  # DTMF steps as RTP events, or as SIP INFO

    def to_dict(self) -> dict[str, Any]:
        return {"codecs": list(self.codecs), "srtp": self.srtp, "dtmf": self.dtmf}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> MediaProfile:
        return cls(codecs=tuple(data.get("codecs") or DEFAULT_CODECS), srtp=data.get("srtp", "off"),
                   dtmf=data.get("dtmf", "rfc4733"))


def check_srtp(value: str, what: str = "--srtp") -> Literal["off", "optional", "required"]:
    if value not in SRTP_MODES:
        raise UserError(f"{what}: must be one of {', '.join(SRTP_MODES)}; got {value!r}")
    return value  # type: ignore[return-value]


def check_dtmf(value: str, what: str = "--dtmf") -> Literal["rfc4733", "info"]:
    if value not in DTMF_METHODS:
        raise UserError(f"{what}: must be one of {', '.join(DTMF_METHODS)}; got {value!r}")
    return value  # type: ignore[return-value]


MEDIA_KEYS = ("codecs", "srtp", "dtmf")


def media_from_scenario(section: Any) -> MediaProfile:
    """The scenario's `media:` mapping (plain values) -> MediaProfile; a UserError names the field."""
    if section is None:
        return MediaProfile()
    if not isinstance(section, dict):
        raise UserError(f"media: must be a mapping with keys ({', '.join(MEDIA_KEYS)})")
    for key in section:
        if key not in MEDIA_KEYS:
            raise UserError(f"media.{key}: unknown key (valid keys: {', '.join(MEDIA_KEYS)})")
    codecs = DEFAULT_CODECS
    if section.get("codecs") is not None:
        raw = section["codecs"]
        if not isinstance(raw, (str, list)):
            raise UserError("media.codecs: must be a list of codec names, e.g. [PCMA, PCMU]")
        codecs = parse_codecs(raw, "media.codecs")
    srtp = check_srtp(str(section.get("srtp", "off")).lower() if section.get("srtp") is not False else "off",
                      "media.srtp")
    dtmf = check_dtmf(str(section.get("dtmf", "rfc4733")).lower(), "media.dtmf")
    return MediaProfile(codecs=codecs, srtp=srtp, dtmf=dtmf)
