"""The coordinator: owns a run from validation to the run dir.

Validate everything the user gave (scenario, recordings, target, broker) before a single call;
start the embedded broker when none was given; spawn as many agent processes as the pjsua2
build's per-process call limit requires; assign each its share of concurrency and calls; let
the collector gather one record per placed call; stop everything; return the summary.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import subprocess
import sys
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from voiceload import bus
from voiceload.agent import ScenarioAudio
from voiceload.bot import call_limit
from voiceload.broker import EmbeddedBroker
from voiceload.collector import SUMMARY_FILE, Collector, write_summary
from voiceload.errors import UserError
from voiceload.live import AgentHealth, LiveSnapshot, LiveView, RateMeter
from voiceload.messages import AgentState, Assign
from voiceload.report import write_reports
from voiceload.scenario import Scenario, load_scenario
from voiceload.siplite import parse_sip_uri, probe_target
from voiceload.slo import Slo, evaluate, exit_code, parse_slos

log = logging.getLogger("voiceload.coordinator")

AGENT_READY_TIMEOUT_S = 30.0
LIVE_PERIOD_S = 0.5


@dataclass
class RunSettings:
    scenario_path: Path
    target: str
    concurrency: int
    calls: int
    out_dir: Path
    broker_url: str | None = None
    run_id: str = ""
    keep_tapes: bool = False
    agent_limit: int | None = None  # calls per agent; None: the pjsua2 build's limit
    progress: bool = True
    slos: list[str] = field(default_factory=list)  # --slo expressions, added to the scenario's

    def __post_init__(self) -> None:
        if not self.run_id:
            self.run_id = time.strftime("%Y%m%d-%H%M%S-") + uuid.uuid4().hex[:6]


def split(total: int, parts: int) -> list[int]:
    """`total` as `parts` near-equal integers (first ones larger)."""
    base, extra = divmod(total, parts)
    return [base + (1 if i < extra else 0) for i in range(parts)]


def estimate_call_s(scenario: Scenario, sa: ScenarioAudio) -> float:
    """A generous upper estimate of one call's duration, for the run's deadline."""
    total = float(scenario.answer_timeout_ms)
    if scenario.greeting is not None and sa.greeting is not None:
        total += scenario.greeting.max_wait_ms + len(sa.greeting.samples) / 8
    for wait, utt, reply in zip(sa.reply_waits_ms, sa.utterances, sa.replies, strict=True):
        total += len(utt.samples) / 8 + scenario.silence_gap_ms
        total += wait + (len(reply.samples) / 8 if reply else 3000)
    total += scenario.hangup_after_ms + 5000
    return min(total, scenario.max_call_ms + scenario.answer_timeout_ms) / 1000


def validate(settings: RunSettings) -> tuple[Scenario, ScenarioAudio, tuple[Slo, ...]]:
    """Every check that needs no network: raises UserError (exit 2) before anything starts."""
    if settings.concurrency < 1:
        raise UserError(f"--concurrency {settings.concurrency}: must be at least 1")
    if settings.calls < 1:
        raise UserError(f"--calls {settings.calls}: must be at least 1")
    scenario = load_scenario(settings.scenario_path)
    sa = ScenarioAudio.load(scenario)
    if settings.broker_url is not None:
        bus.parse_broker_url(settings.broker_url)
    parse_sip_uri(settings.target)
    if (settings.out_dir / "calls.jsonl").exists():
        raise UserError(f"--out {settings.out_dir}: holds an earlier run's calls.jsonl; use a fresh directory")
    slos = parse_slos([*scenario.slos, *settings.slos])
    for slo in slos:
        problem = slo.problem_with(turns=len(scenario.turns), greeting=scenario.greeting is not None)
        if problem:
            raise UserError(problem)
    return scenario, sa, slos


async def run_async(settings: RunSettings) -> dict[str, Any]:
    """The whole run; returns summary.json's content, SLO verdicts included under `slo`."""
    scenario, sa, slos = validate(settings)
    await probe_target(settings.target)
    broker: EmbeddedBroker | None = None
    if settings.broker_url is None:
        broker = EmbeddedBroker()
        broker.start()
        address = broker.address
    else:
        address = bus.parse_broker_url(settings.broker_url)
        await bus.check_broker(address)
    try:
        summary = await _orchestrate(settings, scenario, sa, address)
    finally:
        if broker is not None:
            broker.stop()
    results = evaluate(slos, summary)
    summary["slo"] = [asdict(r) for r in results]
    summary["exit_code"] = exit_code(summary, results)
    write_summary(settings.out_dir / SUMMARY_FILE, summary)
    write_reports(settings.out_dir, slo_results=results)
    return summary


