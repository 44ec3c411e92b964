"""Kamailio 5.6 (Debian) as a gateway in tests: digest auth, UDP/TCP/TLS listeners, relaying to a bot.

The proxy's config is tests/kamailio/proxy.cfg; this module fills in free ports, the bot's address,
the one user's credentials and a TLS certificate it makes (self-signed, for 127.0.0.1), starts
Kamailio in the foreground of its own process group and reads back what it logged (`vltest` lines).
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sysconfig
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
KAMAILIO = shutil.which("kamailio") or ("/usr/sbin/kamailio" if Path("/usr/sbin/kamailio").exists() else None)
MODULES = Path("/usr/lib") / (sysconfig.get_config_var("MULTIARCH") or "x86_64-linux-gnu") / "kamailio" / "modules"
USER, PASSWORD = "caller7", "s3cret-Pass"
USER2, PASSWORD2 = "caller8", "other-Pass2"  # a second caller, for per-call credentials


@dataclass
class Kamailio:
    proc: subprocess.Popen[bytes]
    log: Path
    udp_port: int
    tcp_port: int
    tls_port: int
    ca: Path  # the certificate of its TLS listener (self-signed: it is its own CA)
    ports: dict[str, int] = field(default_factory=dict)

    def uri(self, transport: str, user: str = "bot") -> str:
        """The target URI of the bot behind this proxy, over `transport`."""
        if transport == "udp":
            return f"sip:{user}@127.0.0.1:{self.udp_port}"
        port = self.tcp_port if transport == "tcp" else self.tls_port
        return f"sip:{user}@127.0.0.1:{port};transport={transport}"

    def lines(self, kind: str | None = None) -> list[str]:
        """Its `vltest` log lines (optionally only `vltest KIND ...`)."""
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        out = [ln[ln.index("vltest "):] for ln in text.splitlines() if "vltest " in ln]
        return [ln for ln in out if kind is None or ln.startswith(f"vltest {kind} ")]

    def stop(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(5)


def _free_port() -> int:
    """A port free on both UDP and TCP right now (Kamailio binds it itself a moment later)."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as t:
            t.bind(("127.0.0.1", 0))
            port = int(t.getsockname()[1])
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
                try:
                    u.bind(("127.0.0.1", port))
                except OSError:
                    continue
                return port
    raise RuntimeError("no port free on both UDP and TCP")


def _answers_options(port: int) -> bool:
    """One OPTIONS over UDP; True once any SIP response comes back within half a second."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        s.settimeout(0.5)
        me = s.getsockname()[1]
        req = (f"OPTIONS sip:127.0.0.1:{port} SIP/2.0\r\n"
               f"Via: SIP/2.0/UDP 127.0.0.1:{me};branch=z9hG4bK{time.time_ns()}\r\n"
               f"Max-Forwards: 70\r\nFrom: <sip:ready@127.0.0.1:{me}>;tag=r\r\nTo: <sip:127.0.0.1:{port}>\r\n"
               f"Call-ID: ready-{time.time_ns()}\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n")
        s.sendto(req.encode(), ("127.0.0.1", port))
        try:
            return s.recv(4096).startswith(b"SIP/2.0")
        except OSError:
            return False


def make_certificate(directory: Path, name: str = "gw", cn: str = "127.0.0.1") -> tuple[Path, Path]:
    """A self-signed certificate (and its key) for 127.0.0.1 / localhost, by openssl."""
    cert, key = directory / f"{name}-cert.pem", directory / f"{name}-key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", f"/CN={cn}",
         "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost", "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True, timeout=60,
    )
    return cert, key


def start_kamailio(tmp: Path, bot_target: str, *, algorithm: str = "MD5", max_expires: int = 3600,
                   timeout_s: float = 20.0) -> Kamailio:
    """Kamailio relaying to `bot_target` (sip:bot@host:port, UDP), up and answering OPTIONS.

    `algorithm`: the digest algorithm of its challenges (MD5, SHA-256); `max_expires`: the longest
    registration it grants (a short one makes callers refresh within a test).
    """
    assert KAMAILIO is not None, "kamailio is not installed (scripts/setup.sh --test installs it)"
    directory = tmp / "kamailio"
    directory.mkdir(parents=True, exist_ok=True)
    cert, key = make_certificate(directory)
    tls_cfg = directory / "tls.cfg"
    tls_cfg.write_text(
        "[server:default]\nmethod = TLSv1.2+\nverify_certificate = no\nrequire_certificate = no\n"
        f"private_key = {key}\ncertificate = {cert}\n\n"
        "[client:default]\nmethod = TLSv1.2+\nverify_certificate = no\nrequire_certificate = no\n"
    )
    bot = re.sub(r"^sips?:([^@]*@)?", "", bot_target).split(";")[0]
    return launch(directory, "proxy.cfg", 3, lambda udp, tcp, tls: {
        "UDP_PORT": udp, "TCP_PORT": tcp, "TLS_PORT": tls, "MODULES": f"{MODULES}/", "TLS_CFG": tls_cfg,
        "USER": USER, "PASSWORD": PASSWORD, "BOT": bot, "USER2": USER2, "PASSWORD2": PASSWORD2,
        "ALGORITHM": algorithm, "MAX_EXPIRES": max_expires}, timeout_s=timeout_s, cert=cert)


def launch(directory: Path, template: str, n_ports: int, values: Callable[..., dict[str, object]], *,
           timeout_s: float, cert: Path = Path(os.devnull)) -> Kamailio:
    """Kamailio on tests/kamailio/`template` with each @@NAME@@ filled from `values(*ports)`, ports
    being `n_ports` free ones (UDP, then TCP and TLS); returns once it answers OPTIONS on UDP."""
    assert KAMAILIO is not None, "the callers skip without kamailio"
    for attempt in range(3):  # a port taken between choosing it and Kamailio's bind: choose again
        ports = [_free_port() for _ in range(n_ports)]
        cfg = (HERE / "kamailio" / template).read_text()
        for name, value in values(*ports).items():
            cfg = cfg.replace(f"@@{name}@@", str(value))
        path = directory / "kamailio.cfg"
        path.write_text(cfg)
        log = directory / f"kamailio-{attempt}.log"
        with open(log, "wb") as out:
            proc = subprocess.Popen(
                [KAMAILIO, "-f", str(path), "-DD", "-E", "-m", "64", "-M", "8", "-Y", str(directory),
                 "-P", str(directory / "kamailio.pid")],
                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
            )
        udp, tcp, tls = [*ports, 0, 0][:3]
        gw = Kamailio(proc, log, udp, tcp, tls, cert)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and proc.poll() is None:
            if _answers_options(udp):
                return gw
            time.sleep(0.2)
        gw.stop()
        if "Address already in use" not in log.read_text(errors="replace"):
            break
    raise RuntimeError(f"kamailio did not start; its log:\n{log.read_text(errors='replace')[-3000:]}")


@contextlib.contextmanager
def kamailio(tmp: Path, bot_target: str, algorithm: str = "MD5", max_expires: int = 3600) -> Iterator[Kamailio]:
    gw = start_kamailio(tmp, bot_target, algorithm=algorithm, max_expires=max_expires)
    try:
        yield gw
    finally:
        gw.stop()
