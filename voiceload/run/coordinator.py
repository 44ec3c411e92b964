"""The coordinator: owns a run from validation to the run dir.

Validate everything the user gave (scenario, recordings, target, broker) before a single call;
start the embedded broker when none was given; spawn as many agent processes as the pjsua2
build's per-process call limit requires; assign each its share of concurrency and calls; let
the collector gather one record per placed call; stop everything; return the summary.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import math
import os
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from voiceload.core.addresses import Addresses
from voiceload.core.identity import IdentityError, IdentitySpec, parse_identities
from voiceload.core.scenario import Scenario, load_scenario, rest_problems
from voiceload.core.scenario_audio import ScenarioAudio
from voiceload.core.shape import LoadShape, parse_shape
from voiceload.core.sipprofile import PROFILE_ENV, Credentials, SipProfile
from voiceload.core.slo import Slo, evaluate, exit_code, parse_slos
from voiceload.core.summary import Summary
from voiceload.errors import UserError
from voiceload.protocol import CHANNEL_REST, CHANNEL_SIP, CHANNELS, Assign, Heartbeat
from voiceload.rasa import REST_CALL_LIMIT, parse_rasa_url, probe_rasa
from voiceload.report import write_reports
from voiceload.report.rundir import TAPES_DIR
from voiceload.results import bus
from voiceload.results.broker import EmbeddedBroker
from voiceload.results.collector import SUMMARY_FILE, Collector, write_summary
from voiceload.run.live import AgentHealth, LiveSnapshot, LiveView, RateMeter
from voiceload.sip.lite import (
    PROBE_TIMEOUT_S,
    call_limit,
    check_local_addresses,
    pjsua2_build,
    probe_target,
    split_targets,
)

log = logging.getLogger("voiceload.run.coordinator")

AGENT_READY_TIMEOUT_S = 30.0
LIVE_PERIOD_S = 0.5
# Calls per agent process at most. The pjmedia agents of before stopped at 250 (their bridge's clock
# thread held its lock for whole ticks, and signalling waited behind it); the RTP engine has no such
# lock on the SIP path, and two agents of 500 hold 1000 calls on a 2-core box (docs/density.md).
AGENT_CALLS_MAX = 500
AGENT_CALLS_PER_CORE = 100  # spread over one agent per core once each would hold this many calls
SHAPE_PERIOD_S = 0.5  # how often a shape's target is re-read
UNBOUNDED_CALLS = 1_000_000_000  # an agent's call quota in open-ended runs (shapes, capacity search)


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
    agent_limit: int | None = None  # calls per agent (--calls-per-agent); None: the build's limit, <= AGENT_CALLS_MAX
    progress: bool = True
    slos: list[str] = field(default_factory=list)  # --slo expressions, added to the scenario's
    shape: str | None = None  # --shape: a load shape (voiceload/shape.py) instead of -c/-n
    max_rate: float | None = None  # --max-rate: new calls per second at most, over all agents
    scenario_load: bool = True  # follow the scenario's `load:` shape when there is no --shape (-c/-n turn it off)
    channel: str = CHANNEL_SIP  # rest: the turns as text to Rasa's REST channel (target: the Rasa URL)
    rasa_url: str | None = None  # --rasa-url: check each completed call's tracker; the server of --channel rest
    rasa_token: str | None = None  # --rasa-token; reaches agents through their environment, not their argv
    # SIP presentation: each set one replaces the scenario's `sip:` value (voiceload.core.sipprofile)
    auth: Credentials | None = None  # --auth / VOICELOAD_AUTH
    proxy: str | None = None  # --proxy
    tls: dict[str, Any] = field(default_factory=dict)  # TlsSettings fields from --tls-ca/-cert/-key/--no-tls-verify
    register: bool | None = None  # --register
    probe: bool = True  # OPTIONS each target before the run (--no-probe skips it)
    addresses: Addresses = field(default_factory=Addresses)  # --bind/--advertise: the calls' source addresses
    media: dict[str, Any] = field(default_factory=dict)  # MediaProfile fields from --codecs/--srtp/--dtmf
    identity: dict[str, Any] = field(default_factory=dict)  # --from/--display-name/--to-user/--header/--identities
    sip: SipProfile = field(default_factory=SipProfile)  # the effective profile, set by validate()

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
    for wait, utt_ms, reply in zip(sa.reply_waits_ms, sa.utterance_ms, sa.replies, strict=True):
        total += utt_ms + scenario.silence_gap_ms
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
    if settings.channel not in CHANNELS:
        raise UserError(f"--channel {settings.channel!r}: must be one of {', '.join(CHANNELS)}")
    if settings.rasa_url is not None:
        settings.rasa_url = parse_rasa_url(settings.rasa_url)
    if settings.channel == CHANNEL_REST:
        if settings.rasa_url is None:
            raise UserError("--channel rest needs --rasa-url (the Rasa server to talk to)")
        problems = rest_problems(scenario)
        if problems:
            raise UserError(problems[0])
        if settings.addresses.bind or settings.addresses.advertise:
            raise UserError("--bind/--advertise are the SIP calls' addresses: not for --channel rest")
    else:
        targets = split_targets(settings.target)
        tls = dataclasses.replace(scenario.sip.tls, **{k: v for k, v in settings.tls.items() if v is not None})
        settings.sip = scenario.sip.merged(
            auth=settings.auth, proxy=settings.proxy, tls=tls, register=settings.register,
            identity=checked_identity(scenario.sip.identity.merged(**settings.identity)),
            media=dataclasses.replace(scenario.sip.media, **{k: v for k, v in settings.media.items() if v is not None}),
        ).checked(targets)
        media_problem = pjsua2_build().media_problem(settings.sip.media)
        if media_problem:
            raise UserError(media_problem)
        if "tls" in settings.sip.transports(targets) and not pjsua2_build().tls:
            raise UserError(f"--target {settings.target}: TLS, but this pjsua2 build has no TLS "
                            "(run `make pjsua2` to build voiceload's own, with OpenSSL)")
        problem = settings.addresses.per_agent_problem(settings.sip.transports(targets))
        if problem:
            raise UserError(problem)
        check_local_addresses(settings.addresses.bind)  # each on this host: one line now, not failed agents
        ident = settings.sip.identity
        if (ident.from_user is not None or ident.display_name is not None) and not pjsua2_build().per_call_from:
            raise UserError("--from/--display-name: a per-call From needs voiceload's own pjsua2 build "
                            "(run `make pjsua2`); this one would send two From headers")
    _check_out_dir(settings.out_dir)
    if (settings.out_dir / "calls.jsonl").exists():
        raise UserError(f"--out {settings.out_dir}: holds an earlier run's calls.jsonl; use a fresh directory")
    slos = parse_slos([*scenario.slos, *settings.slos])
    for slo in slos:
        problem = slo.problem_with(turns=len(scenario.turns), greeting=scenario.greeting is not None)
        if problem:
            raise UserError(problem)
    return scenario, sa, slos


def checked_identity(spec: IdentitySpec) -> IdentitySpec:
    """The run's identity settings checked, with its identities file read: every column it needs is there.

    The agents read the file again when they start: its rows do not travel in their environment,
    where Linux caps one variable at 128 KiB (a few thousand rows).
    """
    try:
        spec.checked()
        if spec.identities is not None:
            try:
                text = Path(spec.identities).read_text(encoding="utf-8-sig")
            except (OSError, UnicodeDecodeError) as exc:
                raise UserError(f"identities file {spec.identities}: cannot read it: "
                                f"{getattr(exc, 'strerror', None) or exc}") from None
            rows = parse_identities(text, spec.identities)
            spec.check_rows(rows)
            if rows.has_credentials and not pjsua2_build().per_call_from:
                raise UserError(f"identities file {spec.identities}: per-call credentials (auth_user, auth_password) "
                                "need voiceload's own pjsua2 build (run `make pjsua2`)")
    except IdentityError as exc:
        raise UserError(str(exc)) from None
    return spec


def _check_out_dir(out_dir: Path) -> None:
    """The run dir is made only once calls start: a file in its way must be refused before that."""
    for path in (out_dir, *out_dir.parents):
        if path.exists():
            if not path.is_dir():
                what = "it is" if path == out_dir else f"{path} is"
                raise UserError(f"--out {out_dir}: {what} a file, not a directory")
            return


async def run_async(settings: RunSettings) -> Summary:
    """The whole run; returns summary.json's content, SLO verdicts included under `slo`."""
    scenario, sa, slos = validate(settings)
    shape = effective_shape(settings, scenario)
    max_rate = settings.max_rate if settings.max_rate is not None else scenario.max_rate
    async with run_infrastructure(settings) as address:
        if shape is None:
            rounds = math.ceil(settings.calls / settings.concurrency)
            plan = RunPlan(
                expected_calls=settings.calls, deadline_s=rounds * estimate_call_s(scenario, sa) * 1.5 + 60,
                concurrency=settings.concurrency, drive=fixed_driver(settings.concurrency, settings.calls, max_rate),
            )
        else:
            plan = RunPlan(
                expected_calls=UNBOUNDED_CALLS, deadline_s=shape.duration_s + 3 * estimate_call_s(scenario, sa) + 120,
                concurrency=shape.peak, drive=shape_driver(shape, max_rate, drain_s=2 * estimate_call_s(scenario, sa)),
                shape=shape.text,
            )
        summary = await orchestrate(settings, scenario, address, plan)
    results = evaluate(slos, summary)
    summary.slo = results
    summary.exit_code = exit_code(summary, results)
    write_summary(settings.out_dir / SUMMARY_FILE, summary)
    write_reports(settings.out_dir, slo_results=results)
    return summary


