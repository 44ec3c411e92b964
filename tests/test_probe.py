"""The pre-flight probe (`sip.lite.probe_target`) against small peers on 127.0.0.1, in-process.

Any SIP answer counts as reachable; silence returns None (the run warns and goes on); what no call
could get past raises UserError: an unresolvable host, a refused UDP/TCP port, a failed TLS handshake.
The peers here are asyncio sockets; tests/test_sip_outcomes.py probes SIPp and whole runs.
"""

from __future__ import annotations

import asyncio
import functools
import shutil
import socket
import ssl
import subprocess
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, ParamSpec, cast

import pytest

from voiceload.core.sipprofile import TlsSettings
from voiceload.errors import UserError
from voiceload.sip.lite import options_request, probe_target, response_to
from voiceload.sip.message import SipMessage

SHORT_S = 0.6  # the probe's timeout in tests of silence
P = ParamSpec("P")


def sync(test: Callable[P, Coroutine[Any, Any, None]]) -> Callable[P, None]:
    """An async test run to completion in a fresh event loop (pytest sees the same fixtures)."""

    @functools.wraps(test)
    def run(*args: P.args, **kwargs: P.kwargs) -> None:
        asyncio.run(asyncio.wait_for(test(*args, **kwargs), 30))

    return run


class _Udp(asyncio.DatagramProtocol):
    """Answers each request with `code` (None: never answers); keeps what it received."""

    def __init__(self, code: int | None) -> None:
        self.code = code
        self.got: list[SipMessage] = []
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        msg = SipMessage.parse(data)
        assert msg is not None and msg.is_request
        self.got.append(msg)
        if self.code is not None and self.transport is not None:
            self.transport.sendto(response_to(msg, self.code, "Whatever"), addr)


@asynccontextmanager
async def udp_peer(code: int | None) -> AsyncIterator[tuple[int, _Udp]]:
    loop = asyncio.get_running_loop()
    transport, proto = await loop.create_datagram_endpoint(lambda: _Udp(code), local_addr=("127.0.0.1", 0))
    try:
        yield transport.get_extra_info("sockname")[1], proto
    finally:
        transport.close()


@asynccontextmanager
async def stream_peer(answer: bool, ctx: ssl.SSLContext | None = None) -> AsyncIterator[int]:
    """A TCP (TLS with `ctx`) SIP peer: answers OPTIONS with 405 after a CRLF keep-alive, or stays silent."""

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            msg = SipMessage.parse(head)
            assert msg is not None and msg.method == "OPTIONS"
            assert (msg.get("via") or "").startswith(f"SIP/2.0/{'TLS' if ctx else 'TCP'} ")
            if answer:
                writer.write(b"\r\n\r\n" + response_to(msg, 405, "Method Not Allowed"))
                await writer.drain()
            await reader.read()  # until the probe hangs up
        except (ConnectionError, asyncio.IncompleteReadError, ssl.SSLError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0, ssl=ctx)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()


def closed_port(kind: int) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], tuple[Path, Path]]:
    """Self-signed certificates made with openssl: name -> (cert, key), e.g. 'IP:127.0.0.1' or 'DNS:gw.example'."""
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("openssl is not installed")
    tmp = tmp_path_factory.mktemp("certs")

    def make(san: str) -> tuple[Path, Path]:
        stem = san.replace(":", "_")
        cert, key = tmp / f"{stem}.pem", tmp / f"{stem}.key"
        if not cert.exists():
            subprocess.run([openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key),
                            "-out", str(cert), "-days", "2", "-subj", "/CN=voiceload-test",
                            "-addext", f"subjectAltName={san}"], check=True, capture_output=True, timeout=60)
        return cert, key

    return make


def server_ctx(cert: Path, key: Path) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    return ctx


def test_options_request_routes_through_the_proxy() -> None:
    req = SipMessage.parse(options_request("sip:bot@10.0.0.5:5080", transport="tcp", local="127.0.0.1", lport=4000,
                                           proxy="sip:sbc.example.com;transport=tcp"))
    assert req is not None and req.start_line == "OPTIONS sip:bot@10.0.0.5:5080 SIP/2.0"
    assert req.get("route") == "<sip:sbc.example.com;transport=tcp;lr>"
    assert (req.get("via") or "").startswith("SIP/2.0/TCP 127.0.0.1:4000;branch=z9hG4bK")


@sync
async def test_any_sip_answer_counts_over_udp() -> None:
    async with udp_peer(404) as (port, peer):
        assert await probe_target(f"sip:bot@127.0.0.1:{port}") == "SIP/2.0 404 Whatever"
    assert peer.got[0].start_line == f"OPTIONS sip:bot@127.0.0.1:{port} SIP/2.0"


@sync
async def test_silence_is_none_not_an_error() -> None:
    async with udp_peer(None) as (port, peer):
        assert await probe_target(f"sip:bot@127.0.0.1:{port}", timeout_s=SHORT_S) is None
    assert len(peer.got) >= 2  # retransmitted, as a SIP client does


