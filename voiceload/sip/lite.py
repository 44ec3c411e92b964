"""A minimal, stateless SIP speaker for the jobs that need no media stack.

- `probe_target`: one OPTIONS request before a run, over the target's transport (to the outbound
  proxy when there is one), so an unreachable target is a one-line error (exit 2) instead of a
  run full of timeouts. Any SIP answer counts; no answer is only a warning (SBCs often ignore OPTIONS).
- `RedirectFront`: the reference bot's front door. pjsua2 builds are limited in calls per
  process (4 in the PyPI wheel), so the bot runs several worker processes and answers every
  new INVITE on the public port with `302 Moved Temporarily` to the least loaded worker.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import random
import socket
import ssl
import string
import subprocess
import sys
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import cast

from voiceload.core.mediaprofile import MediaProfile
from voiceload.core.sipprofile import SipUri, TlsSettings, parse_sip_uri
from voiceload.errors import UserError
from voiceload.sip.message import SipMessage

PROBE_TIMEOUT_S = 3.0


def split_targets(targets: str) -> list[str]:
    """`--target` may list several SIP URIs, comma-separated (several bot instances): calls go round-robin."""
    uris = [t.strip() for t in targets.split(",")]
    if not any(uris):
        raise UserError("--target: no SIP URI given")
    for uri in uris:
        if not uri:
            raise UserError(f"--target {targets!r}: an empty entry in the comma-separated list")
        parse_sip_uri(uri)
    return uris


def local_address_for(host: str, port: int) -> str:
    """The local IP this machine would use to reach host:port (no packet is sent)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM)
    except socket.gaierror as exc:
        raise UserError(f"cannot resolve host {host!r} ({exc.strerror})") from None
    family, _, _, _, addr = infos[0]
    with socket.socket(family, socket.SOCK_DGRAM) as s:
        try:
            s.connect(addr)
        except OSError as exc:
            raise UserError(f"no route to {host}:{port} ({exc.strerror})") from None
        return str(s.getsockname()[0])


def check_local_addresses(addresses: Iterable[str], flag: str = "--bind") -> None:
    """Each address can be bound here (a UDP socket on a free port, closed at once): a UserError if not.

    Asked of the run process before any agent starts, so an address that is not on this host is one
    line and exit 2, not a run whose every agent fails to start.
    """
    for addr in addresses:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            try:
                s.bind((addr, 0))
            except OSError as exc:
                raise UserError(f"{flag} {addr}: not an address of this host ({exc.strerror or exc})") from None


def _token(n: int = 10) -> str:
    return "".join(random.choices(string.ascii_lowercase + string.digits, k=n))


def response_to(req: SipMessage, code: int, reason: str, extra: list[tuple[str, str]] | None = None) -> bytes:
    """A stateless response: Via/From/Call-ID/CSeq copied, a To tag added."""
    lines = [f"SIP/2.0 {code} {reason}"]
    lines += [f"Via: {v}" for v in req.all("via")]
    to = req.get("to") or ""
    if ";tag=" not in to:
        to += f";tag={_token()}"
    lines += [f"From: {req.get('from')}", f"To: {to}", f"Call-ID: {req.get('call-id')}", f"CSeq: {req.get('cseq')}"]
    lines += [f"{k}: {v}" for k, v in (extra or [])]
    lines += ["Server: voiceload", "Content-Length: 0", "", ""]
    return "\r\n".join(lines).encode()


