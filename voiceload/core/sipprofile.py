"""How a run's calls present themselves to the gateway: URI, transport, credentials, proxy, TLS (pure).

A real gateway asks more of a caller than our reference bot does: digest credentials, TCP or TLS,
an outbound proxy. These facts come from the scenario's `sip:` section, then the command line
(`--auth`, `--proxy`, `--tls-*`) overrides them, and the run hands the result to its agents as one
JSON document in their environment (never in argv, where any local user can read a password).
Everything here is parsing and validation: a bad value is a `UserError` naming the field, before
any call is placed.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from voiceload.core.identity import SENDERS, IdentityError, IdentitySpec, Template, check_header_name
from voiceload.core.mediaprofile import MediaProfile
from voiceload.errors import UserError

TRANSPORTS = ("udp", "tcp", "tls")
DEFAULT_PORTS = {"udp": 5060, "tcp": 5060, "tls": 5061}
PROFILE_ENV = "VOICELOAD_SIP_PROFILE"  # how a run hands its agents the profile (JSON)
AUTH_ENV = "VOICELOAD_AUTH"  # USER:PASSWORD, as --auth


@dataclass(frozen=True)
class SipUri:
    """A parsed `sip:`/`sips:` URI; `transport` is what the call goes over (sips: is TLS)."""

    user: str
    host: str
    port: int
    transport: str = "udp"
    secure: bool = False  # a sips: URI: TLS on every hop

    def __str__(self) -> str:
        user = f"{self.user}@" if self.user else ""
        scheme = "sips" if self.secure else "sip"
        param = f";transport={self.transport}" if self.transport != "udp" and not self.secure else ""
        return f"{scheme}:{user}{self.host}:{self.port}{param}"


def parse_sip_uri(uri: str, what: str = "--target") -> SipUri:
    """`sip:[user@]host[:port][;transport=udp|tcp|tls]` or `sips:...` -> SipUri; else a UserError."""
    scheme, colon, rest = uri.partition(":")
    if not colon or scheme.lower() not in ("sip", "sips"):
        raise UserError(f"{what} {uri!r}: expected a SIP URI like sip:bot@127.0.0.1:5060 (or sips:, ;transport=tcp)")
    secure = scheme.lower() == "sips"
    rest, *params = rest.split(";")
    transport = "tls" if secure else "udp"
    for param in params:
        name, _, value = param.partition("=")
        if name.strip().lower() == "transport":
            transport = value.strip().lower()
            if transport not in TRANSPORTS:
                raise UserError(f"{what} {uri!r}: transport {value!r} is not one of {', '.join(TRANSPORTS)}")
    if secure and transport != "tls":
        raise UserError(f"{what} {uri!r}: a sips: URI goes over TLS, not {transport}")
    user, _, hostport = rest.rpartition("@")
    if hostport.startswith("["):
        raise UserError(f"{what} {uri!r}: IPv6 addresses are not supported yet")
    host, _, port_s = hostport.partition(":")
    if not host:
        raise UserError(f"{what} {uri!r}: no host")
    try:
        port = int(port_s) if port_s else DEFAULT_PORTS[transport]
    except ValueError:
        raise UserError(f"{what} {uri!r}: port {port_s!r} is not a number") from None
    if not 0 < port < 65536:
        raise UserError(f"{what} {uri!r}: port {port} out of range")
    return SipUri(user, host, port, transport, secure)


@dataclass(frozen=True)
class Credentials:
    """Digest credentials for every challenge (401/407), any realm unless one is named.

    The password is left out of `repr`, so no log line or traceback of a profile shows it.
    """

    user: str
    password: str = field(repr=False)
    realm: str = "*"

    @classmethod
    def parse(cls, text: str, what: str = "--auth") -> Credentials:
        """`USER:PASSWORD` (the password may hold colons)."""
        user, colon, password = text.partition(":")
        if not colon or not user:
            raise UserError(f"{what}: expected USER:PASSWORD")
        return cls(user, password)


@dataclass(frozen=True)
class TlsSettings:
    """How a TLS transport checks the gateway and, optionally, shows itself (mutual TLS)."""

    ca_file: str | None = None  # PEM bundle that signed the gateway's certificate; None: the system's
    cert_file: str | None = None  # our certificate, for a gateway that asks for one
    key_file: str | None = None
    verify_server: bool = True

    def checked(self) -> TlsSettings:
        """Each named file exists and is readable; a key goes with a certificate."""
        for name, path in (("--tls-ca", self.ca_file), ("--tls-cert", self.cert_file), ("--tls-key", self.key_file)):
            if path is not None and not Path(path).is_file():
                raise UserError(f"{name} {path}: no such file")
        if (self.cert_file is None) != (self.key_file is None):
            raise UserError("--tls-cert and --tls-key go together")
        return self


@dataclass(frozen=True)
class SipProfile:
    """Everything about a call's signalling that is not the scenario's dialogue."""

    auth: Credentials | None = None
    proxy: str | None = None  # outbound proxy: every request goes there first (a route set of one)
    tls: TlsSettings = field(default_factory=TlsSettings)
    register: bool = False  # each agent REGISTERs (refreshed) before its calls and unREGISTERs at its end
    identity: IdentitySpec = field(default_factory=IdentitySpec)  # per-call From/To/headers (core/identity.py)
    media: MediaProfile = field(default_factory=MediaProfile)  # codecs, SRTP, DTMF (core/mediaprofile.py)

    def to_json(self) -> str:
        return json.dumps({**asdict(self), "media": self.media.to_dict()})

    @classmethod
    def from_json(cls, text: str) -> SipProfile:
        data = json.loads(text)
        auth = data.get("auth")
        return cls(
            auth=Credentials(**auth) if auth else None,
            proxy=data.get("proxy"),
            tls=TlsSettings(**data.get("tls") or {}),
            register=bool(data.get("register", False)),
            identity=_identity_from_json(data.get("identity") or {}),
            media=MediaProfile.from_dict(data.get("media") or {}),
        )

    def merged(self, **overrides: Any) -> SipProfile:
        """This profile with each override that is not None (the command line over the scenario)."""
        return replace(self, **{k: v for k, v in overrides.items() if v is not None})

    def checked(self, targets: list[str]) -> SipProfile:
        """Cross-field checks against the run's targets: every URI parses, TLS files exist."""
        uris = [parse_sip_uri(t) for t in targets]
        if self.proxy is not None:
            uris.append(parse_sip_uri(self.proxy, "--proxy"))
        if any(u.transport == "tls" for u in uris):
            self.tls.checked()
        return self

    def transports(self, targets: list[str]) -> set[str]:
        """The transports the agents need: each target's, and the proxy's (which carries them all)."""
        if self.proxy is not None:
            return {parse_sip_uri(self.proxy, "--proxy").transport}
        return {parse_sip_uri(t).transport for t in targets}


