#!/usr/bin/env python3
"""Overload the generator on purpose and check that the run says so (exit 3, invalid, reasons).

Pins every agent of a `voiceload run` to one CPU core with far more calls than that core can
serve well (default: 160 calls = 40 agent processes of the 4-call pjsua2 wheel), against the
reference bot. Not a test: it takes a minute or two and saturates the box.

    .venv/bin/python bench/overload.py            # expect: exit 3, reasons per agent
    .venv/bin/python bench/overload.py -c 8       # control: a load the core carries, exit 0
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench._harness.runs import read_summary, voiceload_cmd  # noqa: E402
from tests.refbot import DEMO, start_bot  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-c", "--concurrency", type=int, default=160)
    ap.add_argument("--core", type=int, default=0, help="the one core the run and its agents are pinned to")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="vl-overload-"))
    bot = start_bot(work, max_calls=args.concurrency)
    try:
        out = work / "run"
        run = voiceload_cmd("run", str(DEMO), "--target", bot.target, "-c", str(args.concurrency),
                            "-n", str(args.concurrency), "--out", str(out))
        cmd = ["taskset", "-c", str(args.core), *run]
        code = subprocess.call(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    finally:
        bot.stop()
    summary = read_summary(out)
    gen = summary["generator"]
    print(f"exit code {code}; valid {summary['valid']}; completed {summary['calls']['completed']}/"
          f"{summary['calls']['placed']}; agents {gen['agents']}, max CPU {gen['max_cpu_percent']} %, "
          f"max pump lag {gen['max_pump_lag_ms']} ms, clock slip max {gen['clock_slip_ms']['max']} ms")
    reasons = summary["invalid_reasons"]
    for reason in reasons[:5]:
        print(f"  - {reason}")
    if len(reasons) > 5:
        print(f"  ... and {len(reasons) - 5} more")
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
