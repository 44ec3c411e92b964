"""The live view: the plain line's format and cadence (CI logs), and the rich panel on a recorded console."""

from __future__ import annotations

import io
import re
import sys

import pytest
from rich.console import Console

from voiceload.core.summary import HealthThresholds
from voiceload.run.live import (
    LOST,
    OK,
    OVERLOADED,
    WAITING,
    AgentHealth,
    LiveSnapshot,
    LiveView,
    RateMeter,
    agent_state,
)

TARGET = "sip:bot@127.0.0.1:5080"

# The contract of a plain line: scripts may parse it with this expression.
PLAIN = re.compile(
    r"\[voiceload\]  (?P<elapsed>\d+\.\d)s  active (?P<active>\d+)/(?P<target>\d+)  "
    r"done (?P<done>\d+)/(?P<total>\d+) \((?P<ok>\d+) ok, (?P<failed>\d+) failed\)  "
    r"(?P<rate>\d+\.\d) calls/s  turn p50/p95 ms: (?P<turns>-|(?:\d+=(?:\d+|-)/(?:\d+|-) ?)+)  "
    r"agents (?P<agents>.+?)(?:  MOS p50/worst: (?P<mos>\d\.\d\d|-)/(?P<mos_worst>\d\.\d\d|-))?"
)


def agent(aid: str, cpu: float | None = 40.0, lag: float | None = 6.0, alive: bool = True,
          calls: int = 4) -> AgentHealth:
    return AgentHealth(agent_id=aid, active_calls=calls, cpu_percent=cpu, pump_lag_ms=lag, alive=alive)


def snap(**kw: object) -> LiveSnapshot:
    base: dict[str, object] = dict(
        elapsed_s=12.04, target_concurrency=8, active_calls=8, started=32, completed=24, failed=0,
        calls_per_s=3.14, turn_p50_ms={0: 433.2, 1: 411.6}, turn_p95_ms={0: 453.0, 1: 472.4},
        agents=[agent("a0"), agent("a1")],
    )
    base.update(kw)
    return LiveSnapshot(**base)  # type: ignore[arg-type]


class FakeClock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def plain_view(clock: FakeClock | None = None) -> tuple[LiveView, io.StringIO]:
    out = io.StringIO()
    view = LiveView(40, 8, "demo", TARGET, tty=False, file=out, clock=clock or FakeClock())
    return view, out


# --- plain mode ----------------------------------------------------------------------------------


def test_plain_line_format() -> None:
    view, _ = plain_view()
    view.update(snap())
    line = view.plain_line()
    assert line == ("[voiceload]  12.0s  active 8/8  done 24/40 (24 ok, 0 failed)  3.1 calls/s  "
                    "turn p50/p95 ms: 0=433/453 1=412/472  agents 2 ok")
    m = PLAIN.fullmatch(line)
    assert m is not None
    assert (m["done"], m["total"], m["turns"], m["agents"]) == ("24", "40", "0=433/453 1=412/472", "2 ok")


@pytest.mark.parametrize(("kw", "turns", "agents"), [
    (dict(turn_p50_ms={}, turn_p95_ms={}, agents=[]), "-", "0"),
    (dict(turn_p50_ms={0: None, 1: 400.0}, turn_p95_ms={0: None, 1: 420.0}), "0=-/- 1=400/420", "2 ok"),
    (dict(turn_p50_ms={1: 400.0}, turn_p95_ms={0: 420.0}), "0=-/420 1=400/-", "2 ok"),
    (dict(agents=[agent("a0"), agent("a1", cpu=93.0), agent("a2", alive=False), agent("a3", cpu=None, lag=None)]),
     "0=433/453 1=412/472", "4: 1 ok, 1 overloaded (a1), 1 waiting (a3), 1 lost (a2)"),
    (dict(agents=[agent("b", lag=150.0), agent("a", lag=101.0)]), "0=433/453 1=412/472", "2: 0 ok, 2 overloaded (a,b)"),
])
def test_plain_line_variants_stay_parseable(kw: dict[str, object], turns: str, agents: str) -> None:
    view, _ = plain_view()
    view.update(snap(failed=3, completed=21, **kw))
    m = PLAIN.fullmatch(view.plain_line())
    assert m is not None, view.plain_line()
    assert (m["turns"], m["agents"], m["ok"], m["failed"], m["done"]) == (turns, agents, "21", "3", "24")


def test_plain_cadence_header_every_period_and_a_final_line() -> None:
    clock = FakeClock()
    view, out = plain_view(clock)
    with view:
        for step in range(1, 23):  # 11 s of updates, two a second
            clock.t += 0.5
            view.update(snap(elapsed_s=step * 0.5, completed=step))
    lines = out.getvalue().splitlines()
    assert lines[0] == f"[voiceload] run: scenario demo, target {TARGET}, 40 calls at concurrency 8"
    assert [PLAIN.fullmatch(x)["elapsed"] for x in lines[1:]] == ["5.0", "10.0", "11.0"]  # type: ignore[index]


def test_plain_stop_does_not_repeat_an_already_printed_line() -> None:
    clock = FakeClock()
    view, out = plain_view(clock)
    view.start()
    clock.t += 5
    view.update(snap())
    view.stop()
    view.stop()  # idempotent
    assert len(out.getvalue().splitlines()) == 2


def test_no_output_before_start() -> None:
    view, out = plain_view()
    view.update(snap())
    assert out.getvalue() == ""


