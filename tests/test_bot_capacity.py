"""Real calls against `voiceload bot --capacity`: queueing shows in the bot's truth and in voiceload's latencies.

With the 4-call PyPI wheel the bot runs behind its 302 front (--max-calls 8), so the front's one
work queue is asked over loopback UDP by every worker process; with the dense build it is one process
(the front and its queue are covered by test_real_calls' worker test). The scenario is the demo's
audio cut short, so a one-worker bot serves 6 calls in about 20 s.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests import refbot
from tests.refbot import (
    REPO,
    RefBot,
    assert_completed,
    assert_latencies_match_the_wire,
    checked_summary,
    loopback_capture,
    voiceload,
)
from voiceload.audio import wav

pytestmark = pytest.mark.real

RECORDINGS = REPO / "recordings" / "demo"
THINK_MS = 300.0
CLIPS = {  # name: (source recording, seconds kept from its start)
    "greeting.wav": ("bot-00-welcome.wav", 0.8),
    "caller-0.wav": ("caller-01-order.wav", 0.8),
    "reply-0.wav": ("bot-01-name.wav", 0.8),
    "caller-1.wav": ("caller-02-name.wav", 1.0),
    "reply-1.wav": ("bot-02-bye.wav", 0.8),
}
SCENARIO = """version: 1
name: short
silence_gap_ms: 500
answer_timeout_ms: 5000
max_call_ms: 60000
greeting: {prompt: greeting.wav, max_wait_ms: 10000}
turns:
  - caller: caller-0.wav
    reply: {prompt: reply-0.wav, max_wait_ms: 10000}
  - caller: caller-1.wav
    reply: {prompt: reply-1.wav, max_wait_ms: 10000}
hangup: {by: caller, after_ms: 300}
"""


@pytest.fixture
def short_scenario(tmp_path: Path) -> Path:
    for name, (source, seconds) in CLIPS.items():
        samples = wav.load_wav(RECORDINGS / source)
        wav.write_wav(tmp_path / name, samples[: int(seconds * wav.SAMPLE_RATE)])
    path = tmp_path / "short.yaml"
    path.write_text(SCENARIO)
    return path


def start_bot(tmp: Path, scenario: Path, *extra: str) -> RefBot:
    """The reference bot with an endpointing under the think time, so replies are not endpoint-bound."""
    return refbot.start_bot(tmp, scenario=scenario, think_ms=f"{THINK_MS:g}", max_calls=8,
                            extra=["--endpoint-ms", "250", *extra])


Lines = list[dict[str, Any]]


def run_calls(bot: RefBot, scenario: Path, out: Path, *, calls: int) -> tuple[Lines, Lines]:
    """Place the calls, stop the bot (flushing its truth), return (voiceload's calls, the bot's truth).

    How late the bot answers past its think time and queue is the bot's own speed, which a busy box
    decides; voiceload's side of each latency is checked against a loopback capture instead."""
    try:
        with loopback_capture(out.parent / "lo.pcap") as capture:
            res = voiceload("run", str(scenario), "--target", bot.target, "-c", "3", "-n", str(calls),
                            "--out", str(out), timeout=120, out=out)
    finally:
        bot.stop()
    summary = checked_summary(res)
    results = res.calls()
    assert len(results) == calls
    assert_completed(summary, results)
    if any(c["outcome"] != "completed" for c in results):
        pytest.skip("the generator's media clock stalled past its catch-up: the calls' timing is not judged")
    assert_latencies_match_the_wire(capture, summary, results)
    truth = bot.truth_lines()
    assert len(truth) == 2 * calls
    return results, truth


def measured(calls: list[dict[str, Any]]) -> dict[tuple[str, int], float]:
    return {(c["call_id"], t["index"]): t["latency_ms"] for c in calls for t in c["turns"]}


@pytest.fixture
def capacity_bot(tmp_path: Path, short_scenario: Path) -> Iterator[RefBot]:
    b = start_bot(tmp_path, short_scenario, "--capacity", "1")
    try:
        yield b
    finally:
        b.stop()


def test_one_worker_queues_replies_and_voiceload_sees_the_wait(capacity_bot: RefBot, short_scenario: Path,
                                                               tmp_path: Path) -> None:
    calls, truth = run_calls(capacity_bot, short_scenario, tmp_path / "run", calls=6)
    latency = measured(calls)
    queued = [t["queued_ms"] for t in truth]
    assert all(q is not None and q >= 0 for q in queued)
    assert sum(q > 100 for q in queued) >= 3, queued  # three callers on one worker: replies wait
    excess = []
    for t in truth:
        lat = latency[(t["call_id"], t["turn"])]
        excess.append(round(lat - (t["think_ms"] + t["queued_ms"]), 1))
    print(f"queued ms: {queued}\nmeasured - (think + queued) ms: {excess}")
    # the bot hears the end of speech 15-50 ms after the wire (later on a busy box), and starts a player
    # on the next bridge tick: never before its think time and queue are over
    assert all(e >= -10 for e in excess), excess
    waited = [latency[(t["call_id"], t["turn"])] for t in truth if t["queued_ms"] > 100]
    assert min(waited) > THINK_MS + 100


def test_without_capacity_nothing_queues(tmp_path: Path, short_scenario: Path) -> None:
    bot = start_bot(tmp_path, short_scenario)
    try:
        calls, truth = run_calls(bot, short_scenario, tmp_path / "run", calls=3)
    finally:
        bot.stop()
    assert [t["queued_ms"] for t in truth] == [0.0] * 6
    latency = [measured(calls)[(t["call_id"], t["turn"])] for t in truth]
    print(f"measured - think ms: {sorted(round(x - THINK_MS, 1) for x in latency)}")
    assert all(x >= THINK_MS for x in latency)  # and the wire agrees with each (run_calls)
