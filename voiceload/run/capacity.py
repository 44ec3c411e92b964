"""`voiceload capacity`: find the highest concurrency at which the target still meets every SLO.

One run, one broker, one collector: the concurrency is held at `start`, then raised by `step`
after each level, until a level breaks an SLO twice in a row (confirmed), `--max` is reached,
or the generator itself can no longer be trusted. Each level is judged only on the calls that
ended in its window, after a settle time of about one call (`voiceload.core.search`). Method and
reading guide: docs/capacity.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import sys
import time
from dataclasses import dataclass

import psutil

from voiceload.audio.vad import samples_to_ms
from voiceload.core.scenario import Scenario
from voiceload.core.scenario_audio import ScenarioAudio
from voiceload.core.search import MAX_HOST_CPU_PERCENT, CapacitySearch, StepVerdict, Window, judge_step
from voiceload.core.slo import evaluate
from voiceload.core.summary import Summary
from voiceload.errors import UserError
from voiceload.protocol import Heartbeat
from voiceload.report import write_reports
from voiceload.results.collector import SUMMARY_FILE, write_json, write_summary
from voiceload.run.coordinator import (
    UNBOUNDED_CALLS,
    Fleet,
    RunPlan,
    RunSettings,
    orchestrate,
    run_infrastructure,
    validate,
)

CAPACITY_FILE = "capacity.json"
RECORD_GRACE_S = 3.0  # records of calls that ended at the window's end arrive within this
EXPECTED_REPLY_MS = 1000.0  # a reply's wait, for the settle estimate only
CPU_SAMPLE_S = 1.0


@dataclass
class CapacitySettings:
    run: RunSettings  # scenario, target, out dir, broker, SLOs
    start: int = 10
    step: int = 10
    hold_s: float = 60.0
    max_concurrency: int = 200
    settle_s: float | None = None  # None: one typical call (docs/capacity.md)
    max_rate: float | None = None
    max_host_cpu: float = MAX_HOST_CPU_PERCENT  # mean host CPU over a level above which the generator is distrusted


def typical_call_s(scenario: Scenario, sa: ScenarioAudio) -> float:
    """One happy-path call's length at an unloaded bot: the settle time that lets a level mix through."""
    total = 0.0
    if sa.greeting is not None:
        total += samples_to_ms(len(sa.greeting.samples)) + EXPECTED_REPLY_MS / 2
    for utt_ms, reply in zip(sa.utterance_ms, sa.replies, strict=True):
        total += scenario.silence_gap_ms + utt_ms + EXPECTED_REPLY_MS
        total += samples_to_ms(len(reply.samples)) if reply is not None else 1000.0
    return (total + scenario.hangup_after_ms) / 1000


def check(cs: CapacitySettings) -> None:
    """The search's own parameters (exit 2 before anything starts)."""
    if cs.start < 1:
        raise UserError(f"--start {cs.start}: must be at least 1")
    if cs.step < 1:
        raise UserError(f"--step {cs.step}: must be at least 1")
    if cs.max_concurrency < cs.start:
        raise UserError(f"--max {cs.max_concurrency}: must be at least --start ({cs.start})")
    if cs.hold_s < 5:
        raise UserError(f"--hold {cs.hold_s:g} s: hold each level at least 5 s (60 s or more gives stable p95s)")
    if cs.settle_s is not None and cs.settle_s < 0:
        raise UserError(f"--settle {cs.settle_s:g} s: must not be negative")
    if not 0 < cs.max_host_cpu <= 100:
        raise UserError(f"--max-host-cpu {cs.max_host_cpu:g}: a percentage in (0, 100]")
    if cs.max_rate is not None and cs.max_rate <= 0:
        raise UserError(f"--max-rate {cs.max_rate:g}: must be above 0 calls/s")


