"""`voiceload` as a child process, as a user runs it: the command, stopping a run, reading its run dir."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any


def voiceload_cmd(*args: str) -> list[str]:
    """`python -m voiceload ARGS` with this interpreter (the checkout's venv), run with cwd=REPO."""
    return [sys.executable, "-m", "voiceload", *args]


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


def read_jsonl(path: Path) -> Iterator[dict[str, Any]]:
    """The records of a JSON-lines file (calls.jsonl, the reference bot's truth), blank lines skipped."""
    with path.open(encoding="utf-8") as f:
        for line in f:
            if line.strip():
                yield json.loads(line)


def read_calls(out: Path) -> list[dict[str, Any]]:
    """RUN_DIR/calls.jsonl; empty when the run wrote none."""
    path = out / "calls.jsonl"
    return list(read_jsonl(path)) if path.exists() else []


def read_summary(out: Path, *, missing_ok: bool = False) -> dict[str, Any]:
    """RUN_DIR/summary.json; {} when missing_ok and the run wrote none."""
    path = out / "summary.json"
    if missing_ok and not path.exists():
        return {}
    summary: dict[str, Any] = json.loads(path.read_text())
    return summary
