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
from typing import Annotated, Any, TypeVar

import typer

from voiceload.errors import EXIT_BAD_INPUT, EXIT_INVALID_RUN, ScenarioError, UserError

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


@app.command()
def run(
    scenario: Annotated[Path, typer.Argument(help="Scenario YAML file.")],
    target: Annotated[str, typer.Option(help="SIP URI of the gateway/bot to call, e.g. sip:bot@127.0.0.1:5080.",
                                        envvar="VOICELOAD_TARGET")],
    concurrency: Annotated[int, typer.Option("--concurrency", "-c", help="Calls kept in flight.")] = 1,
    calls: Annotated[int, typer.Option("--calls", "-n", help="Total calls to place.")] = 1,
    out: Annotated[Path | None, typer.Option(help="Run directory (default: runs/<run id>).")] = None,
    broker: Annotated[str | None, typer.Option(help="mqtt://HOST:PORT of an MQTT broker; default: embedded.",
                                               envvar="VOICELOAD_BROKER")] = None,
    keep_tapes: Annotated[bool, typer.Option(help="Keep each call's tape WAV under OUT/tapes.")] = False,
    slo: Annotated[list[str] | None, typer.Option(
        "--slo", help="Service level objective, repeatable, e.g. 'p95_turn_latency_ms<=1500' (docs/live-and-slo.md)."
    )] = None,
    verbose: Verbose = False,
) -> None:
    """Place CALLS calls with CONCURRENCY in flight against TARGET; write OUT/calls.jsonl + summary.json.

    Exit code: 0 every SLO met, 1 an SLO failed, 2 bad input, 3 run invalid (generator or infrastructure).
    """
    _setup_logging(verbose)
    from voiceload import coordinator
    from voiceload.collector import render_summary

    settings = coordinator.RunSettings(
        scenario_path=scenario, target=target, concurrency=concurrency, calls=calls, out_dir=out or Path(),
        broker_url=broker, keep_tapes=keep_tapes, slos=list(slo or []),
    )
    if out is None:
        settings.out_dir = Path("runs") / settings.run_id

    def go() -> dict[str, Any]:
        try:
            return coordinator.run(settings)
        except (UserError, KeyboardInterrupt):
            raise
        except Exception as exc:  # infrastructure failure: say so in one line, exit 3
            raise _fail(f"run failed: {exc}", EXIT_INVALID_RUN) from None

    summary = _guard(go)
    from rich.console import Console

    Console().print(render_summary(summary))
    for result in summary.get("slo", []):
        verdict = "PASS" if result["passed"] else "FAIL"
        value = "no data" if result["value"] is None else f"value {result['value']:g}"
        typer.echo(f"SLO {verdict} {result['expr']} ({value})")
    typer.echo(f"run dir: {settings.out_dir} (report.html, calls.jsonl, summary.json, turns.csv, junit.xml)")
    raise typer.Exit(int(summary.get("exit_code", EXIT_INVALID_RUN)))


@app.command()
def agent(
    run_id: Annotated[str, typer.Option(help="Run id (topics are voiceload/v1/<run_id>/...).")],
    agent_id: Annotated[str, typer.Option(help="This agent's id, unique in the run.")],
    scenario: Annotated[Path, typer.Option(help="Scenario YAML file.")],
    target: Annotated[str, typer.Option(help="SIP URI to call.")],
    broker: Annotated[str, typer.Option(help="mqtt://HOST:PORT.", envvar="VOICELOAD_BROKER")],
    max_calls: Annotated[int | None, typer.Option(help="Calls in flight at most (default: pjsua2 limit).")] = None,
    tape_dir: Annotated[Path | None, typer.Option(help="Where call tapes are written (default: tmpfs).")] = None,
    keep_tapes: Annotated[bool, typer.Option(help="Keep tapes after measuring them.")] = False,
    bind: Annotated[str | None, typer.Option(help="Local IP for SIP/RTP (default: the one routing to TARGET).")] = None,
    verbose: Verbose = False,
) -> None:
    """A call agent (spawned by `run`; run it yourself on other hosts against a shared broker)."""
    _setup_logging(verbose)
    from voiceload import agent as agent_mod

    _guard(lambda: agent_mod.run(
        run_id=run_id, agent_id=agent_id, scenario=scenario, target=target, broker_url=broker,
        tape_dir=tape_dir, keep_tapes=keep_tapes, max_calls=max_calls, bind=bind,
    ), crash_code=EXIT_INVALID_RUN)


