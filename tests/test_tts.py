"""The gateway's speech synthesis: the bot prompts' exact voice and processing, cached on disk."""

from __future__ import annotations

import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from voiceload.audio import recordings, wav
from voiceload.sut import tts

REPO = Path(__file__).resolve().parent.parent
DEMO_PROMPTS = sorted((REPO / "recordings" / "demo").glob("bot-*.txt"))

needs_tts = pytest.mark.skipif(
    shutil.which("espeak-ng") is None or shutil.which("sox") is None, reason="espeak-ng and sox not installed"
)


def test_cache_key_depends_on_voice_and_cleaned_text_only() -> None:
    key = tts.cache_key(recordings.BOT_VOICE, "Sure. What name is it for?")
    assert key == tts.cache_key(recordings.BOT_VOICE, "  Sure.\nWhat name   is it for? ")
    assert key != tts.cache_key(recordings.CALLER_VOICE, "Sure. What name is it for?")
    assert key != tts.cache_key(recordings.BOT_VOICE, "Sure. What name is it for")
    assert len(key) == 32


def test_empty_text_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        tts.Synthesiser(tmp_path).speak(" \n ")


@needs_tts
def test_a_reply_is_sample_identical_to_the_prompt_recordings_make_makes(tmp_path: Path) -> None:
    """Same text → same samples as `voiceload recordings make`, so the agent scores it as the prompt."""
    made = tmp_path / "made"
    made.mkdir()
    for txt in DEMO_PROMPTS:
        shutil.copy(txt, made / txt.name)
    recordings.make_recordings(made)
    synth = tts.Synthesiser(tmp_path / "cache")
    for txt in DEMO_PROMPTS:
        speech = synth.speak(txt.read_text())
        assert not speech.cached
        assert wav.check_call_wav(speech.path) == []
        expected = wav.load_wav(made / f"{txt.stem}.wav")
        assert np.array_equal(wav.load_wav(speech.path), expected), txt.name
        # and so to the shipped prompt, which `recordings make` reproduces (tests/test_recordings.py)
        assert np.array_equal(expected, wav.load_wav(txt.with_suffix(".wav"))), txt.name


@needs_tts
def test_the_second_request_is_a_cache_hit(tmp_path: Path) -> None:
    synth = tts.Synthesiser(tmp_path)
    first = synth.speak("Of course. For how many people?")
    second = synth.speak("Of course.\nFor how many people?")  # the same text once cleaned
    assert not first.cached and second.cached
    assert second.path == first.path == synth.path_for("Of course. For how many people?")
    assert second.synth_ms < first.synth_ms
    before = first.path.stat().st_mtime_ns
    tts.Synthesiser(tmp_path).speak("Of course. For how many people?")  # another process's synthesiser
    assert first.path.stat().st_mtime_ns == before


@needs_tts
def test_concurrent_writers_of_one_reply_leave_one_whole_file(tmp_path: Path) -> None:
    text = "And at what time?"
    with ThreadPoolExecutor(max_workers=6) as pool:
        results = list(pool.map(lambda _: tts.Synthesiser(tmp_path).speak(text), range(6)))
    assert len({r.path for r in results}) == 1
    assert [p.name for p in tmp_path.iterdir()] == [results[0].path.name]  # no temporary files left
    assert wav.check_call_wav(results[0].path) == []
    assert np.array_equal(wav.load_wav(results[0].path), wav.load_wav(REPO / "recordings/booking/bot-02-time.wav"))


def test_a_failing_tool_is_a_runtime_error_and_leaves_no_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tts, "espeak_command", lambda voice: ["sh", "-c", "echo broken >&2; exit 3"])
    synth = tts.Synthesiser(tmp_path)
    with pytest.raises(RuntimeError, match="exit 3"):
        synth.speak("Hello.")
    assert list(tmp_path.iterdir()) == []