async def _orchestrate(
    settings: RunSettings, scenario: Scenario, sa: ScenarioAudio, address: bus.BrokerAddress
) -> dict[str, Any]:
    limit = settings.agent_limit or call_limit()
    n_agents = max(1, math.ceil(settings.concurrency / limit))
    n_agents = min(n_agents, settings.calls)
    settings.out_dir.mkdir(parents=True, exist_ok=True)
    rounds = math.ceil(settings.calls / settings.concurrency)
    deadline_s = rounds * estimate_call_s(scenario, sa) * 1.5 + 60
    run_id = settings.run_id
    log.info("run %s: %d agents x <=%d calls, deadline %.0f s", run_id, n_agents, limit, deadline_s)

    collector = Collector()
    async with bus.Bus(address, client_id=f"vl-coord-{run_id}") as b:
        await b.subscribe(bus.topic_agent_state(run_id))
        # given the address, the collector keeps a persistent session: it survives reconnects
        collect_task = asyncio.create_task(
            collector.run(
                address, run_id=run_id, out_dir=settings.out_dir, expected_calls=settings.calls,
                deadline_s=deadline_s, scenario_name=scenario.name, target=settings.target,
                concurrency=settings.concurrency,
            )
        )
        await asyncio.wait_for(collector.ready.wait(), 10)  # subscribed before any agent can publish
        agent_ids = [f"a{i}" for i in range(n_agents)]
        procs = {aid: _spawn_agent(settings, aid, address, limit) for aid in agent_ids}
        fleet = Fleet(run_id, limit, procs, collector, b)
        progress = asyncio.create_task(_live(collector, fleet, settings, scenario)) if settings.progress else None
        watcher: asyncio.Task[None] | None = None
        try:
            await _await_ready(b, run_id, agent_ids, list(procs.values()))
            for aid, conc, calls in zip(
                agent_ids, split(settings.concurrency, n_agents), split(settings.calls, n_agents), strict=True
            ):
                fleet.assigned[aid] = [conc, calls]
                await fleet.send(aid)
            watcher = asyncio.create_task(fleet.watch())
            summary = await collect_task
        finally:
            for task in (progress, watcher):
                if task is not None:
                    task.cancel()
            for aid in agent_ids:
                with contextlib.suppress(Exception):
                    await b.publish(bus.topic_control(run_id, aid), Assign(run_id, aid, 0, 0, stop=True), qos=1,
                                    timeout_s=5)
            await _reap(list(procs.values()))
            if not collect_task.done():
                collect_task.cancel()
    return summary


class Fleet:
    """The run's agent processes: who has which share, and what happens when one dies."""

    def __init__(self, run_id: str, limit: int, procs: dict[str, subprocess.Popen[bytes]], collector: Collector,
                 b: bus.Bus) -> None:
        self.run_id, self.limit, self.procs, self.collector, self.bus = run_id, limit, procs, collector, b
        self.assigned: dict[str, list[int]] = {}  # agent -> [concurrency, calls]
        self.alive = set(procs)  # still running
        self.lost: set[str] = set()  # exited with an error or killed

    async def send(self, aid: str) -> None:
        conc, calls = self.assigned[aid]
        await self.bus.publish(bus.topic_control(self.run_id, aid), Assign(self.run_id, aid, conc, calls), qos=1)

    async def watch(self) -> None:
        """An agent process that exits with an error (or is killed) is lost: record and replace its share."""
        while True:
            await asyncio.sleep(0.5)
            for aid in sorted(self.alive):
                code = self.procs[aid].poll()
                if code is None:
                    continue
                self.alive.discard(aid)
                if code != 0:
                    self.lost.add(aid)
                    await self._lost(aid, code)

    async def _lost(self, aid: str, code: int) -> None:
        state = self.collector.agent_states.get(aid)
        added, placed = self.collector.mark_agent_lost(aid, state.placed if state else 0)
        conc, calls = self.assigned.get(aid, [0, 0])
        remaining = max(0, calls - placed)
        self.assigned[aid] = [0, placed]
        survivors = sorted(self.alive)
        print(f"[voiceload] agent {aid} lost (exit code {code}): {added} calls recorded as agent_lost; "
              f"{remaining} unplaced calls move to {', '.join(survivors) or 'no agent'}", file=sys.stderr, flush=True)
        if not survivors:
            self.collector.expected_calls -= remaining
            if self.collector.received >= self.collector.expected_calls:
                self.collector.finish()
            return
        for sid, extra_conc, extra_calls in zip(
            survivors, split(conc, len(survivors)), split(remaining, len(survivors)), strict=True
        ):
            share = self.assigned[sid]
            share[0] = min(self.limit, share[0] + extra_conc)
            share[1] += extra_calls
            try:
                await self.send(sid)
            except bus.BusError as exc:
                log.error("could not reassign to agent %s: %s", sid, exc)


