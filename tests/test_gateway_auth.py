"""A real gateway in front of the bot: Kamailio 5.6 demanding digest auth, over UDP, TCP and TLS.

Every call is challenged (407) and answered with the run's credentials; the turns are timed
against the bot's own truth as on a direct call. A wrong password ends each call `rejected` with
its code after one authenticated retry (no retry storm); a refused REGISTER stops the run before
any call with exit 2. The password shows nowhere: not in argv, records, reports or logs.
"""

from __future__ import annotations

import collections
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.kamailio import KAMAILIO, PASSWORD, PASSWORD2, USER, USER2, Kamailio, kamailio
from tests.refbot import (
    REPO,
    RefBot,
    assert_completed,
    assert_latencies_match_the_wire,
    checked_summary,
    latency_errors,
    loopback_capture,
    start_bot,
    voiceload,
)
from voiceload.errors import EXIT_BAD_INPUT

pytestmark = [pytest.mark.real, pytest.mark.skipif(KAMAILIO is None, reason="kamailio not installed")]

QUICK = REPO / "scenarios" / "quick.yaml"
TRUTH_SLACK_MS = 20.0  # the acceptance: each turn within 20 ms of the bot's own truth


@pytest.fixture
def bot(tmp_path: Path) -> Iterator[RefBot]:
    b = start_bot(tmp_path, scenario=QUICK, max_calls=40)
    try:
        yield b
    finally:
        b.stop()


@pytest.fixture
def gateway(tmp_path: Path, bot: RefBot) -> Iterator[Kamailio]:
    with kamailio(tmp_path, bot.target) as gw:
        yield gw


class ArgvWatch:
    """Reads every process's command line while a run goes on: the password must be in none."""

    def __init__(self, secret: str) -> None:
        self.secret = secret.encode()
        self.seen: list[str] = []
        self.scans = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)

    def _watch(self) -> None:
        while not self._stop.wait(0.2):
            for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
                try:
                    data = cmdline.read_bytes()
                except OSError:
                    continue
                if self.secret in data:
                    self.seen.append(data.replace(b"\0", b" ").decode(errors="replace"))
            self.scans += 1

    def __enter__(self) -> ArgvWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)


def invites_per_call(gw: Kamailio) -> collections.Counter[str]:
    """INVITE transactions per Call-ID (distinct CSeqs: a retransmission on a busy box is not a retry)."""
    invites = {(line.rsplit("callid ", 1)[1], line.split(" cseq ", 1)[1].split()[0])
               for line in gw.lines("rx") if line.startswith("vltest rx INVITE ")}
    return collections.Counter(call_id for call_id, _cseq in invites)


@pytest.mark.timeout(600)
@pytest.mark.parametrize("transport", ["udp", "tcp", "tls"])
def test_100_calls_through_an_authenticating_proxy(transport: str, bot: RefBot, gateway: Kamailio,
                                                   tmp_path: Path) -> None:
    """The acceptance: 100 calls at concurrency 20 over each transport complete, timed to the bot's truth."""
    out = tmp_path / "run"
    args = ["run", str(QUICK), "--target", gateway.uri(transport), "-c", "20", "-n", "100", "--out", str(out)]
    if transport == "tls":
        args += ["--tls-ca", str(gateway.ca)]
    # the capture sees SIP in the clear on the proxy's UDP leg to the bot, whatever the caller's transport
    with ArgvWatch(PASSWORD) as watch, loopback_capture(tmp_path / "lo.pcap") as capture:
        res = voiceload(*args, out=out, env={"VOICELOAD_AUTH": f"{USER}:{PASSWORD}"}, timeout=400)
    summary = checked_summary(res)
    calls = res.calls()
    assert len(calls) == 100 and summary["sip_codes"] == {"200": 100}
    assert_completed(summary, calls)
    # each call was challenged once and answered once with the credentials, over the transport asked for
    invites = invites_per_call(gateway)
    assert set(invites) == {c["call_id"] for c in calls} and set(invites.values()) == {2}
    assert {ln.rsplit("callid ", 1)[1] for ln in gateway.lines("challenge")} == set(invites)
    assert all(f"over {transport} " in ln for ln in gateway.lines("rx") if "INVITE" in ln)
    completed = [c for c in calls if c["outcome"] == "completed"]
    bot.stop()
    truth = bot.truth_lines()
    errors = latency_errors(completed, truth)
    print(f"{transport}: voiceload - bot truth (ms): min {min(errors):.1f}, max {max(errors):.1f}, n {len(errors)}")
    assert len(errors) == len(completed)
    # the bot tapes through pjmedia's jitter buffer, which a busy box grows by frames (tests/test_real_calls.py):
    # its truth is held to 20 ms one way; the wire is the referee both ways
    for call in completed:
        for e in latency_errors([call], truth):
            assert e >= -TRUTH_SLACK_MS - call["rtp"]["rx_delay_ms_max"], (call["call_id"], e)
    assert_latencies_match_the_wire(capture, summary, completed)
    # the password is nowhere a user or another local user can read it
    assert watch.scans > 0 and watch.seen == []
    for path in [*out.rglob("*")]:
        if path.is_file():
            assert PASSWORD.encode() not in path.read_bytes(), path
    assert PASSWORD not in res.stdout + res.stderr


