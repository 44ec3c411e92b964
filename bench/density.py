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
    .venv/bin/python bench/density.py --levels 200 --codecs PCMU,PCMA,G722,opus,PCMU+srtp   # codec cost

With --codecs, each level runs one voiceload phase per codec row instead of (1): the agents offer
only that codec (and SRTP for `+srtp`), the UAS answers it, and a voiceload engine streams the bot
track back in it (bench/_harness/codecrows.py, streamer.py); (2) runs once, PCMU, for all rows.
"""

from __future__ import annotations

import argparse
import ast
import json
import math
import os
import random
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, ExitStack, contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench._harness import sipp, streamer  # noqa: E402
from bench._harness.bottrack import build_track, write_workdir  # noqa: E402
from bench._harness.codecrows import CodecRow, decoded, new_srtp_key, parse_rows, uas_xml  # noqa: E402
from bench._harness.procmeter import POLL_S, SETTLE_S, cmdline, measure, rss_kb, voiceload_roles  # noqa: E402
from bench._harness.runs import read_calls, read_summary, stop_run, voiceload_cmd  # noqa: E402
from bench._harness.table import Column, fmt, pair, print_table  # noqa: E402
from bench._harness.tapes import START_FRAMES, analyse_tapes  # noqa: E402
from tests.refbot import stop_process  # noqa: E402
from voiceload.audio.wav import write_wav  # noqa: E402

Samples = npt.NDArray[np.int16]

CALLS_PER_UAS = 400  # one SIPp UAS saturates near 450 calls
START_BUDGET_S = 90.0  # voiceload: target probe, broker, agents up
DRAIN_BUDGET_S = 120.0  # after the last call: hang-ups, tape measurement, run dir written
IDLE_WAIT_S = 30.0  # an idle agent's RSS settles within this
BOT_WAV = "bot.wav"  # the bot track the codec rows' streamers send (bot.ulaw's samples)
STREAMER_SPARE = 50  # channels beyond a UAS's share of calls: OPTIONS probes take a line of the injection file too


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
    codec_rows: dict[str, dict[str, Any]] = field(default_factory=dict)  # --codecs: row name -> as `voiceload`


def uas_count(n: int, per_uas: int) -> int:
    return max(1, math.ceil(n / per_uas))


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
        cmd = voiceload_cmd("agent", "--run-id", f"density-idle-{os.getpid()}", "--agent-id", "a0",
                            "--scenario", str(scenario), "--broker", broker.address.url, "--target", target,
                            "--max-calls", str(max_calls), "--tape-dir", str(work / "idle-tapes"))
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


@dataclass
class FarEnd:
    """The UASes the agents call, and the processes streaming their audio when SIPp does not (codec rows)."""

    uases: list[sipp.Sipp]
    streamers: list[int] = field(default_factory=list)
    streamer_logs: list[Path] = field(default_factory=list)  # each ends with the streamer's own summary


def streamer_summaries(logs: list[Path]) -> list[dict[str, Any]]:
    """The last `streamer: {...}` line of each log: channels started, how late its clock ran."""
    out = []
    for log in logs:
        lines = [ln for ln in log.read_text(errors="replace").splitlines() if ln.startswith("streamer: {")] \
            if log.exists() else []
        out.append(ast.literal_eval(lines[-1].removeprefix("streamer: ")) if lines else {})
    return out


FarEndStarter = Callable[[Level, Path, float, random.Random], AbstractContextManager[FarEnd]]


@contextmanager
def sipp_far_end(level: Level, work: Path, lifetime_s: float, rng: random.Random) -> Iterator[FarEnd]:
    """SIPp UASes that stream bot.ulaw themselves (the PCMU density of docs/density.md)."""
    with sipp.running(sipp.start_uases(level.uas, work.parent, work, lifetime_s, rng)) as uases:
        level.commands += [u.command for u in uases]
        yield FarEnd(uases)


def codec_far_end(row: CodecRow) -> FarEndStarter:
    """UASes answering `row`'s codec (and SRTP), one engine streamer per UAS sending the bot track in it."""

    @contextmanager
    def start(level: Level, work: Path, lifetime_s: float, rng: random.Random) -> Iterator[FarEnd]:
        key = new_srtp_key()
        work.mkdir(parents=True, exist_ok=True)
        with ExitStack() as stack:
            streamers = [stack.enter_context(streamer.running(
                row.streamed(key), work.parent / BOT_WAV, share + STREAMER_SPARE, work, lifetime_s, f"streamer{i}"))
                for i, share in enumerate(sipp.split(level.n, level.uas))]
            level.commands += [s.command for s in streamers]
            xmls = []
            for i, s in enumerate(streamers):
                xmls.append(work / f"uas{i}-{row.name}.xml")
                xmls[-1].write_text(uas_xml(row, key, s.events))
            uases = stack.enter_context(sipp.running(sipp.start_uases(
                level.uas, work.parent, work, lifetime_s, rng, scenarios=xmls,
                extra=[["-inf", str(s.ports)] for s in streamers])))
            level.commands += [u.command for u in uases]
            logs = [work / f"streamer{i}.log" for i in range(len(streamers))]  # streamer.running's log names
            yield FarEnd(uases, [s.proc.pid for s in streamers], logs)

    return start