@sync
async def test_udp_port_unreachable_is_refused() -> None:
    port = closed_port(socket.SOCK_DGRAM)
    with pytest.raises(UserError, match=rf"--target sip:bot@127.0.0.1:{port}: unreachable \(connection refused: "
                                        rf"nothing listens on UDP 127.0.0.1:{port}\)"):
        await probe_target(f"sip:bot@127.0.0.1:{port}")


@sync
async def test_unresolvable_host() -> None:
    with pytest.raises(UserError, match=r"--target sip:bot@no-such-host\.invalid: cannot resolve host"):
        await probe_target("sip:bot@no-such-host.invalid")


@sync
async def test_the_probe_goes_to_the_proxy_with_the_target_as_request_uri() -> None:
    async with udp_peer(200) as (port, proxy_peer):
        proxy = f"sip:127.0.0.1:{port}"
        assert await probe_target("sip:bot@gateway.invalid:5080", proxy=proxy) == "SIP/2.0 200 Whatever"
    (req,) = proxy_peer.got
    assert req.start_line == "OPTIONS sip:bot@gateway.invalid:5080 SIP/2.0"
    assert req.get("route") == f"<{proxy};lr>"


@sync
async def test_a_closed_proxy_is_named() -> None:
    port = closed_port(socket.SOCK_DGRAM)
    with pytest.raises(UserError, match=rf"^--proxy sip:127.0.0.1:{port}: unreachable"):
        await probe_target("sip:bot@127.0.0.1:5080", proxy=f"sip:127.0.0.1:{port}")


@sync
async def test_tcp_answer_after_a_keepalive() -> None:
    async with stream_peer(answer=True) as port:
        assert await probe_target(f"sip:bot@127.0.0.1:{port};transport=tcp") == "SIP/2.0 405 Method Not Allowed"


@sync
async def test_tcp_silence_is_none() -> None:
    async with stream_peer(answer=False) as port:
        assert await probe_target(f"sip:bot@127.0.0.1:{port};transport=tcp", timeout_s=SHORT_S) is None


@sync
async def test_tcp_connect_refused() -> None:
    port = closed_port(socket.SOCK_STREAM)
    with pytest.raises(UserError, match=rf"unreachable \(connection refused: nothing listens on TCP 127.0.0.1:{port}"):
        await probe_target(f"sip:bot@127.0.0.1:{port};transport=tcp")


@sync
async def test_tls_with_the_right_ca(certs: Callable[[str], tuple[Path, Path]]) -> None:
    cert, key = certs("IP:127.0.0.1")
    async with stream_peer(answer=True, ctx=server_ctx(cert, key)) as port:
        answer = await probe_target(f"sips:bot@127.0.0.1:{port}", tls=TlsSettings(ca_file=str(cert)))
    assert answer == "SIP/2.0 405 Method Not Allowed"


@sync
async def test_tls_unknown_ca(certs: Callable[[str], tuple[Path, Path]]) -> None:
    cert, key = certs("IP:127.0.0.1")
    other, _ = certs("DNS:other.example")
    async with stream_peer(answer=True, ctx=server_ctx(cert, key)) as port:
        with pytest.raises(UserError, match=r"TLS handshake with TLS 127.0.0.1:\d+ failed: .*self.signed.*--tls-ca"):
            await probe_target(f"sips:bot@127.0.0.1:{port}", tls=TlsSettings(ca_file=str(other)))
        # --no-tls-verify: the same peer is fine
        answer = await probe_target(f"sips:bot@127.0.0.1:{port}", tls=TlsSettings(ca_file=str(other),
                                                                                  verify_server=False))
        assert answer is not None


@sync
async def test_tls_hostname_mismatch(certs: Callable[[str], tuple[Path, Path]]) -> None:
    cert, key = certs("DNS:gw.example")
    async with stream_peer(answer=True, ctx=server_ctx(cert, key)) as port:
        with pytest.raises(UserError, match=r"failed: IP address mismatch, certificate is not valid for '127.0.0.1'"):
            await probe_target(f"sip:bot@127.0.0.1:{port};transport=tls", tls=TlsSettings(ca_file=str(cert)))


@sync
async def test_tls_to_a_plain_tcp_peer(certs: Callable[[str], tuple[Path, Path]]) -> None:
    async with stream_peer(answer=True) as port:
        with pytest.raises(UserError, match=r"TLS handshake with TLS 127.0.0.1:\d+ failed"):
            await probe_target(f"sips:bot@127.0.0.1:{port}", timeout_s=SHORT_S)


def test_a_bad_ca_file_is_named(tmp_path: Path) -> None:
    bad = tmp_path / "ca.pem"
    bad.write_text("not a certificate\n")
    with pytest.raises(UserError, match=rf"--tls-ca {bad}: not a readable PEM CA bundle"):
        asyncio.run(probe_target("sips:bot@127.0.0.1:5061", tls=TlsSettings(ca_file=str(bad))))