def test_wrong_password_is_rejected_with_its_code_and_no_retry_storm(gateway: Kamailio, tmp_path: Path) -> None:
    out = tmp_path / "run"
    res = voiceload("run", str(QUICK), "--target", gateway.uri("udp"), "-c", "2", "-n", "4", "--out", str(out),
                    "--auth", f"{USER}:not-the-password", out=out)
    summary = checked_summary(res)
    calls = res.calls()
    assert [c["outcome"] for c in calls] == ["rejected"] * 4 and {c["sip_code"] for c in calls} == {407}
    assert summary["sip_codes"] == {"407": 4}
    # pjsip answers a challenge once; the second 407 ends the call
    assert set(invites_per_call(gateway).values()) == {2}
    assert "not-the-password" not in res.stdout + res.stderr


def test_register_before_the_calls_and_unregister_after(gateway: Kamailio, tmp_path: Path) -> None:
    """--register: each agent registers (challenged, then accepted) before its calls and takes it back after."""
    out = tmp_path / "run"
    res = voiceload("run", str(QUICK), "--target", gateway.uri("tcp"), "-c", "2", "-n", "2", "--out", str(out),
                    "--register", "--no-probe", out=out, env={"VOICELOAD_AUTH": f"{USER}:{PASSWORD}"})
    summary = checked_summary(res)
    assert summary["calls"]["completed"] == 2
    registers = gateway.lines("register")
    assert len(registers) == 2, registers
    assert registers[0].startswith(f"vltest register {USER} expires 300 ")
    assert registers[1].startswith(f"vltest register {USER} expires 0 ")  # the unREGISTER


def test_a_short_registration_is_refreshed_before_it_lapses(bot: RefBot, tmp_path: Path) -> None:
    """The registrar grants 10 s: pjsua refreshes it (5 s before it lapses) for as long as the agent runs."""
    with kamailio(tmp_path, bot.target, max_expires=10) as gw:
        out = tmp_path / "run"
        res = voiceload("run", str(QUICK), "--target", gw.uri("udp"), "-c", "1", "-n", "4", "--out", str(out),
                        "--register", out=out, env={"VOICELOAD_AUTH": f"{USER}:{PASSWORD}"})
        summary = checked_summary(res)
        assert summary["calls"]["completed"] == 4
        registers = gw.lines("register")
        asked = [ln for ln in registers if ln.startswith(f"vltest register {USER} expires 300 ")]
        assert len(asked) >= 2, registers  # the first and at least one refresh over a run of ~15 s
        assert registers[-1].startswith(f"vltest register {USER} expires 0 ")


