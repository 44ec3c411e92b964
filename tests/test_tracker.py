"""Rasa's side of a call checked against the scenario: reply texts, trackers, and the scenario fields behind them."""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path
from typing import Any

import pytest

from tests.fakerasa import Script, serve
from tests.refbot import DEMO
from voiceload.agent.tracker import (
    Expectation,
    TrackerCheck,
    caller_messages,
    compare,
    expectations,
    judge_reply,
    normalise,
)
from voiceload.core.scenario import load_scenario, rest_problems
from voiceload.errors import ScenarioError, UserError
from voiceload.rasa import parse_rasa_url

RECORDINGS = DEMO.parent.parent / "recordings" / "demo"


# --- reply texts -------------------------------------------------------------------------------

def test_normalise_ignores_case_punctuation_and_spacing() -> None:
    assert normalise("  Sure.  What NAME is it for?\n") == "sure what name is it for"
    assert normalise("Thanks Alex, your latte will be ready soon. Goodbye.") == \
        normalise("thanks alex your latte will be ready soon goodbye")
    assert normalise("I'm fine — thanks!") == "i m fine thanks"
    assert normalise("") == ""


def test_a_reply_equal_but_for_case_and_punctuation_is_ok() -> None:
    v = judge_reply("Sure. What name is it for?", ["sure, what name is it for"])
    assert v.ok and v.reason is None and v.score == 1.0


def test_several_bot_messages_are_one_reply() -> None:
    assert judge_reply("I am sorry. Did that help you?", ["I am sorry.", "Did that help you?"]).ok


def test_a_different_reply_fails_with_both_texts() -> None:
    v = judge_reply("Sure. What name is it for?", ["Sorry, I did not understand."])
    assert not v.ok
    assert v.reason == "replied 'Sorry, I did not understand.', expected 'Sure. What name is it for?'"
    assert v.score is not None and 0 <= v.score < 1


def test_no_reply_text_fails_and_anything_counts_without_a_transcript() -> None:
    assert judge_reply("Hello.", []).reason == "no reply text"
    assert not judge_reply(None, ["  "]).ok
    v = judge_reply(None, ["whatever the bot says"])
    assert v.ok and v.score is None


# --- trackers ----------------------------------------------------------------------------------

def user(text: str, intent: str | None) -> dict[str, Any]:
    return {"event": "user", "text": text, "parse_data": {"intent": {"name": intent} if intent else {}}}


def action(name: str) -> dict[str, Any]:
    return {"event": "action", "name": name}


MOOD = {"events": [
    action("action_session_start"), {"event": "session_started"}, action("action_listen"),
    user("hello", "greet"), action("utter_greet"), {"event": "bot", "text": "Hello."}, action("action_listen"),
    user("i am sad", "mood_unhappy"), action("utter_cheer_up"), action("utter_did_that_help"),
    action("action_listen"),
]}


def test_caller_messages_keep_order_and_the_actions_after_each() -> None:
    msgs = caller_messages(MOOD)
    assert [(m.text, m.intent) for m in msgs] == [("hello", "greet"), ("i am sad", "mood_unhappy")]
    assert msgs[0].actions_after == ["utter_greet", "utter_cheer_up", "utter_did_that_help"]
    assert msgs[1].actions_after == ["utter_cheer_up", "utter_did_that_help"]


def test_injected_intents_are_not_the_callers_messages() -> None:
    tracker = {"events": [user("/greet", "greet"), action("utter_greet"), *MOOD["events"]]}
    assert [m.intent for m in caller_messages(tracker)] == ["greet", "mood_unhappy"]


def test_a_matching_tracker_has_no_problems() -> None:
    expected = [Expectation(0, "greet", "utter_greet"), Expectation(1, "mood_unhappy", "utter_did_that_help")]
    assert compare(expected, MOOD) == []


def test_a_wrong_intent_names_turn_expected_and_actual() -> None:
    expected = [Expectation(0, "greet", None), Expectation(1, "mood_great", None)]
    assert compare(expected, MOOD) == ["turn 1 expected intent mood_great, got mood_unhappy"]


def test_a_turn_without_intent_accepts_any_but_the_count_must_match() -> None:
    assert compare([Expectation(0, None, None), Expectation(1, "mood_unhappy", None)], MOOD) == []
    problems = compare([Expectation(0, "greet", None)], MOOD)
    assert problems == ["2 user messages for 1 turns (extra intents: mood_unhappy)"]
    problems = compare([*(Expectation(i, x, None) for i, x in enumerate(["greet", "mood_unhappy", "affirm"]))], MOOD)
    assert problems == ["turn 2 expected intent affirm, got no user message"]


def test_an_action_must_run_after_its_turns_message() -> None:
    assert compare([Expectation(0, None, "utter_did_that_help")], MOOD) == []  # after turn 0's message
    problems = compare([Expectation(0, None, None), Expectation(1, None, "utter_greet")], MOOD)
    assert problems == ["turn 1 expected action utter_greet, got utter_cheer_up, utter_did_that_help"]
    assert compare([Expectation(2, None, "utter_happy")], MOOD) == [
        "turn 2 expected action utter_happy, got no user message"]


def test_actions_alone_do_not_check_intents_and_an_empty_tracker_fails() -> None:
    assert compare([Expectation(0, None, "utter_greet")], {"events": [user("hi", "nlu_fallback"),
                                                                      action("utter_greet")]}) == []
    assert compare([Expectation(0, "greet", None)], {}) == ["turn 0 expected intent greet, got no user message"]
    assert compare([Expectation(0, "greet", None)], {"events": [user("hm", None)]}) == [
        "turn 0 expected intent greet, got none"]


