"""The scenario's `speech:` section: dBFS levels, validation, and that they reach every detector."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from tests.test_callflow import caller, drive
from tests.test_scenario import MINIMAL, folder, problems, write  # noqa: F401 (folder is a fixture)
from tests.test_vad import place, tone
from voiceload.audio import g711
from voiceload.audio.analysis import Played, Reference, analyse_caller_tape
from voiceload.audio.vad import (
    DEFAULT_SPEECH,
    SPEECH_THRESHOLD,
    SpeechSettings,
    amplitude_to_dbfs,
    dbfs_to_amplitude,
    meter_level,
    speech_segments,
)
from voiceload.core.scenario import load_scenario
from voiceload.core.scenario_audio import ScenarioAudio


def test_defaults_are_the_historical_levels() -> None:
    assert round(dbfs_to_amplitude(DEFAULT_SPEECH.threshold_dbfs)) == SPEECH_THRESHOLD == 500
    assert round(DEFAULT_SPEECH.threshold_dbfs, 1) == -36.3
    assert DEFAULT_SPEECH.loud_level == 5  # core/callflow.py LEVEL_SPEECH
    assert (DEFAULT_SPEECH.min_speech_ms, DEFAULT_SPEECH.hangover_ms) == (30, 400)
    assert math.isclose(amplitude_to_dbfs(32767), 0.0)


def test_meter_level_is_the_mu_law_code_of_the_mean() -> None:
    """The meters (media/engine.c, pjmedia's bridge) read linear2ulaw(mean |sample|) ^ 0xFF."""
    mean = np.arange(0, 32768, 7)
    codes = g711.encode(mean.astype(np.int16)).astype(int) ^ 0xFF
    assert [meter_level(int(m)) for m in mean] == codes.tolist()


def test_the_scenario_sets_every_level(folder: Path) -> None:  # noqa: F811
    path = write(folder, MINIMAL + """
    speech:
      threshold_dbfs: -30
      edge_dbfs: -50.5
      min_speech_ms: 40
      hangover_ms: 600
      loud_dbfs: -45
    """)
    s = load_scenario(path).speech
    assert s == SpeechSettings(threshold_dbfs=-30.0, edge_dbfs=-50.5, min_speech_ms=40.0, hangover_ms=600.0,
                               loud_dbfs=-45.0)
    assert s.loud_level == meter_level(round(dbfs_to_amplitude(-45)))
    assert load_scenario(write(folder, MINIMAL, "plain.yaml")).speech == DEFAULT_SPEECH
    off = write(folder, MINIMAL + "    speech: {edge_dbfs: off}\n", "off.yaml")
    assert load_scenario(off).speech == SpeechSettings(edge_dbfs=None)


def test_bad_levels_name_their_field(folder: Path) -> None:  # noqa: F811
    assert problems(folder, MINIMAL + """
    speech:
      threshold_dbfs: loud
      min_speech_ms: -1
      hangover: 300
    """) == [
        "F:7: speech.threshold_dbfs: must be a number (dBFS, e.g. -40), got a string ('loud')",
        "F:8: speech.min_speech_ms: must be between 0 and 1000, got -1",
        "F:9: speech.hangover: unknown key 'hangover' (did you mean 'hangover_ms'?)",
    ]
    assert problems(folder, MINIMAL + "    speech: {threshold_dbfs: -40, edge_dbfs: -30}\n") == [
        "F:5: speech.edge_dbfs: must not be above speech.threshold_dbfs (-40): edges grow outwards from what "
        "the threshold found, got -30",
    ]


def test_a_higher_threshold_ignores_a_quiet_far_end() -> None:
    quiet = place(16000, (4000, (tone(4000).astype(np.int32) // 10).astype(np.int16)))  # peak 800: -32 dBFS
    assert len(speech_segments(quiet)) == 1
    assert speech_segments(quiet, SpeechSettings(threshold_dbfs=-25.0)) == []


def test_the_scenario_levels_reach_the_caller_tape_analysis() -> None:
    """A reply whose first 100 ms are a -50 dBFS fricative: on time by default, late without edges."""
    rng = np.random.default_rng(3)
    hiss = (rng.standard_normal(800) * dbfs_to_amplitude(-50)).astype(np.int16)
    reply = np.concatenate((hiss, tone(4000, seed=2)))
    utt = tone(8000, seed=1)
    tape = place(40000, (4000, utt), (4000 + 8000 + 4000, reply))
    kw = dict(tape_offset_ms=0.0, rx_delay_ms=0.0, greeting=None, greeting_max_wait_ms=0, replies=[None],
              max_waits_ms=[3000])
    for speech, latency in ((DEFAULT_SPEECH, 500.0), (SpeechSettings(edge_dbfs=None), 600.0)):
        played = [Played(Reference.of(utt, speech), 4000)]
        res = analyse_caller_tape(tape, utterances=played, speech=speech, **kw)  # type: ignore[arg-type]
        assert res.turns[0].latency_ms == pytest.approx(latency, abs=2.0)


def test_the_loud_level_reaches_the_flows(folder: Path) -> None:  # noqa: F811
    sa = ScenarioAudio.load(load_scenario(write(folder, MINIMAL + "    speech: {loud_dbfs: -40}\n")))
    flow = sa.new_flow()
    assert flow.loud_level == SpeechSettings(loud_dbfs=-40).loud_level == 28
    flow.on_answer(0)
    assert drive(flow, 0, 1000, 20) == []  # a bed at level 20 is not the greeting
    assert flow.state.value == "wait_bot"
    f = caller(loud_level=28)
    f.on_answer(0)
    drive(f, 0, 500, 40)
    assert f.state.value == "bot_speaking"
