"""rtpengine (Debian's rtpengine-daemon, userspace only) as a media relay and transcoder in tests.

Two ways to put it in a call's media path:

* By hand, over its ng control protocol (bencoded dictionaries over UDP):

      with rtpengine(tmp_path) as rtpe:
          a = rtpe.ng.offer(sdp_of_caller, call_id="c1", from_tag="a",
                            codec={"mask": ["PCMU"], "transcode": ["PCMA"]})   # a["sdp"]: for the callee
          b = rtpe.ng.answer(sdp_of_callee, call_id="c1", from_tag="a", to_tag="b")   # b["sdp"]: for the caller
          rtpe.ng.delete(call_id="c1", from_tag="a")

  Any ng key works as a keyword (underscores become dashes): `transport_protocol="RTP/SAVP"` turns
  the callee side into SRTP with SDES (add `SDES=sdes_only()` to offer AES_CM_128_HMAC_SHA1_80
  alone: by default it offers twelve suites, AEAD_AES_256_GCM first), `flags=[...]`, `replace=[...]`.

* Through Kamailio (tests/kamailio/rtpengine.cfg): `kamailio_with_rtpengine(tmp, rtpe, uas_target,
  offer_flags="codec-mask=PCMU codec-transcode=PCMA")` (or "RTP/SAVP " + sdes_only_flags() for an
  SRTP callee, "RTP/AVP" for a plain one behind an SRTP caller) is a record-routing proxy that relays every
  call to the UAS and calls rtpengine_manage() with those flags on the INVITE and plain on its
  answer, and deletes the session on BYE. Its `uri()` is the caller's target.

Userspace only: `--table=-1` (no kernel forwarding module), one interface on 127.0.0.1, the ng
socket and the RTP port range chosen free for each instance, logs on stderr to a file
(`lines()`), no configuration file (`--config-file=none`).
"""

from __future__ import annotations

import contextlib
import secrets
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.kamailio import KAMAILIO, MODULES, Kamailio, _free_port, launch
from tests.refbot import stop_process

HERE = Path(__file__).resolve().parent
RTPENGINE = shutil.which("rtpengine") or ("/usr/bin/rtpengine" if Path("/usr/bin/rtpengine").exists() else None)
PORTS = 200  # RTP ports per instance: 4 per call leg pair (RTP + RTCP on each side)

Bencodable = int | str | bytes | list[Any] | dict[str, Any]
# the SDES suites rtpengine 10.5 offers, in its order; it has no "only-SUITE" (later versions do)
SDES_SUITES = ("AEAD_AES_256_GCM", "AEAD_AES_128_GCM", "AES_256_CM_HMAC_SHA1_80", "AES_256_CM_HMAC_SHA1_32",
               "AES_192_CM_HMAC_SHA1_80", "AES_192_CM_HMAC_SHA1_32", "AES_CM_128_HMAC_SHA1_80",
               "AES_CM_128_HMAC_SHA1_32", "F8_128_HMAC_SHA1_80", "F8_128_HMAC_SHA1_32", "NULL_HMAC_SHA1_80",
               "NULL_HMAC_SHA1_32")


def sdes_only(suite: str = "AES_CM_128_HMAC_SHA1_80") -> list[str]:
    """ng's SDES list that leaves `suite` the only crypto line of an RTP/SAVP offer: SDES=sdes_only()."""
    return [f"no-{s}" for s in SDES_SUITES if s != suite]


def sdes_only_flags(suite: str = "AES_CM_128_HMAC_SHA1_80") -> str:
    """The same as Kamailio rtpengine_manage() flags: "SDES-no-... SDES-no-..."."""
    return " ".join(f"SDES-{x}" for x in sdes_only(suite))


def bencode(value: Bencodable) -> bytes:
    if isinstance(value, bool):
        raise TypeError("bencode has no booleans: ng takes flags as a list of strings")
    if isinstance(value, int):
        return b"i%de" % value
    if isinstance(value, str):
        value = value.encode()
    if isinstance(value, bytes):
        return b"%d:%s" % (len(value), value)
    if isinstance(value, list):
        return b"l" + b"".join(bencode(v) for v in value) + b"e"
    if isinstance(value, dict):
        return b"d" + b"".join(bencode(k) + bencode(value[k]) for k in sorted(value)) + b"e"
    raise TypeError(f"cannot bencode {type(value).__name__}")