def test_refused_register_stops_the_run_before_any_call(gateway: Kamailio, tmp_path: Path) -> None:
    out = tmp_path / "run"
    res = voiceload("run", str(QUICK), "--target", gateway.uri("udp"), "-c", "2", "-n", "2", "--out", str(out),
                    "--register", out=out, env={"VOICELOAD_AUTH": f"{USER}:wrong"})
    assert res.code == EXIT_BAD_INPUT, res.stderr[-2000:]
    line = res.stderr.strip().splitlines()[-1]
    assert "REGISTER to sip:127.0.0.1:" in line and "407 Proxy Authentication Required" in line
    assert "Traceback" not in res.stderr and "exception" not in res.stderr.lower(), res.stderr
    assert not gateway.lines("rx") or not any("INVITE" in ln for ln in gateway.lines("rx"))


def test_outbound_proxy_carries_the_dialog(bot: RefBot, gateway: Kamailio, tmp_path: Path) -> None:
    """--proxy: the request URI is the bot's, every request of the dialog goes through the proxy
    (its Record-Route honoured: ACK and BYE too)."""
    out = tmp_path / "run"
    proxy = f"sip:127.0.0.1:{gateway.tcp_port};transport=tcp"
    res = voiceload("run", str(QUICK), "--target", bot.target, "--proxy", proxy, "-c", "2", "-n", "2",
                    "--out", str(out), out=out, env={"VOICELOAD_AUTH": f"{USER}:{PASSWORD}"})
    summary = checked_summary(res)
    assert summary["calls"]["completed"] == 2
    calls = {c["call_id"] for c in res.calls()}
    for method in ("INVITE", "ACK", "BYE"):
        seen = {ln.rsplit("callid ", 1)[1] for ln in gateway.lines("rx") if ln.startswith(f"vltest rx {method} ")
                and " over tcp " in ln}
        assert seen == calls, method


def test_sha256_digest(bot: RefBot, tmp_path: Path) -> None:
    """A gateway that challenges with SHA-256 (RFC 8760): pjsip answers it (it has OpenSSL)."""
    with kamailio(tmp_path, bot.target, algorithm="SHA-256") as gw:
        out = tmp_path / "run"
        res = voiceload("run", str(QUICK), "--target", gw.uri("udp"), "-c", "2", "-n", "2", "--out", str(out),
                        out=out, env={"VOICELOAD_AUTH": f"{USER}:{PASSWORD}"})
        summary = checked_summary(res)
        assert summary["calls"]["completed"] == 2
        assert set(invites_per_call(gw).values()) == {2}


def test_each_call_answers_with_the_credentials_of_its_row(gateway: Kamailio, tmp_path: Path) -> None:
    """An identities file with auth_user/auth_password columns: each call authenticates as its row's
    user (also its From user), as SIPp's per-call [authentication]; the credentials never go on the wire."""
    rows = tmp_path / "callers.csv"
    rows.write_text(f"auth_user,auth_password\n{USER},{PASSWORD}\n{USER2},{PASSWORD2}\n{USER2},wrong-one\n")
    out = tmp_path / "run"
    res = voiceload("run", str(QUICK), "--target", gateway.uri("udp"), "-c", "1", "-n", "6", "--out", str(out),
                    "--identities", str(rows), out=out)
    summary = checked_summary(res)
    calls = sorted(res.calls(), key=lambda c: c["seq"])
    assert [c["outcome"] for c in calls] == ["completed", "completed", "rejected"] * 2, [c["reason"] for c in calls]
    assert [c["sip_code"] for c in calls] == [200, 200, 407] * 2
    assert summary["calls"]["completed"] == 4
    users = {}
    for line in gateway.lines("rx"):
        if line.startswith("vltest rx INVITE "):
            assert " xauth <null> " in line, line  # the header stayed inside the stack
            users.setdefault(line.rsplit("callid ", 1)[1], set()).add(line.split(" user ", 1)[1].split()[0])
    assert [users[c["call_id"]] for c in calls] == [{USER}, {USER2}, {USER2}] * 2
    for path in out.rglob("*"):
        if path.is_file():
            for secret in (PASSWORD, PASSWORD2, "wrong-one"):
                assert secret.encode() not in path.read_bytes(), (path, secret)