def _spawn_agent(
    settings: RunSettings, agent_id: str, address: bus.BrokerAddress, limit: int
) -> subprocess.Popen[bytes]:
    cmd = [
        sys.executable, "-m", "voiceload", "agent", "--run-id", settings.run_id, "--agent-id", agent_id,
        "--scenario", str(settings.scenario_path), "--target", settings.target, "--broker", address.url,
        "--max-calls", str(limit),
    ]
    if settings.keep_tapes:
        cmd += ["--keep-tapes", "--tape-dir", str(settings.out_dir / "tapes")]
    # agents' own messages go to the run dir: the terminal belongs to the live view
    logs = settings.out_dir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    with open(logs / f"agent-{agent_id}.log", "ab") as log_file:
        return subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log_file, stderr=subprocess.STDOUT)


async def _await_ready(b: bus.Bus, run_id: str, agent_ids: list[str], procs: list[subprocess.Popen[bytes]]) -> None:
    waiting = set(agent_ids)

    async def listen() -> None:
        async for _topic, payload in b.messages():
            st = AgentState.parse_or_warn(payload, log)
            if st is None:
                continue
            if st.run_id == run_id and st.state == "ready":
                waiting.discard(st.agent_id)
                if not waiting:
                    return
            elif st.state == "error":
                raise RuntimeError(f"agent {st.agent_id} failed: {st.detail}")

    task = asyncio.create_task(listen())
    end = time.monotonic() + AGENT_READY_TIMEOUT_S
    while not task.done():
        dead = [p for p in procs if p.poll() is not None]
        if dead:
            task.cancel()
            raise RuntimeError(f"an agent process exited during start-up (exit code {dead[0].returncode})")
        if time.monotonic() > end:
            task.cancel()
            raise RuntimeError(f"agents not ready after {AGENT_READY_TIMEOUT_S:.0f} s: {sorted(waiting)}")
        await asyncio.sleep(0.05)
    task.result()


async def _reap(procs: list[subprocess.Popen[bytes]], timeout_s: float = 15.0) -> None:
    end = time.monotonic() + timeout_s
    while any(p.poll() is None for p in procs) and time.monotonic() < end:
        await asyncio.sleep(0.1)
    for p in procs:
        if p.poll() is None:
            p.terminate()
    for p in procs:
        try:
            p.wait(5)
        except subprocess.TimeoutExpired:
            p.kill()


async def _live(collector: Collector, fleet: Fleet, settings: RunSettings, scenario: Scenario) -> None:
    """Feed the live view from the collector's records and the agents' latest heartbeats."""
    started = time.monotonic()
    rate = RateMeter()
    with LiveView(settings.calls, settings.concurrency, scenario.name, settings.target) as view:
        while True:
            now = time.monotonic()
            latest = collector.latest_heartbeats
            agents = [
                AgentHealth(aid, hb.active_calls if hb else 0, hb.cpu_percent if hb else None,
                            hb.pump_lag_ms_max if hb else None, alive=aid not in fleet.lost)
                for aid in sorted(fleet.procs) for hb in [latest.get(aid)]
            ]
            turns = collector.turn_percentiles()
            view.update(LiveSnapshot(
                elapsed_s=now - started, target_concurrency=settings.concurrency,
                active_calls=sum(a.active_calls for a in agents if a.alive),
                started=sum(hb.placed for hb in latest.values()),
                completed=collector.completed, failed=collector.failed,
                calls_per_s=rate.observe(now, collector.received),
                turn_p50_ms={i: p["p50"] for i, p in turns.items()},
                turn_p95_ms={i: p["p95"] for i, p in turns.items()},
                agents=agents,
            ))
            await asyncio.sleep(LIVE_PERIOD_S)


def run(settings: RunSettings) -> dict[str, Any]:
    return asyncio.run(run_async(settings))