def bdecode(data: bytes) -> Any:
    """A bencoded value; byte strings come back as str (ng's are UTF-8 text: SDP, tags, results)."""
    value, end = _bdecode(data, 0)
    if end != len(data):
        raise ValueError(f"trailing bytes after the bencoded value at {end}")
    return value


def _bdecode(data: bytes, i: int) -> tuple[Any, int]:
    c = data[i:i + 1]
    if c == b"i":
        end = data.index(b"e", i)
        return int(data[i + 1:end]), end + 1
    if c == b"l":
        out, i = [], i + 1
        while data[i:i + 1] != b"e":
            v, i = _bdecode(data, i)
            out.append(v)
        return out, i + 1
    if c == b"d":
        d, i = {}, i + 1
        while data[i:i + 1] != b"e":
            k, i = _bdecode(data, i)
            d[k], i = _bdecode(data, i)
        return d, i + 1
    if c.isdigit():
        colon = data.index(b":", i)
        n = int(data[i:colon])
        raw = data[colon + 1:colon + 1 + n]
        try:
            return raw.decode(), colon + 1 + n
        except UnicodeDecodeError:
            return raw, colon + 1 + n
    raise ValueError(f"not bencode at byte {i}: {data[i:i + 10]!r}")


class NgError(RuntimeError):
    """rtpengine answered a command with result "error" (its error-reason is the message)."""


@dataclass
class NgClient:
    """rtpengine's ng protocol: `cookie <bencoded dict>` out, the same cookie and a dict back."""

    address: tuple[str, int]
    timeout_s: float = 2.0

    def command(self, command: str, **params: Any) -> dict[str, Any]:
        """One ng command; keyword names take dashes for underscores (call_id -> call-id)."""
        body = {k.replace("_", "-"): v for k, v in params.items()}
        body["command"] = command
        cookie = secrets.token_hex(6).encode()
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.settimeout(self.timeout_s)
            s.sendto(cookie + b" " + bencode(body), self.address)
            deadline = time.monotonic() + self.timeout_s
            while True:
                reply = s.recv(65535)
                if reply.startswith(cookie + b" "):
                    break
                if time.monotonic() > deadline:
                    raise TimeoutError(f"rtpengine did not answer {command}")
        answer: dict[str, Any] = bdecode(reply[len(cookie) + 1:])
        if answer.get("result") == "error":
            raise NgError(f"{command}: {answer.get('error-reason')}")
        return answer

    def ping(self) -> bool:
        return self.command("ping").get("result") == "pong"

    def offer(self, sdp: str, *, call_id: str, from_tag: str, **params: Any) -> dict[str, Any]:
        return self.command("offer", sdp=sdp, call_id=call_id, from_tag=from_tag, **params)

    def answer(self, sdp: str, *, call_id: str, from_tag: str, to_tag: str, **params: Any) -> dict[str, Any]:
        return self.command("answer", sdp=sdp, call_id=call_id, from_tag=from_tag, to_tag=to_tag, **params)

    def delete(self, *, call_id: str, from_tag: str, **params: Any) -> dict[str, Any]:
        return self.command("delete", call_id=call_id, from_tag=from_tag, **params)

    def query(self, *, call_id: str, **params: Any) -> dict[str, Any]:
        return self.command("query", call_id=call_id, **params)

    def list_calls(self) -> list[str]:
        calls: list[str] = self.command("list").get("calls", [])
        return calls


@dataclass
class Rtpengine:
    proc: subprocess.Popen[bytes]
    ng: NgClient
    ng_port: int
    port_range: tuple[int, int]
    log: Path
    kamailios: list[Kamailio] = field(default_factory=list)

    @property
    def ng_uri(self) -> str:
        """The rtpengine_sock value for Kamailio's rtpengine module."""
        return f"udp:127.0.0.1:{self.ng_port}"

    def lines(self, contains: str = "") -> list[str]:
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        return [ln for ln in text.splitlines() if contains in ln]

    def stop(self) -> None:
        for k in self.kamailios:
            k.stop()
        stop_process(self.proc)


