"""Test helpers for real runs: the reference bot as a process, and `voiceload run` as a process."""

from __future__ import annotations

import contextlib
import json
import os
import re
import select
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from voiceload.errors import EXIT_INVALID_RUN
from voiceload.sut.bot import spawn
from voiceload.tools import referee

REPO = Path(__file__).resolve().parent.parent
DEMO = REPO / "scenarios" / "demo.yaml"
TCPDUMP = shutil.which("tcpdump")
# The generator-health reasons (voiceload/core/summary.py): what another process holding the cores
# decides (measured at 2-4 % of a core: the event pump 110-208 ms late, the media clock 42-86 ms late)
LOAD_REASONS = ("% of a core", "event pump", "media clock", "audio clock fell behind")


def stop_process(proc: subprocess.Popen[Any], *, timeout_s: float = 5.0) -> None:
    """SIGTERM, wait, then SIGKILL: every process a test starts ends, bounded in time."""
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


@dataclass
class RefBot:
    proc: subprocess.Popen[str]
    target: str
    truth: Path

    def stop(self) -> None:
        stop_process(self.proc, timeout_s=20)  # the bot drains its last tapes into the truth file

    def truth_lines(self) -> list[dict[str, Any]]:
        if not self.truth.exists():
            return []
        return [json.loads(line) for line in self.truth.read_text().splitlines() if line.strip()]


def start_bot(tmp: Path, *, scenario: Path = DEMO, think_ms: str = "400", max_calls: int = 8,
              seed: int = 7, extra: Sequence[str] = ()) -> RefBot:
    """`voiceload bot` on a free port; returns once it printed READY (bounded)."""
    truth = tmp / "bot-truth.jsonl"
    proc, target = spawn(["--listen", "127.0.0.1:0", "--scenario", str(scenario), "--think-ms", think_ms,
                          "--truth", str(truth), "--max-calls", str(max_calls), "--seed", str(seed), *extra], cwd=REPO)
    return RefBot(proc, target, truth)


@dataclass
class RunResult:
    code: int
    stdout: str
    stderr: str
    out: Path

    def calls(self) -> list[dict[str, Any]]:
        path = self.out / "calls.jsonl"
        return [json.loads(x) for x in path.read_text().splitlines() if x.strip()] if path.exists() else []

    def summary(self) -> dict[str, Any]:
        result: dict[str, Any] = json.loads((self.out / "summary.json").read_text())
        return result


def checked_summary(res: RunResult, *, ok: int = 0) -> dict[str, Any]:
    """The run's summary, its exit code checked against its own verdict on validity.

    Validity is the box's verdict, not the test's: on a busy box a run can be invalid whatever its
    size. A test not about validity accepts `ok` when the run is valid, 3 when it is not, and then
    only for the generator's health: a lost record or a missing heartbeat is still a failure.
    """
    assert (res.out / "summary.json").exists(), res.stderr[-2000:]
    summary = res.summary()
    if summary["valid"]:
        assert res.code == ok, res.stderr[-2000:]
    else:
        assert res.code == EXIT_INVALID_RUN, res.stderr[-2000:]
        reasons = summary["invalid_reasons"]
        assert all(any(k in r for k in LOAD_REASONS) for r in reasons), reasons
    return summary


# A tick of the RTP engine's clock this late has skipped frames (it sends at most 5 late frames at once,
# voiceload/media/_rtpengine.c MAX_CATCH_UP): the caller's audio itself was cut
ENGINE_CATCH_UP_MS = 100.0


def assert_completed(summary: dict[str, Any], calls: list[dict[str, Any]]) -> None:
    """Every call completed, unless the run's own media clock stalled past the engine's catch-up (seen
    at 153 ms on a busy box, when 5 of 16 calls lost their last reply): the run is invalid for it, and
    a call may then fail, with a reason, but every call still has its one record."""
    if (summary["generator"]["max_media_lag_ms"] or 0.0) < ENGINE_CATCH_UP_MS:
        assert all(c["outcome"] == "completed" for c in calls), [c["reason"] for c in calls]
        return
    assert not summary["valid"]
    assert all(c["outcome"] == "completed" or c["reason"] for c in calls)
    assert summary["calls"]["placed"] == len(calls) == len({c["call_id"] for c in calls})