# --- scenario fields ---------------------------------------------------------------------------

def demo_with(tmp_path: Path, turn0: str = "", turn1: str = "") -> Path:
    """demo.yaml in tmp_path, recordings by absolute path, extra lines under each turn's `caller:`."""
    text = DEMO.read_text().replace("../recordings/demo/", f"{RECORDINGS}/")
    text = text.replace("caller-01-order.wav   # transcript: caller-01-order.txt beside it",
                        "caller-01-order.wav" + turn0)
    text = text.replace("caller-02-name.wav\n", "caller-02-name.wav" + turn1 + "\n")
    path = tmp_path / "demo.yaml"
    path.write_text(text)
    return path


def test_prompts_take_their_transcript_from_the_sidecar(tmp_path: Path) -> None:
    sc = load_scenario(demo_with(tmp_path))
    assert sc.greeting is not None and sc.greeting.transcript == "Welcome to the coffee bar. What would you like?"
    assert [t.reply.transcript for t in sc.turns if t.reply] == [
        "Sure. What name is it for?", "Thanks Alex, your latte will be ready soon. Goodbye."]
    assert [t.intent for t in sc.turns] == [None, None] and expectations(sc) == ()


def test_intent_and_action_fields(tmp_path: Path) -> None:
    sc = load_scenario(demo_with(tmp_path, "\n    intent: order_drink\n    action: utter_ask_name",
                                 "\n    intent: tell_name"))
    assert [(t.intent, t.action) for t in sc.turns] == [("order_drink", "utter_ask_name"), ("tell_name", None)]
    assert expectations(sc) == (Expectation(0, "order_drink", "utter_ask_name"), Expectation(1, "tell_name", None))


def test_a_written_prompt_transcript_wins_over_the_sidecar(tmp_path: Path) -> None:
    path = demo_with(tmp_path)
    path.write_text(path.read_text().replace("bot-01-name.wav\n", "bot-01-name.wav\n      transcript: Name?\n"))
    assert load_scenario(path).turns[0].reply.transcript == "Name?"  # type: ignore[union-attr]


def test_bad_intent_and_action_name_file_line_and_field(tmp_path: Path) -> None:
    path = demo_with(tmp_path, "\n    intent: order drink\n    action: 42", "\n    intent: ''")
    with pytest.raises(ScenarioError) as err:
        load_scenario(path)
    lines = path.read_text().splitlines()
    empty_intent = "intent: ''"

    def line(text: str) -> int:
        return next(i for i, x in enumerate(lines, 1) if x.strip() == text)

    assert err.value.problems == [
        f"{path}:{line('intent: order drink')}: turns[0].intent: must be one intent name without spaces, as in "
        "the bot's domain; got 'order drink'",
        f"{path}:{line('action: 42')}: turns[0].action: must be a string, got an integer (42); put it in quotes "
        "to make it text",
        f"{path}:{line(empty_intent)}: turns[1].intent: must not be empty",
    ]


def test_the_text_channel_needs_every_callers_transcript(tmp_path: Path) -> None:
    folder = tmp_path / "rec"
    folder.mkdir()
    for name in ("caller-01-order", "bot-01-name", "caller-02-name", "bot-02-bye", "bot-00-welcome"):
        shutil.copy(RECORDINGS / f"{name}.wav", folder / f"{name}.wav")
    shutil.copy(RECORDINGS / "caller-01-order.txt", folder)
    path = tmp_path / "demo.yaml"
    path.write_text(DEMO.read_text().replace("../recordings/demo/", "rec/"))
    (problem,) = rest_problems(load_scenario(path))
    assert problem.endswith("demo.yaml: turn 1 has no caller transcript (write `transcript:` or a .txt beside the "
                            "caller recording); --channel rest sends the transcripts as text")
    assert rest_problems(load_scenario(DEMO)) == []


def test_rasa_urls() -> None:
    assert parse_rasa_url("http://127.0.0.1:5005/") == "http://127.0.0.1:5005"
    assert parse_rasa_url("https://rasa.example") == "https://rasa.example"
    for bad in ("ftp://x:1", "127.0.0.1:5005", "http://:5005", "http://h:99999", "http://h:5005/?token=x",
                "http://h:0"):
        with pytest.raises(UserError, match="--rasa-url"):
            parse_rasa_url(bad)


# --- the fetch ---------------------------------------------------------------------------------

@pytest.mark.real
def test_tracker_check_against_a_server() -> None:
    """The bounded fetch: a match, a mismatch, and a failing server all end as one verdict each."""
    script = Script(replies=[], intents=["greet", "mood_great"], actions=["utter_greet", "utter_happy"],
                    wrong_intent=lambda s: s == "bad", wrong_as="mood_unhappy")
    expected = [Expectation(0, "greet", None), Expectation(1, "mood_great", "utter_happy")]

    async def check(url: str, sender: str) -> str | None:
        tc = TrackerCheck(url, expected, timeout_s=2)
        try:
            return await tc.reason(sender)
        finally:
            await tc.close()

    with serve(script) as fake:
        assert asyncio.run(check(fake.url, "good")) is None
        assert asyncio.run(check(fake.url, "bad")) == "tracker: turn 1 expected intent mood_great, got mood_unhappy"
        script.tracker_status = 500
        reason = asyncio.run(check(fake.url, "good"))
        assert reason is not None and reason.startswith("tracker: ") and "HTTP 500" in reason
        url = fake.url
    reason = asyncio.run(check(url, "good"))  # nothing listens there any more
    assert reason is not None and reason.startswith("tracker: ") and "unreachable" in reason
