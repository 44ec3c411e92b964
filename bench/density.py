#!/usr/bin/env python3
"""Dense call agents: CPU and memory per concurrent audio call, voiceload's agents vs a SIPp UAC.

For each concurrency level N (issue: "1000 concurrent audio calls from one 2-core box"), on this
machine and against the same peers, both callers call ceil(N/400) SIPp UAS instances on
127.0.0.1 (bench/density/uas.xml). The UAS talks like a bot: after the ACK it streams a scripted
"bot track" (a long greeting of the demo bot prompts, a pause the caller answers in, a ~2 s reply,
silence), so no reference bot competes for the CPU.

1. voiceload: `voiceload run` of a bot-first scenario built from the same audio (greeting, one
   turn, reply), N calls at once, keeping the tapes. Once the UASes report all N calls up, CPU
   (utime+stime) and RSS of the agents, the coordinator (and its embedded broker) and the UASes
   are measured over a window. Afterwards: completion, turn latency (the UAS replies ~1000 ms
   after the caller's utterance by construction) and dropouts: the fraction of 20 ms frames in the
   greeting span of a sample of tapes that are silent (< -50 dBFS) where the sent greeting is not.
   An extra agent with the run's --max-calls and no call gives the fixed RSS of an agent.
2. SIPp: fresh UASes, one `sipp -sf bench/density/uac.xml` per UAS, N calls in all at the same
   rate, each streaming the caller recording in a loop for the length of a voiceload call; its
   CPU and RSS over the same kind of window.

Not a test: a level takes about a minute and loads the box; levels of several hundred calls need
the dense pjsua2 build (`voiceload doctor`: per-process call limit 1024).

    .venv/bin/python bench/density.py                                    # levels 100, 300, 1000
    .venv/bin/python bench/density.py --levels 8,20 --greeting-s 8 --window 4   # quick check
    .venv/bin/python bench/density.py --levels 100,300 --json /tmp/density.json
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import random
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import soundfile as sf

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.refbot import stop_process  # noqa: E402
from voiceload.audio.vad import locate  # noqa: E402

DATA = REPO / "bench" / "density"  # the SIPp scenarios
RECORDINGS = REPO / "recordings" / "demo"
SIPP = shutil.which("sipp") or "/usr/bin/sipp"

RATE = 8000  # Hz: G.711 and every voiceload recording
FRAME = RATE // 50  # 20 ms
BOT_PROMPTS = ("bot-00-welcome.wav", "bot-01-name.wav", "bot-02-bye.wav")  # the greeting cycles through them
REPLY_PROMPT = "bot-01-name.wav"  # ~1.7 s
CALLER = RECORDINGS / "caller-01-order.wav"
PROMPT_PAUSE_MS = 200  # between the prompts of the greeting: far below silence_gap_ms, so one greeting
SILENCE_GAP_MS = 500  # scenario silence_gap_ms: the caller speaks after this much silence
REPLY_DELAY_MS = 1000  # the bot track replies this long after the caller's utterance ends
TAIL_MS = 10_000  # silence after the reply: the caller hangs up in it
HANGUP_AFTER_MS = 300

CALLS_PER_UAS = 400  # one SIPp UAS saturates near 450 calls
MEDIA_PORT_MIN, MEDIA_PORT_MAX, MEDIA_PORT_SPACING = 20_000, 50_000, 4000
SILENT_DBFS = -50.0  # a 20 ms frame below this RMS is silence
START_FRAMES = 5  # the greeting's first 100 ms on a tape: stream start-up, counted apart from dropouts
CHUNK = 1600  # 200 ms: the tape is followed against the source chunk by chunk
FOLLOW_RADIUS = 240  # samples (30 ms) a chunk may move from the previous one
SPEECH_PEAK = 500  # voiceload.audio.vad's speech threshold: chunks quieter than this are pauses
POLL_S = 0.25
SETTLE_S = 2.0  # after the UASes report all N calls up, before the window opens
START_BUDGET_S = 90.0  # voiceload: target probe, broker, agents up
DRAIN_BUDGET_S = 120.0  # after the last call: hang-ups, tape measurement, run dir written
IDLE_WAIT_S = 30.0  # an idle agent's RSS settles within this
CLK_TCK = os.sysconf("SC_CLK_TCK")

Samples = npt.NDArray[np.int16]


# -- audio ------------------------------------------------------------------------------------


def ulaw_encode(x: Samples) -> npt.NDArray[np.uint8]:
    """G.711 µ-law (bias 0x84 segment coder), vectorised: SIPp 3.6.1's rtp_stream sends raw µ-law bytes."""
    v = x.astype(np.int32)
    sign = np.where(v < 0, 0x80, 0)
    mag = np.minimum(np.abs(v), 32635) + 0x84
    exponent = np.floor(np.log2(mag)).astype(np.int32) - 7
    mantissa = (mag >> (exponent + 3)) & 0x0F
    return (~(sign | (exponent << 4) | mantissa) & 0xFF).astype(np.uint8)


