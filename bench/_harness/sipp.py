"""SIPp on 127.0.0.1: UAS "bots" that stream a bot track, UACs that call them, their ports and stats.

Every SIPp runs with -bg (no screen drawn: its CPU is the call work), so it is not our child: it
is followed by pid through /proc and stopped by signal.
"""

from __future__ import annotations

import math
import os
import random
import re
import shlex
import shutil
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from bench._harness import REPO
from bench._harness.procmeter import pid_alive

SIPP = shutil.which("sipp") or "/usr/bin/sipp"
SCENARIOS = REPO / "bench" / "density"  # uas.xml streams bot.ulaw, uac.xml streams caller.ulaw
MEDIA_PORT_MIN, MEDIA_PORT_MAX, MEDIA_PORT_SPACING = 20_000, 50_000, 4000


def free_udp_port(avoid: Sequence[int] = ()) -> int:
    """A free UDP port on 127.0.0.1 (bound to port 0), outside the media ranges chosen but not bound yet."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        if not any(base <= port < base + 4 for base in avoid):
            return port
    raise RuntimeError("no free UDP port outside the media ranges")


def udp_port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def media_ports(k: int, rng: random.Random) -> list[int]:
    """k even RTP bases, MEDIA_PORT_SPACING apart, each with base..base+3 free (SIPp binds base and base+2)."""
    offset = rng.randrange(0, MEDIA_PORT_SPACING, 2)
    slots = list(range(MEDIA_PORT_MIN + offset, MEDIA_PORT_MAX, MEDIA_PORT_SPACING))
    rng.shuffle(slots)
    chosen = [b for b in slots if all(udp_port_free(b + d) for d in range(4))][:k]
    if len(chosen) < k:
        raise SystemExit(f"only {len(chosen)} free media port ranges in {MEDIA_PORT_MIN}..{MEDIA_PORT_MAX}, need {k}")
    return chosen


def stop_pid(pid: int, timeout_s: float = 4.0) -> None:
    """SIGTERM (SIPp quits), again if it lingers with open calls, then SIGKILL; bounded in time."""
    for sig in (signal.SIGTERM, signal.SIGTERM, signal.SIGKILL):
        if not pid_alive(pid):
            return
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            return
        for _ in range(int(timeout_s / 0.1)):
            if not pid_alive(pid):
                return
            time.sleep(0.1)


@dataclass
class Sipp:
    """One background SIPp process: its pid (from -bg's "PID=[n]"), SIP port and statistics file."""

    role: str
    cmd: list[str]
    cwd: Path
    pid: int
    port: int
    stat: Path

    @property
    def command(self) -> str:
        """The command line to reproduce it (the streamed .ulaw files are looked up in the working directory)."""
        return f"(cd {self.cwd} && {shlex.join(self.cmd)})"

    def stats(self) -> dict[str, int]:
        """The last line of SIPp's -trace_stat CSV (written every second): CurrentCall, SuccessfulCall(C), ..."""
        try:
            lines = self.stat.read_text().splitlines()
        except OSError:
            return {}
        if len(lines) < 2:
            return {}
        head, last = lines[0].split(";"), lines[-1].split(";")
        out: dict[str, int] = {}
        for key in ("CurrentCall", "TotalCallCreated", "SuccessfulCall(C)", "FailedCall(C)"):
            if key in head and head.index(key) < len(last) and last[head.index(key)].isdigit():
                out[key] = int(last[head.index(key)])
        return out


def start_sipp(role: str, cmd: list[str], cwd: Path, port: int, stat: Path) -> Sipp:
    """Launch SIPp with -bg and return once it runs."""
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=20, stdin=subprocess.DEVNULL)
    m = re.search(r"PID=\[(\d+)\]", proc.stdout + proc.stderr)
    if not m:
        raise RuntimeError(f"{role} did not start (exit {proc.returncode}): {(proc.stderr or proc.stdout).strip()}")
    pid = int(m.group(1))
    sipp = Sipp(role, cmd, cwd, pid, port, stat)
    print(f"  $ {sipp.command}", flush=True)
    time.sleep(0.3)
    if not pid_alive(pid):
        raise RuntimeError(f"{role} (pid {pid}) exited at once: {sipp.command}")
    return sipp


