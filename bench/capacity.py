#!/usr/bin/env python3
"""The capacity search against bots of known capacity: is the knee it finds the one the model predicts?

For each `--capacity C`, start `voiceload bot --capacity C --think-ms T` on a free port, ask the
bot model (`voiceload.sut.botmodel.predict_knee`) where the knee of `p95_turn_latency_ms<=L` lies,
run `voiceload capacity` with levels around it, and print the found knee next to the predicted
one. Not a test: each search takes ~10 minutes and loads the box.

    .venv/bin/python bench/capacity.py                       # capacities 30 and 15
    .venv/bin/python bench/capacity.py --capacity 1000 --start 20 --step 10 --max 200   # far above the box
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench._harness.runs import voiceload_cmd  # noqa: E402
from tests.refbot import DEMO, start_bot  # noqa: E402
from voiceload.core.callflow import ThinkTime  # noqa: E402
from voiceload.core.scenario import load_scenario  # noqa: E402
from voiceload.sut.botmodel import ScenarioTiming, predict_knee  # noqa: E402


def search(capacity: int, args: argparse.Namespace, work: Path) -> dict[str, object]:
    think = ThinkTime.parse(args.think_ms)
    timing = ScenarioTiming.from_scenario(load_scenario(args.scenario), think_jitter_ms=think.jitter_ms)
    # far above what one box generates, the model's answer is beside the point (and slow to simulate)
    far = args.start and args.step and args.max and capacity > 4 * args.max
    predicted = None if far else predict_knee(capacity, think.mean_ms, timing, args.p95_ms, n_max=4 * capacity + 20)
    start = args.start or max(1, round((predicted or 0) * 0.65))
    step = args.step or max(1, round((predicted or 0) * 0.09))
    top = args.max or round((predicted or 0) * 1.5)
    bot_calls = top + 8
    bot = start_bot(work, scenario=args.scenario, think_ms=args.think_ms, max_calls=bot_calls,
                    extra=["--capacity", str(capacity)])
    out = work / f"cap-{capacity}"
    cmd = voiceload_cmd("capacity", str(args.scenario), "--target", bot.target,
                        "--slo", f"p95_turn_latency_ms<={args.p95_ms:g}", "--start", str(start), "--step", str(step),
                        "--max", str(top), "--hold", args.hold, "--out", str(out))
    guess = "far above this box" if predicted is None else f"at {predicted} calls"
    print(f"capacity {capacity}: model predicts a knee {guess}; searching {start}+{step}..{top}", flush=True)
    began = time.monotonic()
    try:
        code = subprocess.call(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    finally:
        bot.stop()
    minutes = (time.monotonic() - began) / 60
    cap = json.loads((out / "capacity.json").read_text())
    for st in cap["steps"]:
        verdict = ("saturated: " + "; ".join(st["invalid_reasons"]) if not st["valid"]
                   else "met" if st["passed"] else "broke " + "; ".join(st["failed_slos"]))
        print(f"  level {st['concurrency']:>4} try {st['attempt']}: {st['completed']:>4}/{st['calls']:<4} calls, "
              f"{st['turns']:>4} turns, p50 {st['p50_ms']} ms, p95 {st['p95_ms']} ms, "
              f"host CPU {st['host_cpu_percent']} % -> {verdict}")
    knee = cap["knee"]
    error = f"{100 * (knee - predicted) / predicted:+.1f} %" if knee and predicted else "n/a"
    print(f"  => exit {code}; {cap['headline']}")
    print(f"  => found {knee}, predicted {predicted}, error {error}; {minutes:.1f} min; run dir {out}", flush=True)
    return {"capacity": capacity, "predicted": predicted, "found": knee, "exit": code, "minutes": minutes}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--capacity", type=int, action="append", help="bot workers (repeatable; default 30 and 15)")
    ap.add_argument("--think-ms", default="300")
    ap.add_argument("--p95-ms", type=float, default=900.0)
    ap.add_argument("--scenario", type=Path, default=DEMO)
    ap.add_argument("--hold", default="60s")
    ap.add_argument("--start", type=int, default=None, help="default: 65 %% of the predicted knee")
    ap.add_argument("--step", type=int, default=None, help="default: 9 %% of the predicted knee")
    ap.add_argument("--max", type=int, default=None, help="default: 150 %% of the predicted knee")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="vl-capacity-"))
    rows = [search(c, args, work) for c in (args.capacity or [30, 15])]
    print("\ncapacity  predicted  found  error     exit  minutes")
    for r in rows:
        p, f = r["predicted"], r["found"]
        err = f"{100 * (f - p) / p:+.1f} %" if isinstance(f, int) and isinstance(p, int) and p else "n/a"
        print(f"{r['capacity']:>8}  {p!s:>9}  {f!s:>5}  {err:>8}  {r['exit']!s:>4}  {float(str(r['minutes'])):7.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
