"""Interop with SIPp 3.6.1 as the answering side: bot onsets against a far end with known timing.

SIPp (tests/sipp/uas_prompts.xml) answers, then streams prompt A at P1 ms and prompt B at P2 ms
after the ACK. voiceload calls it with a scenario whose greeting is A and whose one turn is
answered by B, and must measure each bot onset at P + (speech onset inside the prompt file).

Time references. voiceload's offsets count from the moment pjsua2 reported the 200 OK; SIPp's
pauses count from the moment it received the ACK, which pjsua2 sends when it handles that 200 OK
(on the wire 0.5..5 ms after the 200 OK here). That difference is inside SIPP_START_LAG_MS.

SIPp's own lateness. SIPp 3.6.1's rtp_stream does not start a file when the exec runs: the
playback thread picks the new file up on its next 20 ms tick, sets the RTP clock to "now" and,
its comparison being strict, sends the first packet on the tick after that (src/rtpstream.cpp,
rtpstream_process_task_flags / rtpstream_playrtptask). So the first packet of a prompt leaves
20..40 ms after the exec; loopback captures (tcpdump -i lo) of this test measured 25..50 ms
after the ACK. The expected onset therefore includes the middle of that window,
SIPP_START_LAG_MS; the tolerance (50 ms) covers the rest of SIPp's window and voiceload's own
error (about +-10 ms plus, rarely, one 20 ms jitter-buffer frame: docs/accuracy.md).
The printed "raw" column is the offset against P + onset alone.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.refbot import REPO, assert_completed, checked_summary, stop_process, voiceload
from voiceload.audio.vad import samples_to_ms, speech_span
from voiceload.audio.wav import load_wav

pytestmark = pytest.mark.real

SIPP = shutil.which("sipp") or "/usr/bin/sipp"
SOX = shutil.which("sox") or "/usr/bin/sox"
UAS_XML = Path(__file__).resolve().parent / "sipp" / "uas_prompts.xml"
DEMO_REC = REPO / "recordings" / "demo"
PROMPT_A = DEMO_REC / "bot-00-welcome.wav"
PROMPT_B = DEMO_REC / "bot-01-name.wav"
CALLER = DEMO_REC / "caller-01-order.wav"

CALLS = 4
CONCURRENCY = 2
SILENCE_GAP_MS = 500
TOLERANCE_MS = 50.0
SIPP_START_LAG_MS = 30.0  # SIPp: first packet of a new rtp_stream file 20..40 ms after the exec (see above)
FRAME_BYTES = 160  # PCMU, 20 ms per RTP packet
ULAW_SILENCE = b"\xff"  # G.711 u-law code for 0


def sipp_prompt_offsets(xml: Path) -> dict[str, int]:
    """When the UAS scenario starts each prompt: ms after the ACK, summing its <pause>s.

    The scenario is the single source of P1 and P2; the prompts are its `[prompt_a]` and
    `[prompt_b]` rtp_stream keywords.
    """
    t: int | None = None
    out: dict[str, int] = {}
    for el in ET.parse(xml).getroot():
        if el.tag == "recv" and el.get("request") == "ACK":
            t = 0
        elif t is None:
            continue
        elif el.tag == "pause":
            t += int(el.get("milliseconds", "0"))
        else:
            for ex in el.iter("exec"):
                key = ex.get("rtp_stream", "")
                if key in ("[prompt_a]", "[prompt_b]"):
                    out[key.strip("[]")] = t
    return out


def free_udp_port(*, also_plus_2: bool = False) -> int:
    """A free UDP port on 127.0.0.1; with also_plus_2 an even one whose port+2 is free too
    (SIPp binds its audio socket on -mp and its video socket on -mp + 2)."""
    for _ in range(200):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
            if not also_plus_2:
                return port
            if port % 2 or port + 2 > 65535:
                continue
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s2:
                try:
                    s2.bind(("127.0.0.1", port + 2))
                except OSError:
                    continue
                return port
    raise RuntimeError("no free UDP port pair")


def udp_port_bound(port: int) -> bool:
    """Whether some socket is bound to UDP `port` (read from /proc, so we never race SIPp for it)."""
    try:
        lines = Path("/proc/net/udp").read_text().splitlines()[1:]
    except OSError:
        time.sleep(1.0)  # no procfs: give SIPp a second
        return True
    return any(int(line.split()[1].rsplit(":", 1)[1], 16) == port for line in lines)


def tcp_port_listening(port: int) -> bool:
    """Whether some socket listens on TCP `port` (from /proc: no connection is made to find out)."""
    lines = Path("/proc/net/tcp").read_text().splitlines()[1:]
    return any(int(f[1].rsplit(":", 1)[1], 16) == port and f[3] == "0A" for f in (x.split() for x in lines))


def wait_for_sipp(proc: subprocess.Popen[bytes], port: int, why_dead: Callable[[], str], *,
                  transport: str = "udp", timeout_s: float = 10.0) -> None:
    """Return once SIPp holds its SIP port; fail the test if it exits (saying `why_dead()`) or takes too long."""
    bound = udp_port_bound if transport == "udp" else tcp_port_listening
    deadline = time.monotonic() + timeout_s
    while not bound(port):
        if proc.poll() is not None:
            pytest.fail(f"sipp exited with {proc.returncode}: {why_dead()}")
        if time.monotonic() > deadline:
            pytest.fail(f"sipp did not bind its SIP port within {timeout_s:.0f} s")
        time.sleep(0.05)


def ulaw_file(wav: Path, out: Path, *, tail_ms: int = 0) -> Path:
    """Raw G.711 u-law for SIPp 3.6.1's rtp_stream (it sends file bytes as they are and does not
    skip a WAV header), padded with silence to whole 20 ms packets plus `tail_ms`."""
    subprocess.run([SOX, str(wav), "-t", "raw", "-r", "8000", "-c", "1", "-e", "u-law", "-b", "8", str(out)],
                   check=True, capture_output=True, timeout=30)
    data = out.read_bytes()
    pad = -len(data) % FRAME_BYTES + tail_ms * 8
    out.write_bytes(data + ULAW_SILENCE * pad)
    return out


def ms_of(wav: Path) -> float:
    return samples_to_ms(len(load_wav(wav)))


def onset_ms_in(wav: Path) -> float:
    return samples_to_ms(speech_span(load_wav(wav)).onset)


def sipp_errors(workdir: Path) -> str:
    """The tail of what a SIPp run in `workdir` wrote to stderr and its error log."""
    parts = []
    for name in ("sipp.err", "sipp_errors.log"):
        path = workdir / name
        if path.exists():
            parts.append(path.read_text(errors="replace")[-3000:])
    return "\n".join(parts)


@dataclass
class Sipp:
    proc: subprocess.Popen[bytes]
    target: str
    workdir: Path

    def stop(self) -> None:
        stop_process(self.proc)

    def errors(self) -> str:
        return sipp_errors(self.workdir)


@pytest.fixture
def offsets() -> dict[str, int]:
    p = sipp_prompt_offsets(UAS_XML)
    assert set(p) == {"prompt_a", "prompt_b"}, p
    return p


@pytest.fixture
def sipp_uas(tmp_path: Path, offsets: dict[str, int]) -> Iterator[Sipp]:
    if not Path(SIPP).exists():
        pytest.skip("sipp is not installed (Debian package sip-tester)")
    if not Path(SOX).exists():
        pytest.skip("sox is not installed")
    work = tmp_path / "sipp"
    work.mkdir()
    gap_ms = offsets["prompt_b"] - offsets["prompt_a"]
    # Each prompt carries a silent tail so the stream never stops before the next one or the BYE.
    a = ulaw_file(PROMPT_A, work / "prompt-a.ulaw", tail_ms=gap_ms + 2000)
    b = ulaw_file(PROMPT_B, work / "prompt-b.ulaw", tail_ms=5000)
    lead = work / "silence.ulaw"
    lead.write_bytes(ULAW_SILENCE * FRAME_BYTES * 50)  # 1 s, looped from the ACK to prompt A
    sip_port = free_udp_port()
    media_port = free_udp_port(also_plus_2=True)
    cmd = [SIPP, "-sf", str(UAS_XML), "-i", "127.0.0.1", "-mi", "127.0.0.1",
           "-p", str(sip_port), "-mp", str(media_port),
           "-key", "prompt_a", f"{a},1,0", "-key", "prompt_b", f"{b},1,0", "-key", "lead", f"{lead},-1,0",
           "-m", str(CALLS + 1),  # + the OPTIONS probe voiceload sends before a run (a "call" to SIPp)
           "-nostdin", "-trace_err", "-error_file", str(work / "sipp_errors.log"),
           "-trace_msg", "-message_file", str(work / "sipp_messages.log")]
    with open(work / "sipp.out", "wb") as out, open(work / "sipp.err", "wb") as err:
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, stdin=subprocess.DEVNULL, cwd=work)
    s = Sipp(proc, f"sip:bot@127.0.0.1:{sip_port}", work)
    try:
        wait_for_sipp(proc, sip_port, s.errors)
        yield s
    finally:
        s.stop()


def write_scenario(path: Path) -> Path:
    path.write_text(f"""\
