"""CPU, RSS and unread UDP datagrams per process, read from /proc over a measurement window."""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

CLK_TCK = os.sysconf("SC_CLK_TCK")
POLL_S = 0.25
SETTLE_S = 2.0  # after the peers report all N calls up, before the window opens

Roles = Callable[[], dict[str, list[int]]]


def pid_alive(pid: int) -> bool:
    """True while the process exists and is not a zombie (a -bg SIPp is not our child: no waitpid)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2] != "Z"


def proc_stat(pid: int) -> tuple[int, int] | None:
    """(ppid, utime+stime in clock ticks, all threads) of a live process; None once it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    rest = text[text.rindex(")") + 2 :].split()
    return int(rest[1]), int(rest[11]) + int(rest[12])


def rss_kb(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def cmdline(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return []


def children(parent: int) -> list[int]:
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            st = proc_stat(int(entry))
            if st is not None and st[0] == parent:
                out.append(int(entry))
    return out


def host_cpu() -> tuple[int, int]:
    """(busy, total) jiffies of the whole box since boot, from /proc/stat's first line."""
    fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:9]]
    idle = fields[3] + fields[4]
    return sum(fields) - idle, sum(fields)


def voiceload_roles(run_pid: int) -> dict[str, list[int]]:
    """The `voiceload run` process tree: agents (`-m voiceload agent`), the broker, the run itself, the rest."""
    roles: dict[str, list[int]] = {"agents": [], "coordinator": [run_pid], "broker": [], "other": []}
    for pid in children(run_pid):
        argv = cmdline(pid)
        if "voiceload.results.broker" in argv:
            roles["broker"].append(pid)
        elif "agent" in argv and "voiceload" in argv:
            roles["agents"].append(pid)
        else:
            roles["other"].append(pid)  # e.g. the short-lived `python -m voiceload.sip.ua` call-limit probe
    return roles


def udp_sockets(pids: list[int]) -> dict[str, tuple[int, int]]:
    """{socket inode: (receive queue bytes, drops)} of the UDP sockets these processes hold.

    A socket whose queue sits full and whose drops grow is one nobody reads: SIPp's UAC never reads
    the RTP the far end sends it (the kernel discards it), while voiceload receives, decodes and
    tapes all of it. The drops make that difference in work visible next to the CPU figures.
    """
    inodes: set[str] = set()
    for pid in pids:
        with contextlib.suppress(OSError):
            for fd in os.listdir(f"/proc/{pid}/fd"):
                with contextlib.suppress(OSError):
                    link = os.readlink(f"/proc/{pid}/fd/{fd}")
                    if link.startswith("socket:["):
                        inodes.add(link[8:-1])
    found: dict[str, tuple[int, int]] = {}
    for table in ("/proc/net/udp", "/proc/net/udp6"):
        with contextlib.suppress(OSError):
            for line in Path(table).read_text().splitlines()[1:]:
                f = line.split()
                if len(f) > 12 and f[9] in inodes:
                    found[f[9]] = (int(f[4].split(":")[1], 16), int(f[12]))
    return found


@dataclass
class Window:
    """CPU (% of one core) and RSS (MB, at the window's end) per role over one measurement window."""

    seconds: float
    cpu_pct: dict[str, float]
    rss_mb: dict[str, float]
    procs: dict[str, int]
    host_cpu_pct: float  # of the whole box (all cores), everything on it
    calls_up: tuple[int, int] = (0, 0)  # calls the UASes held when the window opened and closed
    # per role: UDP sockets held at the end, and datagrams the kernel dropped on them per second
    # over the window because they sat unread (full receive queue)
    udp_sockets: dict[str, int] = field(default_factory=dict)
    udp_drops_per_s: dict[str, float] = field(default_factory=dict)


class Meter:
    """CPU ticks of every process at the window's start and end; processes present at both count."""

    def __init__(self, roles: Roles) -> None:
        self.t0 = time.monotonic()
        self.host0 = host_cpu()
        self.start_roles = roles()
        self.ticks0 = {pid: st[1] for pids in self.start_roles.values() for pid in pids
                       if (st := proc_stat(pid)) is not None}
        self.udp0 = {role: udp_sockets(pids) for role, pids in self.start_roles.items()}

    def finish(self) -> Window:
        ticks1 = {pid: st[1] for pid in self.ticks0 if (st := proc_stat(pid)) is not None}
        host1 = host_cpu()
        dt = time.monotonic() - self.t0
        cpu: dict[str, float] = {}
        rss: dict[str, float] = {}
        count: dict[str, int] = {}
        for role, pids in self.start_roles.items():
            alive = [p for p in pids if p in ticks1 and p in self.ticks0]
            cpu[role] = sum(ticks1[p] - self.ticks0[p] for p in alive) / CLK_TCK / dt * 100
            rss[role] = sum(rss_kb(p) or 0 for p in alive) / 1024
            count[role] = len(alive)
        busy = host1[0] - self.host0[0]
        total = host1[1] - self.host0[1]
        window = Window(dt, cpu, rss, count, 100 * busy / total if total else 0.0)
        for role, pids in self.start_roles.items():
            udp1, udp0 = udp_sockets(pids), self.udp0[role]
            window.udp_sockets[role] = len(udp1)
            window.udp_drops_per_s[role] = sum(d - udp0[i][1] for i, (_, d) in udp1.items() if i in udp0) / dt
        return window


def measure(roles: Roles, in_flight: Callable[[], int], done: Callable[[], bool],
            n: int, rate: float, window_s: float, deadline: float,
            on_poll: Callable[[], object] | None = None) -> Window | None:
    """Wait until all n calls are up (the peers say so, or n/rate + 3 s after the first), then measure.

    None when the callers finished or the deadline passed before a whole window was measured.
    """
    first: float | None = None
    opens: float | None = None
    meter: Meter | None = None
    up_at_open = 0
    while time.monotonic() < deadline:
        now = time.monotonic()
        if on_poll is not None:
            on_poll()
        if done():
            return None
        if meter is None:
            up = in_flight()
            if up > 0 and first is None:
                first = now
            if opens is None and up >= n:
                opens = now + SETTLE_S
            elif opens is None and first is not None and now >= first + n / rate + 3:
                opens = now
            if opens is not None and now >= opens:
                meter, up_at_open = Meter(roles), up
        elif now - meter.t0 >= window_s:
            window = meter.finish()
            window.calls_up = (up_at_open, in_flight())
            return window
        time.sleep(POLL_S)
    return None
