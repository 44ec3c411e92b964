"""End to end with a real Rasa: voice calls through the reference gateway, the text baseline, tracker checks.

One Rasa server (the example mood bot, trained once and cached) serves the whole module. The
gateway (`voiceload bot --brain rasa`) recognises each caller utterance, asks Rasa, and speaks
the reply; voiceload checks every turn's reply audio and, after every call, Rasa's tracker.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.refbot import REPO, RefBot, assert_completed, checked_summary, start_bot, voiceload
from voiceload import rasa
from voiceload.errors import UserError

pytestmark = [pytest.mark.e2e, pytest.mark.real]

EXAMPLE = REPO / "examples" / "rasa-moodbot"
SAD_PATH = EXAMPLE / "scenario.yaml"
WRONG_PATH = EXAMPLE / "scenario-wrong-path.yaml"
TOKEN = "e2e-token"


@pytest.fixture(scope="module")
def rasa_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    try:
        python = rasa.find_rasa_python()
    except UserError as err:
        pytest.skip(f"Rasa needs Python 3.10: {err}")
    model = rasa.ensure_model(rasa.MOODBOT_DIR, rasa_python=python)
    log = tmp_path_factory.mktemp("rasa") / "rasa.log"
    with rasa.RasaServer(model, project_dir=rasa.MOODBOT_DIR, token=TOKEN, log_path=log,
                         rasa_python=python) as server:
        yield server.url


def gateway(tmp: Path, url: str, scenario: Path) -> RefBot:
    return start_bot(tmp, scenario=scenario, max_calls=8,
                     extra=["--brain", "rasa", "--rasa-url", url, "--rasa-token", TOKEN])


@pytest.mark.timeout(900)
def test_voice_calls_through_the_gateway_walk_the_path_and_rasa_saw_every_intent(rasa_url: str,
                                                                                 tmp_path: Path) -> None:
    bot = gateway(tmp_path, rasa_url, SAD_PATH)
    out = tmp_path / "voice"
    try:
        res = voiceload("run", str(SAD_PATH), "--target", bot.target, "--rasa-url", rasa_url, "--rasa-token", TOKEN,
                        "-c", "4", "-n", "10", "--out", str(out), out=out, timeout=300)
    finally:
        bot.stop()
    summary = checked_summary(res)  # validity is the box's verdict (tests/refbot.py), completion is the test's
    calls = res.calls()
    assert len(calls) == 10
    assert_completed(summary, calls)
    assert all(len(c["turns"]) == 4 and all(t["ok"] for t in c["turns"]) for c in calls if c["outcome"] == "completed")
    truth = bot.truth_lines()
    heard = {t["asr_text"] for t in truth}
    assert heard == {"hello there", "i am feeling sad today", "yes it did", "goodbye"}, heard


@pytest.mark.timeout(600)
def test_the_text_baseline_drives_the_same_turns_over_rest(rasa_url: str, tmp_path: Path) -> None:
    out = tmp_path / "text"
    res = voiceload("run", str(SAD_PATH), "--channel", "rest", "--rasa-url", rasa_url, "--rasa-token", TOKEN,
                    "-c", "4", "-n", "12", "--out", str(out), out=out, timeout=300)
    summary = checked_summary(res)
    calls = res.calls()
    assert len(calls) == 12 and all(c["outcome"] == "completed" for c in calls), [c["reason"] for c in calls]
    assert summary["turn_latency_ms"]["count"] == 48


@pytest.mark.timeout(600)
def test_the_tracker_catches_a_recording_that_leads_to_another_intent(rasa_url: str, tmp_path: Path) -> None:
    bot = gateway(tmp_path, rasa_url, WRONG_PATH)
    out = tmp_path / "wrong"
    try:
        res = voiceload("run", str(WRONG_PATH), "--target", bot.target, "--rasa-url", rasa_url, "--rasa-token", TOKEN,
                        "-c", "2", "-n", "2", "--out", str(out), out=out, timeout=300)
    finally:
        bot.stop()
    calls = res.calls()
    assert len(calls) == 2, res.stderr[-3000:]
    for call in calls:
        assert call["outcome"] == "failed"
        assert "expected intent mood_unhappy" in call["reason"] and "mood_great" in call["reason"], call["reason"]
    print(json.dumps([c["reason"] for c in calls]), file=sys.stderr)
