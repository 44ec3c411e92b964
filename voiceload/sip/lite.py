"""A minimal, stateless SIP speaker for the jobs that need no media stack.

- `probe_target`: one OPTIONS request before a run, so an unreachable target is a one-line
  error (exit 2) instead of a run full of timeouts.
- `RedirectFront`: the reference bot's front door. pjsua2 builds are limited in calls per
  process (4 in the PyPI wheel), so the bot runs several worker processes and answers every
  new INVITE on the public port with `302 Moved Temporarily` to the least loaded worker.
"""

from __future__ import annotations

import asyncio
import functools
import json
import random
import socket
import string
import subprocess
import sys
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import cast

from voiceload.core.sipprofile import parse_sip_uri
from voiceload.errors import UserError
from voiceload.sip.message import SipMessage


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


async def probe_target(uri: str, *, timeout_s: float = 3.0, local: str | None = None) -> str:
    """Send one OPTIONS to the target; return its status line or raise UserError (unreachable).

    `local`: the address to send from (the run's first `--bind`: a gateway may only let those in).
    """
    target = parse_sip_uri(uri)
    loop = asyncio.get_running_loop()
    try:
        infos = await loop.getaddrinfo(target.host, target.port, type=socket.SOCK_DGRAM)
    except socket.gaierror as exc:
        raise UserError(f"--target {uri}: cannot resolve host {target.host!r} ({exc.strerror})") from None
    addr = infos[0][4]
    remote = (str(addr[0]), int(addr[1]))
    try:
        if local is None or local == "0.0.0.0":
            local = local_address_for(remote[0], remote[1])
        transport, proto = await loop.create_datagram_endpoint(
            _ProbeProtocol, local_addr=(local, 0), remote_addr=remote
        )
    except OSError as exc:
        raise UserError(f"--target {uri}: unreachable ({exc.strerror or exc})") from None
    try:
        lport = transport.get_extra_info("sockname")[1]
        req = "\r\n".join([
            f"OPTIONS {uri} SIP/2.0",
            f"Via: SIP/2.0/UDP {local}:{lport};branch=z9hG4bK{_token()};rport",
            "Max-Forwards: 70",
            f"From: <sip:probe@{local}:{lport}>;tag={_token()}",
            f"To: <{uri}>",
            f"Call-ID: probe-{_token(16)}",
            "CSeq: 1 OPTIONS",
            "Accept: application/sdp",
            "User-Agent: voiceload",
            "Content-Length: 0",
            "",
            "",
        ]).encode()
        deadline = loop.time() + timeout_s
        # UDP: retransmit like a SIP client would (T1 = 500 ms)
        while True:
            transport.sendto(req)
            remaining = deadline - loop.time()
            if remaining <= 0:
                break
            try:
                return await asyncio.wait_for(asyncio.shield(proto.answer), min(0.5, remaining))
            except TimeoutError:
                continue
            except OSError as exc:
                raise UserError(f"--target {uri}: unreachable ({exc.strerror or exc})") from None
        raise UserError(f"--target {uri}: no SIP answer to OPTIONS within {timeout_s:.0f} s (is the bot running?)")
    finally:
        transport.close()


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


@functools.cache
def pjsua2_build() -> Pjsua2Build:
    out = subprocess.run(
        [sys.executable, "-m", "voiceload.sip.ua"], capture_output=True, text=True, timeout=30, check=True
    )
    facts = json.loads(out.stdout.strip().splitlines()[-1])
    return Pjsua2Build(int(facts["max_calls"]), bool(facts["tls"]), bool(facts["voiceload_build"]))


def call_limit() -> int:
    """The installed pjsua2's per-process call limit."""
    return pjsua2_build().max_calls
