"""DTMF as a scenario step, pure parts: the format, the turn-taking and the tape analysis of a dialled turn."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from tests.test_scenario import problems, write
from tests.test_vad import place, tone
from voiceload.audio import wav
from voiceload.audio.analysis import Dialled, Played, Reference, analyse_bot_tape, analyse_caller_tape
from voiceload.core.callflow import BotFlow, CallerFlow, Dial, Hangup, Play, ThinkTime
from voiceload.core.scenario import Dtmf, load_scenario, rest_problems
from voiceload.core.scenario_audio import ScenarioAudio
from voiceload.core.summary import GeneratorHealth, summarize
from voiceload.protocol import OUTCOME_COMPLETED, CallRecord, TurnResult


def ms(n: float) -> int:
    return round(n * 8)


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    """A scenario directory with one good recording, `ok.wav` (0.5 s)."""
    wav.write_wav(tmp_path / "ok.wav", tone(ms(500)))
    return tmp_path


# --- the format -----------------------------------------------------------------------------------

DTMF = """
    version: 1
    name: dtmf
    turns:
      - caller: ok.wav
      - dtmf: "12*#ab"
        duration_ms: 120
        gap_ms: 80
        reply:
          prompt: ok.wav
          dtmf: "5"
      - dtmf: "0"
