"""The embedded MQTT broker: amqtt in its own process, so a run needs no external broker.

Its own process because amqtt is pure Python: sharing a GIL with the collector would let one
slow the other and blur the generator-health numbers. `python -m voiceload.results.broker` runs it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import select
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import IO, Any

from amqtt.broker import Broker
from amqtt.plugins.base import BaseAuthPlugin

from voiceload.results.bus import BrokerAddress

log = logging.getLogger(__name__)

READY_LINE = "voiceload-broker ready"
START_TIMEOUT_S = 15.0
STOP_TIMEOUT_S = 5.0
START_ATTEMPTS = 3  # a free port can be taken by someone else before the child binds it
SESSION_EXPIRY_S = 3600  # bound the memory of persistent sessions whose client never returns


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago (bind to 0 and let the kernel choose)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


class OpenAuthPlugin(BaseAuthPlugin):
    """Admit every client without marking it anonymous.

    amqtt's AnonymousAuthPlugin flags sessions as anonymous, and amqtt never queues QoS 1 messages
    for an offline anonymous session; this keeps `clean_session=False` meaningful (a restarted
    collector gets what it missed) while still requiring no credentials.
    """

    @dataclass
    class Config:
        pass

    async def authenticate(self, *, session: Any) -> bool:
        return True


def broker_config(host: str, port: int) -> dict[str, Any]:
    """TCP listener only, no plugin that writes files or publishes $SYS topics."""
    return {
        "listeners": {"default": {"type": "tcp", "bind": f"{host}:{port}"}},
        "session_expiry_interval": SESSION_EXPIRY_S,
        "plugins": {f"{__spec__.name if __spec__ else __name__}.OpenAuthPlugin": {}},
    }


class EmbeddedBroker:
    """Start/stop `python -m voiceload.results.broker` on a free port; `address` once started."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0,
                 start_timeout_s: float = START_TIMEOUT_S) -> None:
        self.host = host
        self.port = port  # 0: pick a free one
        self.start_timeout_s = start_timeout_s
        self._proc: subprocess.Popen[bytes] | None = None
        self._address: BrokerAddress | None = None

    @property
    def address(self) -> BrokerAddress:
        if self._address is None:
            raise RuntimeError("EmbeddedBroker is not started")
        return self._address

    def start(self) -> BrokerAddress:
        """Start the broker and return once it accepts connections; RuntimeError if it cannot."""
        errors: list[str] = []
        attempts = START_ATTEMPTS if self.port == 0 else 1
        for _ in range(attempts):
            port = self.port or free_port(self.host)
            why = self._try_start(port)
            if why is None:
                self._address = BrokerAddress(self.host, port)
                log.debug("embedded MQTT broker on %s (pid %d)", self._address.url, self.pid)
                return self._address
            errors.append(f"port {port}: {why}")
        raise RuntimeError("embedded MQTT broker did not start: " + "; ".join(errors))

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    def _try_start(self, port: int) -> str | None:
        cmd = [sys.executable, "-m", "voiceload.results.broker", "--host", self.host, "--port", str(port),
               "--exit-on-stdin-eof"]
        # The child's log matters only if it fails to start: an anonymous file, never a pipe nobody drains.
        with tempfile.TemporaryFile() as stderr:
            proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=stderr,
                                    env=_child_env())
            assert proc.stdout is not None
            ok = _wait_ready(proc.stdout, self.start_timeout_s)
            if ok and _accepts(self.host, port, timeout_s=1.0):
                self._proc = proc
                return None
            code = proc.poll()
            _terminate(proc)
            stderr.seek(0)
            tail = stderr.read().decode(errors="replace").strip().splitlines()[-1:]
        why = f"exited with code {code}" if code is not None else "not accepting connections in time"
        return f"{why}: {tail[0]}" if tail else why

    def stop(self) -> None:
        """Terminate the broker (then kill it if it lingers); safe to call twice."""
        if self._proc is not None:
            _terminate(self._proc)
            self._proc = None
        self._address = None

    def __enter__(self) -> EmbeddedBroker:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def _child_env() -> dict[str, str]:
    """Our environment, plus the directory holding this package: the child must import it even uninstalled."""
    env = dict(os.environ)
    root = str(Path(__file__).resolve().parents[2])  # voiceload/results/broker.py -> the dir holding voiceload/
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH", "")) if p)
    return env


def _wait_ready(out: IO[bytes], timeout_s: float) -> bool:
    """Read the child's stdout until its ready line, EOF or the timeout."""
    deadline = time.monotonic() + timeout_s
    buf = b""
    while (remaining := deadline - time.monotonic()) > 0:
        readable, _, _ = select.select([out], [], [], remaining)
        if not readable:
            return False
        chunk = os.read(out.fileno(), 4096)
        if not chunk:
            return False  # the child exited
        buf += chunk
        if READY_LINE.encode() in buf:
            return True
    return False


def _accepts(host: str, port: int, timeout_s: float) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            return True
    except OSError:
        return False


def _terminate(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(STOP_TIMEOUT_S)
    for pipe in (proc.stdin, proc.stdout):
        if pipe is not None:
            with contextlib.suppress(OSError):
                pipe.close()


# --- the child process ----------------------------------------------------------------------------


async def serve(host: str, port: int, *, exit_on_stdin_eof: bool = False) -> None:
    """Run the broker until SIGTERM/SIGINT (or, when asked, until our parent closes our stdin)."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    if exit_on_stdin_eof:
        # The parent holds our stdin open; EOF means it died without stopping us: don't outlive it.
        fd = sys.stdin.fileno()

        def on_stdin() -> None:
            if not os.read(fd, 4096):
                loop.remove_reader(fd)
                stop.set()

        loop.add_reader(fd, on_stdin)
    broker = Broker(broker_config(host, port))
    await broker.start()
    print(f"{READY_LINE} mqtt://{host}:{port}", flush=True)
    await stop.wait()
    with contextlib.suppress(Exception):
        await asyncio.wait_for(broker.shutdown(), STOP_TIMEOUT_S)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m voiceload.results.broker",
                                 description="voiceload's embedded MQTT broker")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=1883)
    ap.add_argument("--exit-on-stdin-eof", action="store_true", help="stop when stdin closes (parent gone)")
    ap.add_argument("-v", "--verbose", action="store_true")
    args = ap.parse_args(argv)
    # amqtt logs every connection at INFO: a load test makes thousands, so keep it quiet by default.
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(asctime)s broker %(levelname)s %(name)s: %(message)s")
    logging.getLogger("transitions").setLevel(logging.WARNING)
    try:
        asyncio.run(serve(args.host, args.port, exit_on_stdin_eof=args.exit_on_stdin_eof))
    except Exception as exc:  # one line for the parent to show, not a traceback
        print(f"cannot start broker on {args.host}:{args.port}: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