def media_of(calls: list[dict[str, Any]]) -> dict[str, Any]:
    """What the calls' media was (the records' rtp): negotiated codecs, SRTP, packets, SRTP drops."""
    codecs: dict[str, int] = {}
    for c in calls:
        name = (c.get("rtp") or {}).get("codec") or "-"
        codecs[name] = codecs.get(name, 0) + 1
    rtp = [c.get("rtp") or {} for c in calls]
    return {"codecs": codecs, "srtp_calls": sum(1 for r in rtp if r.get("srtp")),
            "rx_packets": sum(r.get("rx_packets") or 0 for r in rtp),
            "rx_auth_failed": sum(r.get("rx_auth_failed") or 0 for r in rtp),
            "rx_foreign": sum(r.get("rx_foreign") or 0 for r in rtp)}


def run_voiceload(level: Level, reference: Samples, work: Path, args: argparse.Namespace, rng: random.Random,
                  far_end: FarEndStarter = sipp_far_end, extra_args: Sequence[str] = (),
                  measure_idle: bool = True) -> dict[str, Any]:
    """voiceload's agents against a fresh far end: window measurement, then run dir and tapes (against
    `reference`, the greeting as the agents hear it), and with `measure_idle` an idle agent's RSS."""
    n, rate = level.n, level.rate
    budget = START_BUDGET_S + n / rate + level.call_s + DRAIN_BUDGET_S
    scenario = work.parent / "scenario.yaml"
    out = work / "run"
    agent_max_calls: set[int] = set()
    with far_end(level, work, budget + 60, rng) as far:
        uases = far.uases
        targets = ",".join(f"sip:bot@127.0.0.1:{u.port}" for u in uases)
        cmd = voiceload_cmd("run", str(scenario), "--target", targets, "-c", str(n), "-n", str(n),
                            "--max-rate", f"{rate:g}", "--out", str(out), "--keep-tapes", *extra_args)
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
                return {**found, "uas": [u.pid for u in uases], "streamer": far.streamers}

            window = measure(roles, lambda: sipp.calls_up(uases), lambda: proc.poll() is not None, n, rate,
                             args.window, began + budget, on_poll=roles)
            try:
                rc: int | None = proc.wait(max(1.0, began + budget - time.monotonic()))
            except subprocess.TimeoutExpired:
                rc = None
        finally:
            stop_run(proc)
        seconds = round(time.monotonic() - began, 1)
        idle = idle_agent_rss(scenario, targets, max(agent_max_calls), work, level.commands) \
            if agent_max_calls and measure_idle else None
    summary = read_summary(out, missing_ok=True)
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
        "media": media_of(calls),
        "streamers": streamer_summaries(far.streamer_logs),
        "tapes": analyse_tapes(out / "tapes", reference, args.tapes),
    }
    if rc is None:
        result["note"] = f"run did not end within {budget:.0f} s and was stopped"
    return result


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


def run_sipp(level: Level, work: Path, args: argparse.Namespace, rng: random.Random) -> None:
    """SIPp UACs (one per UAS, sharing N and the rate) against fresh UASes, measured the same way."""
    n, rate = level.n, level.rate
    budget = n / rate + level.call_s + 60
    with sipp.running(sipp.start_uases(level.uas, work.parent, work, budget + 60, rng)) as uases:
        level.commands += [u.command for u in uases]
        began = time.monotonic()
        with sipp.running(sipp.start_uacs(uases, n, rate, level.call_s, budget, work.parent, work, rng)) as uacs:
            level.commands += [p.command for p in uacs]

            def roles() -> dict[str, list[int]]:
                return {"uac": [p.pid for p in uacs], "uas": [u.pid for u in uases]}

            window = measure(roles, lambda: sipp.calls_up(uases), lambda: not sipp.any_alive(uacs), n, rate,
                             args.window, began + budget)
            for _ in range(int(budget / POLL_S) + 1):  # bounded: -timeout ends them anyway
                if not sipp.any_alive(uacs) or time.monotonic() > began + budget + 10:
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


