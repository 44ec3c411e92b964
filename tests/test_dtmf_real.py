"""DTMF turns over real calls: agents dial, the reference bot hears, replies after the last digit and
sends digits of its own, and both sides' timing agree. SIP INFO works with any media engine; RFC 4733
needs the engine's `RtpChannel.send_dtmf` (and `dtmf_received`), so that test waits for it."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.refbot import REPO, RefBot, checked_summary, latency_errors, start_bot, voiceload
from voiceload.media.engine import RtpChannel

pytestmark = pytest.mark.real

RECORDINGS = REPO / "recordings" / "demo"
# The bot places a digit's end on its tape by the wall clock, and knows the tape's start to a bridge
# tick: its truth of a dialled turn is good to half a 20 ms tick either way (sut/bot.py)
BOT_DTMF_SLACK_MS = 10.0
BOT_PUMP_LATE_MS = 40.0


def dtmf_scenario(folder: Path, method: str) -> Path:
    """Greeting, a spoken turn, then a dialled one whose reply ends with the bot's own digit."""
    path = folder / f"dtmf-{method}.yaml"
    path.write_text(f"""version: 1
name: dtmf-{method}
greeting:
  prompt: {RECORDINGS / 'bot-00-welcome.wav'}
turns:
  - caller: {RECORDINGS / 'caller-01-order.wav'}
    reply:
      prompt: {RECORDINGS / 'bot-01-name.wav'}
  - dtmf: "12#"
    duration_ms: 120
    gap_ms: 80
    reply:
      prompt: {RECORDINGS / 'bot-02-bye.wav'}
      dtmf: "5"
media:
  dtmf: {method}
""")
    return path


@pytest.fixture(params=["info", "rfc4733"])
def method(request: pytest.FixtureRequest) -> str:
    if request.param == "rfc4733" and not hasattr(RtpChannel, "send_dtmf"):
        pytest.skip("the media engine has no RtpChannel.send_dtmf yet (RFC 4733 events)")
    return str(request.param)


@pytest.fixture
def bot(tmp_path: Path, method: str) -> Iterator[RefBot]:
    b = start_bot(tmp_path, scenario=dtmf_scenario(tmp_path, method), think_ms="400", max_calls=4)
    try:
        yield b
    finally:
        b.stop()


def test_a_dialled_turn_is_heard_answered_and_timed_by_both_sides(bot: RefBot, method: str, tmp_path: Path) -> None:
    out = tmp_path / "run"
    res = voiceload("run", str(dtmf_scenario(tmp_path, method)), "--target", bot.target, "-c", "2", "-n", "4",
                    "--dtmf", method, "--out", str(out), out=out)
    summary = checked_summary(res)
    calls = res.calls()
    assert len(calls) == 4
    assert all(c["outcome"] == "completed" for c in calls), [c["reason"] for c in calls]
    assert [t["dtmf"] for t in summary["turns"]] == [0, 4]
    for call in calls:
        spoken, dialled = call["turns"]
        assert spoken["dtmf"] is None
        assert dialled["dtmf"] == "12#" and dialled["ok"]
        # 3 digits of 120 ms with 80 ms gaps; SIP INFO goes out on the agent's 20 ms pump turns; RFC 4733's
        # last digit ends when its end packet leaves, 20 ms before its nominal end (engine.h: rtpe_dtmf)
        nominal = 520 if method == "info" else 500
        assert nominal - 1 <= dialled["utterance_end_ms"] - dialled["utterance_start_ms"] <= nominal + 3 * 25
        assert 400 <= dialled["latency_ms"] <= 600  # think 400 ms, timed from the last digit's end
        assert [(d["digit"], d["method"]) for d in call["dtmf_received"]] == [("5", method)]
        got = call["dtmf_received"][0]["at_ms"]
        assert dialled["bot_end_ms"] - 50 <= got <= dialled["bot_end_ms"] + 300  # right after the reply
    bot.stop()
    truth = bot.truth_lines()
    dialled_truth = [t for t in truth if t["turn"] == 1]
    assert len(dialled_truth) == 4
    assert all(t["dtmf"] == "12#" and t["dtmf_method"] == method for t in dialled_truth)
    assert all("dtmf" not in t for t in truth if t["turn"] == 0)
    errors = latency_errors(calls, dialled_truth)
    assert len(errors) == 4
    print("dialled turn, agent - bot truth (ms):", errors)
    # the bot notes a digit when its pump reads it (every 5 ms; seen 26 ms late on a busy box), which
    # delays its reply and its truth of the caller's end alike: the agent's wire figure is then larger
    assert all(-BOT_DTMF_SLACK_MS - 5.0 <= e <= BOT_DTMF_SLACK_MS + BOT_PUMP_LATE_MS for e in errors), errors


def test_the_bot_hears_and_sends_rfc4733_events(tmp_path: Path) -> None:
    """RFC 4733 both ways between pjmedia streams: a caller without the media engine dials, the bot
    times its reply from the last digit, then sends its own digit, which the caller hears."""
    scenario = tmp_path / "rfc4733.yaml"
    scenario.write_text(f"""version: 1
name: rfc4733
turns:
  - dtmf: "12#"
    reply:
      prompt: {RECORDINGS / 'bot-01-name.wav'}
      dtmf: "5"
hangup:
  by: bot
  after_ms: 500
""")
    bot = start_bot(tmp_path, scenario=scenario, think_ms="400", max_calls=2)
    try:
        proc = subprocess.run([sys.executable, "-m", "tests.dtmf_caller", bot.target, "12#"], capture_output=True,
                              text=True, timeout=60, cwd=REPO)
        assert proc.returncode == 0, proc.stderr[-2000:]
    finally:
        bot.stop()
    heard = json.loads(proc.stdout.strip().splitlines()[-1])
    assert heard["sent"] and heard["ended"]  # the bot hung up after its reply: it heard all three digits
    assert [(d["digit"], d["method"]) for d in heard["heard"]] == [("5", "rfc4733")]
    assert heard["heard"][0]["ended"] is not None and heard["heard"][0]["duration_ms"] >= 100
    (truth,) = bot.truth_lines()
    assert truth["dtmf"] == "12#" and truth["dtmf_method"] == "rfc4733"
    # due 400 ms after the last digit's end; played on the bot's next bridge tick
    assert 400 - BOT_DTMF_SLACK_MS <= truth["latency_ms"] <= 400 + 20 + BOT_DTMF_SLACK_MS + 5, truth