def start_rtpengine(work: Path, *, log_level: int = 6, timeout_s: float = 10.0) -> Rtpengine:
    """rtpengine on 127.0.0.1 with a free ng port and RTP range, answering ping within `timeout_s`.

    Skips the test when rtpengine is not installed; fails it when it does not come up.
    """
    if RTPENGINE is None:
        pytest.skip("rtpengine is not installed (Debian package rtpengine-daemon)")
    work.mkdir(parents=True, exist_ok=True)
    for attempt in range(3):  # a port taken between choosing and binding it: choose again
        ng_port = _free_port()
        low = _free_port() & ~1
        low = min(low, 65535 - PORTS)
        high = low + PORTS - 1
        log = work / f"rtpengine-{attempt}.log"
        cmd = [RTPENGINE, "--config-file=none", "--foreground", "--log-stderr", f"--log-level={log_level}",
               "--table=-1", "--interface=127.0.0.1", f"--listen-ng=127.0.0.1:{ng_port}",
               f"--port-min={low}", f"--port-max={high}", "--num-threads=2", "--media-num-threads=1",
               "--delete-delay=0", "--timeout=60", f"--pidfile={work / 'rtpengine.pid'}"]
        with open(log, "wb") as out:
            proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    start_new_session=True)
        rtpe = Rtpengine(proc, NgClient(("127.0.0.1", ng_port), timeout_s=0.3), ng_port, (low, high), log)
        deadline = time.monotonic() + timeout_s
        while proc.poll() is None and time.monotonic() < deadline:
            with contextlib.suppress(OSError):
                if rtpe.ng.ping():
                    rtpe.ng.timeout_s = 2.0
                    return rtpe
            time.sleep(0.1)
        rtpe.stop()
        if "Address already in use" not in log.read_text(errors="replace"):
            break
    pytest.fail(f"rtpengine did not answer an ng ping within {timeout_s:.0f} s; its log:\n"
                f"{log.read_text(errors='replace')[-3000:]}")


@contextlib.contextmanager
def rtpengine(work: Path, *, log_level: int = 6) -> Iterator[Rtpengine]:
    rtpe = start_rtpengine(work, log_level=log_level)
    try:
        yield rtpe
    finally:
        rtpe.stop()


def kamailio_with_rtpengine(work: Path, rtpe: Rtpengine, uas_target: str, *, offer_flags: str = "",
                            answer_flags: str = "", timeout_s: float = 20.0) -> Kamailio:
    """Kamailio relaying every call to `uas_target` (sip:user@host:port, UDP), media through `rtpe`.

    `offer_flags`/`answer_flags`: rtpengine_manage()'s flags on the INVITE and on its answer
    (e.g. "codec-mask=PCMU codec-transcode=PCMA", "RTP/SAVP", "RTP/AVP"); "replace-origin
    replace-session-connection" are always given. Stopped with `rtpe.stop()` (or its own stop()).
    Skips the test when kamailio or its rtpengine module is missing.
    """
    if KAMAILIO is None:
        pytest.skip("kamailio is not installed")
    if not (MODULES / "rtpengine.so").exists():
        pytest.skip(f"Kamailio's rtpengine module is missing ({MODULES})")
    directory = work / "kamailio-rtpengine"
    directory.mkdir(parents=True, exist_ok=True)
    uas = uas_target.removeprefix("sip:").split("@")[-1].split(";")[0]
    gw = launch(directory, "rtpengine.cfg", 1, lambda udp: {
        "UDP_PORT": udp, "MODULES": f"{MODULES}/", "UAS": uas, "RTPENGINE": rtpe.ng_uri,
        "OFFER_FLAGS": offer_flags, "ANSWER_FLAGS": answer_flags}, timeout_s=timeout_s)
    rtpe.kamailios.append(gw)
    return gw
