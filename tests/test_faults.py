"""No lost results: a broker that dies mid-run, an agent that dies mid-run (real processes)."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import psutil
import pytest

from tests.conftest import Mosquitto
from tests.refbot import DEMO, REPO, assert_completed, start_bot

# the run's own deadline (about 330 s for 6 rounds of the demo call) must fire before pytest's timeout,
# so a run that overstays fails with its own account of what it waited for
pytestmark = [pytest.mark.real, pytest.mark.timeout(600)]

CALLS, CONCURRENCY = 60, 10
RUN_TIMEOUT_S = 420


def start_run(out: Path, target: str, *extra: str) -> subprocess.Popen[str]:
    cmd = [sys.executable, "-m", "voiceload", "run", str(DEMO), "--target", target, "-c", str(CONCURRENCY),
           "-n", str(CALLS), "--out", str(out), *extra]
    return subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for_records(out: Path, n: int, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    path = out / "calls.jsonl"
    while time.monotonic() < deadline:
        if path.exists() and len(path.read_text().splitlines()) >= n:
            return
        time.sleep(0.2)
    raise AssertionError(f"fewer than {n} records after {timeout_s} s")


def records(out: Path) -> list[dict[str, Any]]:
    return [json.loads(x) for x in (out / "calls.jsonl").read_text().splitlines() if x.strip()]


def agent_logs(out: Path) -> str:
    """The last lines each agent wrote: what a failed run's agents were doing."""
    return "\n".join(f"--- {log.name}\n" + "\n".join(log.read_text(errors="replace").splitlines()[-15:])
                     for log in sorted((out / "logs").glob("agent-*.log")))


def finish(run: subprocess.Popen[str], out: Path) -> tuple[int, str, str]:
    try:
        stdout, stderr = run.communicate(timeout=RUN_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        run.kill()
        stdout, stderr = run.communicate()
        raise AssertionError(f"run did not finish: {stderr[-3000:]}\n{agent_logs(out)}") from None
    return run.returncode, stdout, stderr


def test_broker_killed_and_restarted_mid_run(mosquitto: Mosquitto, tmp_path: Path) -> None:
    bot = start_bot(tmp_path, max_calls=CONCURRENCY)
    out = tmp_path / "run"
    try:
        run = start_run(out, bot.target, "--broker", mosquitto.address.url)
        wait_for_records(out, 5, 90)
        assert mosquitto.proc is not None
        mosquitto.proc.send_signal(signal.SIGKILL)  # no goodbye: queued and in-flight messages are gone
        mosquitto.proc.wait(5)
        time.sleep(5)
        mosquitto.start()
        code, _stdout, stderr = finish(run, out)
    finally:
        bot.stop()
    recs = records(out)
    ids = Counter(r["call_id"] for r in recs)
    print(f"records {len(recs)}, outcomes {Counter(r['outcome'] for r in recs)}")
    assert len(recs) == CALLS, f"{stderr[-3000:]}\n{agent_logs(out)}"
    assert max(ids.values()) == 1  # exactly one record per placed call
    summary = json.loads((out / "summary.json").read_text())
    assert summary["calls"]["placed"] == CALLS
    assert_completed(summary, recs)
    assert code in (0, 3), stderr[-3000:]  # heartbeats were lost for 5 s: validity is the run's call


def test_agent_killed_mid_run(tmp_path: Path) -> None:
    # the bot keeps the killed agent's calls until they time out: room for them beside the run's 10
    bot = start_bot(tmp_path, max_calls=2 * CONCURRENCY)
    out = tmp_path / "run"
    try:
        run = start_run(out, bot.target, "--calls-per-agent", "4")  # three agents, whatever the pjsua2 build
        wait_for_records(out, 5, 90)
        agents = [p for p in psutil.Process(run.pid).children(recursive=True)
                  if "agent" in p.cmdline() and "a1" in p.cmdline()]
        assert len(agents) == 1
        agents[0].send_signal(signal.SIGKILL)
        code, _stdout, stderr = finish(run, out)
    finally:
        bot.stop()
    recs = records(out)
    outcomes = Counter(r["outcome"] for r in recs)
    print(f"records {len(recs)}, outcomes {outcomes}")
    assert len(recs) == CALLS, f"{stderr[-3000:]}\n{agent_logs(out)}"
    assert max(Counter(r["call_id"] for r in recs).values()) == 1
    lost = [r for r in recs if r["outcome"] == "agent_lost"]
    assert lost and all(r["agent_id"] == "a1" for r in lost)
    assert outcomes["completed"] == CALLS - len(lost)  # the others carried on and finished the run
    assert "agent a1 lost" in stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["outcomes"]["agent_lost"] == len(lost)
    assert not summary["valid"] and code == 3  # a generator failure: the run says so