def effective_shape(settings: RunSettings, scenario: Scenario) -> LoadShape | None:
    """--shape wins over the scenario's `load.shape`; None: the classic -c/-n run."""
    if settings.shape is not None:
        try:
            return parse_shape(settings.shape)
        except ValueError as exc:
            raise UserError(f"--shape: {exc}") from None
    return scenario.load_shape if settings.scenario_load else None


@contextlib.asynccontextmanager
async def run_infrastructure(settings: RunSettings) -> AsyncIterator[bus.BrokerAddress]:
    """Probe the target (and Rasa), then give the run a broker: the user's (checked) or an embedded one."""
    if settings.channel != CHANNEL_REST and settings.probe:
        bind = settings.addresses.bind
        for uri in split_targets(settings.target):
            await probe_sip_target(uri, settings.sip, local=bind[0] if bind else None)
    if settings.rasa_url is not None:
        await probe_rasa(settings.rasa_url, settings.rasa_token)
    if settings.broker_url is not None:
        address = bus.parse_broker_url(settings.broker_url)
        await bus.check_broker(address)
        yield address
        return
    broker = EmbeddedBroker()
    broker.start()
    try:
        yield broker.address
    finally:
        broker.stop()


async def probe_sip_target(uri: str, sip: SipProfile, *, local: str | None = None) -> None:
    """OPTIONS to `uri` (through the outbound proxy, over its transport, from `local`: the first --bind).
    Unreachable: UserError (exit 2). Silence is one warning line: many SBCs never answer OPTIONS, and the
    calls will tell."""
    answer = await probe_target(uri, proxy=sip.proxy, tls=sip.tls, local=local)
    if answer is None:
        via = f" via --proxy {sip.proxy}" if sip.proxy is not None else ""
        print(f"[voiceload] warning: --target {uri}{via}: no answer to OPTIONS within {PROBE_TIMEOUT_S:.0f} s; "
              "placing the calls anyway (--no-probe skips the probe)", file=sys.stderr, flush=True)
    else:
        log.info("probe: %s answered OPTIONS: %s", uri, answer)


