"""Bad input never places a call: one line naming the cause, exit code 2, no traceback, no hang."""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.conftest import Mosquitto
from tests.refbot import DEMO, voiceload
from voiceload.results.broker import free_port
from voiceload.sip.lite import RedirectFront

pytestmark = pytest.mark.real


def one_line_error(stderr: str) -> str:
    lines = [x for x in stderr.splitlines() if x.strip()]
    assert "Traceback" not in stderr
    assert len(lines) == 1, stderr
    return lines[0]


@pytest.fixture
def sip_responder() -> Iterator[str]:
    """A SIP endpoint that answers OPTIONS (so the target is reachable) and nothing else."""
    loop = asyncio.new_event_loop()
    port = free_port()
    ready = threading.Event()

    async def serve() -> None:
        await loop.create_datagram_endpoint(lambda: RedirectFront(lambda: None), local_addr=("127.0.0.1", port))
        ready.set()

    thread = threading.Thread(target=lambda: (loop.run_until_complete(serve()), loop.run_forever()), daemon=True)
    thread.start()
    assert ready.wait(5)
    yield f"sip:bot@127.0.0.1:{port}"
    loop.call_soon_threadsafe(loop.stop)
    thread.join(5)


def run_scenario(tmp_path: Path, scenario: Path, target: str, *extra: str) -> tuple[int, str]:
    out = tmp_path / "out"
    res = voiceload("run", str(scenario), "--target", target, "-n", "1", "--out", str(out), *extra, timeout=60)
    assert not (out / "calls.jsonl").exists()  # nothing was placed
    return res.code, res.stderr


def test_missing_recording(tmp_path: Path, sip_responder: str) -> None:
    sc = tmp_path / "s.yaml"
    sc.write_text("version: 1\nname: x\nturns:\n  - caller: nothere.wav\n")
    code, err = run_scenario(tmp_path, sc, sip_responder)
    assert code == 2
    assert one_line_error(err) == f"{sc}:4: turns[0].caller: nothere.wav: no such file ({tmp_path / 'nothere.wav'})"


def test_corrupt_wav(tmp_path: Path, sip_responder: str) -> None:
    (tmp_path / "bad.wav").write_bytes(b"RIFF" + bytes(range(256)) * 8)
    sc = tmp_path / "s.yaml"
    sc.write_text("version: 1\nname: x\nturns:\n  - caller: bad.wav\n")
    code, err = run_scenario(tmp_path, sc, sip_responder)
    assert code == 2
    assert "turns[0].caller: bad.wav: not a readable WAV file" in one_line_error(err)


def test_malformed_scenario(tmp_path: Path, sip_responder: str) -> None:
    sc = tmp_path / "s.yaml"
    sc.write_text("version: 1\nname: [x\n")
    code, err = run_scenario(tmp_path, sc, sip_responder)
    assert code == 2
    assert "YAML syntax error" in one_line_error(err)


def test_unreachable_target_refused(tmp_path: Path) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:  # a port with nobody behind it
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    code, err = run_scenario(tmp_path, DEMO, f"sip:bot@127.0.0.1:{port}")
    assert code == 2
    assert "unreachable" in one_line_error(err)


def test_refused_tcp_target(tmp_path: Path) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:  # a TCP port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    code, err = run_scenario(tmp_path, DEMO, f"sip:bot@127.0.0.1:{port};transport=tcp")
    assert code == 2
    assert one_line_error(err) == (f"voiceload: error: --target sip:bot@127.0.0.1:{port};transport=tcp: unreachable "
                                   f"(connection refused: nothing listens on TCP 127.0.0.1:{port})")


def test_unresolvable_target(tmp_path: Path) -> None:
    code, err = run_scenario(tmp_path, DEMO, "sip:bot@no-such-gateway.invalid:5060")
    assert code == 2
    assert "--target sip:bot@no-such-gateway.invalid:5060: cannot resolve host 'no-such-gateway.invalid'" \
        in one_line_error(err)