def voiceload(*args: str, timeout: float = 300, out: Path | None = None,
              env: dict[str, str] | None = None) -> RunResult:
    """Run the CLI as a user would, bounded in time (`env`: variables added to this process's)."""
    proc = subprocess.run([sys.executable, "-m", "voiceload", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=REPO, env={**os.environ, **env} if env else None)
    return RunResult(proc.returncode, proc.stdout, proc.stderr, out or Path())


def latency_errors(calls: list[dict[str, Any]], truth: list[dict[str, Any]]) -> list[float]:
    """voiceload's latency minus the bot's own truth, matched by SIP Call-ID and turn."""
    by_key = {(t["call_id"], t["turn"]): t["latency_ms"] for t in truth}
    errors = []
    for call in calls:
        for turn in call["turns"]:
            key = (call["call_id"], turn["index"])
            if turn["latency_ms"] is not None and key in by_key:
                errors.append(turn["latency_ms"] - by_key[key])
    return errors


@dataclass
class Capture:
    """A loopback capture's verdict on itself: usable only if tcpdump ran and the kernel dropped nothing."""

    pcap: Path
    listening: bool = False
    dropped: int | None = None

    @property
    def why_not(self) -> str | None:
        if not self.listening:
            return "no loopback capture (tcpdump needs root or CAP_NET_RAW)"
        if self.dropped is None:
            return "the loopback capture did not report its dropped packets"
        if self.dropped:
            return f"the loopback capture lost {self.dropped} packets"
        return None


@contextlib.contextmanager
def loopback_capture(pcap: Path, *, bpf: str = "udp") -> Iterator[Capture]:
    """tcpdump of loopback UDP into `pcap` while the block runs (bounded start and stop).

    `bpf`: tcpdump's filter; a narrower one (the far end's ports) keeps the capture whole while
    other processes load loopback (seen: 51561 packets dropped among a 1000-call benchmark's)."""
    cap = Capture(pcap)
    if TCPDUMP is None:
        yield cap
        return
    proc = subprocess.Popen([TCPDUMP, "-i", "lo", "-s", "0", "-B", "16384", "-U", "-w", str(pcap), bpf],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    assert proc.stderr is not None
    deadline = time.monotonic() + 10
    while not cap.listening and proc.poll() is None and time.monotonic() < deadline:
        if select.select([proc.stderr], [], [], 0.2)[0]:
            cap.listening = "listening on" in proc.stderr.readline()
    try:
        yield cap
    finally:
        time.sleep(0.3)  # the run's last packets
        stop_process(proc)
        tail = proc.stderr.read() if cap.listening else ""  # "N packets dropped by kernel" once it stopped
        proc.stderr.close()
        found = re.search(r"(\d+) packets? dropped by kernel", tail)
        cap.dropped = int(found.group(1)) if found else None


WIRE_SLACK_MS = 3.0  # the VAD's edges on the tape vs on the decoded capture, sample rounding
# What a codec adds to that: Opus smears a speech end a few ms past the sent one (the wire's decoded
# caller end is later than the recording's: voiceload − wire +3.3 ms at most over 16 turns, measured)
CODEC_SLACK_MS = {"opus": 5.0}
AGREEMENT_MS, AGREEMENT_SHARE = 20.0, 0.95  # the bound: within 20 ms of the capture, for 95 % of turns


def assert_latencies_match_the_wire(capture: Capture, summary: dict[str, Any], calls: list[dict[str, Any]],
                                    *, codec: str | None = None) -> None:
    """Each turn's latency against the wire (tools/referee.py on the capture), within what the run's
    own health allows: the caller's speech is taped at its frames' scheduled times, which the wire
    sees later by the media clock's lateness; the far end's is taped on the sender's timeline, earlier
    than it arrived by that packet's delay over the fastest of its window (`rx_delay_ms_max`; the
    smoothed RFC 3550 jitter understates one late packet). Load moves both bounds, never the verdict.

    With `codec`: every call spoke it on the wire (the referee read it from the SDP answer and
    decoded it), and the issue's bound holds too (95 % of turns within 20 ms of the wire)."""
    if capture.why_not:
        print(f"{capture.why_not}: latencies not checked against the wire")
        return
    wire_calls = referee.analyse_pcap(capture.pcap.read_bytes())
    wire = {(cid, t.index): t.latency_ms for cid, cw in wire_calls.items() for t in referee.wire_turns(cw)}
    late_ms = summary["generator"]["max_media_lag_ms"] or 0.0
    slack = WIRE_SLACK_MS + CODEC_SLACK_MS.get(codec or "PCMU", 0.0)
    off = []
    for call in calls:
        if codec is not None:
            seen = wire_calls.get(call["call_id"])
            assert seen is not None and seen.codec == codec == call["rtp"]["codec"], (call["call_id"], seen)
            assert seen.undecoded is None, (call["call_id"], seen.undecoded)
            assert seen.srtp == bool(call["rtp"].get("srtp")), (call["call_id"], seen.srtp)
        for turn in call["turns"]:
            key = (call["call_id"], turn["index"])
            assert key in wire, f"turn {key} not found in the capture"
            e = turn["latency_ms"] - wire[key]
            off.append(round(e, 1))
            low = -call["rtp"]["rx_delay_ms_max"] - slack
            assert low <= e <= late_ms + slack, (call["call_id"], turn["index"], e, low, late_ms)
    label = f" [{codec}]" if codec else ""
    print(f"voiceload - wire (ms){label}: {sorted(off)}; media clock at most {late_ms} ms late")
    if codec is not None:
        within = sum(abs(e) <= AGREEMENT_MS for e in off)
        assert off and within >= AGREEMENT_SHARE * len(off), sorted(off)