@app.command()
def bot(
    scenario: Annotated[Path, typer.Option(help="Scenario whose prompts the bot speaks.")],
    listen: Annotated[str, typer.Option(help="HOST:PORT for SIP (UDP); port 0 picks a free one.")] = "127.0.0.1:5080",
    think_ms: Annotated[str, typer.Option(help="Think time MEAN[:JITTER] in ms (uniform).")] = "400",
    truth: Annotated[Path | None, typer.Option(help="Append ground truth per turn to this JSONL file.")] = None,
    max_calls: Annotated[int, typer.Option(help="Concurrent calls to serve.")] = 32,
    endpoint_ms: Annotated[int, typer.Option(help="Silence that ends a caller utterance.")] = 350,
    seed: Annotated[int | None, typer.Option(help="Seed for think-time draws.")] = None,
    tape_dir: Annotated[Path | None, typer.Option(help="Where call tapes are written (default: tmpfs).")] = None,
    keep_tapes: Annotated[bool, typer.Option(help="Keep tapes after measuring them.")] = False,
    worker: Annotated[bool, typer.Option(hidden=True)] = False,
    verbose: Verbose = False,
) -> None:
    """The reference voice bot: answers, speaks the scenario's prompts, records its own truth per turn."""
    _setup_logging(verbose)
    from voiceload import bot as bot_mod
    from voiceload.callflow import ThinkTime
    from voiceload.scenario import load_scenario

    def go() -> None:
        host, _, port_s = listen.rpartition(":")
        if not host or not port_s.isdigit() or int(port_s) > 65535:
            raise UserError(f"--listen {listen!r}: expected HOST:PORT, e.g. 127.0.0.1:5080")
        try:
            think = ThinkTime.parse(think_ms)
        except ValueError as exc:
            raise UserError(f"--think-ms: {exc}") from None
        load_scenario(scenario)
        settings = bot_mod.BotSettings(
            host=host, port=int(port_s), scenario_path=scenario, think=think, truth_path=truth,
            max_calls=max_calls, endpoint_ms=endpoint_ms, seed=seed, keep_tapes=keep_tapes,
        )
        if tape_dir is not None:
            settings.tape_dir = tape_dir
        bot_mod.run(settings, worker=worker)

    _guard(go, crash_code=EXIT_INVALID_RUN)


@scenario_app.command("validate")
def scenario_validate(file: Annotated[Path, typer.Argument(help="Scenario YAML file.")]) -> None:
    """Check a scenario and its recordings; print every problem with file, line and field (exit 2)."""
    from voiceload.scenario import load_scenario

    sc = _guard(lambda: load_scenario(file))
    typer.echo(f"{file}: ok: scenario {sc.name!r}, {len(sc.turns)} turns")


@recordings_app.command("make")
def recordings_make(
    directory: Annotated[Path, typer.Argument(help="Directory of *.txt transcripts.")],
    force: Annotated[bool, typer.Option(help="Re-synthesise up-to-date WAVs too.")] = False,
) -> None:
    """Synthesise each transcript NAME.txt into NAME.wav (espeak-ng + sox, 8 kHz mono)."""
    from voiceload.recordings import make_recordings

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
    """Show which pjsua2 is active, its version and its per-process call limit."""
    import pjsua2

    from voiceload.bot import call_limit

    typer.echo(f"voiceload {__import__('voiceload').__version__}, python {sys.version.split()[0]}")
    version = importlib.metadata.version("pjsua2-python") if _has_dist("pjsua2-python") else "unknown"
    typer.echo(f"pjsua2: {version} at {Path(pjsua2.__file__).parent}")
    typer.echo(f"pjsua2 per-process call limit: {call_limit()}")
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
    cmd = [sys.executable, "-m", "voiceload", "bot", "--listen", "127.0.0.1:0", "--scenario", str(scenario),
           "--think-ms", think_ms, "--truth", str(truth), "--max-calls", str(concurrency)]
    bot_proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    try:
        assert bot_proc.stdout is not None
        ready: list[str] = []
        for line in bot_proc.stdout:  # pjlib may print a few lines before the bot's READY
            if line.startswith("READY"):
                ready = line.split()
                break
        if len(ready) < 2:
            raise _fail("the reference bot did not start", EXIT_INVALID_RUN)
        target = f"sip:bot@{ready[1]}"
        typer.echo(f"reference bot on {target} (think time {think_ms} ms); "
                   f"placing {calls} calls, {concurrency} at once")
        started = time.time()
        rc = subprocess.call([sys.executable, "-m", "voiceload", "run", str(scenario), "--target", target,
                              "--concurrency", str(concurrency), "--calls", str(calls), "--out", str(out)])
        typer.echo(f"demo finished in {time.time() - started:.0f} s; summary: {out / 'summary.json'}")
        summary = json.loads((out / "summary.json").read_text()) if (out / "summary.json").exists() else {}
        if summary:
            typer.echo(f"completion {summary.get('completion_rate', 0):.0%}, "
                       f"turn latency p50 {summary['turn_latency_ms'].get('p50')} ms, "
                       f"p95 {summary['turn_latency_ms'].get('p95')} ms")
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
