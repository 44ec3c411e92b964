"""The real-time turn-taking state machines, driven by synthetic level polls."""

from __future__ import annotations

import random

import pytest

from voiceload.core.callflow import BotFlow, CallerFlow, Hangup, Play, ThinkTime


def caller(**kw: object) -> CallerFlow:
    args: dict[str, object] = dict(
        utterance_ms=[1000.0, 800.0], max_waits_ms=[2000, 2000], has_greeting=True, greeting_max_wait_ms=3000,
        silence_gap_ms=500, hangup_by="caller", hangup_after_ms=300,
    )
    args.update(kw)
    return CallerFlow(**args)  # type: ignore[arg-type]


def drive(flow: CallerFlow | BotFlow, start: float, end: float, level: int) -> list[tuple[float, object]]:
    out = []
    t = start
    while t < end:
        act = flow.step(t, level)
        if act is not None:
            out.append((t, act))
        t += 5
    return out


def test_caller_walks_the_happy_path() -> None:
    f = caller()
    assert f.on_answer(0) is None
    assert drive(f, 0, 200, 0) == []  # waiting for the greeting
    assert drive(f, 200, 1500, 20) == []  # greeting playing
    acts = drive(f, 1500, 2100, 0)  # silence gap, then turn 0
    assert acts == [(1995, Play(0))]  # last loud poll 1495 + 500 gap
    assert drive(f, 2100, 3000, 0) == []  # our utterance plays (no bot speech expected)
    assert drive(f, 3000, 3600, 20) == []  # reply
    acts = drive(f, 3600, 4200, 0)
    assert acts == [(4095, Play(1))]
    drive(f, 4200, 5000, 0)
    drive(f, 5000, 6000, 20)
    acts = drive(f, 6000, 7000, 0)
    assert acts == [(6495, Hangup(None))]
    assert f.failure is None


def test_caller_gives_up_when_the_bot_stays_silent() -> None:
    f = caller(greeting_max_wait_ms=1000)
    f.on_answer(0)
    acts = drive(f, 0, 2000, 0)
    assert len(acts) == 1 and isinstance(acts[0][1], Hangup)
    assert "greeting did not start" in (f.failure or "")


def test_bot_hangup_expected_and_early() -> None:
    f = caller(hangup_by="bot", utterance_ms=[500.0])
    f.on_answer(0)
    drive(f, 0, 1000, 20)
    drive(f, 1000, 1505, 0)  # -> Play(0)
    drive(f, 1505, 2100, 0)
    drive(f, 2100, 2600, 20)
    drive(f, 2600, 3200, 0)
    f.on_remote_hangup()
    assert f.failure is None
    early = caller()
    early.on_answer(0)
    early.on_remote_hangup()
    assert "hung up early" in (early.failure or "")


def test_think_time_parse_and_bounds() -> None:
    assert ThinkTime.parse("400") == ThinkTime(400.0, 0.0)
    assert ThinkTime.parse("900:300") == ThinkTime(900.0, 300.0)
    for bad in ("x", "1:2:3", "100:200", "-5"):
        with pytest.raises(ValueError):
            ThinkTime.parse(bad)
    rng = random.Random(1)
    draws = [ThinkTime(900, 300).sample(rng) for _ in range(500)]
    assert min(draws) >= 600 and max(draws) <= 1200


def test_bot_replies_think_time_after_the_caller_ends() -> None:
    b = BotFlow(prompt_ms=[1000.0, 500.0], has_greeting=True, n_turns=1, think=ThinkTime(400), endpoint_ms=300,
                hangup_by="bot", hangup_after_ms=200, rng=random.Random(0))
    b.on_answer(0)
    acts = drive(b, 0, 1300, 0)
    assert acts == [(200, Play(0))]
    drive(b, 1300, 2000, 30)  # caller speaks until 1995
    acts = drive(b, 2000, 3000, 0)
    assert acts == [(2395, Play(1))]  # last loud poll at 1995 + 400 think
    acts = drive(b, 3000, 4000, 0)
    assert acts == [(3095, Hangup(None))]  # reply ends 2895 + 200
    assert b.think_ms == [400.0]


def drive_heard(
    flow: CallerFlow, start: float, end: float, loud: list[tuple[float, float]]
) -> list[tuple[float, object]]:
    """Step only when `next_check_ms` says so (as the agent does), hearing the bot in the `loud` spans (ms)."""
    out = []
    t = start
    while t < end:
        heard = [min(t, b) for a, b in loud if a <= t]
        act = flow.step_heard(t, max(heard) if heard else None)
        if act is not None:
            out.append((t, act))
        t = max(t + 5, flow.next_check_ms(t))
    return out