def ulaw_decode(u: npt.NDArray[np.uint8]) -> Samples:
    """µ-law bytes back to 16-bit samples, as every G.711 decoder (pjmedia's too) computes them."""
    b = ~u.astype(np.int32) & 0xFF
    t = (((b & 0x0F) << 3) + 0x84) << ((b & 0x70) >> 4)
    return np.where(b & 0x80, 0x84 - t, t - 0x84).astype(np.int16)


def through_g711(x: Samples) -> Samples:
    """What a call delivers of `x`: the reference WAVs must hold exactly the samples that arrive."""
    return ulaw_decode(ulaw_encode(x))


def read_wav(path: Path) -> Samples:
    data, rate = sf.read(str(path), dtype="int16")
    if rate != RATE or data.ndim != 1:
        raise SystemExit(f"{path}: need {RATE} Hz mono, got {rate} Hz, shape {data.shape}")
    return np.asarray(data, dtype=np.int16)


def silence(ms: float) -> Samples:
    return np.zeros(round(ms * RATE / 1000), dtype=np.int16)


@dataclass(frozen=True)
class BotTrack:
    """The audio a UAS streams to each caller, and the call timeline it implies."""

    greeting: Samples
    reply: Samples
    caller_ms: float

    @property
    def greeting_ms(self) -> float:
        return len(self.greeting) * 1000 / RATE

    @property
    def reply_ms(self) -> float:
        return len(self.reply) * 1000 / RATE

    @property
    def gap_ms(self) -> float:
        """Greeting end to reply start: the caller waits the silence gap, speaks, the bot replies 1 s later."""
        return SILENCE_GAP_MS + self.caller_ms + REPLY_DELAY_MS

    @property
    def call_ms(self) -> float:
        """Answer to the caller's BYE in a voiceload call (it hangs up after max(gap, after_ms) of silence)."""
        return self.greeting_ms + self.gap_ms + self.reply_ms + max(SILENCE_GAP_MS, HANGUP_AFTER_MS)

    def samples(self) -> Samples:
        return np.concatenate((self.greeting, silence(self.gap_ms), self.reply, silence(TAIL_MS)))


def build_track(greeting_s: float) -> BotTrack:
    """Bot prompts with 200 ms pauses up to `greeting_s` long, then the timeline of one turn."""
    prompts = [read_wav(RECORDINGS / name) for name in BOT_PROMPTS]
    pieces: list[Samples] = []
    total = 0
    for i in range(10_000):  # bounded: a greeting of hours is not what anyone asked for
        if total >= greeting_s * RATE:
            break
        if pieces:
            pieces.append(silence(PROMPT_PAUSE_MS))
        pieces.append(prompts[i % len(prompts)])
        total = sum(len(p) for p in pieces)
    greeting = through_g711(np.concatenate(pieces))
    reply = through_g711(read_wav(RECORDINGS / REPLY_PROMPT))
    return BotTrack(greeting, reply, caller_ms=len(read_wav(CALLER)) * 1000 / RATE)


def scenario_yaml(track: BotTrack) -> str:
    """The voiceload scenario that walks the bot track: greeting, one turn, the caller hangs up."""
    return (
        "version: 1\n"
        "name: density\n"
        "description: bench/density.py - bot-first call against a SIPp UAS that streams a bot track\n"
        f"silence_gap_ms: {SILENCE_GAP_MS}\n"
        f"max_call_ms: {round(track.call_ms + 30_000)}\n"
        "greeting:\n"
        "  prompt: greeting.wav\n"
        "  max_wait_ms: 3000\n"
        "turns:\n"
        f"  - caller: {CALLER}\n"
        "    reply:\n"
        "      prompt: reply.wav\n"
        "      max_wait_ms: 4000\n"
        "hangup:\n"
        "  by: caller\n"
        f"  after_ms: {HANGUP_AFTER_MS}\n"
    )


def write_workdir(work: Path, track: BotTrack) -> Path:
    """greeting.wav, reply.wav, the scenario, and the raw µ-law the SIPp processes stream (bot.ulaw, caller.ulaw)."""
    work.mkdir(parents=True, exist_ok=True)
    sf.write(str(work / "greeting.wav"), track.greeting, RATE, subtype="PCM_16")
    sf.write(str(work / "reply.wav"), track.reply, RATE, subtype="PCM_16")
    (work / "bot.ulaw").write_bytes(ulaw_encode(track.samples()).tobytes())
    (work / "caller.ulaw").write_bytes(ulaw_encode(read_wav(CALLER)).tobytes())
    scenario = work / "scenario.yaml"
    scenario.write_text(scenario_yaml(track))
    return scenario


# -- ports and SIPp processes -----------------------------------------------------------------


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