version: 1
name: sipp-interop
description: "SIPp UAS streaming two prompts at fixed offsets after the ACK"
silence_gap_ms: {SILENCE_GAP_MS}
answer_timeout_ms: 5000
max_call_ms: 30000
greeting:
  prompt: {PROMPT_A}
  max_wait_ms: 3000
turns:
  - caller: {CALLER}
    reply:
      prompt: {PROMPT_B}
      max_wait_ms: 10000
hangup:
  by: caller
  after_ms: 300
""")
    return path


def test_bot_onsets_match_sipps_known_prompt_offsets(tmp_path: Path, offsets: dict[str, int],
                                                     sipp_uas: Sipp) -> None:
    p1, p2 = offsets["prompt_a"], offsets["prompt_b"]
    # prompt B must come after the caller's utterance (greeting end + silence gap + utterance),
    # or turn 0 would not take it for the reply
    caller_done = p1 + SIPP_START_LAG_MS + ms_of(PROMPT_A) + SILENCE_GAP_MS + ms_of(CALLER)
    assert p2 >= caller_done + 800, f"P2 = {p2} ms is too early for the caller's utterance (ends ~{caller_done:.0f})"

    scenario = write_scenario(tmp_path / "sipp-interop.yaml")
    cli = Path(sys.executable).with_name("voiceload")  # the installed console script, as a user runs it
    check = subprocess.run([str(cli) if cli.exists() else "voiceload", "scenario", "validate", str(scenario)],
                           capture_output=True, text=True, timeout=60)
    assert check.returncode == 0, check.stderr
    assert "ok: scenario 'sipp-interop', 1 turns" in check.stdout

    out = tmp_path / "run"
    t0 = time.monotonic()
    res = voiceload("run", str(scenario), "--target", sipp_uas.target, "-c", str(CONCURRENCY), "-n", str(CALLS),
                    "--out", str(out), timeout=90, out=out)
    elapsed = time.monotonic() - t0
    assert (out / "summary.json").exists(), res.stderr[-3000:] + sipp_uas.errors()
    summary = checked_summary(res)

    expected_greeting = p1 + onset_ms_in(PROMPT_A)
    expected_reply = p2 + onset_ms_in(PROMPT_B)
    calls = res.calls()
    print(f"\nvoiceload run {elapsed:.1f} s; SIPp P1 = {p1} ms, P2 = {p2} ms after the ACK; "
          f"expected onsets = P + in-file onset + {SIPP_START_LAG_MS:.0f} ms SIPp start lag")
    print(f"{'call':22} {'greeting':>9} {'raw':>6} {'resid':>6}   {'utt_end':>8} {'reply':>8} {'raw':>6} {'resid':>6}"
          "   scores")
    rows = []
    for call in calls:
        g = call["greeting"] or {}
        turn = call["turns"][0] if call["turns"] else {}
        g_on, r_on = g.get("bot_onset_ms"), turn.get("bot_onset_ms")
        rows.append((call, g_on, r_on))
        fmt = lambda v, ref: "-" if v is None else f"{v - ref:+.1f}"  # noqa: E731
        print(f"{call['call_id'][:22]:22} {g_on if g_on is not None else '-':>9} "
              f"{fmt(g_on, expected_greeting):>6} {fmt(g_on, expected_greeting + SIPP_START_LAG_MS):>6}   "
              f"{turn.get('utterance_end_ms', '-')!s:>8} {r_on if r_on is not None else '-':>8} "
              f"{fmt(r_on, expected_reply):>6} {fmt(r_on, expected_reply + SIPP_START_LAG_MS):>6}   "
              f"{g.get('prompt_score')}/{turn.get('prompt_score')}")

    assert len(calls) == CALLS
    assert_completed(summary, calls)
    if any(c["outcome"] != "completed" for c in calls):
        pytest.skip("the generator's media clock stalled past its catch-up: the onsets are not judged")
    for call, g_on, r_on in rows:
        assert call["outcome"] == "completed", (call["call_id"], call["reason"])
        assert call["sip_code"] == 200 and call["hangup_by"] == "caller"
        # ok includes voiceload's prompt match (score >= 0.5); SIPp's uneven packet pacing can cost
        # the score a little (0.79 once), so no tighter bound here
        assert call["greeting"]["ok"], call["greeting"]
        (turn,) = call["turns"]
        assert turn["index"] == 0 and turn["ok"], turn
        assert turn["utterance_end_ms"] < r_on
        assert g_on is not None and abs(g_on - (expected_greeting + SIPP_START_LAG_MS)) <= TOLERANCE_MS, (
            call["call_id"], g_on, expected_greeting)
        assert r_on is not None and abs(r_on - (expected_reply + SIPP_START_LAG_MS)) <= TOLERANCE_MS, (
            call["call_id"], r_on, expected_reply)

    # SIPp's side: every call (and the OPTIONS probe) walked its scenario; exit code 0 = no failed call
    try:
        sipp_uas.proc.wait(15)
    except subprocess.TimeoutExpired:
        pytest.fail("sipp did not finish its calls")
    assert sipp_uas.proc.returncode == 0, sipp_uas.errors()