def sip_options_ok(port: int, tries: int = 5, timeout_s: float = 1.0) -> bool:
    """One OPTIONS to 127.0.0.1:port answered (what voiceload's target probe needs from the UAS)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        s.settimeout(timeout_s)
        local = s.getsockname()[1]
        for _ in range(tries):
            cid = uuid.uuid4().hex
            msg = (f"OPTIONS sip:bot@127.0.0.1:{port} SIP/2.0\r\n"
                   f"Via: SIP/2.0/UDP 127.0.0.1:{local};branch=z9hG4bK{cid[:16]}\r\n"
                   f"Max-Forwards: 70\r\nFrom: <sip:density@127.0.0.1:{local}>;tag={cid[:8]}\r\n"
                   f"To: <sip:bot@127.0.0.1:{port}>\r\nCall-ID: {cid}\r\nCSeq: 1 OPTIONS\r\n"
                   "Content-Length: 0\r\n\r\n")
            s.sendto(msg.encode(), ("127.0.0.1", port))
            try:
                if s.recv(4096).startswith(b"SIP/2.0 200"):
                    return True
            except TimeoutError:
                continue
    return False


def split(n: int, k: int) -> list[int]:
    """n calls over k processes, as even as can be."""
    return [n // k + (1 if i < n % k else 0) for i in range(k)]


def start_uases(k: int, audio: Path, work: Path, lifetime_s: float, rng: random.Random,
                scenarios: Sequence[Path] | None = None, extra: Sequence[Sequence[str]] | None = None) -> list[Sipp]:
    """k SIPp UAS bots (streaming audio/bot.ulaw), each on its own SIP and media port, answering OPTIONS.

    `scenarios` and `extra` (one per UAS) replace uas.xml and add options: the codec rows' UASes
    answer another codec and take their media ports from an injection file (bench/_harness/codecrows.py).
    """
    uases: list[Sipp] = []
    work.mkdir(parents=True, exist_ok=True)
    try:
        bases = media_ports(k, rng)
        for i, mp in enumerate(bases):
            port = free_udp_port(bases)
            stat = work / f"uas{i}-stat.csv"
            scenario = scenarios[i] if scenarios else SCENARIOS / "uas.xml"
            cmd = [SIPP, "-sf", str(scenario), "-i", "127.0.0.1", "-mi", "127.0.0.1", "-p", str(port),
                   "-mp", str(mp), "-bg", "-timeout", f"{math.ceil(lifetime_s)}s",
                   "-trace_stat", "-stf", str(stat), "-fd", "1", *(extra[i] if extra else ())]
            uases.append(start_sipp(f"uas{i}", cmd, audio, port, stat))
        for u in uases:
            if not sip_options_ok(u.port):
                raise RuntimeError(f"{u.role} on port {u.port} does not answer OPTIONS")
    except BaseException:
        for u in uases:
            stop_pid(u.pid)
        raise
    return uases


def start_uacs(uases: list[Sipp], n: int, rate: float, call_s: float, lifetime_s: float, audio: Path,
               work: Path, rng: random.Random) -> list[Sipp]:
    """One SIPp UAC per UAS (streaming audio/caller.ulaw), n calls in all at `rate`, each call_s long."""
    uacs: list[Sipp] = []
    try:
        bases = media_ports(len(uases), rng)
        for i, (u, share, mp) in enumerate(zip(uases, split(n, len(uases)), bases, strict=True)):
            stat = work / f"uac{i}-stat.csv"
            port = free_udp_port(bases)
            cmd = [SIPP, "-sf", str(SCENARIOS / "uac.xml"), f"127.0.0.1:{u.port}", "-s", "bot",
                   "-i", "127.0.0.1", "-mi", "127.0.0.1", "-p", str(port), "-mp", str(mp),
                   "-r", f"{rate * share / n:g}", "-l", str(share), "-m", str(share),
                   "-d", str(round(call_s * 1000)), "-bg", "-timeout", f"{math.ceil(lifetime_s)}s",
                   "-trace_stat", "-stf", str(stat), "-fd", "1"]
            uacs.append(start_sipp(f"uac{i}", cmd, audio, port, stat))
    except BaseException:
        for p in uacs:
            stop_pid(p.pid)
        raise
    return uacs


def calls_up(uases: list[Sipp]) -> int:
    """Calls the UASes hold right now (their last per-second statistics line)."""
    return sum(u.stats().get("CurrentCall", 0) for u in uases)


def any_alive(procs: list[Sipp]) -> bool:
    return any(pid_alive(p.pid) for p in procs)


@contextmanager
def running(procs: list[Sipp]) -> Iterator[list[Sipp]]:
    """Every SIPp started for a phase ends with it, whatever happens in between."""
    try:
        yield procs
    finally:
        for p in procs:
            stop_pid(p.pid)