"""


def test_a_dtmf_turn_dials_instead_of_speaking(folder: Path) -> None:
    sc = load_scenario(write(folder, DTMF))
    speech, dialled, short = sc.turns
    assert speech.dtmf is None and speech.caller is not None
    assert dialled.caller is None and dialled.transcript is None
    assert dialled.dtmf == Dtmf("12*#AB", 120, 80)  # letters in upper case
    assert dialled.dtmf.length_ms == 6 * 120 + 5 * 80
    assert dialled.reply is not None and dialled.reply.dtmf == "5"
    assert short.dtmf == Dtmf("0", 100, 60)  # the defaults
    assert sc.dtmf_turns == (1, 2)
    sa = ScenarioAudio.load(sc)
    assert sa.utterances[1] is None and sa.utterance_ms[1:] == [1120.0, 100.0]
    assert sa.new_flow().dtmf == [False, True, True]


def test_dtmf_mistakes_name_the_field_and_line(folder: Path) -> None:
    assert problems(folder, """
        version: 1
        name: bad
        turns:
          - dtmf: 1234
          - dtmf: "12x#"
          - dtmf: "1"
            caller: ok.wav
          - dtmf: "1"
            duration_ms: 10
            gap_ms: 5000
          - caller: ok.wav
            gap_ms: 100
          - dtmf:
          - dtmf: "1"
            transcript: "one"
          - caller: ok.wav
            reply:
              prompt: ok.wav
              dtmf: "9!"
    """) == [
        "F:4: turns[0].dtmf: must be a string, got an integer (1234); put it in quotes to make it text",
        "F:5: turns[1].dtmf: must be DTMF digits (0-9, *, #, A-D), got '12x#': 'X' is not",
        "F:7: turns[2].caller: a turn either plays a `caller:` recording or dials `dtmf:` digits, not both",
        "F:9: turns[3].duration_ms: must be between 40 and 2000, got 10",
        "F:10: turns[3].gap_ms: must be between 40 and 2000, got 5000",
        "F:12: turns[4].gap_ms: is the length of a DTMF turn's digits: only with `dtmf:`",
        'F:13: turns[5].dtmf: must be DTMF digits in quotes, e.g. "1234#" (unquoted, `#` starts a YAML comment)',
        "F:15: turns[6].transcript: a DTMF turn says nothing: leave `transcript:` out",
        "F:19: turns[7].reply.dtmf: must be DTMF digits (0-9, *, #, A-D), got '9!': '!' is not",
    ]
    assert problems(folder, """
        version: 1
        name: long
        turns:
          - dtmf: "0123456789012345678901234567890123"
    """) == ["F:4: turns[0].dtmf: must be at most 32 digits, got 34"]


def test_the_rest_channel_refuses_a_dtmf_turn_in_one_line(folder: Path) -> None:
    sc = load_scenario(write(folder, DTMF))
    (line,) = rest_problems(sc)
    assert "turns 1, 2 dial DTMF" in line and "--channel rest" in line


# --- turn-taking ----------------------------------------------------------------------------------


def test_the_caller_dials_a_dtmf_turn_and_waits_from_its_last_digit() -> None:
    f = CallerFlow(utterance_ms=[500.0, 260.0], max_waits_ms=[2000, 2000], has_greeting=False,
                   greeting_max_wait_ms=0, silence_gap_ms=500, hangup_by="caller", hangup_after_ms=300,
                   dtmf=[False, True])
    assert f.on_answer(0) == Play(0)
    assert f.step_heard(500, None) is None  # utterance over: wait for the reply
    assert f.step_heard(1200, 1000) is None  # reply 700..1000 heard
    assert f.step_heard(1500, 1000) == Dial(1)
    f.spoke_until(1790)  # the digits went out on a later tick: the wait counts from their real end
    assert f.next_check_ms(1600) == 1790
    assert f.step_heard(1700, 1000) is None and f.state.value == "speaking"
    f.step_heard(1790, 1000)
    assert f.state.value == "wait_bot"
    assert f.step_heard(2300, 2200) is None
    assert f.step_heard(2800, 2200) == Hangup(None)


def test_the_bot_replies_after_the_last_expected_digit_without_endpointing() -> None:
    b = BotFlow(prompt_ms=[500.0], has_greeting=False, n_turns=1, think=ThinkTime(400), endpoint_ms=600,
                hangup_by="caller", hangup_after_ms=300, rng=random.Random(0), dtmf_digits=[3])
    b.on_answer(0)
    assert b.on_dtmf(100) == 0 and b.on_dtmf(260) == 0
    assert b.step(300, 0) is None  # two of three digits: still listening
    assert b.on_dtmf(420) == 0
    assert b.step(425, 0) is None  # all in: the reply is due 400 ms after the last digit's end
    assert b.step(815, 0) is None
    assert b.step(820, 0) == Play(0)
    assert b.on_dtmf(900) is None  # speaking: a digit now is nobody's turn


def test_fewer_digits_than_expected_end_the_turn_by_endpointing() -> None:
    b = BotFlow(prompt_ms=[500.0], has_greeting=False, n_turns=1, think=ThinkTime(100), endpoint_ms=600,
                hangup_by="caller", hangup_after_ms=300, rng=random.Random(0), dtmf_digits=[4])
    b.on_answer(0)
    b.on_dtmf(200)
    assert b.step(790, 0) is None
    assert b.step(800, 0) is None  # 600 ms of nothing after the digit: the turn ended at 200
    assert b.step(805, 0) == Play(0)  # due at 200 + 100 think; played on the next poll


def test_the_bot_sends_a_prompts_digits_once_it_has_played() -> None:
    b = BotFlow(prompt_ms=[500.0, 400.0], has_greeting=True, n_turns=1, think=ThinkTime(100), endpoint_ms=300,
                hangup_by="bot", hangup_after_ms=200, rng=random.Random(0), prompt_dtmf_ms=[0.0, 100.0])
    b.on_answer(0)
    assert b.step(200, 0) == Play(0)
    assert b.step(700, 0) is None  # the greeting sends no digits
    b.step(800, 30)
    b.step(1100, 0)
    assert b.step(1200, 0) == Play(1)
    assert b.step(1600, 0) == Dial(1)  # after the reply, its digits
    assert b.step(1650, 0) is None
    assert b.step(1700, 0) is None  # the digits' 100 ms over: the last reply is done
    assert b.step(1900, 0) == Hangup(None)


# --- the tape -------------------------------------------------------------------------------------


def test_a_dialled_turn_is_timed_from_the_senders_last_digit() -> None:
    utt, reply = Reference.of(tone(ms(800), seed=1)), Reference.of(tone(ms(900), seed=2))
    # caller speaks at 500 ms; bot replies at 1800; caller dials 3000..3520; bot replies at 3950
    tape = place(ms(6000), (ms(500), utt.samples), (ms(1800), reply.samples), (ms(3950), reply.samples))
    res = analyse_caller_tape(
        tape, tape_offset_ms=0, rx_delay_ms=0, greeting=None, greeting_max_wait_ms=0,
        utterances=[Played(utt, ms(500)), Dialled("12#", ms(3000), ms(3520))], replies=[reply, reply],
        max_waits_ms=[3000, 3000], reply_dtmf=[None, "5"], dtmf_received=[("5", ms(5000))],
    )
    first, dialled = res.turns
    assert first.ok and first.dtmf is None and first.latency_ms == 500.0
    assert dialled.ok, dialled.reason
    assert dialled.dtmf == "12#"
    assert (dialled.utterance_start_ms, dialled.utterance_end_ms) == (3000.0, 3520.0)
    assert dialled.latency_ms == 430.0
    assert res.clock_slip_ms == 0.0  # judged by the recordings alone
    missing = analyse_caller_tape(
        tape, tape_offset_ms=0, rx_delay_ms=0, greeting=None, greeting_max_wait_ms=0,
        utterances=[Played(utt, ms(500)), Dialled("12#", ms(3000), ms(3520))], replies=[reply, reply],
        max_waits_ms=[3000, 3000], reply_dtmf=[None, "5"], dtmf_received=[("4", ms(5000))],
    )
    assert missing.turns[1].reason == "bot DTMF after the reply: expected '5', received '4'"


def test_the_bots_truth_of_a_dialled_turn_runs_from_the_last_digit() -> None:
    greeting, reply = Reference.of(tone(ms(1000))), Reference.of(tone(ms(900), seed=4))
    tape = place(ms(5000), (ms(100), greeting.samples), (ms(2000), reply.samples))
    truth = analyse_bot_tape(tape, tape_offset_ms=5.0, rx_delay_ms=15.0,
                             prompts=[Played(greeting, ms(100)), Played(reply, ms(2000))], first_reply=1,
                             dialled={0: ms(1600)})
    (turn,) = truth
    assert turn.caller_end_ms == 1605.0 and turn.latency_ms == 400.0


def test_the_summary_counts_dtmf_turns() -> None:
    rec = CallRecord(run_id="r", agent_id="a", call_id="c", seq=1, outcome=OUTCOME_COMPLETED,
                     turns=[TurnResult(index=0, ok=True, latency_ms=400.0),
                            TurnResult(index=1, ok=True, latency_ms=420.0, dtmf="12#")])
    s = summarize([rec], run_id="r", scenario_name="s", target="t", concurrency=1, calls_planned=1,
                  started_at=0, ended_at=1, health=GeneratorHealth())
    assert [t.dtmf for t in s.turns] == [0, 1]


@pytest.mark.parametrize("digits", ["1", "#", "D"])
def test_one_digit_lasts_its_duration(digits: str) -> None:
    assert Dtmf(digits, 150, 60).length_ms == 150