def pid_alive(pid: int) -> bool:
    """True while the process exists and is not a zombie (a -bg SIPp is not our child: no waitpid)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2] != "Z"


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
    """Launch SIPp with -bg (no screen drawn: its CPU is the call work) and return once it runs."""
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


def start_uases(k: int, audio: Path, work: Path, lifetime_s: float, rng: random.Random) -> list[Sipp]:
    """k SIPp UAS bots (streaming audio/bot.ulaw), each on its own SIP and media port, answering OPTIONS."""
    uases: list[Sipp] = []
    work.mkdir(parents=True, exist_ok=True)
    try:
        bases = media_ports(k, rng)
        for i, mp in enumerate(bases):
            port = free_udp_port(bases)
            stat = work / f"uas{i}-stat.csv"
            cmd = [SIPP, "-sf", str(DATA / "uas.xml"), "-i", "127.0.0.1", "-mi", "127.0.0.1", "-p", str(port),
                   "-mp", str(mp), "-bg", "-timeout", f"{math.ceil(lifetime_s)}s",
                   "-trace_stat", "-stf", str(stat), "-fd", "1"]
            uases.append(start_sipp(f"uas{i}", cmd, audio, port, stat))
        for u in uases:
            if not sip_options_ok(u.port):
                raise RuntimeError(f"{u.role} on port {u.port} does not answer OPTIONS")
    except BaseException:
        for u in uases:
            stop_pid(u.pid)
        raise
    return uases


@contextmanager
def running(procs: list[Sipp]) -> Iterator[list[Sipp]]:
    """Every SIPp started for a phase ends with it, whatever happens in between."""
    try:
        yield procs
    finally:
        for p in procs:
            stop_pid(p.pid)


# -- /proc sampling ---------------------------------------------------------------------------


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

    def __init__(self, roles: Callable[[], dict[str, list[int]]]) -> None:
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


def measure(roles: Callable[[], dict[str, list[int]]], in_flight: Callable[[], int], done: Callable[[], bool],
            n: int, rate: float, window_s: float, deadline: float,
            on_poll: Callable[[], object] | None = None) -> Window | None:
    """Wait until all n calls are up (the UASes say so, or n/rate + 3 s after the first), then measure.

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


# -- tapes ------------------------------------------------------------------------------------


def frame_dbfs(x: Samples) -> npt.NDArray[np.float64]:
    """RMS level of each whole 20 ms frame, dBFS."""
    n = len(x) // FRAME
    frames = x[: n * FRAME].astype(np.float64).reshape(n, FRAME)
    rms = np.sqrt(np.mean(frames * frames, axis=1))
    return np.asarray(20 * np.log10(np.maximum(rms, 1e-3) / 32768.0), dtype=np.float64)


def align(tape: Samples, ref: Samples, *, search_s: float = 6.0, template_s: float = 3.0) -> tuple[int, float]:
    """Where `ref` starts on the tape (searched in its first search_s seconds): (index, normalised score)."""
    tpl = ref[: round(template_s * RATE)].astype(np.float64)
    win = tape[: len(tpl) + round(search_s * RATE)].astype(np.float64)
    if len(win) < len(tpl) or not tpl.any():
        return -1, 0.0
    nfft = 1 << (len(win) + len(tpl)).bit_length()
    corr = np.fft.irfft(np.fft.rfft(win, nfft) * np.conj(np.fft.rfft(tpl, nfft)), nfft)[: len(win) - len(tpl) + 1]
    csum = np.concatenate(([0.0], np.cumsum(win * win)))
    energy = csum[len(tpl) :] - csum[: len(corr)]
    score = corr / (np.sqrt(np.maximum(energy, 1e-9)) * float(np.sqrt(np.dot(tpl, tpl))))
    best = int(np.argmax(score))
    return best, float(score[best])


def follow(tape: Samples, ref: Samples, at: int) -> list[int] | None:
    """Where each 200 ms chunk of `ref` lies on the tape, following the receive path's re-timing.

    The receive path may move the audio by a fraction of a frame mid-call (jitter buffer growth,
    the bridge's clock-drift compensation): comparing frame i with frame i would then call
    shifted speech "lost". Each chunk with speech is located within ±30 ms of the previous one's
    position; pauses keep the last. None when the tape ends before the greeting does.
    """
    lags: list[int] = []
    lag = at  # tape index of ref sample 0
    for start in range(0, len(ref), CHUNK):
        tpl = ref[start : start + CHUNK]
        if lag + start + len(tpl) + FOLLOW_RADIUS > len(tape):
            return None
        if len(tpl) == CHUNK and int(np.abs(tpl).max()) > SPEECH_PEAK:
            idx, score = locate(tape, tpl, lo=lag + start - FOLLOW_RADIUS, hi=lag + start + FOLLOW_RADIUS + 1,
                                template_len=CHUNK)
            if idx >= 0 and score >= 0.5:
                lag = idx - start
        lags.append(lag)
    return lags