async def capacity_async(cs: CapacitySettings) -> Summary:
    """The search; returns summary.json's content with the answer under `capacity`."""
    check(cs)
    cs.run.concurrency, cs.run.calls = cs.start, 1  # validate() checks these
    scenario, sa, slos = validate(cs.run)
    if not slos:
        raise UserError("capacity needs at least one SLO: --slo 'p95_turn_latency_ms<=1500' or the scenario's slo:")
    max_rate = cs.max_rate if cs.max_rate is not None else scenario.max_rate
    settle = cs.settle_s if cs.settle_s is not None else typical_call_s(scenario, sa)
    search = CapacitySearch(cs.start, cs.step, cs.max_concurrency)
    steps_max = len(range(cs.start, cs.max_concurrency + 1, cs.step)) + 1
    heartbeats: list[Heartbeat] = []
    say = _Say(cs.run.progress)

    async def drive(fleet: Fleet) -> None:
        cpu_samples: list[tuple[float, float]] = []
        sampler = asyncio.create_task(_sample_host_cpu(cpu_samples))
        try:
            ramped = False
            while (level := search.next_level()) is not None:
                if not ramped:  # spread the first calls over one call, so they do not run in lockstep
                    await _ramp(fleet, level, settle, max_rate)
                    ramped = True
                await fleet.set_target(level, max_rate=max_rate)
                t0 = time.time()
                window = Window(t0, t0 + settle, t0 + settle + cs.hold_s)
                retry = " (confirming a breach)" if search.attempt > 1 else ""
                say(f"level {level} calls{retry}: settle {settle:.0f} s, judge the next {cs.hold_s:.0f} s")
                await asyncio.sleep(window.end + RECORD_GRACE_S - time.time())
                verdict = judge_step(
                    level, search.attempt, fleet.collector.records, window, slos,
                    heartbeats=heartbeats,
                    host_cpu=[pct for at, pct in cpu_samples if window.judge_from <= at <= window.end],
                    max_host_cpu=cs.max_host_cpu,
                )
                search.record(verdict)
                say(_verdict_line(verdict))
        finally:
            sampler.cancel()
        await fleet.finish(timeout_s=3 * settle + 60)

    plan = RunPlan(
        expected_calls=UNBOUNDED_CALLS,
        deadline_s=steps_max * 2 * (settle + cs.hold_s + RECORD_GRACE_S) + 4 * settle + 300,
        concurrency=cs.max_concurrency, drive=drive,
    )
    async with run_infrastructure(cs.run) as address:
        summary = await orchestrate(cs.run, scenario, address, plan, on_heartbeat=heartbeats.append)
    result = search.result()
    summary.capacity = {
        **result.to_dict(), "start": cs.start, "step": cs.step, "max": cs.max_concurrency,
        "hold_s": cs.hold_s, "settle_s": round(settle, 1), "slos": [s.expr for s in slos],
    }
    summary.slo = evaluate(slos, summary)  # whole-run view, for the report
    summary.exit_code = result.exit_code
    write_summary(cs.run.out_dir / SUMMARY_FILE, summary)
    write_json(cs.run.out_dir / CAPACITY_FILE, summary.capacity)
    write_reports(cs.run.out_dir)
    return summary


def run(cs: CapacitySettings) -> Summary:
    return asyncio.run(capacity_async(cs))


async def _ramp(fleet: Fleet, level: int, over_s: float, max_rate: float | None) -> None:
    """From 0 to `level` calls in a straight line over `over_s`.

    Calls that all start in the same second stay in lockstep for the whole run (each is replaced
    the moment it ends): their tape analyses and restarts then land in the same second of every
    cycle and starve the generator's event pumps, while the CPU is idle the rest of the cycle.
    """
    began = time.monotonic()
    while (t := time.monotonic() - began) < over_s:
        await fleet.set_target(max(1, math.ceil(level * t / over_s)), max_rate=max_rate)
        await asyncio.sleep(0.25)


async def _sample_host_cpu(into: list[tuple[float, float]]) -> None:
    psutil.cpu_percent(None)  # the first call only sets the baseline
    while True:
        await asyncio.sleep(CPU_SAMPLE_S)
        into.append((time.time(), psutil.cpu_percent(None)))


def _verdict_line(v: StepVerdict) -> str:
    lat = "no turns" if v.p95_ms is None else f"turn p50 {v.p50_ms:.0f} ms, p95 {v.p95_ms:.0f} ms"
    head = f"level {v.concurrency} calls: {v.completed}/{v.calls} calls completed, {v.turns} turns, {lat}"
    if not v.valid:
        return f"{head} -> generator not trusted: {'; '.join(v.invalid_reasons)}"
    if v.passed:
        return f"{head} -> SLOs met"
    return f"{head} -> SLO broken: {'; '.join(v.failed_slos)}"


class _Say:
    """Step lines for the terminal (stderr); the live view draws the rest."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled

    def __call__(self, line: str) -> None:
        if self.enabled:
            with contextlib.suppress(OSError):
                print(f"[voiceload capacity] {line}", file=sys.stderr, flush=True)