def test_tty_is_detected_from_stderr(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "stderr", io.StringIO())
    assert LiveView(1, 1, "s", TARGET).tty is False


# --- TTY mode ------------------------------------------------------------------------------------


def recorded(width: int = 100) -> Console:
    return Console(record=True, width=width, file=io.StringIO(), force_terminal=True, color_system="truecolor")


def test_panel_renders_every_part() -> None:
    console = recorded()
    view = LiveView(40, 8, "demo", TARGET, tty=True, console=console)
    view.update(snap(failed=2, completed=22, agents=[agent("a0"), agent("a1", cpu=91.0, lag=128.0)]))
    console.print(view.render_once())
    text = console.export_text(clear=False)
    for part in ("voiceload · demo → sip:bot@127.0.0.1:5080", "24/40 calls", "60 %", "00:12", "ETA 00:05",
                 "active 8/8", "started 32", "completed 22", "failed 2", "3.1 calls/s",
                 "turn latency", "agents 1/2 ok", "overloaded: cpu > 85 % or lag > 100 ms"):
        assert part in text, part
    rows = {line.split()[1]: line.split()[2:] for line in text.splitlines() if re.match(r"│\s+[01]\s", line)}
    assert rows["0"][:2] == ["433", "453"] and rows["1"][:2] == ["412", "472"]
    assert re.search(r"a1\s+4\s+91\s+128\s+overloaded", text)
    assert re.search(r"a0\s+4\s+40\s+6\s+ok", text)
    assert "\x1b[" in console.export_text(styles=True)  # coloured on a terminal


def test_panel_before_any_update_and_with_many_turns_and_agents() -> None:
    console = recorded()
    view = LiveView(1000, 100, "big", TARGET, tty=True, console=console)
    console.print(view.render_once())
    empty = console.export_text()
    assert "0/1000 calls" in empty and "starting" in empty and "ETA" not in empty
    many = {i: 400.0 + i for i in range(30)}
    view.update(snap(turn_p50_ms=many, turn_p95_ms=many, agents=[agent(f"a{i:02d}") for i in range(12)]
                     + [agent("zz", alive=False)]))
    console.print(view.render_once())
    text = console.export_text()
    assert "+20 more" in text and "+5 more" in text
    assert re.search(r"zz\s.*lost", text)  # unhealthy agents are listed first, never cut off


def test_narrow_terminal_stacks_the_tables() -> None:
    console = recorded(width=60)
    view = LiveView(40, 8, "demo", TARGET, tty=True, console=console)
    view.update(snap())
    console.print(view.render_once())
    lines = console.export_text().splitlines()
    assert max(len(x) for x in lines) <= 60
    turn_title = next(i for i, x in enumerate(lines) if "turn latency" in x)
    agent_title = next(i for i, x in enumerate(lines) if "agents 2/2 ok" in x)
    assert agent_title > turn_title + 2


def test_tty_lifecycle_draws_the_latest_snapshot() -> None:
    console = recorded()
    with LiveView(40, 8, "demo", TARGET, tty=True, console=console) as view:
        view.update(snap(completed=39, failed=1, active_calls=0))
    text = console.export_text()
    assert "40/40 calls" in text and "100 %" in text and "failed 1" in text


# --- helpers -------------------------------------------------------------------------------------


def test_agent_state() -> None:
    assert agent_state(agent("a")) == OK
    assert agent_state(agent("a", cpu=85.0, lag=100.0)) == OK  # limits are inclusive, as in summary.py
    assert agent_state(agent("a", cpu=85.1)) == OVERLOADED
    assert agent_state(agent("a", lag=100.1)) == OVERLOADED
    assert agent_state(agent("a", cpu=None, lag=None)) == WAITING
    assert agent_state(agent("a", cpu=99.0, alive=False)) == LOST
    assert agent_state(agent("a", cpu=60.0), HealthThresholds(max_cpu_percent=50.0)) == OVERLOADED


def test_rate_meter_uses_the_last_window() -> None:
    meter = RateMeter(window_s=5.0)
    assert meter.observe(0.0, 0) == 0.0
    for t in range(1, 11):  # 10 calls/s for 10 s
        rate = meter.observe(float(t), 10 * t)
    assert rate == pytest.approx(10.0)
    for t in range(11, 17):  # then nothing finishes
        rate = meter.observe(float(t), 100)
    assert rate == 0.0
    assert meter.observe(16.5, 105) == pytest.approx(5 / 5.5)


def test_call_quality_in_the_plain_line_and_the_panel() -> None:
    view, _ = plain_view()
    view.update(snap())
    assert "MOS" not in view.plain_line()  # no call rated yet: the field is left out
    view.update(snap(mos_p50=4.41, mos_worst=3.0))
    m = PLAIN.fullmatch(view.plain_line())
    assert m is not None, view.plain_line()
    assert (m["agents"], m["mos"], m["mos_worst"]) == ("2 ok", "4.41", "3.00")
    assert view.plain_line().endswith("agents 2 ok  MOS p50/worst: 4.41/3.00")

    console = recorded()
    tty = LiveView(40, 8, "demo", TARGET, tty=True, console=console)
    tty.update(snap(mos_p50=4.41, mos_worst=3.0))
    console.print(tty.render_once())
    plain = console.export_text(clear=False)
    assert re.search(r"quality MOS p50 4\.41\s+worst 3\.00", plain), plain
    assert "\x1b[1;31m3.00" in console.export_text(styles=True)  # a poor call shows red