def agents_needed(concurrency: int, per_agent: int, cores: int) -> int:
    """Agent processes for `concurrency` calls: enough for the per-agent limit, and one per core
    once each would hold AGENT_CALLS_PER_CORE calls (a dense agent's media threads fill a core)."""
    by_limit = math.ceil(concurrency / per_agent)
    by_cores = min(cores, concurrency // AGENT_CALLS_PER_CORE)
    return max(1, by_limit, by_cores)


Driver = Callable[["Fleet"], Coroutine[Any, Any, None]]


@dataclass
class RunPlan:
    """How a run places its load: the driver sets the fleet's target over time."""

    expected_calls: int  # UNBOUNDED_CALLS: open-ended, the driver says when it is over
    deadline_s: float
    concurrency: int  # for the summary and the live view's header: the (peak) target
    drive: Driver
    shape: str | None = None


def fixed_driver(concurrency: int, calls: int, max_rate: float | None) -> Driver:
    """The classic run: CALLS calls, CONCURRENCY in flight, split over the agents once."""

    async def drive(fleet: Fleet) -> None:
        await fleet.set_target(concurrency, calls=calls, max_rate=max_rate)

    return drive


def shape_driver(shape: LoadShape, max_rate: float | None, *, drain_s: float) -> Driver:
    """Follow the shape's target twice a second; at its end stop placing calls and let calls in flight end."""

    async def drive(fleet: Fleet) -> None:
        await fleet.grow(fleet.agents_for(shape.peak))
        began = time.monotonic()
        while (t := time.monotonic() - began) < shape.duration_s:
            await fleet.set_target(shape.concurrency_at(t), max_rate=max_rate)
            await asyncio.sleep(SHAPE_PERIOD_S)
        await fleet.finish(timeout_s=drain_s + 60)

    return drive


async def orchestrate(
    settings: RunSettings, scenario: Scenario, address: bus.BrokerAddress, plan: RunPlan,
    *, on_heartbeat: Callable[[Heartbeat], None] | None = None,
) -> Summary:
    """Collector up, agents spawned as the driver needs them, load driven, everything stopped."""
    build_limit = REST_CALL_LIMIT if settings.channel == CHANNEL_REST else call_limit()
    if settings.agent_limit is not None and settings.agent_limit > build_limit:
        raise UserError(f"--calls-per-agent {settings.agent_limit}: an agent holds at most {build_limit} calls "
                        f"with this {'channel' if settings.channel == CHANNEL_REST else 'pjsua2 build'}")
    limit = settings.agent_limit or min(build_limit, AGENT_CALLS_MAX)
    settings.out_dir.mkdir(parents=True, exist_ok=True)
    run_id = settings.run_id
    log.info("run %s: agents of <=%d calls, deadline %.0f s", run_id, limit, plan.deadline_s)

    if settings.sip.identity.identities is not None:  # the agents share the rows: agent K takes K, K + n, ...
        n = agents_needed(plan.concurrency, limit, os.cpu_count() or 1)
        if plan.expected_calls != UNBOUNDED_CALLS:
            n = min(n, plan.expected_calls)
        settings.sip = dataclasses.replace(settings.sip, identity=dataclasses.replace(settings.sip.identity, stride=n))
    collector = Collector(on_heartbeat=on_heartbeat)
    async with bus.Bus(address, client_id=f"vl-coord-{run_id}") as b:
        # given the address, the collector keeps a persistent session: it survives reconnects
        collect_task = asyncio.create_task(
            collector.run(
                address, run_id=run_id, out_dir=settings.out_dir, expected_calls=plan.expected_calls,
                deadline_s=plan.deadline_s, scenario_name=scenario.name, target=settings.target,
                concurrency=plan.concurrency,
            )
        )
        await asyncio.wait_for(collector.ready.wait(), 10)  # subscribed before any agent can publish
        fleet = Fleet(settings, address, limit, collector, b)
        progress = (asyncio.create_task(_live(collector, fleet, settings, scenario, plan))
                    if settings.progress else None)
        watcher = asyncio.create_task(fleet.watch())
        driving = asyncio.create_task(plan.drive(fleet))
        try:
            done, _ = await asyncio.wait({driving, collect_task}, return_when=asyncio.FIRST_COMPLETED)
            if driving in done:
                driving.result()  # a driver's failure is the run's failure
            summary = await collect_task
        finally:
            for task in (progress, watcher, driving):
                if task is not None:
                    task.cancel()
            await fleet.stop_all()
            await _reap(list(fleet.procs.values()))
            if not collect_task.done():
                collect_task.cancel()
    return summary


class Fleet:
    """The run's agent processes: who has which share, and what happens when one dies.

    Open-ended drivers (shapes, the capacity search) give agents an unbounded call quota and
    move the target; the classic run gives each agent a fixed number of calls.
    """

    def __init__(self, settings: RunSettings, address: bus.BrokerAddress, limit: int, collector: Collector,
                 b: bus.Bus) -> None:
        self.settings, self.address, self.limit, self.collector, self.bus = settings, address, limit, collector, b
        self.run_id = settings.run_id
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.assigned: dict[str, list[int]] = {}  # agent -> [concurrency, calls]
        self.alive: set[str] = set()  # spawned and still running
        self.lost: set[str] = set()  # exited with an error or killed
        self.target = 0
        self.calls: int | None = None  # None: open-ended
        self.max_rate: float | None = None
        self._rates: dict[str, float | None] = {}

    def agents_for(self, concurrency: int) -> int:
        return agents_needed(concurrency, self.limit, os.cpu_count() or 1)

    async def grow(self, n: int) -> None:
        """Have at least `n` live agents: spawn the missing ones and wait until they are ready."""
        new = []
        while len(self.alive) < n:
            aid = f"a{len(self.procs)}"
            self.procs[aid] = _spawn_agent(self.settings, aid, self.address, self.limit)
            self.alive.add(aid)
            self.assigned[aid] = [0, 0]
            new.append(aid)
        if new:
            await _await_ready(self.collector, new, [self.procs[a] for a in new])

    async def set_target(self, concurrency: int, *, calls: int | None = None, max_rate: float | None = None) -> None:
        """Spread `concurrency` (and `calls`, when bounded) over live agents, spawning more if needed."""
        if concurrency == self.target and calls == self.calls and max_rate == self.max_rate and self.assigned:
            return
        self.target, self.calls, self.max_rate = concurrency, calls, max_rate
        want = self.agents_for(concurrency)
        if calls is not None:
            want = min(want, calls)
        await self.grow(want)
        await self._spread()

    async def _spread(self) -> None:
        live = sorted(self.alive, key=_agent_number)
        if not live:
            return
        # fill agents in order: the others keep no calls (and cost no CPU) until the target grows
        n_users = min(len(live), self.agents_for(self.target))
        if self.calls is not None:
            n_users = max(1, min(n_users, self.calls))
        users = live[:n_users]
        conc = dict(zip(users, split(self.target, n_users), strict=True))
        quota = dict(zip(users, split(self.calls, n_users), strict=True)) if self.calls is not None else {}
        for aid in live:
            c = conc.get(aid, 0)
            n = quota.get(aid, 0) if self.calls is not None else UNBOUNDED_CALLS
            rate = self.max_rate / n_users if self.max_rate and c else None
            if [c, n] != self.assigned[aid] or rate != self._rates.get(aid):
                self.assigned[aid] = [c, n]
                self._rates[aid] = rate
                await self.send(aid)

    async def send(self, aid: str) -> None:
        conc, calls = self.assigned[aid]
        await self.bus.publish(bus.topic_control(self.run_id, aid),
                               Assign(self.run_id, aid, conc, calls, max_starts_per_s=self._rates.get(aid)), qos=1)

    async def finish(self, *, timeout_s: float) -> None:
        """Open-ended runs: stop placing calls, wait (bounded) for every agent to report its last record."""
        await self.stop_all()
        end = time.monotonic() + timeout_s
        while time.monotonic() < end:
            pending = [a for a in self.alive if not self._done(a)]
            if not pending:
                break
            await asyncio.sleep(0.2)
        placed = sum(st.placed for st in self.collector.agent_states.values())
        # lost agents' calls were already recorded as agent_lost by `_lost`
        self.collector.expected_calls = max(placed, self.collector.received)
        self.collector.finish()

    def _done(self, aid: str) -> bool:
        st = self.collector.agent_states.get(aid)
        return (st is not None and st.state == "done") or self.procs[aid].poll() is not None

    async def stop_all(self) -> None:
        for aid in sorted(self.alive):
            with contextlib.suppress(Exception):
                await self.bus.publish(bus.topic_control(self.run_id, aid), Assign(self.run_id, aid, 0, 0, stop=True),
                                       qos=1, timeout_s=5)

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
        _, calls = self.assigned.get(aid, [0, 0])
        remaining = max(0, calls - placed) if self.calls is not None else 0
        self.assigned[aid] = [0, placed]
        survivors = sorted(self.alive)
        moved = f"{remaining} unplaced calls" if self.calls is not None else "its share of the target"
        print(f"[voiceload] agent {aid} lost (exit code {code}): {added} calls recorded as agent_lost; "
              f"{moved} move to {', '.join(survivors) or 'no agent'}", file=sys.stderr, flush=True)
        if not survivors:
            if self.calls is not None:
                self.collector.expected_calls -= remaining
                if self.collector.received >= self.collector.expected_calls:
                    self.collector.finish()
            return
        if self.calls is not None:
            # the lost agent's unplaced calls go to the survivors, on top of what each was given
            for sid, extra in zip(survivors, split(remaining, len(survivors)), strict=True):
                self.assigned[sid][1] += extra
            self.calls = sum(self.assigned[s][1] for s in survivors)
        try:
            await self._respread()
        except bus.BusError as exc:
            log.error("could not reassign agent %s's share: %s", aid, exc)

    async def _respread(self) -> None:
        """After a loss: the same target over the survivors (each capped at its call limit)."""
        live = sorted(self.alive, key=_agent_number)
        for aid, conc in zip(live, split(self.target, len(live)), strict=True):
            self.assigned[aid][0] = min(self.limit, conc)
            await self.send(aid)


def _spawn_agent(
    settings: RunSettings, agent_id: str, address: bus.BrokerAddress, limit: int
) -> subprocess.Popen[bytes]:
    cmd = [
        sys.executable, "-m", "voiceload", "agent", "--run-id", settings.run_id, "--agent-id", agent_id,
        "--scenario", str(settings.scenario_path), "--broker", address.url, "--max-calls", str(limit),
        "--channel", settings.channel,
    ]
    if settings.channel != CHANNEL_REST:
        cmd += ["--target", settings.target]
        if settings.addresses.bind:  # every agent binds every address: each spreads its calls over them
            cmd += ["--bind", ",".join(settings.addresses.bind)]
        if settings.addresses.advertise:
            cmd += ["--advertise", ",".join(settings.addresses.advertise)]
    if settings.rasa_url is not None:
        cmd += ["--rasa-url", settings.rasa_url]
    env = dict(os.environ)
    env.pop("VOICELOAD_RASA_TOKEN", None)
    env[PROFILE_ENV] = settings.sip.to_json()  # it may hold a password: not in argv
    if settings.rasa_token:  # not in argv, where any local user could read it
        env["VOICELOAD_RASA_TOKEN"] = settings.rasa_token
    if settings.keep_tapes:
        cmd += ["--keep-tapes", "--tape-dir", str(settings.out_dir / TAPES_DIR)]
    # agents' own messages go to the run dir: the terminal belongs to the live view
    logs = settings.out_dir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    with open(logs / f"agent-{agent_id}.log", "ab") as log_file:
        return subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log_file, stderr=subprocess.STDOUT, env=env)


