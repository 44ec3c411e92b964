"""`voiceload run --channel rest` and `--rasa-url` end to end, against a fake Rasa on 127.0.0.1."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fakerasa import FakeRasa, Script, serve
from tests.refbot import DEMO, checked_summary, start_bot, voiceload
from voiceload.core.scenario import load_scenario
from voiceload.results.broker import free_port

pytestmark = pytest.mark.real

RECORDINGS = DEMO.parent.parent / "recordings" / "demo"
INTENTS = ["order_drink", "tell_name"]
ACTIONS = ["utter_ask_name", "utter_goodbye"]


def even_seq(sender: str) -> bool:
    """Senders are <run>-<agent>-<seq>: every second conversation of an agent gets a wrong intent."""
    return int(sender.rsplit("-", 1)[1]) % 2 == 0


@pytest.fixture
def scenario(tmp_path: Path) -> Path:
    """demo.yaml with `intent:` and `action:` on its turns, the real recordings by absolute path."""
    text = DEMO.read_text().replace("../recordings/demo/", f"{RECORDINGS}/")
    text = text.replace("caller-01-order.wav   # transcript: caller-01-order.txt beside it",
                        f"caller-01-order.wav\n    intent: {INTENTS[0]}\n    action: {ACTIONS[0]}")
    text = text.replace("caller-02-name.wav\n", f"caller-02-name.wav\n    intent: {INTENTS[1]}\n")
    path = tmp_path / "demo-intents.yaml"
    path.write_text(text)
    return path


def demo_replies() -> list[str]:
    return [t.reply.transcript for t in load_scenario(DEMO).turns if t.reply and t.reply.transcript]


@pytest.fixture
def rasa() -> Iterator[FakeRasa]:
    with serve(Script(replies=demo_replies(), intents=INTENTS, actions=ACTIONS)) as fake:
        yield fake


def test_text_baseline_completes_with_latencies(rasa: FakeRasa, scenario: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    began = time.monotonic()
    res = voiceload("run", str(scenario), "--channel", "rest", "--rasa-url", rasa.url, "-c", "4", "-n", "8",
                    "--out", str(out), out=out, timeout=60)
    summary = checked_summary(res)
    assert time.monotonic() - began < 60
    calls = res.calls()
    assert len(calls) == 8 and len({c["call_id"] for c in calls}) == 8
    assert all(c["outcome"] == "completed" for c in calls), [c["reason"] for c in calls]
    for call in calls:
        assert [t["index"] for t in call["turns"]] == [0, 1]
        assert all(t["ok"] and t["latency_ms"] is not None and t["latency_ms"] >= 0 for t in call["turns"])
        # the turns are a silence gap apart, as on a voice call
        assert call["turns"][1]["utterance_start_ms"] - call["turns"][0]["bot_onset_ms"] >= 500
    assert summary["calls"]["completed"] == 8
    assert summary["turn_latency_ms"]["p50"] is not None
    # one conversation per call, each its own sender, each tracker asked once
    assert sorted(rasa.messages) == sorted(c["call_id"] for c in calls)
    assert all(len(said) == 2 for said in rasa.messages.values())
    assert sorted(rasa.tracker_requests) == sorted(rasa.messages)


def test_a_wrong_intent_in_the_tracker_fails_those_calls(scenario: Path, tmp_path: Path) -> None:
    script = Script(replies=demo_replies(), intents=INTENTS, actions=ACTIONS, wrong_intent=even_seq,
                    wrong_as="order_drink")
    out = tmp_path / "run"
    with serve(script) as fake:
        res = voiceload("run", str(scenario), "--channel", "rest", "--rasa-url", fake.url, "-c", "4", "-n", "8",
                        "--out", str(out), out=out, timeout=60)
    checked_summary(res)
    calls = res.calls()
    assert len(calls) == 8
    wrong = {c["call_id"] for c in calls if even_seq(c["call_id"])}
    assert len(wrong) == 4
    for call in calls:
        if call["call_id"] in wrong:
            assert call["outcome"] == "failed"
            assert call["reason"] == "tracker: turn 1 expected intent tell_name, got order_drink"
            assert all(t["ok"] for t in call["turns"])  # the replies were right: only the tracker says no
        else:
            assert call["outcome"] == "completed", call["reason"]
    assert res.summary()["calls"]["completed"] == 4


def test_a_wrong_reply_fails_the_turn(tmp_path: Path) -> None:
    replies = demo_replies()
    with serve(Script(replies=[replies[0], "Sorry, I did not understand."], intents=INTENTS,
                      actions=ACTIONS)) as fake:
        out = tmp_path / "run"
        res = voiceload("run", str(DEMO), "--channel", "rest", "--rasa-url", fake.url, "-n", "1",
                        "--out", str(out), out=out, timeout=60)
    checked_summary(res)
    (call,) = res.calls()
    assert call["outcome"] == "failed"
    assert call["reason"] == ("turn 1: replied 'Sorry, I did not understand.', expected 'Thanks Alex, your latte "
                              "will be ready soon. Goodbye.'")
    assert [t["ok"] for t in call["turns"]] == [True, False]
    assert fake.tracker_requests == []  # demo.yaml expects no intents: nothing to fetch


def test_sip_calls_are_checked_against_the_tracker(scenario: Path, tmp_path: Path) -> None:
    """Item B on the voice path: the reference bot answers, the fake's tracker (keyed by the session header) judges."""
    bot = start_bot(tmp_path, scenario=scenario, max_calls=4)
    try:
        with serve(Script(replies=[], intents=INTENTS, actions=ACTIONS, wrong_intent=even_seq,
                          wrong_as="order_drink")) as fake:
            out = tmp_path / "run"
            res = voiceload("run", str(scenario), "--target", bot.target, "--rasa-url", fake.url, "-c", "2",
                            "-n", "2", "--out", str(out), out=out, timeout=60)
    finally:
        bot.stop()
    checked_summary(res)
    calls = sorted(res.calls(), key=lambda c: c["seq"])
    assert [c["outcome"] for c in calls] == ["completed", "failed"], [c["reason"] for c in calls]
    assert calls[1]["reason"] == "tracker: turn 1 expected intent tell_name, got order_drink"
    assert sorted(fake.tracker_requests) == [f"{calls[0]['run_id']}-a0-1", f"{calls[0]['run_id']}-a0-2"]


