"""Test helpers for real runs: the reference bot as a process, and `voiceload run` as a process."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from voiceload.sut.bot import spawn

REPO = Path(__file__).resolve().parent.parent
DEMO = REPO / "scenarios" / "demo.yaml"


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


def voiceload(*args: str, timeout: float = 300, out: Path | None = None) -> RunResult:
    """Run the CLI as a user would, bounded in time."""
    proc = subprocess.run([sys.executable, "-m", "voiceload", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=REPO)
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
