"""The `voiceload` command line: thin typer commands that parse, validate and hand over to a role."""

from __future__ import annotations

import importlib.metadata
import json
import logging
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer

from voiceload.errors import EXIT_BAD_INPUT, EXIT_INVALID_RUN, ScenarioError, UserError

if TYPE_CHECKING:
    from voiceload.core.summary import Summary

app = typer.Typer(
    name="voiceload",
    help="SIP/voice load generator for voice-fronted bots: concurrent callers, per-turn latency, completion.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
scenario_app = typer.Typer(help="Scenario files.", no_args_is_help=True)
recordings_app = typer.Typer(help="Caller and bot recordings.", no_args_is_help=True)
app.add_typer(scenario_app, name="scenario")
app.add_typer(recordings_app, name="recordings")

REPO_ROOT = Path(__file__).resolve().parent.parent
T = TypeVar("T")


def _setup_logging(verbose: bool) -> None:
    """Log lines on stderr; on a terminal through rich, so they print above the live view."""
    level = logging.DEBUG if verbose else logging.WARNING
    if sys.stderr.isatty():
        from rich.console import Console
        from rich.logging import RichHandler

        logging.basicConfig(level=level, format="%(name)s %(message)s",
                            handlers=[RichHandler(console=Console(stderr=True), show_path=False)])
    else:
        logging.basicConfig(level=level, format="%(asctime)s %(name)s %(levelname)s %(message)s")


def _fail(message: str, code: int = EXIT_BAD_INPUT) -> typer.Exit:
    typer.echo(f"voiceload: error: {message}", err=True)
    return typer.Exit(code)


def _guard(fn: Callable[[], T], *, crash_code: int | None = None) -> T:
    """User errors become one line and exit 2; nothing the user did wrong ends in a traceback.

    With `crash_code`, any other failure is logged and becomes that exit code too (roles run
    unattended: a process supervisor wants a code, not exit 1, which is reserved for SLOs).
    """
    try:
        return fn()
    except ScenarioError as exc:
        for problem in exc.problems:
            typer.echo(problem, err=True)
        raise typer.Exit(EXIT_BAD_INPUT) from None
    except UserError as exc:
        raise _fail(str(exc)) from None
    except KeyboardInterrupt:
        raise _fail("interrupted", EXIT_INVALID_RUN) from None
    except Exception as exc:
        if crash_code is None:
            raise
        logging.getLogger("voiceload").exception("unexpected failure")
        raise _fail(f"{type(exc).__name__}: {exc}", crash_code) from None


Verbose = Annotated[bool, typer.Option("--verbose", "-v", help="Debug logging.")]
Broker = Annotated[str | None, typer.Option(help="mqtt://HOST:PORT of an MQTT broker; default: embedded.",
                                            envvar="VOICELOAD_BROKER")]
Slos = Annotated[list[str] | None, typer.Option(
    "--slo", help="Service level objective, repeatable, e.g. 'p95_turn_latency_ms<=1500' (docs/live-and-slo.md)."
)]
Channel = Annotated[str, typer.Option(
    help="sip: voice calls to --target; rest: the turns as text to Rasa's REST channel at --rasa-url.")]
RasaUrl = Annotated[str | None, typer.Option(
    help="http://HOST:PORT of the Rasa server: each completed call's tracker is checked against the scenario's "
         "intent:/action: fields; with --channel rest, the server to talk to.")]
RasaToken = Annotated[str | None, typer.Option(help="Rasa's --auth-token.", envvar="VOICELOAD_RASA_TOKEN")]
# How calls present themselves to a real gateway (docs/gateways.md); each replaces the scenario's `sip:` value
Auth = Annotated[str | None, typer.Option(
    help="Digest credentials USER:PASSWORD, answered to every 401/407 challenge. Prefer the environment "
         "variable: any local user can read a process's arguments.", envvar="VOICELOAD_AUTH", show_envvar=True)]
Proxy = Annotated[str | None, typer.Option(
    help="Outbound proxy URI: every request goes there first, e.g. sip:sbc.example.com;transport=tcp.")]
TlsCa = Annotated[Path | None, typer.Option(help="PEM file of the CA(s) that signed the gateway's TLS certificate.")]
TlsCert = Annotated[Path | None, typer.Option(help="Our TLS certificate (PEM), for a gateway that asks for one.")]
TlsKey = Annotated[Path | None, typer.Option(help="The private key (PEM) of --tls-cert.")]
TlsVerify = Annotated[bool | None, typer.Option(
    "--tls-verify/--no-tls-verify", help="Check the gateway's certificate [default: check].")]
Register = Annotated[bool | None, typer.Option(
    "--register/--no-register", help="Each agent REGISTERs (refreshed) before its calls, unREGISTERs at the end.")]
Probe = Annotated[bool, typer.Option(
    "--probe/--no-probe", help="Send OPTIONS to each target before the run (any SIP answer counts).")]
Bind = Annotated[str | None, typer.Option(
    help="Source addresses of the calls' SIP and RTP, taken in turn: IP[,IP...], each maybe a range FIRST-LAST "
         "(e.g. 127.0.0.2-127.0.0.9); default: the address that routes to the target.")]
Advertise = Annotated[str | None, typer.Option(
    help="The address the far end must send to (a generator behind NAT): in Via, Contact and SDP c= while the "
         "sockets stay bound locally; one IP, or one per --bind address.")]
# The calls' media offer (voiceload/core/mediaprofile.py); each overrides the scenario's `media:`
Codecs = Annotated[str | None, typer.Option(
    help="Codecs to offer, in order: PCMU, PCMA, G722, opus (e.g. PCMA,PCMU) [default: the scenario's, else PCMU].")]
Srtp = Annotated[str | None, typer.Option(
    help="SRTP (SDES, AES_CM_128_HMAC_SHA1_80): off, optional (offered, the far end chooses) or required "
         "[default: the scenario's, else off].")]
Dtmf = Annotated[str | None, typer.Option(
    help="How `dtmf:` steps are sent: rfc4733 (RTP events) or info (SIP INFO) [default: rfc4733].")]
# Per-call identity (voiceload/core/identity.py): templates with {seq} {agent} {session} {run} {digits:N} {csv.COL}
FromUser = Annotated[str | None, typer.Option(
    "--from", help="From user (caller-ID) per call, a template, e.g. '+1555{digits:7}' or '{csv.caller}'; "
                   "USER@HOST keeps its own host.")]
DisplayName = Annotated[str | None, typer.Option(help="From display name per call, a template.")]
ToUser = Annotated[str | None, typer.Option(
    help="The user part of the request URI and To per call, a template (replaces --target's user).")]
Headers = Annotated[list[str] | None, typer.Option(
    "--header", help="Extra INVITE header 'Name: template', repeatable, e.g. 'X-Account: {csv.account}'.")]
Identities = Annotated[Path | None, typer.Option(
    help="CSV file, header line of column names then one row per call (rows in order, wrapping), read by "
         "{csv.COLUMN} in the templates.")]
RasaSender = Annotated[str | None, typer.Option(
    help="What the gateway sends Rasa as the sender, so the tracker check asks for the same: session "
         "(the X-Voiceload-Session header), from-user or call-id [default: session].")]


def _sip_settings(auth: str | None, proxy: str | None, tls_ca: Path | None, tls_cert: Path | None,
                  tls_key: Path | None, tls_verify: bool | None, register: bool | None,
                  bind: str | None = None, advertise: str | None = None) -> dict[str, Any]:
    """The SIP flags as RunSettings fields (checked against the scenario's `sip:` by the coordinator)."""
    from voiceload.core.addresses import parse_addresses
    from voiceload.core.sipprofile import AUTH_ENV, Credentials

    try:
        creds = Credentials.parse(auth, f"--auth (or {AUTH_ENV})") if auth else None
        addresses = parse_addresses(bind, advertise)
    except UserError as exc:
        raise _fail(str(exc)) from None
    tls = {"ca_file": tls_ca, "cert_file": tls_cert, "key_file": tls_key, "verify_server": tls_verify}
    return {"auth": creds, "proxy": proxy, "register": register, "addresses": addresses,
            "tls": {k: str(v) if isinstance(v, Path) else v for k, v in tls.items()}}


def _media_settings(codecs: str | None, srtp: str | None, dtmf: str | None) -> dict[str, Any]:
    """The media flags as RunSettings.media (MediaProfile fields), each checked."""
    from voiceload.core.mediaprofile import check_dtmf, check_srtp, parse_codecs

    try:
        return {"media": {"codecs": parse_codecs(codecs) if codecs is not None else None,
                          "srtp": check_srtp(srtp) if srtp is not None else None,
                          "dtmf": check_dtmf(dtmf) if dtmf is not None else None}}
    except UserError as exc:
        raise _fail(str(exc)) from None


def _identity_settings(from_user: str | None, display_name: str | None, to_user: str | None,
                       headers: list[str] | None, identities: Path | None, rasa_sender: str | None) -> dict[str, Any]:
    """The identity flags as RunSettings.identity (IdentitySpec.merged's arguments), each template checked."""
    from voiceload.core.identity import SENDERS, IdentityError, Template, parse_header

    try:
        for flag, text in (("--from", from_user), ("--display-name", display_name), ("--to-user", to_user)):
            if text is not None:
                Template.parse(text, flag)
        parsed = [parse_header(h) for h in headers or []]
    except IdentityError as exc:
        raise _fail(str(exc)) from None
    if rasa_sender is not None and rasa_sender not in SENDERS:
        raise _fail(f"--rasa-sender {rasa_sender!r}: must be one of {', '.join(SENDERS)}")
    return {"identity": {"from_user": from_user, "display_name": display_name, "to_user": to_user,
                         "headers": parsed, "sender": rasa_sender,
                         "identities": str(identities.resolve()) if identities is not None else None}}


@app.command()
def run(
    scenario: Annotated[Path, typer.Argument(help="Scenario YAML file.")],
    target: Annotated[str | None, typer.Option(
        help="SIP URI of the gateway/bot to call, e.g. sip:bot@127.0.0.1:5080 (required with --channel sip); "
             "several, comma-separated, share the calls round-robin.",
        envvar="VOICELOAD_TARGET")] = None,
    concurrency: Annotated[int | None, typer.Option("--concurrency", "-c",
                                                    help="Calls kept in flight [default: 1].")] = None,
    calls: Annotated[int | None, typer.Option("--calls", "-n", help="Total calls to place [default: 1].")] = None,
    shape: Annotated[str | None, typer.Option(
        help="Load shape instead of -c/-n, e.g. 'ramp:0-200/5m,constant:200/5m' (docs/shapes.md).")] = None,
    max_rate: Annotated[float | None, typer.Option(help="New calls per second at most, over all agents.")] = None,
    out: Annotated[Path | None, typer.Option(help="Run directory (default: runs/<run id>).")] = None,
    broker: Broker = None,
    keep_tapes: Annotated[bool, typer.Option(help="Keep each call's tape WAV under OUT/tapes.")] = False,
    calls_per_agent: Annotated[int | None, typer.Option(
        help="Calls per agent process at most [default: the pjsua2 build's limit, at most 250].")] = None,
    slo: Slos = None,
    channel: Channel = "sip",
    rasa_url: RasaUrl = None,
    rasa_token: RasaToken = None,
    auth: Auth = None,
    proxy: Proxy = None,
    tls_ca: TlsCa = None,
    tls_cert: TlsCert = None,
    tls_key: TlsKey = None,
    tls_verify: TlsVerify = None,
    register: Register = None,
    probe: Probe = True,
    bind: Bind = None,
    advertise: Advertise = None,
    codecs: Codecs = None,
    srtp: Srtp = None,
    dtmf: Dtmf = None,
    from_user: FromUser = None,
    display_name: DisplayName = None,
    to_user: ToUser = None,
    header: Headers = None,
    identities: Identities = None,
    rasa_sender: RasaSender = None,
    verbose: Verbose = False,
) -> None:
    """Place CALLS calls with CONCURRENCY in flight (or follow a --shape) against TARGET; write the run dir.

    Exit code: 0 every SLO met, 1 an SLO failed, 2 bad input, 3 run invalid (generator or infrastructure).
    """
    _setup_logging(verbose)
    from voiceload.report.text import render_summary
    from voiceload.run import coordinator

    if shape is not None and (concurrency is not None or calls is not None):
        raise _fail("--shape replaces --concurrency/--calls: give one or the other")
    if max_rate is not None and max_rate <= 0:
        raise _fail(f"--max-rate {max_rate:g}: must be above 0 calls/s")
    if channel not in ("sip", "rest"):
        raise _fail(f"--channel {channel!r}: must be sip or rest")
    if calls_per_agent is not None and calls_per_agent < 1:
        raise _fail(f"--calls-per-agent {calls_per_agent}: must be at least 1")
    if channel == "sip" and target is None:
        raise _fail("--target is required with --channel sip (or set VOICELOAD_TARGET)")
    if channel == "rest" and rasa_url is None:
        raise _fail("--channel rest needs --rasa-url, the Rasa server to talk to")
    settings = coordinator.RunSettings(
        scenario_path=scenario, target=target if channel == "sip" and target else (rasa_url or ""),
        concurrency=1 if concurrency is None else concurrency, calls=1 if calls is None else calls,
        out_dir=out or Path(), broker_url=broker, keep_tapes=keep_tapes, slos=list(slo or []), shape=shape,
        max_rate=max_rate, scenario_load=concurrency is None and calls is None,
        channel=channel, rasa_url=rasa_url, rasa_token=rasa_token if rasa_url else None,
        agent_limit=calls_per_agent, probe=probe,
        **_sip_settings(auth, proxy, tls_ca, tls_cert, tls_key, tls_verify, register, bind, advertise),
        **_identity_settings(from_user, display_name, to_user, header, identities, rasa_sender),
        **_media_settings(codecs, srtp, dtmf),
    )
    if out is None:
        settings.out_dir = Path("runs") / settings.run_id

    def go() -> Summary:
        try:
            return coordinator.run(settings)
        except (UserError, KeyboardInterrupt):
            raise
        except Exception as exc:  # infrastructure failure: say so in one line, exit 3
            raise _fail(f"run failed: {exc}", EXIT_INVALID_RUN) from None

    summary = _guard(go)
    from rich.console import Console

    Console().print(render_summary(summary))
    for result in summary.slo or []:
        verdict = "PASS" if result.passed else "FAIL"
        value = "no data" if result.value is None else f"value {result.value:g}"
        typer.echo(f"SLO {verdict} {result.expr} ({value})")
    typer.echo(f"run dir: {settings.out_dir} (report.html, calls.jsonl, summary.json, turns.csv, junit.xml)")
    raise typer.Exit(EXIT_INVALID_RUN if summary.exit_code is None else summary.exit_code)


@app.command()
def capacity(
    scenario: Annotated[Path, typer.Argument(help="Scenario YAML file.")],
    target: Annotated[str, typer.Option(help="SIP URI of the gateway/bot to call (several: comma-separated).",
                                        envvar="VOICELOAD_TARGET")],
    slo: Slos = None,
    start: Annotated[int, typer.Option(help="First concurrency level.")] = 10,
    step: Annotated[int, typer.Option(help="Added to the concurrency after each level that met the SLOs.")] = 10,
    hold: Annotated[str, typer.Option(help="How long each level is judged, e.g. 60s, 2m.")] = "60s",
    max_concurrency: Annotated[int, typer.Option("--max", help="Highest level to try.")] = 200,
    settle: Annotated[str | None, typer.Option(
        help="Time at each new level before judging starts (default: one typical call).")] = None,
    max_rate: Annotated[float | None, typer.Option(help="New calls per second at most, over all agents.")] = None,
    max_host_cpu: Annotated[float, typer.Option(
        help="Mean CPU of this host (% of all cores) over a level above which the generator is not trusted.")] = 90.0,
    out: Annotated[Path | None, typer.Option(help="Run directory (default: runs/<run id>).")] = None,
    broker: Broker = None,
    auth: Auth = None,
    proxy: Proxy = None,
    tls_ca: TlsCa = None,
    tls_cert: TlsCert = None,
    tls_key: TlsKey = None,
    tls_verify: TlsVerify = None,
    register: Register = None,
    probe: Probe = True,
    bind: Bind = None,
    advertise: Advertise = None,
    codecs: Codecs = None,
    srtp: Srtp = None,
    dtmf: Dtmf = None,
    from_user: FromUser = None,
    display_name: DisplayName = None,
    to_user: ToUser = None,
    header: Headers = None,
    identities: Identities = None,
    verbose: Verbose = False,
) -> None:
    """Raise concurrency level by level until an SLO breaks (confirmed by a retry): the highest level that held.

    Exit code: 0 a knee was found (or --max held), 1 even --start breaks the SLOs, 2 bad input,
    3 the load generator saturated before the target broke (the answer is "at least N").
    """
    _setup_logging(verbose)
    from voiceload.core.shape import parse_duration
    from voiceload.run import capacity as capacity_mod
    from voiceload.run import coordinator

    def seconds(flag: str, text: str) -> float:
        try:
            return parse_duration(text)
        except ValueError as exc:
            raise _fail(f"{flag} {text!r}: {exc}") from None

    settings = coordinator.RunSettings(scenario_path=scenario, target=target, concurrency=start, calls=1,
                                       out_dir=out or Path(), broker_url=broker, slos=list(slo or []), probe=probe,
                                       **_sip_settings(auth, proxy, tls_ca, tls_cert, tls_key, tls_verify, register,
                                                       bind, advertise),
                                       **_identity_settings(from_user, display_name, to_user, header, identities,
                                                            None),
                                       **_media_settings(codecs, srtp, dtmf))
    if out is None:
        settings.out_dir = Path("runs") / settings.run_id
    cs = capacity_mod.CapacitySettings(
        run=settings, start=start, step=step, hold_s=seconds("--hold", hold), max_concurrency=max_concurrency,
        settle_s=seconds("--settle", settle) if settle is not None else None, max_rate=max_rate,
        max_host_cpu=max_host_cpu,
    )

    def go() -> Summary:
        try:
            return capacity_mod.run(cs)
        except (UserError, KeyboardInterrupt):
            raise
        except Exception as exc:
            raise _fail(f"capacity search failed: {exc}", EXIT_INVALID_RUN) from None

    summary = _guard(go)
    result = summary.capacity
    assert result is not None  # the search always answers
    _print_steps(result["steps"])
    typer.echo(result["headline"])
    typer.echo(f"run dir: {settings.out_dir} (report.html, capacity.json, calls.jsonl, summary.json)")
    raise typer.Exit(int(result["exit_code"]))


def _print_steps(steps: list[dict[str, Any]]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="capacity search (latency in ms; calls judged: calls that ended in the level's window)",
                  title_justify="left")
    for col in ("level", "try", "judged", "ok", "calls/s", "turns", "p50", "p95", "CPU%", "verdict"):
        table.add_column(col, justify="right" if col != "verdict" else "left", no_wrap=col != "verdict")
    for st in steps:
        verdict = ("generator saturated: " + "; ".join(st["invalid_reasons"]) if not st["valid"]
                   else "met" if st["passed"] else "broke " + "; ".join(st["failed_slos"]))
        table.add_row(str(st["concurrency"]), str(st["attempt"]), str(st["calls"]), str(st["completed"]),
                      f"{st['calls_per_s']:.2f}", str(st["turns"]), _ms(st["p50_ms"]), _ms(st["p95_ms"]),
                      _ms(st["host_cpu_percent"]), verdict)
    Console().print(table)


def _ms(v: float | None) -> str:
    return "-" if v is None else f"{v:.0f}"


@app.command()
def agent(
    run_id: Annotated[str, typer.Option(help="Run id (topics are voiceload/v1/<run_id>/...).")],
    agent_id: Annotated[str, typer.Option(help="This agent's id, unique in the run.")],
    scenario: Annotated[Path, typer.Option(help="Scenario YAML file.")],
    broker: Annotated[str, typer.Option(help="mqtt://HOST:PORT.", envvar="VOICELOAD_BROKER")],
    target: Annotated[str | None, typer.Option(
        help="SIP URI to call (required with --channel sip); several, comma-separated: round-robin.")] = None,
    max_calls: Annotated[int | None, typer.Option(help="Calls in flight at most (default: pjsua2 limit).")] = None,
    tape_dir: Annotated[Path | None, typer.Option(help="Where call tapes are written (default: tmpfs).")] = None,
    keep_tapes: Annotated[bool, typer.Option(help="Keep tapes after measuring them.")] = False,
    bind: Bind = None,
    advertise: Advertise = None,
    channel: Channel = "sip",
    rasa_url: RasaUrl = None,
    rasa_token: RasaToken = None,
    verbose: Verbose = False,
) -> None:
    """A call agent (spawned by `run`; run it yourself on other hosts against a shared broker)."""
    _setup_logging(verbose)
    from voiceload.agent import main as agent_mod
    _guard(lambda: agent_mod.run(
        run_id=run_id, agent_id=agent_id, scenario=scenario, target=target, broker_url=broker,
        tape_dir=tape_dir, keep_tapes=keep_tapes, max_calls=max_calls, bind=bind,
        advertise=advertise, channel=channel, rasa_url=rasa_url, rasa_token=rasa_token,
    ), crash_code=EXIT_INVALID_RUN)


@app.command()
def bot(
    scenario: Annotated[Path, typer.Option(help="Scenario whose prompts the bot speaks.")],
    listen: Annotated[str, typer.Option(help="HOST:PORT for SIP (UDP); port 0 picks a free one.")] = "127.0.0.1:5080",
    think_ms: Annotated[str, typer.Option(help="Think time MEAN[:JITTER] in ms (uniform).")] = "400",
    truth: Annotated[Path | None, typer.Option(help="Append ground truth per turn to this JSONL file.")] = None,
    max_calls: Annotated[int, typer.Option(help="Concurrent calls to serve.")] = 32,
    calls_per_worker: Annotated[int | None, typer.Option(
        help="Calls per worker process at most: above it, worker processes behind a SIP 302 front "
             "[default: the pjsua2 build's limit, at most 200].")] = None,
    endpoint_ms: Annotated[int, typer.Option(help="Silence that ends a caller utterance.")] = 350,
    seed: Annotated[int | None, typer.Option(help="Seed for think-time draws.")] = None,
    tape_dir: Annotated[Path | None, typer.Option(help="Where call tapes are written (default: tmpfs).")] = None,
    keep_tapes: Annotated[bool, typer.Option(help="Keep tapes after measuring them.")] = False,
    capacity: Annotated[int | None, typer.Option(
        help="Serve utterances with this many workers, queueing the rest (docs/bot-model.md); default unbounded."
    )] = None,
    brain: Annotated[str, typer.Option(
        help="Who answers the caller: 'scripted' speaks the scenario's prompts; 'rasa' makes the bot a voice "
             "gateway (speech recognition → Rasa REST → speech synthesis) in front of --rasa-url."
    )] = "scripted",
    rasa_url: Annotated[str | None, typer.Option(help="http://HOST:PORT of a Rasa server (--brain rasa).")] = None,
    rasa_token: Annotated[str | None, typer.Option(
        help="Rasa's --auth-token, sent as ?token= (--brain rasa).", envvar="VOICELOAD_RASA_TOKEN"
    )] = None,
    rasa_sender: Annotated[str, typer.Option(
        help="What the gateway sends Rasa as the sender: session (the caller's X-Voiceload-Session header, else "
             "the Call-ID), from-user or call-id (--brain rasa; docs/gateways.md).")] = "session",
    codecs: Annotated[str | None, typer.Option(
        help="Codecs the bot accepts, preferred first, e.g. PCMA,PCMU (PCMU, PCMA, G722, opus) "
             "[default: each of them this pjsua2 build has, in that order].")] = None,
    srtp: Annotated[str | None, typer.Option(
        help="off, optional (SRTP when the caller offers it, plain RTP otherwise) or required "
             "(RTP/SAVP offers only: a caller without SRTP, or offering it as optional, is refused) "
             "[default: optional, off if this pjsua2 build has no SRTP].")] = None,
    worker: Annotated[bool, typer.Option(hidden=True)] = False,
    queue: Annotated[str | None, typer.Option(hidden=True, help="HOST:PORT of the front's work queue.")] = None,
    verbose: Verbose = False,
) -> None:
    """The reference voice bot: answers, speaks the scenario's prompts, records its own truth per turn.

    With --brain rasa it is a reference voice gateway in front of Rasa: the scenario's greeting, then per utterance
    speech recognition (grammar: the caller transcripts) → Rasa → the reply spoken in the bot's voice.
    """
    _setup_logging(verbose)
    from voiceload.core.callflow import ThinkTime
    from voiceload.core.identity import SENDERS
    from voiceload.core.mediaprofile import check_srtp, parse_codecs
    from voiceload.core.scenario import load_scenario
    from voiceload.rasa import parse_rasa_url
    from voiceload.sut import bot as bot_mod
    from voiceload.sut.asr import scenario_phrases
    from voiceload.sut.gateway import BRAINS

    def host_port(option: str, value: str) -> tuple[str, int]:
        host, _, port_s = value.rpartition(":")
        if not host or not port_s.isdigit() or int(port_s) > 65535:
            raise UserError(f"{option} {value!r}: expected HOST:PORT, e.g. 127.0.0.1:5080")
        return host, int(port_s)

    def go() -> None:
        host, port = host_port("--listen", listen)
        try:
            think = ThinkTime.parse(think_ms)
        except ValueError as exc:
            raise UserError(f"--think-ms: {exc}") from None
        if capacity is not None and capacity < 1:
            raise UserError(f"--capacity {capacity}: expected a number of workers of at least 1")
        if calls_per_worker is not None and calls_per_worker < 1:
            raise UserError(f"--calls-per-worker {calls_per_worker}: must be at least 1")
        url: str | None = None
        if brain == "rasa":
            if rasa_url is None:
                raise UserError("--brain rasa needs --rasa-url http://HOST:PORT of the Rasa server")
            url = parse_rasa_url(rasa_url)
            if capacity is not None:
                raise UserError("--capacity models a scripted bot's workers; with --brain rasa, Rasa's own "
                                "capacity is what a run measures")
        elif brain == "scripted":
            if rasa_url is not None:
                raise UserError("--rasa-url needs --brain rasa (the scripted brain speaks the scenario's prompts)")
        else:
            raise UserError(f"--brain {brain!r}: expected one of {', '.join(BRAINS)}")
        if rasa_sender not in SENDERS:
            raise UserError(f"--rasa-sender {rasa_sender!r}: must be one of {', '.join(SENDERS)}")
        sc = load_scenario(scenario)
        if brain == "rasa":
            scenario_phrases(sc)  # every turn needs a transcript: the recogniser's grammar is built from them
        settings = bot_mod.BotSettings(
            host=host, port=port, scenario_path=scenario, think=think, truth_path=truth,
            codecs=None if codecs is None else parse_codecs(codecs),
            srtp=None if srtp is None else check_srtp(srtp.lower()),
            max_calls=max_calls, calls_per_worker=calls_per_worker, endpoint_ms=endpoint_ms, seed=seed,
            keep_tapes=keep_tapes, capacity=capacity,
            queue=None if queue is None else host_port("--queue", queue),
            brain=brain, rasa_url=url, rasa_token=rasa_token if brain == "rasa" else None, rasa_sender=rasa_sender,
        )
        if tape_dir is not None:
            settings.tape_dir = tape_dir
        bot_mod.run(settings, worker=worker)

    _guard(go, crash_code=EXIT_INVALID_RUN)


@scenario_app.command("validate")
def scenario_validate(file: Annotated[Path, typer.Argument(help="Scenario YAML file.")]) -> None:
    """Check a scenario and its recordings; print every problem with file, line and field (exit 2)."""
    from voiceload.core.scenario import load_scenario

    sc = _guard(lambda: load_scenario(file))
    typer.echo(f"{file}: ok: scenario {sc.name!r}, {len(sc.turns)} turns")


@recordings_app.command("make")
def recordings_make(
    directory: Annotated[Path, typer.Argument(help="Directory of *.txt transcripts.")],
    force: Annotated[bool, typer.Option(help="Re-synthesise up-to-date WAVs too.")] = False,
) -> None:
    """Synthesise each transcript NAME.txt into NAME.wav (espeak-ng + sox, 8 kHz mono)."""
    from voiceload.audio.recordings import make_recordings

    written = _guard(lambda: make_recordings(directory, force=force))
    typer.echo(f"{len(written)} recordings written in {directory}")


def _has_dist(name: str) -> bool:
    try:
        importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


def _demo_scenario() -> Path:
    """scenarios/demo.yaml of the checkout (or of the current directory, e.g. /app in the image)."""
    for base in (REPO_ROOT, Path.cwd()):
        if (base / "scenarios" / "demo.yaml").exists():
            return base / "scenarios" / "demo.yaml"
    raise UserError("scenarios/demo.yaml not found: run the demo from a voiceload checkout")


@app.command()
def doctor() -> None:
    """Show which pjsua2 is active, its version and per-process call limit, and the agents' RTP engine."""
    import importlib.util

    from voiceload.run.coordinator import AGENT_CALLS_MAX
    from voiceload.sip.lite import call_limit

    spec = importlib.util.find_spec("pjsua2")  # found, not loaded: only voiceload.sip.ua imports pjsua2
    if spec is None or spec.origin is None:
        raise ModuleNotFoundError("No module named 'pjsua2'", name="pjsua2")
    typer.echo(f"voiceload {__import__('voiceload').__version__}, python {sys.version.split()[0]}")
    version = importlib.metadata.version("pjsua2-python") if _has_dist("pjsua2-python") else "unknown"
    build = ("voiceload's dense build (scripts/build-pjsua2.sh)" if "+voiceload" in version
             else "PyPI wheel; `make pjsua2` builds the dense one")
    typer.echo(f"pjsua2: {version}, {build}, at {Path(spec.origin).parent}")
    limit = call_limit()
    typer.echo(f"pjsua2 per-process call limit: {limit}; calls per agent process: "
               f"{min(limit, AGENT_CALLS_MAX)}, {os.cpu_count()} cores")
    try:
        from voiceload.media.engine import _rtpengine
        typer.echo(f"agents' RTP engine: {Path(_rtpengine.__file__ or '?').name} (compiled by scripts/setup.sh)")
    except ImportError as exc:
        typer.echo(f"agents' RTP engine: not built ({exc}); run scripts/setup.sh")
    for tool in ("espeak-ng", "sox", "mosquitto", "sipp"):
        path = next((str(Path(d) / tool) for d in os.environ.get("PATH", "").split(":")
                     if (Path(d) / tool).exists()), None)
        typer.echo(f"{tool}: {path or 'not installed'}")


@app.command()
def demo(
    out: Annotated[Path, typer.Option(help="Run directory.")] = Path("runs/demo"),
    concurrency: Annotated[int, typer.Option("--concurrency", "-c")] = 4,
    calls: Annotated[int, typer.Option("--calls", "-n")] = 12,
    think_ms: Annotated[str, typer.Option(help="Reference bot think time.")] = "400:100",
) -> None:
    """A short voice stress run against the built-in reference bot with the embedded broker."""
    _setup_logging(False)
    scenario = _guard(_demo_scenario)
    out.mkdir(parents=True, exist_ok=True)
    for old in ("calls.jsonl", "summary.json", "bot-truth.jsonl"):  # the demo's dir is rewritten each time
        (out / old).unlink(missing_ok=True)
    truth = out / "bot-truth.jsonl"
    from voiceload.sut.bot import spawn

    try:
        bot_proc, target = spawn(["--listen", "127.0.0.1:0", "--scenario", str(scenario), "--think-ms", think_ms,
                                  "--truth", str(truth), "--max-calls", str(concurrency)])
    except RuntimeError:
        raise _fail("the reference bot did not start", EXIT_INVALID_RUN) from None
    try:
        typer.echo(f"reference bot on {target} (think time {think_ms} ms); "
                   f"placing {calls} calls, {concurrency} at once")
        started = time.time()
        rc = subprocess.call([sys.executable, "-m", "voiceload", "run", str(scenario), "--target", target,
                              "--concurrency", str(concurrency), "--calls", str(calls), "--out", str(out)])
        typer.echo(f"demo finished in {time.time() - started:.0f} s; summary: {out / 'summary.json'}")
        if (out / "summary.json").exists():
            from voiceload.core.summary import Summary

            s = Summary.from_dict(json.loads((out / "summary.json").read_text()))
            typer.echo(f"completion {s.completion_rate:.0%}, turn latency p50 {s.turn_latency_ms.p50} ms, "
                       f"p95 {s.turn_latency_ms.p95} ms")
    finally:
        bot_proc.terminate()
        try:
            bot_proc.wait(10)
        except subprocess.TimeoutExpired:
            bot_proc.kill()
    raise typer.Exit(rc)


@app.command()
def report(
    run_dir: Annotated[Path, typer.Argument(help="Run directory holding calls.jsonl (and summary.json).")],
    verbose: Verbose = False,
) -> None:
    """Rebuild report.html, turns.csv and junit.xml in RUN_DIR from its calls.jsonl."""
    _setup_logging(verbose)
    from voiceload.report import write_reports

    for path in _guard(lambda: write_reports(run_dir)):
        typer.echo(str(path))