COLUMNS: list[Column] = [
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


LEGEND = ("CPU/100: % of one core over the window per 100 concurrent calls (vl total: agents + run process + "
          "broker); host CPU: % of the whole box; UAS CPU: % of one core, all UASes together; silent %: 20 ms "
          "frames below -50 dBFS in the greeting span of the tapes vs the source; dropouts: speech frames lost; "
          "RTP unread/s: datagrams from the UASes the kernel dropped because the caller never read them")


def codec_rows(level: Level) -> list[dict[str, Any]]:
    """The codec table's numbers: one row per codec row of a level, each against the same SIPp UAC."""
    n = level.n
    uac = per100(level.sipp.get("window"), ("uac",), n)
    pcmu = (level.codec_rows.get("PCMU") or level.codec_rows.get("PCMU@sipp") or {}).get("window")
    base = per100(pcmu, ("agents",), n)
    out = []
    for name, vl in level.codec_rows.items():
        vw = vl.get("window")
        agents = per100(vw, ("agents",), n)
        media = vl.get("media") or {}
        tapes = vl.get("tapes") or {}
        out.append({
            "n": n, "row": name, "agents": vw["procs"].get("agents") if vw else None,
            "vl_agents_cpu_per100": agents, "sipp_cpu_per100": uac,
            "ratio_agents": agents / uac if agents is not None and uac else None,
            "over_pcmu_per100": agents - base if agents is not None and base is not None else None,
            "ratio_pcmu": agents / base if agents is not None and base else None,
            "vl_rss_mb_per_call": vw["rss_mb"]["agents"] / n if vw else None,
            "vl_completed": vl.get("completed"), "vl_placed": vl.get("placed"),
            "sipp_completed": level.sipp.get("completed"), "sipp_placed": level.sipp.get("placed"),
            "codecs": ",".join(f"{k}x{v}" for k, v in (media.get("codecs") or {}).items()) or "-",
            "srtp_calls": media.get("srtp_calls"), "rx_auth_failed": media.get("rx_auth_failed"),
            "p50_ms": vl.get("turn_p50_ms"), "p95_ms": vl.get("turn_p95_ms"),
            "dropout_pct": tapes.get("dropout_pct_mean"),
            "streamer_cpu": vw["cpu_pct"].get("streamer") if vw else None,
            "streamer_late_ms": max((s.get("late_max_ms", 0) for s in vl.get("streamers") or []), default=None),
            "host_cpu": vw["host_cpu_pct"] if vw else None,
            "valid": vl.get("valid"),
        })
    return out


CODEC_COLUMNS: list[Column] = [
    ("N", lambda r: str(r["n"])),
    ("row", lambda r: r["row"]),
    ("agents", lambda r: fmt(r["agents"], "d")),
    ("CPU/100 agents", lambda r: fmt(r["vl_agents_cpu_per100"], ".2f")),
    ("SIPp UAC (PCMU)", lambda r: fmt(r["sipp_cpu_per100"], ".2f")),
    ("ratio to SIPp", lambda r: fmt(r["ratio_agents"], ".2f")),
    ("over PCMU /100", lambda r: fmt(r["over_pcmu_per100"], "+.2f")),
    ("x PCMU", lambda r: fmt(r["ratio_pcmu"], ".2f")),
    ("RSS MB/call", lambda r: fmt(r["vl_rss_mb_per_call"], ".3f")),
    ("completed vl|SIPp", lambda r: f"{r['vl_completed']}/{r['vl_placed']} | {r['sipp_completed']}/{r['sipp_placed']}"),
    ("negotiated", lambda r: r["codecs"] + (f" srtp x{r['srtp_calls']}" if r["srtp_calls"] else "")),
    ("SRTP auth fail", lambda r: fmt(r["rx_auth_failed"], "d")),
    ("turn p50/p95 ms", lambda r: pair(r["p50_ms"], r["p95_ms"], ".0f", "/")),
    ("dropouts %", lambda r: fmt(r["dropout_pct"], ".3f")),
    ("streamer CPU %|late ms", lambda r: pair(r["streamer_cpu"], r["streamer_late_ms"], ".1f", "|")),
    ("host CPU %", lambda r: fmt(r["host_cpu"], ".0f")),
    ("valid", lambda r: str(r["valid"])),
]

CODEC_LEGEND = ("codec rows: the agents offer only the row's codec (--codecs X; +srtp: --srtp required); the SIPp "
                "UAS answers it and a voiceload engine streamer (bench/_harness/streamer.py) sends the bot track in "
                "it, SRTP included, so the agents' send, receive, decode and SRTP are all measured. The SIPp UAC "
                "reference is PCMU against SIPp's own UAS in every row (one measurement per level). CPU/100: % of "
                "one core over the window per 100 concurrent calls, agents only; over PCMU: the same minus the "
                "PCMU row's")


def print_window(w: dict[str, Any]) -> None:
    print("    window {:.1f} s, calls up {}: CPU % of a core {}; RSS MB {}; processes {}; host {:.0f} %".format(
        w["seconds"], "->".join(map(str, w["calls_up"])), {k: round(v, 1) for k, v in w["cpu_pct"].items()},
        {k: round(v, 1) for k, v in w["rss_mb"].items()}, w["procs"], w["host_cpu_pct"]))
    if w.get("udp_sockets"):
        print("    UDP sockets {}; datagrams dropped unread per s {}".format(
            w["udp_sockets"], {k: round(v) for k, v in w["udp_drops_per_s"].items()}))


def print_details(level: Level) -> None:
    if level.voiceload:
        print_run(level.voiceload, "voiceload")
    sp = level.sipp
    print(f"  sipp: {sp.get('completed')}/{sp.get('placed')} completed ({sp.get('failed')} failed), "
          f"calls of {round(level.call_s * 1000)} ms after the answer (-d), {sp.get('seconds')} s")
    w = sp.get("window")
    if w:
        print_window(w)


def print_run(vl: dict[str, Any], label: str) -> None:
    """One voiceload run of a level: outcome, generator health, window, tapes, media."""
    print(f"  {label}: exit {vl.get('exit_code')}, valid {vl.get('valid')}, {vl.get('completed')}/{vl.get('placed')} "
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
    if vl.get("media"):
        print(f"    media: {vl['media']}")


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
    if args.codecs:
        write_wav(work / BOT_WAV, track.samples())
        for crow in args.codecs:
            print(f"  codec row {crow.name}", flush=True)
            level.codec_rows[crow.name] = run_voiceload(
                level, decoded(crow, track.greeting), work / f"voiceload-{crow.name}", args, rng,
                sipp_far_end if crow.sipp_media else codec_far_end(crow), crow.agent_args(), measure_idle=False)
            print_run(level.codec_rows[crow.name], f"voiceload {crow.name}")
    elif not args.skip_voiceload:
        level.voiceload = run_voiceload(level, track.greeting, work / "voiceload", args, rng)
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
    ap.add_argument("--codecs", default=None,
                    help="codec rows instead of the PCMU density run, e.g. PCMU,PCMA,G722,opus,PCMU+srtp")
    args = ap.parse_args()
    try:
        args.codecs = parse_rows(args.codecs) if args.codecs else None
    except ValueError as e:
        ap.error(f"--codecs: {e}")
    levels = [int(x) for x in args.levels.split(",") if x.strip()]
    if not levels or min(levels) < 1:
        ap.error("--levels: positive integers, e.g. 100,300")
    if not Path(sipp.SIPP).exists():
        ap.error(f"SIPp not found ({sipp.SIPP})")
    root = args.keep or Path(tempfile.mkdtemp(prefix="vl-density-"))
    root.mkdir(parents=True, exist_ok=True)
    rng = random.Random(args.seed)
    done: list[Level] = []
    try:
        for n in levels:
            done.append(run_level(n, args, root, rng))
    finally:
        rows = [row(lv) for lv in done if lv.voiceload or not lv.codec_rows]
        if rows:
            print(f"\n{LEGEND}")
            print_table(COLUMNS, rows)
        crows = [r for lv in done for r in codec_rows(lv)]
        if crows:
            print(f"\n{CODEC_LEGEND}")
            print_table(CODEC_COLUMNS, crows)
            print("\ncommands:")
            for lv in done:
                for c in lv.commands:
                    print(f"  [{lv.n}] {c}")
        if args.json and done:
            args.json.write_text(json.dumps({"levels": [asdict(lv) for lv in done], "rows": rows,
                                             "codec_rows": crows}, indent=2))
            print(f"results written to {args.json}")
        if args.keep is None:
            shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
