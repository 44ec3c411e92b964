"""The live view of a run: a rich panel on a terminal, one plain line every few seconds otherwise.

The view only renders what it is given: the coordinator builds a `LiveSnapshot` (from the
collector's counters, per-turn histograms and the agents' heartbeats) and calls `update()`,
about once a second. On a terminal (stderr is a TTY) a rich `Live` panel redraws itself twice a
second; elsewhere (CI logs, a file) a `[voiceload] ...` line is printed every `plain_period_s`
seconds and once more at `stop()`, in a fixed format that scripts can parse (one line):

    [voiceload]  12.0s  active 8/8  done 24/40 (24 ok, 0 failed)  3.1 calls/s
        turn p50/p95 ms: 0=433/453 1=412/472  agents 2 ok  MOS p50/worst: 4.41/3.90

The MOS field (the E-model's estimate, core/emodel.py) is there once a finished call carried one.
"""

from __future__ import annotations

import collections
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import TracebackType
from typing import TextIO

from rich import box
from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.panel import Panel
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from voiceload.core.summary import DEFAULT_THRESHOLDS, HealthThresholds

PLAIN_PREFIX = "[voiceload]"
PLAIN_PERIOD_S = 5.0
REFRESH_PER_SECOND = 2
RATE_WINDOW_S = 5.0
MAX_TURN_ROWS = 10  # more turns than this: the first ones are shown, then "+N more"
MAX_AGENT_ROWS = 8  # unhealthy agents first
WIDE_COLUMNS = 80  # from this terminal width on, the turn and agent tables stand side by side
PANEL_WIDTH = 96  # at most; a fixed width keeps the panel from jumping as its content changes

# agent states, worst first
LOST, OVERLOADED, WAITING, OK = "lost", "overloaded", "waiting", "ok"
_STATE_ORDER = {LOST: 0, OVERLOADED: 1, WAITING: 2, OK: 3}
_STATE_STYLE = {LOST: "bold red", OVERLOADED: "bold yellow", WAITING: "dim", OK: "green"}


@dataclass(frozen=True)
class AgentHealth:
    agent_id: str
    active_calls: int
    cpu_percent: float | None  # share of one core over the last heartbeat interval; None: no heartbeat yet
    pump_lag_ms: float | None  # worst event-pump lateness over the last interval; None: no heartbeat yet
    alive: bool  # False once its heartbeats stopped (or its process exited)


@dataclass
class LiveSnapshot:
    elapsed_s: float  # since the run started
    target_concurrency: int
    active_calls: int  # calls in progress now, over all agents
    started: int  # calls placed so far
    completed: int  # calls finished with outcome `completed`
    failed: int  # calls finished with any other outcome
    calls_per_s: float  # finished calls per second over the last RATE_WINDOW_S (see RateMeter)
    turn_p50_ms: Mapping[int, float | None] = field(default_factory=dict)  # turn index -> ms (None: no data)
    turn_p95_ms: Mapping[int, float | None] = field(default_factory=dict)
    agents: list[AgentHealth] = field(default_factory=list)
    mos_p50: float | None = None  # the E-model's MOS over the finished calls it rated (None: none yet)
    mos_worst: float | None = None  # the lowest of them

    @property
    def done(self) -> int:
        return self.completed + self.failed


class RateMeter:
    """Events per second over a sliding window, from a growing total: `rate = meter.observe(now, done)`."""

    def __init__(self, window_s: float = RATE_WINDOW_S) -> None:
        self.window_s = window_s
        self._points: collections.deque[tuple[float, int]] = collections.deque()

    def observe(self, now: float, total: int) -> float:
        self._points.append((now, total))
        # keep one point at or before the window's start, so the rate spans the whole window
        while len(self._points) > 2 and self._points[1][0] <= now - self.window_s:
            self._points.popleft()
        t0, n0 = self._points[0]
        return (total - n0) / (now - t0) if now > t0 else 0.0


def agent_state(agent: AgentHealth, thresholds: HealthThresholds = DEFAULT_THRESHOLDS) -> str:
    """ok / overloaded (over the limits that make a run invalid) / waiting (no heartbeat yet) / lost."""
    if not agent.alive:
        return LOST
    if agent.cpu_percent is None and agent.pump_lag_ms is None:
        return WAITING
    cpu, lag = agent.cpu_percent or 0.0, agent.pump_lag_ms or 0.0
    if cpu > thresholds.max_cpu_percent or lag > thresholds.max_pump_lag_ms:
        return OVERLOADED
    return OK


