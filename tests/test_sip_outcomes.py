"""SIP endings against real peers: SIPp UASes that refuse or ignore, and ports nobody listens on.

Each refused call's record carries its final code, reason phrase, origin (the far end, or our own
stack) and Retry-After, and the summary, the terminal report and report.html name it, e.g.
`rejected 503 Service Unavailable (Retry-After 5): 3 calls`. A UAS that never answers OPTIONS (a
common SBC habit) costs one warning line; its calls go on and complete.
"""

from __future__ import annotations

import re
import socket
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.refbot import DEMO, assert_completed, checked_summary, stop_process, voiceload
from tests.test_sipp_interop import (
    FRAME_BYTES,
    PROMPT_A,
    PROMPT_B,
    SIPP,
    SOX,
    UAS_XML,
    ULAW_SILENCE,
    free_udp_port,
    tcp_port_listening,
    ulaw_file,
    wait_for_sipp,
    write_scenario,
)

pytestmark = pytest.mark.real

REJECT_XML = Path(__file__).resolve().parent / "sipp" / "uas_reject.xml"
CALLS = 3
OPTIONS_RECV = re.compile(r'\s*<recv request="OPTIONS"[^>]*>\s*</recv>\n')
WARNING = "no answer to OPTIONS within 3 s; placing the calls anyway (--no-probe skips the probe)"


@dataclass
class Uas:
    proc: subprocess.Popen[bytes]
    port: int
    work: Path

    def uri(self, transport: str = "udp") -> str:
        param = "" if transport == "udp" else f";transport={transport}"
        return f"sip:bot@127.0.0.1:{self.port}{param}"

    def invites(self) -> dict[str, set[str]]:
        """Call-ID -> the CSeq numbers of the INVITEs SIPp received (retransmissions count once)."""
        log = self.work / "messages.log"
        text = log.read_text(errors="replace") if log.exists() else ""
        out: dict[str, set[str]] = {}
        for block in text.split("-----------------------------------------------"):
            lines = [x.strip() for x in block.splitlines() if x.strip()]
            if len(lines) < 3 or "message received" not in lines[1] or not lines[2].startswith("INVITE "):
                continue  # [0] the time, [1] "UDP message received [N] bytes :", [2] the start line
            call_id = next((x.split(":", 1)[1].strip() for x in lines if x.lower().startswith("call-id:")), "")
            cseq = next((x.split(":", 1)[1].split()[0] for x in lines if x.lower().startswith("cseq:")), "")
            out.setdefault(call_id, set()).add(cseq)
        return out

    def errors(self) -> str:
        path = self.work / "errors.log"
        return path.read_text(errors="replace")[-3000:] if path.exists() else ""


@pytest.fixture
def sipp(tmp_path: Path) -> Iterator[Any]:
    """Starts SIPp UASes from scenario text on free ports; stops every one at the end (bounded)."""
    if not Path(SIPP).exists():
        pytest.skip("sipp is not installed (Debian package sip-tester)")
    started: list[Uas] = []

    def start(xml: str, *, transport: str = "udp", extra: tuple[str, ...] = ()) -> Uas:
        work = tmp_path / f"sipp{len(started)}"
        work.mkdir()
        (work / "uas.xml").write_text(xml)
        port = free_udp_port()
        cmd = [SIPP, "-sf", str(work / "uas.xml"), "-i", "127.0.0.1", "-p", str(port), "-nostdin",
               "-t", "u1" if transport == "udp" else "t1", *extra,
               "-trace_err", "-error_file", str(work / "errors.log"),
               "-trace_msg", "-message_file", str(work / "messages.log")]
        with open(work / "sipp.out", "wb") as out:
            proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=work)
        uas = Uas(proc, port, work)
        started.append(uas)
        wait_for_sipp(proc, port, lambda: (work / "sipp.out").read_text()[-2000:], transport=transport)
        return uas

    try:
        yield start
    finally:
        for uas in started:
            stop_process(uas.proc)