def _identity_from_json(data: dict[str, Any]) -> IdentitySpec:
    return IdentitySpec(**{**data, "headers": tuple((str(n), str(v)) for n, v in data.get("headers") or ())})


class ProfileError(ValueError):
    """A bad value in a scenario's `sip:` section: the field it is in, and what is wrong."""

    def __init__(self, fld: str, message: str) -> None:
        super().__init__(f"{fld}: {message}")
        self.fld, self.message = fld, message


SECTION_KEYS = ("auth", "proxy", "tls", "register", "from", "display_name", "to_user", "headers", "identities",
                "sender")


def profile_from_scenario(section: Any, base: Path) -> SipProfile:
    """The scenario's `sip:` mapping (plain values) -> SipProfile; file paths resolve against `base`."""
    if section is None:
        return SipProfile()
    if not isinstance(section, dict):
        raise ProfileError("sip", f"must be a mapping with keys ({', '.join(SECTION_KEYS)})")
    for key in section:
        if key not in SECTION_KEYS:
            raise ProfileError(f"sip.{key}", f"unknown key (valid keys: {', '.join(SECTION_KEYS)})")
    auth = None
    if section.get("auth") is not None:
        a = section["auth"]
        if not isinstance(a, dict) or set(a) - {"user", "password", "realm"} \
                or not isinstance(a.get("user"), str) or not isinstance(a.get("password"), str):
            raise ProfileError("sip.auth", "must be a mapping of user, password (strings) and an optional realm")
        auth = Credentials(a["user"], a["password"], str(a.get("realm", "*")))
    proxy = section.get("proxy")
    if proxy is not None:
        if not isinstance(proxy, str):
            raise ProfileError("sip.proxy", "must be a SIP URI string")
        try:
            parse_sip_uri(proxy, "")
        except UserError as exc:
            raise ProfileError("sip.proxy", str(exc).lstrip()) from None
    tls = TlsSettings()
    if section.get("tls") is not None:
        t = section["tls"]
        if not isinstance(t, dict) or set(t) - {"ca", "cert", "key", "verify"}:
            raise ProfileError("sip.tls", "must be a mapping of ca, cert, key (file paths) and verify (boolean)")
        paths = {k: str(base / t[k]) if t.get(k) else None for k in ("ca", "cert", "key")}
        tls = TlsSettings(paths["ca"], paths["cert"], paths["key"], bool(t.get("verify", True)))
    register = section.get("register", False)
    if not isinstance(register, bool):
        raise ProfileError("sip.register", "must be true or false")
    return SipProfile(auth=auth, proxy=proxy, tls=tls, register=register, identity=_identity(section, base))


