"""Turn timing from synthetic tapes whose truth is known to the sample."""

from __future__ import annotations

from tests.test_vad import place, tone
from voiceload.audio.analysis import Played, Reference, analyse_bot_tape, analyse_caller_tape


def ms(n: float) -> int:
    return round(n * 8)


def test_caller_tape_latency_is_exact_and_rx_delay_is_removed() -> None:
    greeting, utt, reply = Reference.of(tone(ms(1500))), Reference.of(tone(ms(1200), seed=1)), Reference.of(
        tone(ms(1000), seed=2)
    )
    rx_delay_ms = 25.0
    # wire: greeting at 100 ms; caller speaks at 2000 ms; bot replies 437.5 ms after the caller ends
    utt_at = ms(2000)
    reply_wire = 2000 + 1200 + 437.5
    tape = place(
        ms(6000),
        (ms(100 + rx_delay_ms), greeting.samples),
        (utt_at, utt.samples),
        (ms(reply_wire + rx_delay_ms), reply.samples),
    )
    res = analyse_caller_tape(
        tape, tape_offset_ms=10.0, rx_delay_ms=rx_delay_ms, greeting=greeting, greeting_max_wait_ms=3000,
        utterances=[Played(utt, utt_at + 37)],  # the wall-clock estimate is off; correlation fixes it
        replies=[reply], max_waits_ms=[3000],
    )
    assert res.greeting is not None and res.greeting.ok
    assert res.greeting.bot_onset_ms == 110.0
    (turn,) = res.turns
    assert turn.ok, turn.reason
    assert turn.latency_ms == 437.5
    assert turn.utterance_end_ms == 10.0 + 3200.0
    assert turn.bot_onset_ms == 10.0 + reply_wire
    assert turn.prompt_score is not None and turn.prompt_score > 0.99


def test_caller_tape_flags_wrong_prompt_and_missing_reply() -> None:
    utt, reply, wrong = (Reference.of(tone(ms(800), seed=s, freq=f)) for s, f in ((1, 300), (2, 300), (3, 170)))
    tape = place(ms(4000), (ms(500), utt.samples), (ms(1800), wrong.samples))
    res = analyse_caller_tape(
        tape, tape_offset_ms=0, rx_delay_ms=0, greeting=None, greeting_max_wait_ms=0,
        utterances=[Played(utt, ms(500))], replies=[reply], max_waits_ms=[3000],
    )
    assert not res.turns[0].ok and "does not match" in (res.turns[0].reason or "")
    silent = place(ms(4000), (ms(500), utt.samples))
    res = analyse_caller_tape(
        silent, tape_offset_ms=0, rx_delay_ms=0, greeting=None, greeting_max_wait_ms=0,
        utterances=[Played(utt, ms(500))], replies=[reply], max_waits_ms=[3000],
    )
    assert res.turns[0].reason == "no bot speech after turn 0"


def test_bot_tape_truth() -> None:
    greeting, reply = Reference.of(tone(ms(1000))), Reference.of(tone(ms(900), seed=4))
    caller = tone(ms(1300), seed=5)
    rx_delay_ms = 15.0
    caller_wire_end = 1400 + 1300
    reply_at = ms(caller_wire_end + 512.5)
    tape = place(
        ms(5000), (ms(100), greeting.samples), (ms(1400 + rx_delay_ms), caller), (reply_at, reply.samples)
    )
    truth = analyse_bot_tape(
        tape, tape_offset_ms=5.0, rx_delay_ms=rx_delay_ms,
        prompts=[Played(greeting, ms(100)), Played(reply, reply_at - 50)], first_reply=1,
    )
    assert len(truth) == 1
    assert truth[0].index == 0
    assert truth[0].latency_ms == 512.5
    assert truth[0].caller_end_ms == 5.0 + caller_wire_end


def test_clock_slip_is_the_worst_player_offset_from_wall_time() -> None:
    utt = Reference.of(tone(ms(800), seed=1))
    tape = place(ms(4000), (ms(500), utt.samples), (ms(2500), utt.samples))
    res = analyse_caller_tape(
        tape, tape_offset_ms=0, rx_delay_ms=0, greeting=None, greeting_max_wait_ms=0,
        utterances=[Played(utt, ms(510)), Played(utt, ms(2420))], replies=[None, None], max_waits_ms=[3000, 3000],
    )
    assert res.clock_slip_ms == 80.0  # the second player landed 80 ms before wall time said


def test_early_media_is_no_greeting_unless_listened_to() -> None:
    """The tape starts at a 183 (2 s before the 200 OK): an announcement there is not the greeting."""
    early, greeting = Reference.of(tone(ms(800), seed=4)), Reference.of(tone(ms(1000), seed=5))
    tape = place(ms(5000), (ms(300), early.samples), (ms(2400), greeting.samples))
    kw = dict(rx_delay_ms=0, greeting_max_wait_ms=3000, utterances=[], replies=[], max_waits_ms=[])
    res = analyse_caller_tape(tape, tape_offset_ms=-2000.0, greeting=greeting, listen_from=ms(2000), **kw)  # type: ignore[arg-type]
    assert res.greeting is not None and res.greeting.ok and res.greeting.bot_onset_ms == 400.0
    res = analyse_caller_tape(tape, tape_offset_ms=-2000.0, greeting=early, listen_from=0, **kw)  # type: ignore[arg-type]
    assert res.greeting is not None and res.greeting.ok and res.greeting.bot_onset_ms == -1700.0


def test_music_on_hold_is_no_reply_and_the_hold_is_not_latency() -> None:
    utt, music, reply = (Reference.of(tone(ms(n), seed=s)) for n, s in ((1000, 6), (1500, 7), (900, 8)))
    # caller speaks 500..1500; held 1800..4800 with music at 2000; the reply at 5000
    tape = place(ms(7000), (ms(500), utt.samples), (ms(2000), music.samples), (ms(5000), reply.samples))
    res = analyse_caller_tape(
        tape, tape_offset_ms=0, rx_delay_ms=0, greeting=None, greeting_max_wait_ms=0,
        utterances=[Played(utt, ms(500))], replies=[reply], max_waits_ms=[1000], holds=[(ms(1800), ms(4800))],
    )
    (turn,) = res.turns
    assert turn.ok, turn.reason
    assert turn.bot_onset_ms == 5000.0
    assert turn.held_ms == 3000.0 and turn.latency_ms == 500.0  # 3500 on the wire, 3000 of it on hold