def reject_xml(code: int, phrase: str, extra: str = "X-Voiceload-Test: reject", *,
               options: str | None = "200 OK") -> str:
    """uas_reject.xml filled in; options None: the UAS ignores OPTIONS."""
    xml = (REJECT_XML.read_text().replace("@CODE@", str(code)).replace("@PHRASE@", phrase)
           .replace("@EXTRA@", extra).replace("@OPTIONS@", options or "200 OK"))
    return xml if options is not None else OPTIONS_RECV.sub("\n", xml, count=1)


def warnings(stderr: str) -> list[str]:
    return [x for x in stderr.splitlines() if "warning" in x]


def test_a_uas_that_ignores_options_gets_a_warning_and_its_calls_complete(sipp: Any, tmp_path: Path) -> None:
    if not Path(SOX).exists():
        pytest.skip("sox is not installed")
    xml, n = OPTIONS_RECV.subn("\n", UAS_XML.read_text(), count=1)
    assert n == 1
    media = tmp_path / "media"
    media.mkdir()
    a = ulaw_file(PROMPT_A, media / "prompt-a.ulaw", tail_ms=8000)
    b = ulaw_file(PROMPT_B, media / "prompt-b.ulaw", tail_ms=5000)
    lead = media / "silence.ulaw"
    lead.write_bytes(ULAW_SILENCE * FRAME_BYTES * 50)
    uas = sipp(xml, extra=("-mi", "127.0.0.1", "-mp", str(free_udp_port(also_plus_2=True)),
                           "-key", "prompt_a", f"{a},1,0", "-key", "prompt_b", f"{b},1,0",
                           "-key", "lead", f"{lead},-1,0"))
    out = tmp_path / "run"
    res = voiceload("run", str(write_scenario(tmp_path / "s.yaml")), "--target", uas.uri(), "-c", "2", "-n", "2",
                    "--out", str(out), timeout=120, out=out)
    summary = checked_summary(res)
    assert warnings(res.stderr) == [f"[voiceload] warning: --target {uas.uri()}: {WARNING}"], res.stderr[-2000:]
    calls = res.calls()
    assert len(calls) == 2
    assert_completed(summary, calls)
    for call in calls:
        assert (call["sip_code"], call["sip_reason"], call["sip_origin"]) == (200, "OK", "remote")
    assert "Aborting call on unexpected message" in uas.errors()  # SIPp did see the OPTIONS, and said nothing


REJECTIONS = {
    "486": (486, "Busy Here", "X-Voiceload-Test: busy", "405 Method Not Allowed", (), "udp",
            "rejected 486 Busy Here", None),
    "503-retry-after": (503, "Service Unavailable", "Retry-After: 5", "404 Not Found", (), "udp",
                        "rejected 503 Service Unavailable (Retry-After 5)", 5),
    "407-after-auth": (407, "Proxy Authentication Required",
                       'Proxy-Authenticate: Digest realm="voiceload", nonce="0123456789abcdef", algorithm=MD5',
                       "200 OK", ("--auth", "alice:wrong"), "udp",
                       "rejected 407 Proxy Authentication Required (credentials refused)", None),
    "480-over-tcp": (480, "Temporarily Unavailable", "X-Voiceload-Test: tcp", "483 Too Many Hops", (), "tcp",
                     "rejected 480 Temporarily Unavailable", None),
}


@pytest.mark.parametrize("case", list(REJECTIONS))
def test_rejections_are_recorded_and_named(sipp: Any, tmp_path: Path, case: str) -> None:
    code, phrase, extra, options, args, transport, name, retry_after = REJECTIONS[case]
    uas = sipp(reject_xml(code, phrase, extra, options=options), transport=transport)
    out = tmp_path / "run"
    res = voiceload("run", str(DEMO), "--target", uas.uri(transport), "-c", str(CALLS), "-n", str(CALLS),
                    "--out", str(out), *args, timeout=120, out=out)
    summary = checked_summary(res)
    assert not warnings(res.stderr), res.stderr[-2000:]  # any answer to OPTIONS (here a {options}) will do
    calls = res.calls()
    assert len(calls) == CALLS
    for call in calls:
        assert call["outcome"] == "rejected", call
        assert (call["sip_code"], call["sip_reason"], call["sip_origin"], call["retry_after_s"]) == (
            code, phrase, "remote", retry_after), call
    assert summary["outcomes"]["rejected"] == CALLS
    assert summary["sip_codes"] == {str(code): CALLS}
    assert summary["top_failures"] == {name: CALLS}
    assert f"\n  {name}: {CALLS} calls\n" in res.stdout  # the terminal report
    assert f"<td class='text'>{name}</td><td>{CALLS}</td>" in (out / "report.html").read_text()
    invites = uas.invites()
    assert len(invites) == CALLS, invites
    # a challenge is answered once with the credentials, and that answer's refusal is final: no retry storm
    assert all(len(cseqs) == (2 if code == 407 else 1) for cseqs in invites.values()), invites


