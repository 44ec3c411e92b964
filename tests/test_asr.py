"""The gateway's speech recogniser: grammar from transcripts, resampling, and the shipped caller recordings."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import numpy as np
import pytest

from voiceload.audio import g711, wav
from voiceload.core.scenario import load_scenario
from voiceload.errors import UserError
from voiceload.sut import asr

REPO = Path(__file__).resolve().parent.parent
SCENARIOS = [REPO / "scenarios" / "demo.yaml", REPO / "scenarios" / "booking.yaml"]

# --- pure parts ----------------------------------------------------------------------------------


def test_normalise_lowercases_and_drops_punctuation_but_keeps_inner_apostrophes() -> None:
    assert asr.normalise("Thank you for calling Luigi's. How can I help you?") == [
        "thank", "you", "for", "calling", "luigi's", "how", "can", "i", "help", "you"]
    assert asr.normalise("  A large latte, please!\n") == ["a", "large", "latte", "please"]
    assert asr.normalise("Luigi\u2019s 'quoted' -- at 8") == ["luigi's", "quoted", "at", "8"]
    assert asr.normalise("...") == []


def test_phrases_are_distinct_normalised_and_in_order() -> None:
    assert asr.phrases_of(["For four people.", "", "for FOUR people", "At eight."]) == ["for four people", "at eight"]


def test_grammar_accepts_one_of_the_phrases() -> None:
    g = asr.jsgf(["a large latte please", "it is for alex"])
    assert g.startswith("#JSGF V1.0;\ngrammar voiceload;\npublic <utterance> =")
    assert "( a large latte please )" in g and "| ( it is for alex );" in g
    with pytest.raises(ValueError):
        asr.jsgf([])


def test_words_missing_from_the_dictionary_are_listed_once() -> None:
    known = {"at", "eight"}.__contains__
    assert asr.missing_words(["at eight zorblax", "zorblax at qux"], known) == ["zorblax", "qux"]


def test_scenario_phrases_come_from_the_caller_transcripts() -> None:
    assert asr.scenario_phrases(load_scenario(SCENARIOS[0])) == ["a large latte please", "it is for alex"]


def test_a_turn_without_transcript_is_a_clear_user_error() -> None:
    sc = load_scenario(SCENARIOS[0])
    turns = (sc.turns[0], dataclasses.replace(sc.turns[1], transcript=None))
    with pytest.raises(UserError, match=r"turn 1 \(caller-02-name.wav\) has none"):
        asr.scenario_phrases(dataclasses.replace(sc, turns=turns))


def test_word_errors_is_the_word_edit_distance() -> None:
    ref = ["a", "large", "latte", "please"]
    assert asr.word_errors(ref, ref) == 0
    assert asr.word_errors(ref, ["a", "latte", "please"]) == 1  # deletion
    assert asr.word_errors(ref, ["a", "small", "latte", "please", "now"]) == 2  # substitution + insertion
    assert asr.word_errors(ref, []) == 4


@pytest.mark.parametrize("freq", [300, 1000, 2000, 3000, 3400])
def test_upsampling_a_sine_is_accurate_across_the_telephone_band(freq: int) -> None:
    n = 8000
    x = np.round(10_000 * np.sin(2 * np.pi * freq * np.arange(n) / 8000)).astype(np.int16)
    y = asr.upsample_2x(x)
    assert y.dtype == np.int16 and len(y) == 2 * n
    assert np.array_equal(y[0::2], x)  # the input samples are kept
    ideal = 10_000 * np.sin(2 * np.pi * freq * np.arange(2 * n) / 16000)
    inner = slice(200, 2 * n - 200)  # away from the edges, where the filter sees zeros
    err = np.sqrt(np.mean((y[inner] - ideal[inner]) ** 2)) / np.sqrt(np.mean(ideal[inner] ** 2))
    assert 20 * np.log10(err) < -60  # the int16 rounding is -83 dB here: the filter adds little


def test_upsampling_keeps_edges_and_handles_empty_input() -> None:
    assert len(asr.upsample_2x(np.zeros(0, dtype=np.int16))) == 0
    y = asr.upsample_2x(np.full(100, 32767, dtype=np.int16))
    assert y.max() <= 32767  # overshoot is clipped, not wrapped


def test_speech_only_keeps_the_loud_span_plus_a_margin() -> None:
    x = np.zeros(8000, dtype=np.int16)
    x[2000:3000] = 1000
    out = asr.speech_only(x)
    assert len(out) == 1000 + 2 * 80  # 10 ms either side at 8 kHz
    assert len(asr.speech_only(np.full(800, 100, dtype=np.int16))) == 0  # under -40 dBFS: no speech


# --- the recogniser on real audio ------------------------------------------------------------------


def _line(x: np.ndarray) -> np.ndarray:
    """Silence around the speech, as on a call tape, and G.711 µ-law, as on the wire."""
    pad = np.zeros(3200, dtype=np.int16)
    return g711.round_trip(np.concatenate([pad, x, pad]))


@pytest.mark.parametrize("scenario", SCENARIOS, ids=lambda p: p.stem)
def test_the_shipped_caller_recordings_are_recognised_exactly(scenario: Path) -> None:
    sc = load_scenario(scenario)
    rec = asr.Recogniser.for_scenario(sc)
    for turn in sc.turns:
        line = _line(wav.load_wav(turn.caller))
        began = time.perf_counter()
        result = rec.recognise(line)
        took_ms = (time.perf_counter() - began) * 1000
        assert result.text == " ".join(asr.normalise(turn.transcript or "")), turn.caller.name
        assert 0 < result.decode_ms <= took_ms + 0.1  # in ms (rounded to 0.1), its own; how long is the box's business
        assert result.speech_ms > 500


def test_silence_and_noise_are_recognised_as_nothing() -> None:
    rec = asr.Recogniser.for_scenario(load_scenario(SCENARIOS[0]))
    assert rec.recognise(np.zeros(8000, dtype=np.int16)).text == ""
    noise = np.random.default_rng(1).normal(0, 3000, 8000).astype(np.int16)
    assert rec.recognise(noise).text == ""


def test_recognisers_share_the_one_decoder_and_switch_grammars() -> None:
    demo, booking = (load_scenario(p) for p in SCENARIOS)
    a, b = asr.Recogniser.for_scenario(demo), asr.Recogniser.for_scenario(booking)
    again = asr.Recogniser.for_scenario(demo)  # the same grammar is not added twice
    assert a.search == again.search != b.search
    for rec, sc in ((a, demo), (b, booking), (again, demo)):
        assert rec.recognise(wav.load_wav(sc.turns[0].caller)).text == rec.phrases[0]


def test_words_missing_from_the_dictionary_are_a_user_error_naming_them() -> None:
    with pytest.raises(UserError, match=r"'4' in 'table for 4 please'; 'zorblax' in 'zorblax at eight'"):
        asr.Recogniser(["table for 4 please", "zorblax at eight"])