def tape_frames_dbfs(tape: Samples, lags: list[int], frames: int) -> npt.NDArray[np.float64]:
    """The level of the tape frame that carries each source frame (source frame i at lags[i // 10] + 160 i)."""
    per_chunk = CHUNK // FRAME
    starts = np.array([lags[i // per_chunk] + i * FRAME for i in range(frames)])
    x = tape[starts[:, None] + np.arange(FRAME)[None, :]].astype(np.float64)
    rms = np.sqrt(np.mean(x * x, axis=1))
    return np.asarray(20 * np.log10(np.maximum(rms, 1e-3) / 32768.0), dtype=np.float64)


def analyse_tapes(tape_root: Path, greeting: Samples, limit: int) -> dict[str, Any]:
    """Silent 20 ms frames over the greeting span: in a sample of tapes, in the source, and where it spoke.

    The tape is the call's mono mix (bot audio received + what the caller played); during the
    greeting the caller is silent, so every frame there should be the bot's. A frame the source
    has speech in but the tape is silent in (at the followed position) is a dropout: a lost or
    late packet the jitter buffer could not cover. The first START_FRAMES frames are left out of
    both and counted on their own: the stream's first packet is a start-up effect, not load.
    """
    found = sorted(tape_root.glob("*/*.wav"))
    tapes = [found[i] for i in sorted({round(x) for x in np.linspace(0, len(found) - 1, limit)})] \
        if len(found) > limit else found  # spread over agents and call start times
    nframes = len(greeting) // FRAME
    src_speech_all = frame_dbfs(greeting) >= SILENT_DBFS
    src_speech = src_speech_all[START_FRAMES:]
    silent_fracs: list[float] = []
    dropped: list[float] = []
    unaligned = short = start_missing = retimed = 0
    for path in tapes:
        try:
            data, _ = sf.read(str(path), dtype="int16", frames=len(greeting) + 8 * RATE)
        except (OSError, RuntimeError):
            unaligned += 1
            continue
        tape = np.asarray(data, dtype=np.int16).reshape(-1)
        at, score = align(tape, greeting)
        if at < 0 or score < 0.5:
            unaligned += 1
            continue
        lags = follow(tape, greeting, at)
        if lags is None:
            short += 1
            continue
        retimed += int(len(set(lags)) > 1)
        speech_all = tape_frames_dbfs(tape, lags, nframes) >= SILENT_DBFS
        start_missing += int(np.any(src_speech_all[:START_FRAMES] & ~speech_all[:START_FRAMES]))
        speech = speech_all[START_FRAMES:]
        silent_fracs.append(1 - float(np.mean(speech)))
        dropped.append(float(np.sum(src_speech & ~speech)) / max(1, int(np.sum(src_speech))))
    src_silent = 100 * (1 - float(np.mean(src_speech)))
    tape_silent = 100 * float(np.mean(silent_fracs)) if silent_fracs else None
    return {
        "tapes_found": len(found), "analysed": len(silent_fracs), "unaligned": unaligned, "short": short,
        "source_silent_pct": round(src_silent, 2),
        "tape_silent_pct": None if tape_silent is None else round(tape_silent, 2),
        "excess_silent_pct": None if tape_silent is None else round(tape_silent - src_silent, 3),
        "dropout_pct_mean": round(100 * float(np.mean(dropped)), 3) if dropped else None,
        "dropout_pct_max": round(100 * float(np.max(dropped)), 3) if dropped else None,
        "tapes_with_dropouts": sum(1 for d in dropped if d > 0),
        "tapes_missing_stream_start": start_missing,
        "tapes_retimed": retimed,
    }


# -- the two phases ---------------------------------------------------------------------------


@dataclass
class Level:
    """Everything measured at one concurrency level (the JSON output, one object per level)."""

    n: int
    rate: float
    greeting_s: float
    call_s: float
    uas: int
    commands: list[str] = field(default_factory=list)
    voiceload: dict[str, Any] = field(default_factory=dict)
    sipp: dict[str, Any] = field(default_factory=dict)


def uas_count(n: int, per_uas: int) -> int:
    return max(1, math.ceil(n / per_uas))


def stop_run(proc: subprocess.Popen[bytes]) -> None:
    """Ctrl-C first (the run stops its agents and writes what it has), then SIGTERM, then SIGKILL."""
    for sig, wait_s in ((signal.SIGINT, 30.0), (signal.SIGTERM, 10.0), (signal.SIGKILL, 5.0)):
        if proc.poll() is not None:
            return
        proc.send_signal(sig)
        try:
            proc.wait(wait_s)
        except subprocess.TimeoutExpired:
            continue


def read_calls(out: Path) -> list[dict[str, Any]]:
    path = out / "calls.jsonl"
    if not path.exists():
        return []
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]


def idle_agent_rss(scenario: Path, target: str, max_calls: int, work: Path, commands: list[str]) -> float | None:
    """RSS (MB) of a voiceload agent that is up but has no call: the fixed cost behind "RSS per call".

    One `voiceload agent` with the run's --max-calls (pjsua2 sizes its call slots and media ports
    by it) and its own embedded broker; it reports ready and waits for an assignment that never
    comes. Read once its RSS has been steady for 2 s (bounded: IDLE_WAIT_S).
    """
    from voiceload.results.broker import EmbeddedBroker

    broker = EmbeddedBroker()
    broker.start()
    try:
        cmd = [sys.executable, "-m", "voiceload", "agent", "--run-id", f"density-idle-{os.getpid()}",
               "--agent-id", "a0", "--scenario", str(scenario), "--broker", broker.address.url, "--target", target,
               "--max-calls", str(max_calls), "--tape-dir", str(work / "idle-tapes")]
        commands.append(f"(cd {REPO} && {shlex.join(cmd)})  # idle agent, with its own broker")
        with open(work / "idle-agent.log", "wb") as log:
            proc = subprocess.Popen(cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        try:
            prev: int | None = None
            steady = 0
            for _ in range(int(IDLE_WAIT_S / 0.5)):
                time.sleep(0.5)
                kb = rss_kb(proc.pid)
                if proc.poll() is not None or kb is None:
                    return None
                steady = steady + 1 if prev is not None and abs(kb - prev) < 512 else 0
                prev = kb
                if steady >= 4:
                    break
            return None if prev is None else round(prev / 1024, 1)
        finally:
            stop_process(proc, timeout_s=10.0)
    finally:
        broker.stop()


def run_voiceload(level: Level, track: BotTrack, work: Path, args: argparse.Namespace,
                  rng: random.Random) -> None:
    """voiceload's agents against fresh UASes: window measurement, then run dir and tapes."""
    n, rate = level.n, level.rate
    budget = START_BUDGET_S + n / rate + level.call_s + DRAIN_BUDGET_S
    scenario = work.parent / "scenario.yaml"
    out = work / "run"
    agent_max_calls: set[int] = set()
    with running(start_uases(level.uas, work.parent, work, budget + 60, rng)) as uases:
        level.commands += [u.command for u in uases]
        targets = ",".join(f"sip:bot@127.0.0.1:{u.port}" for u in uases)
        cmd = [sys.executable, "-m", "voiceload", "run", str(scenario), "--target", targets, "-c", str(n),
               "-n", str(n), "--max-rate", f"{rate:g}", "--out", str(out), "--keep-tapes"]
        level.commands.append(f"(cd {REPO} && {shlex.join(cmd)})")
        print(f"  $ {level.commands[-1]}", flush=True)
        began = time.monotonic()
        with open(work / "voiceload.log", "wb") as log:
            proc = subprocess.Popen(cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        try:
            def roles() -> dict[str, list[int]]:
                found = voiceload_roles(proc.pid)
                for pid in found["agents"]:  # the call slots the coordinator gave its agents
                    argv = cmdline(pid)
                    if "--max-calls" in argv[:-1]:
                        agent_max_calls.add(int(argv[argv.index("--max-calls") + 1]))
                return {**found, "uas": [u.pid for u in uases]}

            window = measure(roles, lambda: sum(u.stats().get("CurrentCall", 0) for u in uases),
                             lambda: proc.poll() is not None, n, rate, args.window, began + budget,
                             on_poll=roles)
            try:
                rc: int | None = proc.wait(max(1.0, began + budget - time.monotonic()))
            except subprocess.TimeoutExpired:
                rc = None
        finally:
            stop_run(proc)
        seconds = round(time.monotonic() - began, 1)
        idle = idle_agent_rss(scenario, targets, max(agent_max_calls), work, level.commands) \
            if agent_max_calls else None
    summary = json.loads((out / "summary.json").read_text()) if (out / "summary.json").exists() else {}
    calls = read_calls(out)
    result: dict[str, Any] = {
        "exit_code": rc, "seconds": seconds, "run_dir": str(out),
        "window": asdict(window) if window else None,
        "placed": summary.get("calls", {}).get("placed", len(calls)),
        "completed": summary.get("calls", {}).get("completed", sum(c["outcome"] == "completed" for c in calls)),
        "valid": summary.get("valid"), "invalid_reasons": summary.get("invalid_reasons", []),
        "turn_p50_ms": summary.get("turn_latency_ms", {}).get("p50"),
        "turn_p95_ms": summary.get("turn_latency_ms", {}).get("p95"),
        "outcomes": summary.get("outcomes"),
        "call_ms_median": _median([c["duration_ms"] for c in calls if c.get("duration_ms") is not None]),
        "generator": summary.get("generator"),
        "reasons": _top_reasons(calls),
        "agent_max_calls": sorted(agent_max_calls),
        "idle_agent_rss_mb": idle,
        "tapes": analyse_tapes(out / "tapes", track.greeting, args.tapes),
    }
    if rc is None:
        result["note"] = f"run did not end within {budget:.0f} s and was stopped"
    level.voiceload = result


def _median(xs: list[float]) -> float | None:
    return round(float(np.median(xs)), 1) if xs else None


def _top_reasons(calls: list[dict[str, Any]], k: int = 3) -> list[str]:
    """The most frequent failure reasons, to say at a glance why calls did not complete."""
    counts: dict[str, int] = {}
    for c in calls:
        if c.get("outcome") != "completed":
            key = f"{c.get('outcome')}: {c.get('reason')}"
            counts[key] = counts.get(key, 0) + 1
    return [f"{v}x {r}" for r, v in sorted(counts.items(), key=lambda kv: -kv[1])[:k]]


def split(n: int, k: int) -> list[int]:
    return [n // k + (1 if i < n % k else 0) for i in range(k)]


def run_sipp(level: Level, work: Path, args: argparse.Namespace, rng: random.Random) -> None:
    """SIPp UACs (one per UAS, sharing N and the rate) against fresh UASes, measured the same way."""
    n, rate = level.n, level.rate
    budget = n / rate + level.call_s + 60
    with running(start_uases(level.uas, work.parent, work, budget + 60, rng)) as uases:
        level.commands += [u.command for u in uases]
        uacs: list[Sipp] = []
        with running(uacs):
            began = time.monotonic()
            bases = media_ports(len(uases), rng)
            for i, (u, share, mp) in enumerate(zip(uases, split(n, len(uases)), bases, strict=True)):
                stat = work / f"uac{i}-stat.csv"
                port = free_udp_port(bases)
                cmd = [SIPP, "-sf", str(DATA / "uac.xml"), f"127.0.0.1:{u.port}", "-s", "bot",
                       "-i", "127.0.0.1", "-mi", "127.0.0.1", "-p", str(port), "-mp", str(mp),
                       "-r", f"{rate * share / n:g}", "-l", str(share), "-m", str(share),
                       "-d", str(round(level.call_s * 1000)), "-bg", "-timeout", f"{math.ceil(budget)}s",
                       "-trace_stat", "-stf", str(stat), "-fd", "1"]
                uacs.append(start_sipp(f"uac{i}", cmd, work.parent, port, stat))
                level.commands.append(uacs[-1].command)

            def roles() -> dict[str, list[int]]:
                return {"uac": [p.pid for p in uacs], "uas": [u.pid for u in uases]}

            window = measure(roles, lambda: sum(u.stats().get("CurrentCall", 0) for u in uases),
                             lambda: not any(pid_alive(p.pid) for p in uacs), n, rate, args.window,
                             began + budget)
            for _ in range(int(budget / POLL_S) + 1):  # bounded: -timeout ends them anyway
                if not any(pid_alive(p.pid) for p in uacs) or time.monotonic() > began + budget + 10:
                    break
                time.sleep(POLL_S)
            stats = [p.stats() for p in uacs]
    level.sipp = {
        "seconds": round(time.monotonic() - began, 1),
        "window": asdict(window) if window else None,
        "placed": sum(s.get("TotalCallCreated", 0) for s in stats),
        "completed": sum(s.get("SuccessfulCall(C)", 0) for s in stats),
        "failed": sum(s.get("FailedCall(C)", 0) for s in stats),
    }


# -- report -----------------------------------------------------------------------------------


def per100(window: dict[str, Any] | None, roles: tuple[str, ...], n: int) -> float | None:
    """CPU (% of one core) of these roles over the window, per 100 concurrent calls."""
    if not window:
        return None
    return sum(window["cpu_pct"].get(r, 0.0) for r in roles) * 100 / n


def row(level: Level) -> dict[str, Any]:
    """The table's numbers for one level."""
    vl, sp, n = level.voiceload, level.sipp, level.n
    vw, sw = vl.get("window"), sp.get("window")
    agents = per100(vw, ("agents",), n)
    total = per100(vw, ("agents", "coordinator", "broker", "other"), n)
    uac = per100(sw, ("uac",), n)
    tapes = vl.get("tapes", {})
    idle = vl.get("idle_agent_rss_mb")
    return {
        "n": n, "agents": vw["procs"].get("agents") if vw else None,
        "vl_agents_cpu_per100": agents, "vl_total_cpu_per100": total, "sipp_cpu_per100": uac,
        "ratio_agents": agents / uac if agents is not None and uac else None,
        "ratio_total": total / uac if total is not None and uac else None,
        "vl_rss_mb_per_call": vw["rss_mb"]["agents"] / n if vw else None,
        "vl_idle_agent_rss_mb": idle,
        "vl_rss_mb_per_call_above_idle": (vw["rss_mb"]["agents"] - idle * vw["procs"]["agents"]) / n
        if vw and idle is not None else None,
        "sipp_rss_mb_per_call": sw["rss_mb"]["uac"] / n if sw else None,
        "vl_completed": vl.get("completed"), "vl_placed": vl.get("placed"),
        "sipp_completed": sp.get("completed"), "sipp_placed": sp.get("placed"),
        "p50_ms": vl.get("turn_p50_ms"), "p95_ms": vl.get("turn_p95_ms"),
        "tape_silent_pct": tapes.get("tape_silent_pct"), "source_silent_pct": tapes.get("source_silent_pct"),
        "dropout_pct": tapes.get("dropout_pct_mean"),
        "host_cpu_vl": vw["host_cpu_pct"] if vw else None, "host_cpu_sipp": sw["host_cpu_pct"] if sw else None,
        "uas_cpu_vl": vw["cpu_pct"].get("uas") if vw else None,
        "uas_cpu_sipp": sw["cpu_pct"].get("uas") if sw else None,
        "vl_unread_per_s": (vw.get("udp_drops_per_s") or {}).get("agents") if vw else None,
        "sipp_unread_per_s": (sw.get("udp_drops_per_s") or {}).get("uac") if sw else None,
    }


def fmt(v: Any, spec: str = ".1f") -> str:
    return "-" if v is None else format(v, spec)



def pair(a: Any, b: Any, spec: str = ".1f", sep: str = " | ") -> str:
    return f"{fmt(a, spec)}{sep}{fmt(b, spec)}"


COLUMNS: list[tuple[str, Callable[[dict[str, Any]], str]]] = [
    ("N", lambda r: str(r["n"])),
    ("agents", lambda r: fmt(r["agents"], "d")),
    ("CPU/100 vl agents", lambda r: fmt(r["vl_agents_cpu_per100"])),
    ("vl total", lambda r: fmt(r["vl_total_cpu_per100"])),
    ("SIPp UAC", lambda r: fmt(r["sipp_cpu_per100"])),
    ("ratio agents|total", lambda r: pair(r["ratio_agents"], r["ratio_total"])),
    ("RSS MB/call vl|SIPp", lambda r: pair(r["vl_rss_mb_per_call"], r["sipp_rss_mb_per_call"], ".3f")),
    ("vl above idle", lambda r: fmt(r["vl_rss_mb_per_call_above_idle"], ".3f")),
    ("idle MB/agent", lambda r: fmt(r["vl_idle_agent_rss_mb"])),
    ("completed vl|SIPp", lambda r: f"{r['vl_completed']}/{r['vl_placed']} | {r['sipp_completed']}/{r['sipp_placed']}"),
    ("turn p50/p95 ms", lambda r: pair(r["p50_ms"], r["p95_ms"], ".0f", "/")),
    ("silent % tape|src", lambda r: pair(r["tape_silent_pct"], r["source_silent_pct"], ".2f")),
    ("dropouts %", lambda r: fmt(r["dropout_pct"], ".3f")),
    ("host CPU % vl|SIPp", lambda r: pair(r["host_cpu_vl"], r["host_cpu_sipp"], ".0f")),
    ("UAS CPU % vl|SIPp", lambda r: pair(r["uas_cpu_vl"], r["uas_cpu_sipp"])),
    ("RTP unread/s vl|SIPp", lambda r: pair(r["vl_unread_per_s"], r["sipp_unread_per_s"], ".0f")),
]


def print_table(rows: list[dict[str, Any]]) -> None:
    """One row per level, columns as wide as their widest cell."""
    print("\nCPU/100: % of one core over the window per 100 concurrent calls (vl total: agents + run process + "
          "broker); host CPU: % of the whole box; UAS CPU: % of one core, all UASes together; silent %: 20 ms "
          "frames below -50 dBFS in the greeting span of the tapes vs the source; dropouts: speech frames lost; "
          "RTP unread/s: datagrams from the UASes the kernel dropped because the caller never read them")
    cells = [[fn(r) for _, fn in COLUMNS] for r in rows]
    widths = [max(len(h), *(len(c[i]) for c in cells)) for i, (h, _) in enumerate(COLUMNS)]
    print("  ".join(h.rjust(w) for (h, _), w in zip(COLUMNS, widths, strict=True)))
    for c in cells:
        print("  ".join(v.rjust(w) for v, w in zip(c, widths, strict=True)))


def print_window(w: dict[str, Any]) -> None:
    print("    window {:.1f} s, calls up {}: CPU % of a core {}; RSS MB {}; processes {}; host {:.0f} %".format(
        w["seconds"], "->".join(map(str, w["calls_up"])), {k: round(v, 1) for k, v in w["cpu_pct"].items()},
        {k: round(v, 1) for k, v in w["rss_mb"].items()}, w["procs"], w["host_cpu_pct"]))
    if w.get("udp_sockets"):
        print("    UDP sockets {}; datagrams dropped unread per s {}".format(
            w["udp_sockets"], {k: round(v) for k, v in w["udp_drops_per_s"].items()}))


def print_details(level: Level) -> None:
    vl, sp = level.voiceload, level.sipp
    print(f"  voiceload: exit {vl.get('exit_code')}, valid {vl.get('valid')}, {vl.get('completed')}/{vl.get('placed')} "
          f"completed, median call {vl.get('call_ms_median')} ms, {vl.get('seconds')} s; outcomes {vl.get('outcomes')}")
    for reason in vl.get("invalid_reasons", [])[:3]:
        print(f"    invalid: {reason}")
    for reason in vl.get("reasons", []):
        print(f"    not completed: {reason}")
    if vl.get("note"):
        print(f"    {vl['note']}")
    gen = vl.get("generator") or {}
    if gen:
        print(f"    generator (agents' own heartbeats): {gen.get('agents')} agents of --max-calls "
              f"{vl.get('agent_max_calls')}, max CPU {gen.get('max_cpu_percent')} %, max pump lag "
              f"{gen.get('max_pump_lag_ms')} ms, clock slip max {(gen.get('clock_slip_ms') or {}).get('max')} ms; "
              f"idle agent RSS {vl.get('idle_agent_rss_mb')} MB")
    w = vl.get("window")
    if w:
        print_window(w)
    else:
        print("    no measurement window: the calls were not all up long enough (longer --greeting-s?)")
    t = vl.get("tapes", {})
    print(f"    tapes: {t.get('analysed')} analysed of {t.get('tapes_found')} ({t.get('unaligned')} unaligned, "
          f"{t.get('short')} short); silent {t.get('tape_silent_pct')} % vs source {t.get('source_silent_pct')} % "
          f"(excess {t.get('excess_silent_pct')}); dropouts mean {t.get('dropout_pct_mean')} %, "
          f"max {t.get('dropout_pct_max')} %, {t.get('tapes_with_dropouts')} tapes with any; "
          f"{t.get('tapes_missing_stream_start')} lack speech in the first {START_FRAMES * 20} ms; "
          f"{t.get('tapes_retimed')} re-timed mid-greeting")
    print(f"  sipp: {sp.get('completed')}/{sp.get('placed')} completed ({sp.get('failed')} failed), "
          f"calls of {round(level.call_s * 1000)} ms after the answer (-d), {sp.get('seconds')} s")
    w = sp.get("window")
    if w:
        print_window(w)


# -- main -------------------------------------------------------------------------------------


def default_rate(n: int) -> float:
    """25 calls/s; 50 for the big levels, so that all calls are up together long before the first ends."""
    return 25.0 if n <= 500 else 50.0


def run_level(n: int, args: argparse.Namespace, root: Path, rng: random.Random) -> Level:
    rate = args.rate or default_rate(n)
    # the first call must still be in its greeting when the window (after all n are up) closes
    greeting_s = max(args.greeting_s, n / rate + args.window + 3 + SETTLE_S)
    track = build_track(greeting_s)
    work = root / f"n{n}"
    write_workdir(work, track)
    level = Level(n, rate, round(track.greeting_ms / 1000, 1), round(track.call_ms / 1000, 3),
                  uas_count(n, args.calls_per_uas))
    print(f"\nlevel {n}: {rate:g} calls/s, {level.uas} UAS, greeting {level.greeting_s} s, "
          f"call {level.call_s} s, work dir {work}", flush=True)
    if not args.skip_voiceload:
        run_voiceload(level, track, work / "voiceload", args, rng)
    if not args.skip_sipp:
        run_sipp(level, work / "sipp", args, rng)
    print_details(level)
    return level


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--levels", default="100,300,1000", help="concurrency levels, comma-separated")
    ap.add_argument("--rate", type=float, default=None, help="calls/s (default 25; 50 above 500 calls)")
    ap.add_argument("--window", type=float, default=10.0, help="measurement window, s")
    ap.add_argument("--greeting-s", type=float, default=25.0,
                    help="greeting length, s (raised to fit N/rate + window)")
    ap.add_argument("--calls-per-uas", type=int, default=CALLS_PER_UAS, help="one SIPp UAS per this many calls")
    ap.add_argument("--tapes", type=int, default=200, help="tapes analysed per level at most")
    ap.add_argument("--json", type=Path, help="write the results here")
    ap.add_argument("--keep", type=Path, help="work dir to keep (run dirs, tapes, logs); default: temp, removed")
    ap.add_argument("--skip-sipp", action="store_true", help="voiceload only")
    ap.add_argument("--skip-voiceload", action="store_true", help="SIPp only")
    ap.add_argument("--seed", type=int, default=None, help="port choice")
    args = ap.parse_args()
    levels = [int(x) for x in args.levels.split(",") if x.strip()]
    if not levels or min(levels) < 1:
        ap.error("--levels: positive integers, e.g. 100,300")
    if not Path(SIPP).exists():
        ap.error(f"SIPp not found ({SIPP})")
    root = args.keep or Path(tempfile.mkdtemp(prefix="vl-density-"))
    root.mkdir(parents=True, exist_ok=True)
    rng = random.Random(args.seed)
    done: list[Level] = []
    try:
        for n in levels:
            done.append(run_level(n, args, root, rng))
    finally:
        rows = [row(lv) for lv in done]
        if rows:
            print_table(rows)
            print("\ncommands:")
            for lv in done:
                for c in lv.commands:
                    print(f"  [{lv.n}] {c}")
        if args.json and done:
            args.json.write_text(json.dumps({"levels": [asdict(lv) for lv in done], "rows": rows}, indent=2))
            print(f"results written to {args.json}")
        if args.keep is None:
            shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