def test_a_refused_tcp_connection_is_a_local_transport_error(tmp_path: Path) -> None:
    """With --no-probe the calls meet the closed port themselves: pjsip's own 503, named as ours."""
    port = free_udp_port()  # as a TCP port: nothing listens there (checked below)
    assert not tcp_port_listening(port)
    out = tmp_path / "run"
    res = voiceload("run", str(DEMO), "--target", f"sip:bot@127.0.0.1:{port};transport=tcp", "-c", "2", "-n", "2",
                    "--no-probe", "--out", str(out), timeout=120, out=out)
    summary = checked_summary(res)
    name = "transport error: Connection refused (local 503)"
    for call in res.calls():
        assert (call["outcome"], call["sip_code"], call["sip_origin"], call["reason"]) == (
            "rejected", 503, "local", name), call
    assert summary["top_failures"] == {name: 2}
    assert f"\n  {name}: 2 calls\n" in res.stdout


def test_a_failed_tls_handshake_in_a_call_is_a_local_transport_error(
        tmp_path: Path, tls_server: Callable[[str], tuple[str, Path]]) -> None:
    """openssl s_server whose certificate our --tls-ca did not sign; --no-probe lets the call meet it."""
    target, _ = tls_server("IP:127.0.0.1")
    _, other_ca = tls_server("DNS:other.example")
    out = tmp_path / "run"
    res = voiceload("run", str(DEMO), "--target", target, "-n", "1", "--tls-ca", str(other_ca), "--no-probe",
                    "--out", str(out), timeout=120, out=out)
    summary = checked_summary(res)
    (call,) = res.calls()
    assert (call["outcome"], call["sip_code"], call["sip_origin"]) == ("rejected", 503, "local"), call
    assert "PJSIP_TLS_ECERTVERIF" in call["sip_reason"], call
    name = f"transport error: {call['sip_reason']} (local 503)"
    assert call["reason"] == name and summary["top_failures"] == {name: 1}


def test_a_silent_target_warns_and_its_calls_time_out(tmp_path: Path) -> None:
    """A bound UDP port that never answers: one warning, the run goes on, the call times out (our CANCEL)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        target = f"sip:bot@127.0.0.1:{s.getsockname()[1]}"
        out = tmp_path / "run"
        res = voiceload("run", str(DEMO), "--target", target, "-n", "1", "--out", str(out), timeout=120, out=out)
    summary = checked_summary(res)
    assert warnings(res.stderr) == [f"[voiceload] warning: --target {target}: {WARNING}"]
    (call,) = res.calls()
    assert (call["outcome"], call["reason"], call["sip_origin"]) == ("timeout", "no answer within 5000 ms", "local")
    assert summary["top_failures"] == {"timeout: no answer within 5000 ms": 1}


def test_no_probe_skips_the_options(sipp: Any, tmp_path: Path) -> None:
    uas = sipp(reject_xml(486, "Busy Here", options=None))
    out = tmp_path / "run"
    res = voiceload("run", str(DEMO), "--target", uas.uri(), "-n", "1", "--no-probe", "--out", str(out),
                    timeout=120, out=out)
    checked_summary(res)
    assert not warnings(res.stderr)
    assert "OPTIONS sip:" not in (uas.work / "messages.log").read_text()
    assert [c["reason"] for c in res.calls()] == ["486 Busy Here"]