def test_tls_target_with_an_unknown_ca(tmp_path: Path, tls_server: Callable[[str], tuple[str, Path]]) -> None:
    target, _ = tls_server("IP:127.0.0.1")
    _, other_ca = tls_server("DNS:other.example")
    code, err = run_scenario(tmp_path, DEMO, target, "--tls-ca", str(other_ca))
    assert code == 2
    assert one_line_error(err) == (f"voiceload: error: --target {target}: TLS handshake with TLS "
                                   f"{target.split('@')[1]} failed: self-signed certificate; --tls-ca names the CA "
                                   "that signed it")


def test_tls_target_with_a_hostname_mismatch(tmp_path: Path, tls_server: Callable[[str], tuple[str, Path]]) -> None:
    target, cert = tls_server("DNS:gw.example")
    code, err = run_scenario(tmp_path, DEMO, target, "--tls-ca", str(cert))
    assert code == 2
    assert "failed: IP address mismatch, certificate is not valid for '127.0.0.1'" in one_line_error(err)


def test_bad_target_uri(tmp_path: Path) -> None:
    code, err = run_scenario(tmp_path, DEMO, "bot@127.0.0.1")
    assert code == 2
    assert "expected a SIP URI" in one_line_error(err)


def test_bad_entry_in_a_target_list(tmp_path: Path, sip_responder: str) -> None:
    code, err = run_scenario(tmp_path, DEMO, f"{sip_responder},bot@127.0.0.1:5060")
    assert code == 2
    assert "--target 'bot@127.0.0.1:5060': expected a SIP URI" in one_line_error(err)
    code, err = run_scenario(tmp_path, DEMO, f"{sip_responder},")
    assert code == 2
    assert "an empty entry" in one_line_error(err)


def test_calls_per_agent_out_of_range(tmp_path: Path, sip_responder: str) -> None:
    code, err = run_scenario(tmp_path, DEMO, sip_responder, "--calls-per-agent", "0")
    assert code == 2
    assert "--calls-per-agent 0: must be at least 1" in one_line_error(err)
    code, err = run_scenario(tmp_path, DEMO, sip_responder, "--calls-per-agent", "100000")
    assert code == 2
    assert "--calls-per-agent 100000: an agent holds at most" in one_line_error(err)


def test_wrong_broker_url(tmp_path: Path, sip_responder: str) -> None:
    code, err = run_scenario(tmp_path, DEMO, sip_responder, "--broker", "http://127.0.0.1:1883")
    assert code == 2
    assert "--broker 'http://127.0.0.1:1883'" in one_line_error(err)


def test_unreachable_broker(tmp_path: Path, sip_responder: str) -> None:
    code, err = run_scenario(tmp_path, DEMO, sip_responder, "--broker", f"mqtt://127.0.0.1:{free_port()}")
    assert code == 2
    assert "cannot reach MQTT broker" in one_line_error(err)


def test_bad_flags(tmp_path: Path, sip_responder: str) -> None:
    code, err = run_scenario(tmp_path, DEMO, sip_responder, "-c", "0")
    assert code == 2
    assert "--concurrency 0" in one_line_error(err)


def test_scenario_validate_lists_every_problem(tmp_path: Path) -> None:
    sc = tmp_path / "s.yaml"
    sc.write_text("version: 2\nname: x\nturns:\n  - caller: a.wav\n  - caler: b.wav\n")
    res = voiceload("scenario", "validate", str(sc), timeout=30)
    assert res.code == 2
    lines = res.stderr.strip().splitlines()
    assert len(lines) >= 3 and all(line.startswith(f"{sc}:") for line in lines)
    assert voiceload("scenario", "validate", str(DEMO), timeout=30).code == 0


def test_bad_slo(tmp_path: Path, sip_responder: str) -> None:
    code, err = run_scenario(tmp_path, DEMO, sip_responder, "--slo", "p95_turn_latncy_ms<=500")
    assert code == 2
    assert "p95_turn_latncy_ms" in one_line_error(err)


