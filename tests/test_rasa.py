"""The Rasa adapter: pure tracker helpers on a tracker captured from the real moodbot, plus one e2e round trip."""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import socket
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from voiceload import rasa
from voiceload.errors import UserError

DATA = Path(__file__).parent / "data"


def captured_tracker() -> dict[str, Any]:
    """GET /conversations/<id>/tracker after: hi there / i am sad / yes it did / goodbye (rasa 3.6.21)."""
    tracker: dict[str, Any] = json.loads((DATA / "rasa_tracker_moodbot.json").read_text())
    return tracker


def test_intents_of_the_captured_sad_path_in_order() -> None:
    assert rasa.tracker_intents(captured_tracker()) == ["greet", "mood_unhappy", "affirm", "goodbye"]


def test_actions_of_the_captured_sad_path_without_listen_and_session_noise() -> None:
    assert rasa.tracker_actions(captured_tracker()) == [
        "utter_greet", "utter_cheer_up", "utter_did_that_help", "utter_happy", "utter_goodbye"]


def test_helpers_tolerate_empty_and_odd_trackers() -> None:
    assert rasa.tracker_intents({}) == []
    assert rasa.tracker_actions({"events": None}) == []
    odd = {"events": ["junk", {"event": "user"}, {"event": "user", "parse_data": {"intent": {"name": None}}},
                      {"event": "action"}, {"event": "action", "name": "action_default_fallback"}]}
    assert rasa.tracker_intents(odd) == []
    assert rasa.tracker_actions(odd) == ["action_default_fallback"]


def test_model_key_follows_training_inputs_only(tmp_path: Path) -> None:
    project = tmp_path / "bot"
    shutil.copytree(rasa.MOODBOT_DIR, project)
    key = rasa.model_key(project)
    assert key == rasa.model_key(rasa.MOODBOT_DIR)  # the path does not matter, the content does
    (project / "credentials.yml").write_text("rest:\nsocketio:\n")
    assert rasa.model_key(project) == key
    nlu = project / "data" / "nlu.yml"
    nlu.write_text(nlu.read_text() + "      - heya\n")
    assert rasa.model_key(project) != key


def test_a_directory_that_is_no_rasa_project_is_a_user_error(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="not a Rasa project"):
        rasa.ensure_model(tmp_path)


def test_no_python_310_is_a_user_error_with_the_scripts_message(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VOICELOAD_PYTHON310", "/nonexistent/python3.10")
    with pytest.raises(UserError, match=r"no Python 3\.10 found"):
        rasa.find_rasa_python()


def test_an_unreachable_rasa_names_its_url() -> None:
    with socket.socket() as s:  # a port that nothing listens on: bound, never listening
        s.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{s.getsockname()[1]}"

        async def talk() -> None:
            async with aiohttp.ClientSession() as session:
                await rasa.send_message(session, url, "u1", "hello", timeout_s=5)

        with pytest.raises(rasa.RasaUnreachable, match=re.escape(url)):
            asyncio.run(talk())


def test_a_sender_the_tracker_url_cannot_carry_is_refused_before_any_request() -> None:
    async def look_up() -> None:
        async with aiohttp.ClientSession() as session:
            await rasa.fetch_tracker(session, "http://127.0.0.1:9", "caller one")

    with pytest.raises(ValueError, match="caller one"):
        asyncio.run(look_up())


@pytest.mark.e2e
@pytest.mark.timeout(900)  # the first run builds the Rasa venv (~3 min) and trains the model (~1 min)
def test_moodbot_answers_a_greeting_over_rest(tmp_path: Path) -> None:
    try:
        python = rasa.find_rasa_python()
    except UserError as err:
        pytest.skip(f"Rasa needs Python 3.10: {err}")
    model = rasa.ensure_model(rasa.MOODBOT_DIR, rasa_python=python)
    greeting = yaml.safe_load((rasa.MOODBOT_DIR / "domain.yml").read_text())["responses"]["utter_greet"][0]["text"]
    token = "e2e-secret"

    async def talk(url: str) -> tuple[list[str], dict[str, Any]]:
        async with aiohttp.ClientSession() as session:
            replies = await rasa.send_message(session, url, "e2e-caller/1@voiceload", "hello there", token=token)
            with pytest.raises(rasa.RasaError, match="401"):
                await rasa.fetch_tracker(session, url, "e2e-caller/1@voiceload")  # the API wants the token
            return replies, await rasa.fetch_tracker(session, url, "e2e-caller/1@voiceload", token=token)

    with rasa.RasaServer(model, project_dir=rasa.MOODBOT_DIR, token=token, log_path=tmp_path / "rasa.log",
                         rasa_python=python) as server:
        replies, tracker = asyncio.run(talk(server.url))
        url = server.url
    assert replies == [greeting]
    assert rasa.tracker_intents(tracker) == ["greet"]
    assert rasa.tracker_actions(tracker) == ["utter_greet"]
    assert tracker["sender_id"] == "e2e-caller/1@voiceload"

    async def after_stop() -> None:
        async with aiohttp.ClientSession() as session:
            await rasa.send_message(session, url, "late", "hello", timeout_s=5)

    with pytest.raises(rasa.RasaUnreachable, match=re.escape(url)):
        asyncio.run(after_stop())
