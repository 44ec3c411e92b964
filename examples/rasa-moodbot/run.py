#!/usr/bin/env python3
"""The Rasa example in one command: voice and text runs against a real Rasa, side by side.

    make rasa-example                       # or: .venv/bin/python examples/rasa-moodbot/run.py

1. Installs Rasa 3.6.21 into a cached Python 3.10 venv (scripts/rasa-env.sh; outside the repo).
2. Trains the mood bot offline (cached by a hash of the project files).
3. Starts `rasa run --enable-api` on a free port of 127.0.0.1.
4. Starts the reference voice gateway in front of it (`voiceload bot --brain rasa`): speech
   recognition → Rasa's REST channel → speech synthesis.
5. Runs the scenario over voice (SIP calls through the gateway, Rasa's tracker checked after
   every call) and over text (Rasa's REST channel directly), with the same load.
6. Prints both results side by side: is the bottleneck Rasa, or the voice stack in front of it?

Exit: 0 both runs valid and complete; 1 otherwise; 2 when no Python 3.10 is available for Rasa.
"""

from __future__ import annotations

import argparse
import json
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
sys.path.insert(0, str(REPO))

from voiceload.errors import EXIT_BAD_INPUT, UserError  # noqa: E402
from voiceload.rasa import RasaServer, ensure_model, find_rasa_python  # noqa: E402
from voiceload.sut.bot import spawn  # noqa: E402

SCENARIO = HERE / "scenario.yaml"


def voiceload(*args: str) -> int:
    """One voiceload command as a user would type it; its live view goes to this terminal."""
    cmd = [sys.executable, "-m", "voiceload", *args]
    print("$ voiceload " + " ".join(args), flush=True)
    return subprocess.call(cmd, cwd=REPO)


def start_gateway(rasa_url: str, out: Path, max_calls: int) -> tuple[subprocess.Popen[str], str]:
    return spawn(["--brain", "rasa", "--rasa-url", rasa_url, "--scenario", str(SCENARIO), "--listen", "127.0.0.1:0",
                  "--max-calls", str(max_calls), "--truth", str(out / "gateway-truth.jsonl")], cwd=REPO, timeout_s=120)


def stop(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()


def row(name: str, run_dir: Path) -> dict[str, Any]:
    s: dict[str, Any] = json.loads((run_dir / "summary.json").read_text())
    calls = s["calls"]
    lat = s["turn_latency_ms"]
    return {
        "channel": name, "valid": s["valid"], "completed": calls["completed"], "placed": calls["placed"],
        "completion": s["completion_rate"], "p50": lat["p50"], "p95": lat["p95"],
        "calls_per_s": calls["completed"] / max(float(s["duration_s"]), 1e-9),
        "turns_per_s": int(lat["count"] or 0) / max(float(s["duration_s"]), 1e-9),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-c", "--concurrency", type=int, default=4)
    ap.add_argument("-n", "--calls", type=int, default=20)
    ap.add_argument("--out", type=Path, default=REPO / "runs" / "rasa-moodbot")
    args = ap.parse_args()
    try:
        rasa_python = find_rasa_python()
    except UserError as exc:
        print(f"rasa-moodbot: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    model = ensure_model(HERE / "rasa", rasa_python=rasa_python)
    out = args.out / time.strftime("%Y%m%d-%H%M%S")
    out.mkdir(parents=True)
    with RasaServer(model, project_dir=HERE / "rasa", log_path=out / "rasa.log", rasa_python=rasa_python) as rasa:
        print(f"Rasa on {rasa.url} (ready in {rasa.startup_s:.0f} s)", flush=True)
        gateway, target = start_gateway(rasa.url, out, args.concurrency + 4)
        try:
            voice = voiceload("run", str(SCENARIO), "--target", target, "--rasa-url", rasa.url,
                              "-c", str(args.concurrency), "-n", str(args.calls), "--out", str(out / "voice"))
        finally:
            stop(gateway)
        text = voiceload("run", str(SCENARIO), "--channel", "rest", "--rasa-url", rasa.url,
                         "-c", str(args.concurrency), "-n", str(args.calls), "--out", str(out / "text"))
    rows = [row("voice (SIP → gateway → Rasa)", out / "voice"), row("text (Rasa REST)", out / "text")]
    print(f"\nconcurrency {args.concurrency}, {args.calls} calls each; run dirs under {out}\n")
    print(f"{'channel':<30} {'completed':>11} {'turn p50':>9} {'turn p95':>9} {'calls/s':>8} {'turns/s':>8}  valid")
    for r in rows:
        print(f"{r['channel']:<30} {r['completed']:>4}/{r['placed']:<4} {100 * r['completion']:5.1f}% "
              f"{r['p50'] or 0:>7.0f}ms {r['p95'] or 0:>7.0f}ms {r['calls_per_s']:>8.2f} {r['turns_per_s']:>8.2f}  "
              f"{r['valid']}")
    (out / "side-by-side.json").write_text(json.dumps(rows, indent=2) + "\n")
    return 0 if voice == 0 and text == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