def _agent_number(agent_id: str) -> int:
    return int(agent_id[1:])


async def _await_ready(collector: Collector, agent_ids: list[str], procs: list[subprocess.Popen[bytes]]) -> None:
    """Bounded wait until each new agent announced `ready` (the collector sees every agent state)."""
    end = time.monotonic() + AGENT_READY_TIMEOUT_S
    while True:
        states = [collector.agent_states.get(a) for a in agent_ids]
        failed = [st for st in states if st is not None and st.state == "error"]
        if failed:  # an agent refuses to start only over what the user gave it (a refused REGISTER, say)
            raise UserError(f"agent {failed[0].agent_id}: {failed[0].detail}")
        if all(st is not None and st.state in ("ready", "done") for st in states):
            return
        dead = [p for p in procs if p.poll() is not None]
        if dead:
            raise RuntimeError(f"an agent process exited during start-up (exit code {dead[0].returncode})")
        if time.monotonic() > end:
            waiting = [a for a, st in zip(agent_ids, states, strict=True) if st is None]
            raise RuntimeError(f"agents not ready after {AGENT_READY_TIMEOUT_S:.0f} s: {waiting}")
        await asyncio.sleep(0.05)


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


async def _live(collector: Collector, fleet: Fleet, settings: RunSettings, scenario: Scenario,
                plan: RunPlan) -> None:
    """Feed the live view from the collector's records and the agents' latest heartbeats."""
    started = time.monotonic()
    rate = RateMeter()
    total = plan.expected_calls if plan.expected_calls != UNBOUNDED_CALLS else 0
    with LiveView(total, plan.concurrency, scenario.name, settings.target) as view:
        while True:
            now = time.monotonic()
            latest = collector.latest_heartbeats
            agents = [
                AgentHealth(aid, hb.active_calls if hb else 0, hb.cpu_percent if hb else None,
                            hb.pump_lag_ms_max if hb else None, alive=aid not in fleet.lost)
                for aid in sorted(fleet.procs, key=_agent_number) for hb in [latest.get(aid)]
            ]
            turns = collector.turn_percentiles()
            view.update(LiveSnapshot(
                elapsed_s=now - started, target_concurrency=fleet.target,
                active_calls=sum(a.active_calls for a in agents if a.alive),
                started=sum(hb.placed for hb in latest.values()),
                completed=collector.completed, failed=collector.failed,
                calls_per_s=rate.observe(now, collector.received),
                turn_p50_ms={i: p["p50"] for i, p in turns.items()},
                turn_p95_ms={i: p["p95"] for i, p in turns.items()},
                agents=agents,
                mos_p50=collector.media.mos.value_at(50), mos_worst=collector.media.mos.value_at(0),
            ))
            await asyncio.sleep(LIVE_PERIOD_S)


def run(settings: RunSettings) -> Summary:
    return asyncio.run(run_async(settings))