class _ProbeProtocol(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.answer: asyncio.Future[str] = asyncio.get_running_loop().create_future()

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        msg = SipMessage.parse(data)
        if msg is not None and not msg.is_request and not self.answer.done():
            self.answer.set_result(msg.start_line)

    def error_received(self, exc: Exception) -> None:
        if not self.answer.done():
            self.answer.set_exception(exc)


def options_request(uri: str, *, transport: str, local: str, lport: int, proxy: str | None = None) -> bytes:
    """One out-of-dialog OPTIONS for `uri`; with an outbound proxy it carries the proxy as its Route
    (loose routing: the Request-URI stays the target, as the calls' INVITEs do)."""
    lines = [
        f"OPTIONS {uri} SIP/2.0",
        f"Via: SIP/2.0/{transport.upper()} {local}:{lport};branch=z9hG4bK{_token()};rport",
        "Max-Forwards: 70",
    ]
    if proxy is not None:
        lines.append(f"Route: <{proxy if ';lr' in proxy else proxy + ';lr'}>")
    lines += [
        f"From: <sip:probe@{local}:{lport}>;tag={_token()}",
        f"To: <{uri}>",
        f"Call-ID: probe-{_token(16)}",
        "CSeq: 1 OPTIONS",
        "Accept: application/sdp",
        "User-Agent: voiceload",
        "Content-Length: 0",
        "",
        "",
    ]
    return "\r\n".join(lines).encode()


def tls_context(tls: TlsSettings) -> ssl.SSLContext:
    """A client context that checks the gateway the way the agents' TLS transport will (the same settings)."""
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    if tls.ca_file is not None:
        try:
            ctx.load_verify_locations(cafile=tls.ca_file)
        except (ssl.SSLError, OSError) as exc:
            raise UserError(f"--tls-ca {tls.ca_file}: not a readable PEM CA bundle ({exc})") from None
    if not tls.verify_server:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    if tls.cert_file is not None:
        try:
            ctx.load_cert_chain(tls.cert_file, tls.key_file)
        except (ssl.SSLError, OSError) as exc:
            raise UserError(f"--tls-cert {tls.cert_file}: certificate or key not usable ({exc})") from None
    return ctx


async def probe_target(uri: str, *, proxy: str | None = None, tls: TlsSettings | None = None,
                       timeout_s: float = PROBE_TIMEOUT_S, local: str | None = None) -> str | None:
    """Send one OPTIONS for `uri` (to `proxy` when given) over that hop's transport, from `local` (the
    run's first `--bind`: a gateway may only let those in; None: the address that routes there).

    Returns the first response's status line, or None when nothing answered within `timeout_s`:
    many SBCs ignore OPTIONS, so silence is for the caller to warn about, not to stop on. What no
    call could get past is a UserError (exit 2): an unresolvable host, a refused connection (TCP,
    or ICMP port unreachable on UDP), a TCP connection that never opens, a failed TLS handshake.
    """
    hop_uri, what = (proxy, f"--proxy {proxy}") if proxy is not None else (uri, f"--target {uri}")
    hop = parse_sip_uri(hop_uri, "--proxy" if proxy is not None else "--target")
    loop = asyncio.get_running_loop()
    kind = socket.SOCK_DGRAM if hop.transport == "udp" else socket.SOCK_STREAM
    try:
        infos = await loop.getaddrinfo(hop.host, hop.port, type=kind)
    except socket.gaierror as exc:
        raise UserError(f"{what}: cannot resolve host {hop.host!r} ({exc.strerror})") from None
    addr = infos[0][4]
    remote = (str(addr[0]), int(addr[1]))
    where = f"{hop.transport.upper()} {hop.host}:{hop.port}"
    if hop.transport == "udp":
        return await _probe_udp(uri, proxy, remote, what, where, timeout_s, local)
    return await _probe_stream(uri, proxy, hop, remote, tls or TlsSettings(), what, where, timeout_s, local)


def _refused(what: str, where: str) -> UserError:
    return UserError(f"{what}: unreachable (connection refused: nothing listens on {where})")


async def _probe_udp(uri: str, proxy: str | None, remote: tuple[str, int], what: str, where: str,
                     timeout_s: float, local: str | None = None) -> str | None:
    loop = asyncio.get_running_loop()
    try:
        if local is None or local == "0.0.0.0":
            local = local_address_for(remote[0], remote[1])
        # connected: the kernel hands an ICMP port unreachable to error_received
        transport, proto = await loop.create_datagram_endpoint(
            _ProbeProtocol, local_addr=(local, 0), remote_addr=remote
        )
    except OSError as exc:
        raise UserError(f"{what}: unreachable ({exc.strerror or exc})") from None
    try:
        lport = transport.get_extra_info("sockname")[1]
        req = options_request(uri, transport="udp", local=local, lport=lport, proxy=proxy)
        deadline = loop.time() + timeout_s
        # UDP: retransmit like a SIP client would (T1 = 500 ms)
        while True:
            transport.sendto(req)
            remaining = deadline - loop.time()
            if remaining <= 0:
                return None
            try:
                return await asyncio.wait_for(asyncio.shield(proto.answer), min(0.5, remaining))
            except TimeoutError:
                continue
            except ConnectionRefusedError:
                raise _refused(what, where) from None
            except OSError as exc:
                raise UserError(f"{what}: unreachable ({exc.strerror or exc})") from None
    finally:
        transport.close()


async def _probe_stream(uri: str, proxy: str | None, hop: SipUri, remote: tuple[str, int], tls: TlsSettings,
                        what: str, where: str, timeout_s: float, bind: str | None = None) -> str | None:
    """TCP or TLS: connect (and shake hands) within `timeout_s`, then wait what is left of it for an answer."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    ctx = tls_context(tls) if hop.transport == "tls" else None
    try:
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(remote[0], remote[1], ssl=ctx, server_hostname=hop.host if ctx else None,
                                    local_addr=(bind, 0) if bind and bind != "0.0.0.0" else None),
            timeout_s,
        )
    except TimeoutError:
        if ctx is not None:
            raise UserError(f"{what}: TLS handshake with {where} failed: no TLS answer within {timeout_s:g} s "
                            "(is it a TLS port?)") from None
        raise UserError(f"{what}: unreachable (no TCP connection to {where} within {timeout_s:g} s)") from None
    except ConnectionRefusedError:
        raise _refused(what, where) from None
    except ssl.SSLCertVerificationError as exc:
        hint = "; --tls-ca names the CA that signed it" if "issuer" in str(exc.verify_message) \
            or "self-signed" in str(exc.verify_message) else ""
        raise UserError(f"{what}: TLS handshake with {where} failed: {exc.verify_message}{hint}") from None
    except ssl.SSLError as exc:
        raise UserError(f"{what}: TLS handshake with {where} failed: {exc.reason or exc}") from None
    except OSError as exc:
        step = "TLS handshake" if ctx is not None else "connection"
        raise UserError(f"{what}: unreachable ({step} with {where} failed: {exc.strerror or exc})") from None
    try:
        local, lport = writer.get_extra_info("sockname")[:2]
        writer.write(options_request(uri, transport=hop.transport, local=str(local), lport=int(lport), proxy=proxy))
        await writer.drain()
        while True:  # skip CRLF keep-alives and any request the far end sends us
            remaining = deadline - loop.time()
            if remaining <= 0:
                return None
            try:
                head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), remaining)
            except TimeoutError:
                return None
            except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, OSError):
                return None  # closed without an answer: the calls will tell what that means
            msg = SipMessage.parse(head.lstrip(b"\r\n"))
            if msg is None:
                continue
            if msg.content_length:
                with contextlib.suppress(asyncio.IncompleteReadError, OSError, TimeoutError):
                    await asyncio.wait_for(reader.readexactly(msg.content_length), max(remaining, 0.1))
            if not msg.is_request:
                return msg.start_line
    finally:
        writer.close()
        with contextlib.suppress(OSError, ssl.SSLError, TimeoutError):
            await asyncio.wait_for(writer.wait_closed(), 1.0)


class RedirectFront(asyncio.DatagramProtocol):
    """Answers each new INVITE with 302 to a worker chosen by `pick`; remembers the choice per Call-ID."""

    def __init__(self, pick: Callable[[], str | None]) -> None:
        self.pick = pick  # -> "host:port" of a worker, or None when all are full
        self.assigned: OrderedDict[str, str] = OrderedDict()
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        msg = SipMessage.parse(data)
        if msg is None or not msg.is_request or self.transport is None:
            return
        if msg.method == "ACK":
            return  # ACK of our 302: hop-by-hop, nothing to do
        call_id = msg.get("call-id") or ""
        if msg.method == "OPTIONS":
            self.transport.sendto(response_to(msg, 200, "OK", [("Allow", "INVITE, ACK, BYE, CANCEL, OPTIONS")]), addr)
            return
        if msg.method != "INVITE":
            self.transport.sendto(response_to(msg, 481, "Call/Transaction Does Not Exist"), addr)
            return
        worker = self.assigned.get(call_id)
        if worker is None:
            worker = self.pick()
            if worker is None:
                self.transport.sendto(response_to(msg, 503, "Service Unavailable", [("Retry-After", "1")]), addr)
                return
            self.assigned[call_id] = worker
            while len(self.assigned) > 10_000:
                self.assigned.popitem(last=False)
        req_uri = msg.uri or ""
        user = req_uri[4:].split("@")[0] if "@" in req_uri else "bot"
        self.transport.sendto(response_to(msg, 302, "Moved Temporarily", [("Contact", f"<sip:{user}@{worker}>")]), addr)


@dataclass(frozen=True)
class Pjsua2Build:
    """What the installed pjsua2 can do, asked of a child process (one Endpoint per process)."""

    max_calls: int
    tls: bool
    per_call_from: bool  # voiceload's build: a From among a call's headers is its From (30-per-call-from.patch)
    codecs: tuple[str, ...] = ("PCMU", "PCMA")  # ours it has (core.mediaprofile.CODECS names)
    srtp: bool = False  # SDES SRTP with AES_CM_128_HMAC_SHA1_80

    def media_problem(self, media: MediaProfile, what: str = "--codecs") -> str | None:
        """Why this build cannot make calls with `media`'s codecs or SRTP, in one line; None if it can."""
        for name in media.codecs:
            if name not in self.codecs:
                return (f"{what}: codec {name}: this pjsua2 build does not have it (it has "
                        f"{', '.join(self.codecs)}; run `make pjsua2` to build voiceload's own, "
                        "which has PCMU, PCMA, G722 and opus)")
        if media.srtp != "off" and not (self.srtp and self.per_call_from):
            # the agents' engine learns the far end's key from its SDP, which only voiceload's own
            # build prints (scripts/pjsua2/50-remote-sdp.patch)
            return (f"--srtp {media.srtp}: this pjsua2 build has no SRTP or cannot show the engine the far "
                    "end's key (run `make pjsua2` to build voiceload's own, with libsrtp2)")
        return None


@functools.cache
def pjsua2_build() -> Pjsua2Build:
    out = subprocess.run(
        [sys.executable, "-m", "voiceload.sip.ua"], capture_output=True, text=True, timeout=30, check=True
    )
    facts = json.loads(out.stdout.strip().splitlines()[-1])
    return Pjsua2Build(int(facts["max_calls"]), bool(facts["tls"]), bool(facts["voiceload_build"]),
                       tuple(facts.get("codecs", ())), bool(facts.get("srtp", False)))


def call_limit() -> int:
    """The installed pjsua2's per-process call limit."""
    return pjsua2_build().max_calls