def _identity(section: dict[str, Any], base: Path) -> IdentitySpec:
    """The identity keys of `sip:`: templates checked, the identities file resolved against `base`."""
    texts: dict[str, str | None] = {}
    for key in ("from", "display_name", "to_user"):
        value = section.get(key)
        if value is not None and not isinstance(value, (str, int)):
            raise ProfileError(f"sip.{key}", "must be a string (a template, e.g. '+1555{digits:7}')")
        texts[key] = None if value is None else str(value)
    headers: list[tuple[str, str]] = []
    raw = section.get("headers")
    if raw is not None:
        if not isinstance(raw, dict) or not all(isinstance(v, (str, int)) for v in raw.values()):
            raise ProfileError("sip.headers", "must be a mapping of header name to a template string")
        for name, value in raw.items():
            try:
                check_header_name(str(name))
            except IdentityError as exc:
                raise ProfileError(f"sip.headers.{name}", exc.message) from None
            headers.append((str(name), str(value)))
    identities = section.get("identities")
    if identities is not None and not isinstance(identities, str):
        raise ProfileError("sip.identities", "must be the path of a CSV file (one row per call)")
    sender = section.get("sender", "session")
    if sender not in SENDERS:
        raise ProfileError("sip.sender", f"must be one of {', '.join(SENDERS)}")
    keys = {"From": "sip.from", "display name": "sip.display_name", "To user": "sip.to_user"}
    for what, text in (("From", texts["from"]), ("display name", texts["display_name"]),
                       ("To user", texts["to_user"]), *((f"header {n}", v) for n, v in headers)):
        if text is not None:
            try:
                Template.parse(text, what)
            except IdentityError as exc:
                raise ProfileError(keys.get(what, f"sip.headers.{what[7:]}"), exc.message) from None
    spec = IdentitySpec(from_user=texts["from"], display_name=texts["display_name"], to_user=texts["to_user"],
                        headers=tuple(headers), identities=str(base / identities) if identities else None,
                        sender=sender)
    try:
        return spec.checked()
    except IdentityError as exc:
        key = keys.get(exc.where, "sip.sender" if exc.where == "sender" else f"sip.headers.{exc.where[7:]}")
        raise ProfileError(key, exc.message) from None