@pytest.mark.parametrize(("args", "says"), [
    (["--channel", "rest"], "--channel rest needs --rasa-url"),
    (["--channel", "rest", "--rasa-url", "ftp://127.0.0.1:1"], "--rasa-url 'ftp://127.0.0.1:1'"),
    (["--channel", "telnet", "--rasa-url", "http://127.0.0.1:1"], "--channel 'telnet'"),
    (["--channel", "rest", "--rasa-url", "http://127.0.0.1:{port}"], "is unreachable"),
    (["--target", "sip:bot@127.0.0.1:5080", "--rasa-url", "http://x:y"], "--rasa-url 'http://x:y'"),
    ([], "--target is required"),
])
def test_bad_rasa_options_exit_2_before_any_call(args: list[str], says: str, tmp_path: Path) -> None:
    out = tmp_path / "run"
    args = [a.replace("{port}", str(free_port())) for a in args]
    res = voiceload("run", str(DEMO), *args, "--out", str(out), out=out, timeout=30)
    assert res.code == 2, res.stderr
    assert "Traceback" not in res.stderr
    assert says in res.stderr, res.stderr
    assert not (out / "calls.jsonl").exists()


def test_a_refused_token_exits_2_before_any_call(tmp_path: Path) -> None:
    with serve(Script(replies=demo_replies(), intents=INTENTS, actions=ACTIONS, token="right")) as fake:
        out = tmp_path / "run"
        res = voiceload("run", str(DEMO), "--channel", "rest", "--rasa-url", fake.url, "--rasa-token", "wrong",
                        "--out", str(out), out=out, timeout=30)
    assert res.code == 2, res.stderr
    assert f"--rasa-token: refused by Rasa at {fake.url} (HTTP 401)" in res.stderr
    assert fake.messages == {} and not (out / "calls.jsonl").exists()
