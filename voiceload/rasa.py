"""The only module that knows how to build, run and talk to Rasa.

Rasa 3.6 installs only on Python 3.10 and voiceload runs on 3.11, so Rasa never shares our
interpreter: it lives in a cached venv built by `scripts/rasa-env.sh`, trains and serves as a child
process, and is spoken to over its HTTP API (REST channel + tracker endpoint) with aiohttp.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any

import aiohttp

from voiceload.errors import EXIT_BAD_INPUT, UserError

log = logging.getLogger(__name__)

# Calls in flight per REST agent process. A call is a coroutine waiting on a socket, not a media
# stream: one process holds hundreds, and 200 keeps its event loop prompt (heartbeat pump lag).
REST_CALL_LIMIT = 200
PROBE_TIMEOUT_S = 3.0
RASA_VERSION = "3.6.21"
REPO_ROOT = Path(__file__).resolve().parent.parent
ENV_SCRIPT = REPO_ROOT / "scripts" / "rasa-env.sh"
MOODBOT_DIR = REPO_ROOT / "examples" / "rasa-moodbot" / "rasa"

READY_TIMEOUT_S = 120.0
TRAIN_TIMEOUT_S = 1800.0
STOP_TIMEOUT_S = 10.0
# Sender ids the tracker URL carries unescaped (see fetch_tracker).
URL_SAFE_SENDER = re.compile(r"[A-Za-z0-9._~:@+/-]+")
# Events in a tracker that are bookkeeping, not something the bot chose to do.
NOISE_ACTIONS = frozenset({"action_listen", "action_session_start"})


class RasaError(RuntimeError):
    """Rasa failed: training, start-up, or an HTTP answer that is not what the REST API promises."""


class RasaUnreachable(RasaError):
    """Nothing answers at the Rasa URL (refused, reset, DNS); the message names the URL."""


def cache_dir() -> Path:
    """Where the Rasa venv, trained models and logs live: outside the repo, shared by every checkout."""
    explicit = os.environ.get("VOICELOAD_CACHE")
    if explicit:
        return Path(explicit)
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "voiceload"


def rasa_env() -> dict[str, str]:
    """The environment for Rasa children: offline (no telemetry) and without TensorFlow's chatter."""
    env = dict(os.environ)
    env.update({
        "RASA_TELEMETRY_ENABLED": "false",
        "TF_CPP_MIN_LOG_LEVEL": "2",
        "SQLALCHEMY_SILENCE_UBER_WARNING": "1",
    })
    return env


