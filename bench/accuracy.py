#!/usr/bin/env python3
"""Latency truth benchmark: voiceload vs the reference bot's own truth vs a packet capture.

Starts `voiceload bot` (given think time), captures loopback UDP with tcpdump (when available,
as root), runs `voiceload run` against the bot, then compares per turn, matched by Call-ID:
voiceload - bot truth, voiceload - wire, bot truth - wire. Not a test: it prints numbers for
docs/accuracy.md.

    .venv/bin/python bench/accuracy.py --think-ms 400 -c 8 -n 40
    .venv/bin/python bench/accuracy.py --think-ms 900:300 -c 8 -n 40
    .venv/bin/python bench/accuracy.py -c 100 -n 200 --max-rate 10 --no-capture   # truth at scale
    .venv/bin/python bench/accuracy.py -c 8 -n 40 --codecs opus --srtp required   # one codec, SRTP

It also prints the CPU the generator (run, broker, agents) and the bot (front, workers) used,
averaged over the run, start-up included (their rusage once they exited), as % of one core.
"""

from __future__ import annotations

import argparse
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench._harness.runs import read_jsonl, read_summary, voiceload_cmd  # noqa: E402
from tests.refbot import latency_errors, start_bot  # noqa: E402
from voiceload.tools import referee  # noqa: E402


def stats(errors: list[float]) -> str:
    s = referee.summary(errors)
    if not s["count"]:
        return "n=0"
    return (f"n={s['count']:3d} mean {s['mean_ms']:+6.1f}  p50|e| {s['p50_abs_ms']:5.1f}"
            f"  p95|e| {s['p95_abs_ms']:5.1f}  max|e| {s['max_abs_ms']:5.1f}"
            f"  <=20ms {100 * float(s['within_20ms'] or 0):5.1f}%  <=40ms {100 * float(s['within_40ms'] or 0):5.1f}%")


def histogram(errors: list[float], width: float = 5.0) -> str:
    bins: dict[float, int] = {}
    for e in errors:
        b = width * round(e / width)
        bins[b] = bins.get(b, 0) + 1
    return "  ".join(f"{b:+.0f}:{n}" for b, n in sorted(bins.items()))


def children_cpu_s() -> float:
    """CPU seconds of every child process this script has waited for (and their waited-for children)."""
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--think-ms", default="400")
    ap.add_argument("-c", "--concurrency", type=int, default=8)
    ap.add_argument("-n", "--calls", type=int, default=40)
    ap.add_argument("--scenario", type=Path, default=REPO / "scenarios" / "demo.yaml")
    ap.add_argument("--keep", type=Path, help="keep the run dir, truth and capture here")
    ap.add_argument("--max-rate", type=float, help="new calls per second at most (voiceload run --max-rate)")
    ap.add_argument("--no-capture", action="store_true", help="no tcpdump (it costs CPU at high concurrency)")
    ap.add_argument("--codecs", help="the run's and the bot's codec list (voiceload run --codecs), e.g. opus")
    ap.add_argument("--srtp", choices=("off", "optional", "required"),
                    help="the run's --srtp (the bot takes SRTP whenever offered: bot --srtp optional)")
    args = ap.parse_args()
    codecs = ["--codecs", args.codecs] if args.codecs else []
    srtp = ["--srtp", args.srtp] if args.srtp else []

    work = args.keep or Path(tempfile.mkdtemp(prefix="vl-accuracy-"))
    work.mkdir(parents=True, exist_ok=True)
    bot = start_bot(work, scenario=args.scenario, think_ms=args.think_ms, max_calls=args.concurrency,
                    extra=[*codecs, "--srtp", "optional"] if codecs or srtp else [])
    pcap = work / "capture.pcap"
    dump = None
    if shutil.which("tcpdump") and not args.no_capture:
        port = bot.target.rsplit(":", 1)[1]
        dump = subprocess.Popen(["tcpdump", "-i", "lo", "-s", "0", "-U", "-w", str(pcap), "udp"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(1.0)
        print(f"capturing loopback UDP (bot front on port {port}) to {pcap}")
    out = work / "run"
    started = time.time()
    cpu0 = children_cpu_s()
    rate = ["--max-rate", str(args.max_rate)] if args.max_rate else []
    try:
        cmd = voiceload_cmd("run", str(args.scenario), "--target", bot.target, "-c", str(args.concurrency),
                            "-n", str(args.calls), "--out", str(out), *rate, *codecs, *srtp)
        rc = subprocess.call(cmd, cwd=REPO, stdout=subprocess.DEVNULL)
    finally:
        wall = time.time() - started
        cpu1 = children_cpu_s()
        bot.stop()
        cpu2 = children_cpu_s()
        if dump is not None:
            time.sleep(0.5)
            dump.terminate()
            dump.wait(10)
    print(f"run exit code {rc} after {time.time() - started:.0f} s; think {args.think_ms} ms, "
          f"concurrency {args.concurrency}, {args.calls} calls, codecs {args.codecs or 'default'}, "
          f"srtp {args.srtp or 'default'}")
    print(f"CPU averaged over the run (% of one core): generator {100 * (cpu1 - cpu0) / wall:.0f}, "
          f"bot {100 * (cpu2 - cpu1) / wall:.0f}")
    calls = list(read_jsonl(out / "calls.jsonl"))
    truth = bot.truth_lines()
    summary = read_summary(out)
    print(f"completed {summary['calls']['completed']}/{summary['calls']['placed']}, valid {summary['valid']}, "
          f"turn latency p50 {summary['turn_latency_ms']['p50']} p95 {summary['turn_latency_ms']['p95']} ms")
    for reason in summary["invalid_reasons"]:
        print(f"  invalid: {reason}")
    gen = summary["generator"]
    print(f"generator health: max CPU {gen['max_cpu_percent']} %, pump lag {gen['max_pump_lag_ms']} ms, "
          f"media clock lag {gen.get('max_media_lag_ms')} ms")
    vs_truth = latency_errors(calls, truth)
    print(f"voiceload - bot truth : {stats(vs_truth)}")
    print(f"    histogram (5 ms bins): {histogram(vs_truth)}")
    if dump is not None and pcap.exists():
        wire = {cid: referee.wire_turns(cw) for cid, cw in referee.analyse_pcap(pcap.read_bytes()).items()}
        measured = {(c["call_id"], t["index"]): t["latency_ms"] for c in calls for t in c["turns"]
                    if t["latency_ms"] is not None}
        truth_m = {(t["call_id"], t["turn"]): t["latency_ms"] for t in truth}
        vl_wire, bot_wire = referee.compare(wire, measured), referee.compare(wire, truth_m)
        print(f"voiceload - wire      : {stats(vl_wire)}")
        print(f"    histogram (5 ms bins): {histogram(vl_wire)}")
        print(f"bot truth - wire      : {stats(bot_wire)}")
        print(f"    histogram (5 ms bins): {histogram(bot_wire)}")
    if args.keep is None:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