def test_caller_stepped_only_when_due_walks_the_same_path() -> None:
    f = caller()
    assert f.on_answer(0) is None
    greeting, reply0, reply1 = (200, 1495), (3000, 3595), (5000, 5995)
    acts = drive_heard(f, 0, 7000, [greeting, reply0, reply1])
    # the same actions at the same times as the level-polled walk: last loud + the 500 ms gap
    assert acts == [(1995, Play(0)), (4095, Play(1)), (6495, Hangup(None))]
    assert f.failure is None


def test_caller_stepped_when_due_checks_sparsely() -> None:
    f = caller()
    f.on_answer(0)
    assert f.next_check_ms(0) == 100  # waiting for the greeting: a look every 100 ms
    f.step_heard(300, 250)  # the bot spoke at 250 ms
    assert f.next_check_ms(300) == 750  # the gap can end at the earliest 500 ms after its last loud packet
    assert f.step_heard(750, 700) is None  # it was still speaking at 700
    assert f.next_check_ms(750) == 1200
    assert f.step_heard(1200, 700) == Play(0)
    assert f.next_check_ms(1200) == 2200  # the utterance's end


def test_caller_stepped_when_due_ignores_what_it_heard_before_its_own_turn() -> None:
    f = caller(utterance_ms=[1000.0], hangup_by="bot")
    f.on_answer(0)
    f.step_heard(100, 90)
    assert f.step_heard(600, 90) == Play(0)
    f.step_heard(1600, 90)  # utterance over: listening again from 1600
    # no bot speech after 1600: the old loud packet at 90 ms must not count as a reply
    acts = drive_heard(f, 1605, 5000, [(0, 90)])
    assert len(acts) == 1 and isinstance(acts[0][1], Hangup) and "did not start in time" in (f.failure or "")


def test_caller_ignores_early_media_unless_it_listens() -> None:
    """Speech heard before the answer is not the greeting, unless the scenario says `early_media: listen`."""
    f = caller()
    assert f.on_answer(1000) is None
    assert f.step_heard(1200, 900) is None  # loud at 900 ms: before the 200 OK, an announcement
    assert f.step_heard(2000, 900) is None and f.state.value == "wait_bot"  # still waiting for the greeting
    g = caller()
    assert g.on_answer(1000, listen_from=0) is None  # media since 0 counts
    assert g.step_heard(1100, 900) is None and g.state.value == "bot_speaking"
    assert g.step_heard(1400, 900) == Play(0)  # the greeting ended before the answer: speak 500 ms after it


def test_a_hold_while_waiting_for_the_reply_is_not_a_missing_reply() -> None:
    f = caller(greeting_max_wait_ms=3000)
    f.on_answer(0)
    f.step_heard(100, 100)
    assert f.step_heard(700, 100) == Play(0)  # utterance 0: 700..1700
    assert f.step_heard(1700, None) is None  # waiting for the reply until 1700 + 2000 + slack
    f.set_held(True, 1800)
    assert f.next_check_ms(1800) == 1900
    assert f.step_heard(3000, 2500) is None  # hold music is loud: not the reply
    assert f.step_heard(9000, 2500) is None  # long past the deadline: on hold, no giving up
    f.set_held(False, 9000)
    assert f.failure is None and f.state.value == "wait_bot"
    assert f.step_heard(9100, 2500) is None and f.state.value == "wait_bot"  # heard on hold: still not it
    assert f.step_heard(9200, 9150) is None and f.state.value == "bot_speaking"  # the reply after the hold
    assert f.step_heard(9700, 9150) == Play(1)


def test_the_reply_deadline_moves_by_the_hold() -> None:
    f = caller(greeting_max_wait_ms=3000)
    f.on_answer(0)
    f.step_heard(100, 100)
    f.step_heard(700, 100)
    f.step_heard(1700, None)  # deadline 1700 + 2000 + 250 = 3950
    f.set_held(True, 2000)
    f.set_held(False, 5000)  # held 3 s: the deadline is 6950
    assert f.step_heard(6900, None) is None and f.failure is None
    assert isinstance(f.step_heard(6960, None), Hangup)
    assert f.failure == "no bot speech: reply to turn 0 did not start in time"