def truncated_copy(source: Path, dest: Path) -> None:
    """The first half of a WAV: its header still claims the whole file's audio."""
    data = source.read_bytes()
    dest.write_bytes(data[: len(data) // 2])


def test_truncated_wav(tmp_path: Path, sip_responder: str) -> None:
    truncated_copy(DEMO.parent.parent / "recordings/demo/caller-01-order.wav", tmp_path / "cut.wav")
    sc = tmp_path / "s.yaml"
    sc.write_text("version: 1\nname: x\nturns:\n  - caller: cut.wav\n")
    code, err = run_scenario(tmp_path, sc, sip_responder)
    assert code == 2
    assert f"{sc}:4: turns[0].caller: cut.wav: truncated: its header says" in one_line_error(err)
    res = voiceload("scenario", "validate", str(sc), timeout=30)
    assert res.code == 2
    assert "turns[0].caller: cut.wav: truncated: its header says" in one_line_error(res.stderr)


@pytest.mark.parametrize("command", ["run", "capacity"])
def test_out_is_a_file(tmp_path: Path, sip_responder: str, command: str) -> None:
    out = tmp_path / "taken"
    out.write_text("not a run dir\n")
    extra = ["--slo", "p95_turn_latency_ms<=900"] if command == "capacity" else []
    for given, says in ((out, "it is a file"), (out / "run", f"{out} is a file")):
        res = voiceload(command, str(DEMO), "--target", sip_responder, "--out", str(given), *extra, timeout=60)
        assert res.code == 2, res.stderr
        assert one_line_error(res.stderr) == f"voiceload: error: --out {given}: {says}, not a directory"
    assert out.read_text() == "not a run dir\n"


def test_broker_refusing_the_login(tmp_path: Path, sip_responder: str, locked_mosquitto: Mosquitto) -> None:
    url = locked_mosquitto.address.url
    code, err = run_scenario(tmp_path, DEMO, sip_responder, "--broker", url)
    assert code == 2
    assert f"--broker {url}: the broker refused the credentials (Not authorized)" in one_line_error(err)


@pytest.mark.parametrize(("args", "expected"), [
    (["--auth", "justauser"], "--auth (or VOICELOAD_AUTH): expected USER:PASSWORD"),
    (["--tls-ca", "/nonexistent/ca.pem"], "--tls-ca /nonexistent/ca.pem: no such file"),
    (["--tls-cert", "/etc/hostname"], "--tls-cert and --tls-key go together"),
    (["--proxy", "sbc.example.com"], "--proxy 'sbc.example.com': expected a SIP URI"),
])
def test_bad_sip_flags(tmp_path: Path, sip_responder: str, args: list[str], expected: str) -> None:
    tls_target = sip_responder.replace("sip:", "sips:")  # the TLS checks apply to a TLS target
    code, err = run_scenario(tmp_path, DEMO, tls_target if "--tls" in args[0] else sip_responder, *args)
    assert code == 2
    assert expected in one_line_error(err)


def test_sips_uri_over_another_transport(tmp_path: Path) -> None:
    code, err = run_scenario(tmp_path, DEMO, "sips:bot@127.0.0.1:5061;transport=udp")
    assert code == 2
    assert "a sips: URI goes over TLS, not udp" in one_line_error(err)


def test_bad_sip_section_in_the_scenario(tmp_path: Path, sip_responder: str) -> None:
    sc = tmp_path / "s.yaml"
    text = DEMO.read_text().replace("../recordings/", str(DEMO.parent.parent / "recordings") + "/")
    sc.write_text(text + "\nsip:\n  auth: {user: bob}\n")
    code, err = run_scenario(tmp_path, sc, sip_responder)
    assert code == 2
    assert f"{sc}:" in err and "sip.auth: must be a mapping of user, password" in err