def find_rasa_python() -> Path:
    """The Python of the cached Rasa venv, built by `scripts/rasa-env.sh` on first use (minutes).

    The script's progress is passed through to our stderr. Raises `UserError` (→ exit 2) with the
    script's own message when this machine has no Python 3.10.
    """
    if not ENV_SCRIPT.is_file():
        raise UserError(f"{ENV_SCRIPT} is missing: Rasa support needs a voiceload source checkout")
    proc = subprocess.Popen(["bash", str(ENV_SCRIPT)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=rasa_env())
    assert proc.stderr is not None and proc.stdout is not None
    messages: list[str] = []
    for line in proc.stderr:  # the script writes only one line to stdout, so this cannot deadlock
        sys.stderr.write(line)
        if line.startswith("rasa-env:"):
            messages.append(line.removeprefix("rasa-env:").strip())
    out = proc.stdout.read()
    code = proc.wait()
    if code == EXIT_BAD_INPUT:
        raise UserError("; ".join(messages) or f"{ENV_SCRIPT} found no Python 3.10 for Rasa {RASA_VERSION}")
    lines = out.strip().splitlines()
    if code != 0 or not lines:
        raise RasaError(f"{ENV_SCRIPT} failed with exit code {code}; its output is above")
    python = Path(lines[-1])
    if not python.exists():
        raise RasaError(f"{ENV_SCRIPT} printed {python}, which does not exist")
    return python


def _training_files(project_dir: Path) -> list[Path]:
    """The files `rasa train` reads: config, domain (file or directory) and data. Others don't change the model."""
    config, domain, data = project_dir / "config.yml", project_dir / "domain.yml", project_dir / "data"
    if not domain.is_file():
        domain = project_dir / "domain"
    if not (config.is_file() and domain.exists() and data.is_dir()):
        raise UserError(f"{project_dir} is not a Rasa project (needs config.yml, domain.yml and data/)")
    files = [config]
    for part in (domain, data):
        if part.is_file():
            files.append(part)
        else:
            files.extend(f for f in part.rglob("*") if f.is_file() and not f.name.startswith("."))
    return sorted(files)


def model_key(project_dir: Path) -> str:
    """A hash of the training inputs and the Rasa version: equal keys mean an equal model can be reused."""
    h = hashlib.sha256(f"rasa={RASA_VERSION}\n".encode())
    for f in _training_files(project_dir):
        h.update(f.relative_to(project_dir).as_posix().encode() + b"\0")
        h.update(f.read_bytes() + b"\0")
    return h.hexdigest()[:16]


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    """Serialise builders across processes (parallel test runs must not train the same model twice)."""
    with path.open("w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _tail(path: Path, lines: int = 15) -> str:
    """The last lines of a log, for error messages that explain themselves."""
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def ensure_model(project_dir: Path, *, rasa_python: Path | None = None, models_dir: Path | None = None) -> Path:
    """A trained model for the project: `<cache>/rasa-models/<key>.tar.gz`, trained (offline) only when missing.

    Training runs in a scratch directory, so nothing is written into the project, and the model is
    moved into place atomically once complete. `models_dir` overrides the cache (to time a fresh training).
    """
    project_dir = project_dir.resolve()
    key = model_key(project_dir)
    models = models_dir or cache_dir() / "rasa-models"
    models.mkdir(parents=True, exist_ok=True)
    model = models / f"{key}.tar.gz"
    if model.is_file():
        return model
    python = rasa_python or find_rasa_python()
    with _file_lock(models / f"{key}.lock"):
        if model.is_file():  # another process trained it while we waited
            return model
        work = Path(tempfile.mkdtemp(prefix=f"train-{key}-", dir=models))
        train_log = models / f"{key}.train.log"
        domain = project_dir / "domain.yml"
        cmd = [str(python), "-m", "rasa", "train", "--config", str(project_dir / "config.yml"),
               "--domain", str(domain if domain.is_file() else project_dir / "domain"),
               "--data", str(project_dir / "data"), "--out", str(work), "--fixed-model-name", key]
        env = rasa_env() | {"RASA_CACHE_DIRECTORY": str(work / "cache")}
        started = time.monotonic()
        log.info("training Rasa model %s from %s", key, project_dir)
        try:
            with train_log.open("w") as out:
                code = subprocess.call(cmd, cwd=work, env=env, stdout=out, stderr=subprocess.STDOUT,
                                       stdin=subprocess.DEVNULL, timeout=TRAIN_TIMEOUT_S)
            trained = work / f"{key}.tar.gz"
            if code != 0 or not trained.is_file():
                raise RasaError(f"rasa train of {project_dir} failed (exit {code}); log {train_log}:\n"
                                f"{_tail(train_log)}")
            os.replace(trained, model)
        except subprocess.TimeoutExpired as err:
            raise RasaError(f"rasa train of {project_dir} took over {TRAIN_TIMEOUT_S:.0f} s; log {train_log}") from err
        finally:
            shutil.rmtree(work, ignore_errors=True)
        log.info("trained %s in %.1f s", model, time.monotonic() - started)
    return model


def _free_port(host: str) -> int:
    """A TCP port that was free a moment ago: bind to 0 and let the kernel choose."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


class RasaServer:
    """`rasa run --enable-api` serving one model on 127.0.0.1, as a synchronous context manager.

    Synchronous because starting is one blocking wait (tens of seconds while TensorFlow loads) done
    once per test, bench or bot; async callers wrap it in `asyncio.to_thread`. Talk to `.url` with
    `send_message`/`fetch_tracker`. Output goes to `.log_path`. The process gets its own session so
    a terminal's Ctrl-C reaches us, not Rasa, and `stop()` ends it (SIGTERM, then SIGKILL), bounded.
    """

    def __init__(self, model: Path, *, project_dir: Path | None = None, token: str | None = None,
                 log_path: Path | None = None, host: str = "127.0.0.1", port: int = 0,
                 ready_timeout_s: float = READY_TIMEOUT_S, rasa_python: Path | None = None) -> None:
        self.model = model
        self.project_dir = project_dir
        self.token = token
        self.host = host
        self.port = port
        self.ready_timeout_s = ready_timeout_s
        self.rasa_python = rasa_python
        if log_path is None:
            fd, name = tempfile.mkstemp(prefix="rasa-run-", suffix=".log")
            os.close(fd)
            log_path = Path(name)
        self.log_path = log_path
        self.startup_s = 0.0
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """Base URL of the server (valid once started: the port is chosen at start)."""
        return f"http://{self.host}:{self.port}"

    def _command(self, python: Path) -> list[str]:
        cmd = [str(python), "-m", "rasa", "run", "--enable-api", "-m", str(self.model), "-i", self.host,
               "-p", str(self.port), "--cors", "*"]
        project = self.project_dir
        if project is not None and (project / "credentials.yml").is_file():
            cmd += ["--credentials", str(project / "credentials.yml")]
        else:
            cmd += ["--connector", "rest"]  # without credentials Rasa would open its command-line channel
        if project is not None and (project / "endpoints.yml").is_file():
            cmd += ["--endpoints", str(project / "endpoints.yml")]
        if self.token:
            cmd += ["--auth-token", self.token]
        return cmd

    def start(self) -> None:
        """Start Rasa and return once GET /status answers 200 (the model is loaded), or raise `RasaError`."""
        if not self.model.is_file():
            raise UserError(f"Rasa model {self.model} does not exist")
        python = self.rasa_python or find_rasa_python()
        if self.port == 0:
            self.port = _free_port(self.host)
        started = time.monotonic()
        with self.log_path.open("ab") as out:
            self.proc = subprocess.Popen(self._command(python), cwd=self.log_path.parent, env=rasa_env(),
                                         stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                         start_new_session=True)
        status = f"{self.url}/status" + (f"?token={urllib.parse.quote(self.token)}" if self.token else "")
        deadline = started + self.ready_timeout_s
        while time.monotonic() < deadline:
            code = self.proc.poll()
            if code is not None:
                raise RasaError(f"rasa run exited with {code} before it was ready; log {self.log_path}:\n"
                                f"{_tail(self.log_path)}")
            try:
                with urllib.request.urlopen(status, timeout=2) as resp:
                    if resp.status == 200:
                        self.startup_s = time.monotonic() - started
                        log.info("Rasa ready at %s in %.1f s", self.url, self.startup_s)
                        return
            except (urllib.error.URLError, OSError):
                pass  # not listening yet, or 409 while the model loads
            time.sleep(0.5)
        self.stop()
        raise RasaError(f"Rasa at {self.url} was not ready within {self.ready_timeout_s:.0f} s; log {self.log_path}:\n"
                        f"{_tail(self.log_path)}")

    def stop(self) -> None:
        """SIGTERM the server's process group, then SIGKILL if it lingers; idempotent."""
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)

    def __enter__(self) -> RasaServer:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()


async def _request_json(session: aiohttp.ClientSession, method: str, endpoint: str, base_url: str,
                        timeout_s: float, *, json: Any = None, token: str | None = None) -> Any:
    """One HTTP exchange with Rasa, every failure turned into a `RasaError` that names the URL."""
    params = {"token": token} if token else None
    try:
        async with session.request(method, endpoint, json=json, params=params,
                                   timeout=aiohttp.ClientTimeout(total=timeout_s)) as resp:
            if resp.status != 200:
                body = (await resp.text())[:300]
                raise RasaError(f"Rasa at {endpoint} answered HTTP {resp.status}: {body}")
            return await resp.json(content_type=None)
    except TimeoutError as err:
        raise RasaError(f"Rasa at {endpoint} did not answer within {timeout_s:g} s") from err
    except aiohttp.ClientConnectionError as err:
        raise RasaUnreachable(f"Rasa at {base_url} is unreachable: {err}") from err
    except (aiohttp.ContentTypeError, ValueError) as err:
        raise RasaError(f"Rasa at {endpoint} answered something that is not JSON: {err}") from err


async def send_message(session: aiohttp.ClientSession, url: str, sender: str, text: str, *,
                       token: str | None = None, timeout_s: float = 30) -> list[str]:
    """Say `text` as `sender` on the REST channel and return the bot's reply texts, in order.

    Replies without text (images, custom payloads) are skipped: a voice gateway can only speak text.
    """
    endpoint = f"{url.rstrip('/')}/webhooks/rest/webhook"
    body = await _request_json(session, "POST", endpoint, url, timeout_s, json={"sender": sender, "message": text},
                               token=token)
    if not isinstance(body, list):
        raise RasaError(f"Rasa at {endpoint} answered {type(body).__name__}, not a list of messages")
    return [m["text"] for m in body if isinstance(m, dict) and isinstance(m.get("text"), str)]


async def fetch_tracker(session: aiohttp.ClientSession, url: str, sender: str, *, token: str | None = None,
                        timeout_s: float = 30) -> dict[str, Any]:
    """The conversation's tracker (its events since the last restart), from the HTTP API.

    Rasa 3.6 (Sanic 21.12) does not decode percent-escapes in the conversation id of this URL, so a
    sender that would need escaping can talk but never be looked up: such ids raise `ValueError`.
    """
    if not URL_SAFE_SENDER.fullmatch(sender):
        raise ValueError(f"sender id {sender!r} cannot be looked up in Rasa's tracker API: use only "
                         "letters, digits and . _ ~ : @ + / -")
    endpoint = f"{url.rstrip('/')}/conversations/{sender}/tracker"
    body = await _request_json(session, "GET", endpoint, url, timeout_s, token=token)
    if not isinstance(body, dict):
        raise RasaError(f"Rasa at {endpoint} answered {type(body).__name__}, not a tracker object")
    return body


def _events(tracker: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    events = tracker.get("events") or []
    return [e for e in events if isinstance(e, Mapping)]


def tracker_intents(tracker: Mapping[str, Any]) -> list[str]:
    """The intents Rasa recognised for the user's messages, in order (what the NLU heard)."""
    intents: list[str] = []
    for e in _events(tracker):
        if e.get("event") != "user":
            continue
        intent = (e.get("parse_data") or {}).get("intent") or {}
        name = intent.get("name")
        if isinstance(name, str):
            intents.append(name)
    return intents


def tracker_actions(tracker: Mapping[str, Any]) -> list[str]:
    """The actions the bot chose, in order, without listen/session-start bookkeeping (what the dialog did)."""
    return [name for e in _events(tracker)
            if e.get("event") == "action" and isinstance(name := e.get("name"), str) and name not in NOISE_ACTIONS]


def parse_rasa_url(url: str) -> str:
    """`http(s)://HOST[:PORT]` of a Rasa server (a trailing / allowed) → the base URL without it.

    The one rule for every `--rasa-url` (agents, the coordinator, the bot's gateway): a server's root,
    no path, query or credentials (the token goes in --rasa-token); anything else is a UserError (exit 2).
    """
    bad = f"--rasa-url {url!r}: expected http://HOST[:PORT] or https://HOST[:PORT] of a Rasa server, " \
          "e.g. http://127.0.0.1:5005"
    try:
        parts = urllib.parse.urlsplit(url.strip())
        port = parts.port
    except ValueError as exc:
        raise UserError(f"{bad} ({exc})") from None
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.path not in ("", "/"):
        raise UserError(bad)
    if parts.query or parts.fragment or parts.username or parts.password:
        raise UserError(f"{bad}; give only the server's address (the token goes in --rasa-token)")
    if port == 0:
        raise UserError(f"--rasa-url {url!r}: port 0 is not a server's port")
    return f"{parts.scheme}://{parts.netloc}"


async def probe_rasa(url: str, token: str | None = None, *, timeout_s: float = PROBE_TIMEOUT_S) -> None:
    """One GET on the server root before any call: nothing answering is bad input (exit 2), like a SIP target.

    With a token, `/status` is asked too, so a refused token fails now rather than every call's tracker.
    """
    timeout = aiohttp.ClientTimeout(total=timeout_s)
    try:
        async with aiohttp.ClientSession(timeout=timeout) as session:
            async with session.get(f"{url}/"):
                pass
            if token:
                async with session.get(f"{url}/status", params={"token": token}) as resp:
                    if resp.status in (401, 403):
                        raise UserError(f"--rasa-token: refused by Rasa at {url} (HTTP {resp.status})")
    except TimeoutError:
        raise UserError(f"Rasa at {url} did not answer within {timeout_s:g} s") from None
    except aiohttp.ClientError as exc:
        raise UserError(f"Rasa at {url} is unreachable: {exc}") from None