class LiveView:
    """`with LiveView(40, 8, "demo", target) as view: ... view.update(snapshot) ...`"""

    def __init__(
        self,
        total_calls: int,
        concurrency: int,
        scenario_name: str,
        target: str,
        tty: bool | None = None,
        *,
        console: Console | None = None,
        file: TextIO | None = None,
        plain_period_s: float = PLAIN_PERIOD_S,
        thresholds: HealthThresholds = DEFAULT_THRESHOLDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.total_calls = total_calls
        self.concurrency = concurrency
        self.scenario_name = scenario_name
        self.target = target
        self.tty = sys.stderr.isatty() if tty is None else tty
        self._console = console
        self._file = file
        self.plain_period_s = plain_period_s
        self.thresholds = thresholds
        self._clock = clock
        self._snap = LiveSnapshot(0.0, concurrency, 0, 0, 0, 0, 0.0)
        self._live: Live | None = None
        self._started = False
        self._last_line_at = 0.0
        self._unprinted = False  # a snapshot arrived since the last plain line

    @property
    def console(self) -> Console:
        """The console the TTY panel draws on (stderr): log through it to print above the panel."""
        if self._console is None:
            self._console = Console(stderr=True)
        return self._console

    # -- lifecycle ----------------------------------------------------------------------------

    def start(self) -> None:
        if self._started:
            return
        self._started = True
        self._last_line_at = self._clock()
        if self.tty:
            self._live = Live(console=self.console, get_renderable=self.render_once,
                              refresh_per_second=REFRESH_PER_SECOND, transient=False)
            self._live.start()
        else:
            self._print(f"{PLAIN_PREFIX} run: scenario {self.scenario_name}, target {self.target}, "
                        f"{self.total_calls} calls at concurrency {self.concurrency}")

    def update(self, snapshot: LiveSnapshot) -> None:
        """Show this state (TTY: at the next redraw; plain: in the next line, due every plain_period_s)."""
        self._snap = snapshot
        self._unprinted = True
        if self._started and not self.tty:
            now = self._clock()
            if now - self._last_line_at >= self.plain_period_s:
                self._emit(now)

    def stop(self) -> None:
        """Final redraw (TTY) or final line (plain); the panel stays on screen."""
        if not self._started:
            return
        self._started = False
        if self._live is not None:
            self._live.refresh()
            self._live.stop()
            self._live = None
        elif self._unprinted:
            self._emit(self._clock())

    def __enter__(self) -> LiveView:
        self.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    # -- plain --------------------------------------------------------------------------------

    def _emit(self, now: float) -> None:
        self._last_line_at = now
        self._unprinted = False
        self._print(self.plain_line())

    def _print(self, line: str) -> None:
        out = self._file if self._file is not None else sys.stderr
        print(line, file=out, flush=True)

    def plain_line(self) -> str:
        """The current state as one stable, parseable line (fields separated by two spaces)."""
        s = self._snap
        turns = " ".join(f"{i}={_ms(s.turn_p50_ms.get(i))}/{_ms(s.turn_p95_ms.get(i))}"
                         for i in _turn_indices(s)) or "-"
        mos = f"  MOS p50/worst: {_mos(s.mos_p50)}/{_mos(s.mos_worst)}" if s.mos_p50 is not None else ""
        return (f"{PLAIN_PREFIX}  {s.elapsed_s:.1f}s  active {s.active_calls}/{s.target_concurrency}  "
                f"done {s.done}/{self.total_calls} ({s.completed} ok, {s.failed} failed)  "
                f"{s.calls_per_s:.1f} calls/s  turn p50/p95 ms: {turns}  {self._agents_plain()}{mos}")

    def _agents_plain(self) -> str:
        agents = self._snap.agents
        by_state: dict[str, list[str]] = {}
        for a in agents:
            by_state.setdefault(agent_state(a, self.thresholds), []).append(a.agent_id)
        if len(by_state.get(OK, ())) == len(agents):
            return f"agents {len(agents)} ok" if agents else "agents 0"
        parts = [f"{len(by_state.get(OK, ()))} ok"]
        for state in (OVERLOADED, WAITING, LOST):
            if state in by_state:
                parts.append(f"{len(by_state[state])} {state} ({','.join(sorted(by_state[state]))})")
        return f"agents {len(agents)}: {', '.join(parts)}"

    # -- TTY ----------------------------------------------------------------------------------

    def render_once(self) -> RenderableType:
        """The panel for the current state (what the TTY view draws)."""
        s = self._snap
        total = max(self.total_calls, 1)
        pct = 100.0 * min(s.done / total, 1.0)
        eta = ""
        if s.calls_per_s > 0 and s.done < self.total_calls:
            eta = f"  ETA {_clock((self.total_calls - s.done) / s.calls_per_s)}"
        bar = Table.grid(padding=(0, 2))
        bar.add_row(ProgressBar(total=total, completed=min(s.done, total), width=48),
                    Text(f"{s.done}/{self.total_calls} calls  {pct:.0f} %  {_clock(s.elapsed_s)}{eta}"))

        calls = Text()
        calls.append("active ", style="bold")
        calls.append(f"{s.active_calls}/{s.target_concurrency}",
                     style="bold" if s.active_calls >= s.target_concurrency else "yellow")
        calls.append(f"   started {s.started}   ")
        calls.append(f"completed {s.completed}", style="green")
        calls.append("   ")
        calls.append(f"failed {s.failed}", style="bold red" if s.failed else "")
        calls.append(f"   {s.calls_per_s:.1f} calls/s")
        if s.mos_p50 is not None:  # a line of its own: the calls line fills a narrow panel already
            calls.append("\nquality ", style="bold")
            calls.append(f"MOS p50 {_mos(s.mos_p50)}", style=_mos_style(s.mos_p50))
            calls.append("   worst ")
            calls.append(_mos(s.mos_worst), style=_mos_style(s.mos_worst))
            calls.append("   (E-model estimate)", style="dim")

        tables = Table.grid(padding=(0, 4))
        if self.console.width >= WIDE_COLUMNS:
            tables.add_row(self._turn_table(), self._agent_table())
        else:  # narrow terminal: one above the other
            tables.add_row(self._turn_table())
            tables.add_row(self._agent_table())
        return Panel(Group(bar, calls, Text(), tables), box=box.ROUNDED, padding=(0, 1),
                     width=min(self.console.width, PANEL_WIDTH),
                     title=f"[bold]voiceload[/] · {self.scenario_name} → {self.target}", title_align="left")

    def _turn_table(self) -> Table:
        s = self._snap
        t = Table(box=box.SIMPLE_HEAD, show_edge=False, title="turn latency", title_justify="left")
        t.add_column("turn", justify="right")
        t.add_column("p50 ms", justify="right")
        t.add_column("p95 ms", justify="right")
        indices = _turn_indices(s)
        for i in indices[:MAX_TURN_ROWS]:
            t.add_row(str(i), _ms(s.turn_p50_ms.get(i)), _ms(s.turn_p95_ms.get(i)))
        if len(indices) > MAX_TURN_ROWS:
            t.add_row("…", f"+{len(indices) - MAX_TURN_ROWS} more", "")
        if not indices:
            t.add_row("-", "-", "-")
        return t

    def _agent_table(self) -> Table:
        agents = sorted(self._snap.agents,
                        key=lambda a: (_STATE_ORDER[agent_state(a, self.thresholds)], a.agent_id))
        ok = sum(agent_state(a, self.thresholds) == OK for a in agents)
        lim = self.thresholds
        t = Table(box=box.SIMPLE_HEAD, show_edge=False, title_justify="left", caption_justify="left",
                  title=f"agents {ok}/{len(agents)} ok", caption_style="dim",
                  caption=f"overloaded: cpu > {lim.max_cpu_percent:g} % or lag > {lim.max_pump_lag_ms:g} ms")
        for name in ("agent", "calls", "cpu %", "lag ms"):
            t.add_column(name, justify="left" if name == "agent" else "right")
        t.add_column("state", min_width=len(OVERLOADED))
        for a in agents[:MAX_AGENT_ROWS]:
            state = agent_state(a, self.thresholds)
            t.add_row(a.agent_id, str(a.active_calls), _ms(a.cpu_percent), _ms(a.pump_lag_ms),
                      Text(state, style=_STATE_STYLE[state]))
        if len(agents) > MAX_AGENT_ROWS:
            t.add_row("…", "", "", "", f"+{len(agents) - MAX_AGENT_ROWS} more")
        if not agents:
            t.add_row("-", "", "", "", Text("starting", style="dim"))
        return t


def _turn_indices(s: LiveSnapshot) -> list[int]:
    return sorted(set(s.turn_p50_ms) | set(s.turn_p95_ms))


def _ms(v: float | None) -> str:
    return "-" if v is None else f"{v:.0f}"


def _mos(v: float | None) -> str:
    return "-" if v is None else f"{v:.2f}"


# G.107's user-satisfaction classes: R 80 (MOS 4.03) and up "satisfied", under R 60 (MOS 3.1) "many dissatisfied"
MOS_GOOD, MOS_POOR = 4.03, 3.1


def _mos_style(v: float | None) -> str:
    if v is None:
        return ""
    return "green" if v >= MOS_GOOD else "yellow" if v >= MOS_POOR else "bold red"


def _clock(seconds: float) -> str:
    m, s = divmod(max(int(seconds), 0), 60)
    h, m = divmod(m, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m:02d}:{s:02d}"
