"""Shared fixtures: real MQTT brokers (Debian mosquitto, and our embedded amqtt) on free ports; a TLS server."""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.refbot import stop_process
from voiceload.results.broker import EmbeddedBroker, free_port
from voiceload.results.bus import BrokerAddress

__all__ = ["Mosquitto", "free_port"]

MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
MOSQUITTO_PASSWD = shutil.which("mosquitto_passwd") or "/usr/bin/mosquitto_passwd"
START_TIMEOUT_S = 10.0


class Mosquitto:
    """A mosquitto process on one port, restartable on that same port (for reconnect tests)."""

    def __init__(self, workdir: Path, *, anonymous: bool = True) -> None:
        self.port = free_port()
        self.address = BrokerAddress("127.0.0.1", self.port)
        self.conf = workdir / "mosquitto.conf"
        conf = f"listener {self.port} 127.0.0.1\nallow_anonymous {str(anonymous).lower()}\n"
        if not anonymous:  # logins only, with a password file, as a locked-down broker is set up
            passwd = workdir / "mosquitto.passwd"
            subprocess.run([MOSQUITTO_PASSWD, "-c", "-b", str(passwd), "voiceload", "s3cret"], check=True,
                           capture_output=True, timeout=10)
            # started as root, mosquitto reads the file as its own user, who may not: stay who we are
            conf += f"password_file {passwd}\nuser {pwd.getpwuid(os.getuid()).pw_name}\n"
        self.conf.write_text(conf)
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen([MOSQUITTO, "-c", str(self.conf)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"mosquitto exited with {self.proc.returncode}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"mosquitto did not listen on {self.port} within {START_TIMEOUT_S} s")

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc)
        self.proc = None


@pytest.fixture
def mosquitto(tmp_path: Path) -> Iterator[Mosquitto]:
    if not Path(MOSQUITTO).exists():
        pytest.skip("mosquitto is not installed (scripts/setup.sh --test installs it)")
    m = Mosquitto(tmp_path)
    m.start()
    try:
        yield m
    finally:
        m.stop()


@pytest.fixture
def locked_mosquitto(tmp_path: Path) -> Iterator[Mosquitto]:
    """A mosquitto that takes no anonymous clients (a user with a password only)."""
    if not Path(MOSQUITTO).exists() or not Path(MOSQUITTO_PASSWD).exists():
        pytest.skip("mosquitto is not installed (scripts/setup.sh --test installs it)")
    m = Mosquitto(tmp_path, anonymous=False)
    m.start()
    try:
        yield m
    finally:
        m.stop()


@pytest.fixture
def mosquitto_broker(mosquitto: Mosquitto) -> BrokerAddress:
    return mosquitto.address


@pytest.fixture
def embedded_broker() -> Iterator[BrokerAddress]:
    with EmbeddedBroker() as broker:
        yield broker.address


@pytest.fixture(params=["mosquitto", "embedded"])
def any_broker(request: pytest.FixtureRequest) -> BrokerAddress:
    """The same test against both brokers we support."""
    fixture = "mosquitto_broker" if request.param == "mosquitto" else "embedded_broker"
    address: BrokerAddress = request.getfixturevalue(fixture)
    return address


@pytest.fixture
def tls_server(tmp_path: Path) -> Iterator[Callable[[str], tuple[str, Path]]]:
    """`openssl s_server` with a fresh self-signed certificate for a subjectAltName: (target URI, cert)."""
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("openssl is not installed")
    procs: list[subprocess.Popen[bytes]] = []

    def start(san: str) -> tuple[str, Path]:
        cert, key = tmp_path / f"cert{len(procs)}.pem", tmp_path / f"key{len(procs)}.pem"
        subprocess.run([openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out",
                        str(cert), "-days", "2", "-subj", "/CN=voiceload-test", "-addext", f"subjectAltName={san}"],
                       check=True, capture_output=True, timeout=60)
        port = free_port()
        proc = subprocess.Popen([openssl, "s_server", "-accept", f"127.0.0.1:{port}", "-cert", str(cert),
                                 "-key", str(key), "-quiet"], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        procs.append(proc)
        deadline = time.monotonic() + 10
        while True:
            with socket.socket() as probe:
                if probe.connect_ex(("127.0.0.1", port)) == 0:
                    break
            assert proc.poll() is None and time.monotonic() < deadline, "openssl s_server did not start"
            time.sleep(0.05)
        return f"sips:bot@127.0.0.1:{port}", cert

    try:
        yield start
    finally:
        for proc in procs:
            stop_process(proc)
