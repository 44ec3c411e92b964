"""Media that moves under the call, against SIPp 3.6.1 UASes: early media, re-INVITE moves and holds, session timers.

Each SIPp UAS here talks like a bot at fixed offsets (its <pause>s, read from the XML), the
way tests/test_sipp_interop.py's does, and the test checks voiceload's measured onsets against
them. Where the far end names a new media address, that address is a UDP socket of the test
(`Sink`): SIPp keeps sending from its one media port, but the caller's RTP must go where the
latest SDP says, and the sink counts what arrives (and whether the caller's speech is in it).
Offsets are in ms from the answer (the 200 OK), SIPp's pauses from its ACK: the difference and
SIPp's own 20..40 ms start lag are inside SIPP_START_LAG_MS and TOLERANCE_MS, as in test_sipp_interop.
"""

from __future__ import annotations

import os
import socket
import struct
import subprocess
import threading
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.refbot import checked_summary, voiceload
from tests.test_sipp_interop import (
    DEMO_REC,
    FRAME_BYTES,
    SIPP,
    SIPP_START_LAG_MS,
    SOX,
    TOLERANCE_MS,
    ULAW_SILENCE,
    Sipp,
    free_udp_port,
    ms_of,
    onset_ms_in,
    ulaw_file,
    wait_for_sipp,
)
from voiceload.audio import g711
from voiceload.audio.wav import load_wav

pytestmark = pytest.mark.real

HERE = Path(__file__).resolve().parent / "sipp"
WELCOME, NAME, BYE = DEMO_REC / "bot-00-welcome.wav", DEMO_REC / "bot-01-name.wav", DEMO_REC / "bot-02-bye.wav"
ORDER, CALLER_NAME = DEMO_REC / "caller-01-order.wav", DEMO_REC / "caller-02-name.wav"


def pauses_after(xml: Path, start: tuple[str, str], keys: tuple[str, ...]) -> dict[str, int]:
    """When each `keys` action (an rtp_stream or play_pcap_audio) runs: ms after the `start` element
    (("recv", "ACK") or ("send", "183")), summing the <pause>s between."""
    t: int | None = None
    out: dict[str, int] = {}
    for el in ET.parse(xml).getroot():
        text = "".join(el.itertext())
        if t is None:
            if el.tag == start[0] and (el.get("request") == start[1] or f"SIP/2.0 {start[1]}" in text):
                t = 0
            continue
        if el.tag == "pause":
            t += int(el.get("milliseconds", "0"))
        elif el.tag == "recv" and el.get("ontimeout"):  # a wait the far end may cut short
            t += int(el.get("timeout", "0"))
        for ex in el.iter("exec"):
            if ex.get("rtp_stream", "").strip("[]") in keys:
                out[ex.get("rtp_stream", "").strip("[]")] = t
        for ex in el.iter("exec"):
            if ex.get("play_pcap_audio") is not None and "pcap" in keys:
                out["pcap"] = t
        if el.tag == "send" and "INVITE [$contact]" in text:
            out.setdefault("reinvite", t)
            out["reinvite_last"] = t
    return out


@dataclass
class Sink:
    """A UDP socket standing for the far end's new media address: counts the caller's RTP arriving there."""

    sock: socket.socket
    packets: int = 0
    loud: int = 0  # packets whose payload is speech, not silence
    first: float | None = None  # monotonic time of the first packet
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    @classmethod
    def open(cls) -> Sink:
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.bind(("127.0.0.1", 0))
        s.settimeout(0.1)
        sink = cls(s)
        sink._thread = threading.Thread(target=sink._run, daemon=True)
        sink._thread.start()
        return sink

    @property
    def port(self) -> int:
        return int(self.sock.getsockname()[1])

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                pkt = self.sock.recv(2048)
            except TimeoutError:
                continue
            except OSError:
                return
            self.packets += 1
            self.first = self.first or time.monotonic()
            if len(pkt) > 12 and np.abs(g711.decode(np.frombuffer(pkt[12:], dtype=np.uint8))).max() > 2000:
                self.loud += 1

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(2)
        self.sock.close()


def start_sipp(work: Path, xml: Path, calls: int, keys: dict[str, str]) -> Sipp:
    """A SIPp UAS on free ports; stopped by the caller (Sipp.stop)."""
    if not Path(SIPP).exists():
        pytest.skip("sipp is not installed (Debian package sip-tester)")
    if not Path(SOX).exists():
        pytest.skip("sox is not installed")
    sip_port = free_udp_port()
    media_port = free_udp_port(also_plus_2=True)
    cmd = [SIPP, "-sf", str(xml), "-i", "127.0.0.1", "-mi", "127.0.0.1", "-p", str(sip_port), "-mp", str(media_port),
           "-m", str(calls), "-nostdin", "-trace_err", "-error_file", str(work / "sipp_errors.log"),
           "-trace_msg", "-message_file", str(work / "sipp_messages.log")]
    for k, v in keys.items():
        cmd += ["-key", k, v]
    with open(work / "sipp.out", "wb") as out, open(work / "sipp.err", "wb") as err:
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, stdin=subprocess.DEVNULL, cwd=work)
    s = Sipp(proc, f"sip:bot@127.0.0.1:{sip_port}", work)
    try:
        wait_for_sipp(proc, sip_port, s.errors)
    except BaseException:  # pytest.fail's outcome too: the UAS must not outlive the test
        s.stop()
        raise
    return s


def scenario(path: Path, *, greeting: Path, replies: list[tuple[Path, Path, int]], extra: str = "",
             greeting_wait_ms: int = 5000) -> Path:
    turns = "".join(f"  - caller: {c}\n    reply:\n      prompt: {r}\n      max_wait_ms: {w}\n" for c, r, w in replies)
    path.write_text(f"""\
version: 1
name: {path.stem}
silence_gap_ms: 500
answer_timeout_ms: 10000
max_call_ms: 40000
{extra}greeting:
  prompt: {greeting}
  max_wait_ms: {greeting_wait_ms}
turns:
{turns}hangup:
  by: caller
  after_ms: 300
""")
    return path


def run_against(sipp: Sipp, scen: Path, out: Path, calls: int, timeout: float = 120) -> list[dict[str, Any]]:
    res = voiceload("run", str(scen), "--target", sipp.target, "-c", "1", "-n", str(calls), "--no-probe",
                    "--out", str(out), timeout=timeout, out=out)
    assert (out / "summary.json").exists(), res.stderr[-3000:] + sipp.errors()
    checked_summary(res)
    calls_ = res.calls()
    assert len(calls_) == calls
    try:
        sipp.proc.wait(15)
    except subprocess.TimeoutExpired:
        pytest.fail("sipp did not finish its calls")
    assert sipp.proc.returncode == 0, sipp.errors()
    return calls_


def near(measured: float | None, expected: float) -> bool:
    return measured is not None and abs(measured - expected) <= TOLERANCE_MS


# --- (a) early media --------------------------------------------------------------------------------

EARLY_XML = HERE / "uas_early_media.xml"


@pytest.mark.parametrize("mode", ["ignore", "listen"])
def test_early_media_before_the_200_ok(tmp_path: Path, mode: str) -> None:
    """A 183 with SDP streams an announcement before the 200 OK, whose SDP names another port.

    ignore (the default): the announcement is not the greeting, every offset counts from the
    answer. listen: the announcement is the greeting, at a negative offset. Either way the
    caller's RTP goes to the 200's port from the answer on.
    """
    early_at = pauses_after(EARLY_XML, ("send", "183"), ("early",))["early"]
    ack = pauses_after(EARLY_XML, ("recv", "ACK"), ("prompt_a", "prompt_b"))
    answer_after_183 = pauses_after(EARLY_XML, ("send", "183"), ("prompt_a",))["prompt_a"] - ack["prompt_a"]
    assert answer_after_183 == 4000 and early_at == 0
    assert ms_of(BYE) < answer_after_183 - 500  # the announcement ends before the answer
    work = tmp_path / "sipp"
    work.mkdir()
    sink = Sink.open()
    try:
        keys = {"early": f"{ulaw_file(BYE, work / 'early.ulaw', tail_ms=20000)},1,0",
                "prompt_a": f"{ulaw_file(WELCOME, work / 'a.ulaw', tail_ms=8000)},1,0",
                "prompt_b": f"{ulaw_file(NAME, work / 'b.ulaw', tail_ms=5000)},1,0",
                "moved_port": str(sink.port)}
        sipp = start_sipp(work, EARLY_XML, 2, keys)
        try:
            if mode == "ignore":
                scen = scenario(tmp_path / "early-ignore.yaml", greeting=WELCOME, replies=[(ORDER, NAME, 3000)])
            else:
                scen = scenario(tmp_path / "early-listen.yaml", greeting=BYE, replies=[(ORDER, WELCOME, 5000)],
                                extra="early_media: listen\n")
            calls = run_against(sipp, scen, tmp_path / "run", 2)
        finally:
            sipp.stop()
    finally:
        sink.close()
    lag = SIPP_START_LAG_MS
    for call in calls:
        assert call["outcome"] == "completed", (call["reason"], call)
        g, (turn,) = call["greeting"], call["turns"]
        print(mode, call["call_id"][:12], "greeting", g["bot_onset_ms"], "reply", turn["bot_onset_ms"],
              "latency", turn["latency_ms"], "moves", call.get("media_moves"), "held", call.get("held_ms"))
        if mode == "ignore":
            assert near(g["bot_onset_ms"], ack["prompt_a"] + onset_ms_in(WELCOME) + lag), g
            assert near(turn["bot_onset_ms"], ack["prompt_b"] + onset_ms_in(NAME) + lag), turn
        else:  # the announcement is the greeting: heard 4 s before the answer
            assert near(g["bot_onset_ms"], early_at - answer_after_183 + onset_ms_in(BYE) + lag), g
            assert near(turn["bot_onset_ms"], ack["prompt_a"] + onset_ms_in(WELCOME) + lag), turn
        assert turn["latency_ms"] == pytest.approx(turn["bot_onset_ms"] - turn["utterance_end_ms"], abs=0.2)
        assert call["media_moves"] == 1  # from the 183's port to the 200's
        assert call["held_ms"] is None  # a sendonly 183 is early media, not a hold
    # the caller's RTP, its speech included, went to the 200 OK's port: about 50 packets a second
    answered_s = sum((c["duration_ms"] or 0) for c in calls) / 1000
    assert sink.packets >= 0.8 * 50 * answered_s, (sink.packets, answered_s)
    assert sink.loud >= 0.5 * 2 * ms_of(ORDER) / 20


# --- (b) a re-INVITE that holds the call, then one that moves its media ----------------------------

REINVITE_XML = HERE / "uas_reinvite.xml"
PCAP_SSRC, PCAP_TS0 = 0x5EED0001, 12345  # a new source, its timestamps far from SIPp's rtp_stream's


def write_rtp_pcap(path: Path, prompts: list[tuple[int, Path]], total_ms: int, *, dport: int = 6000) -> None:
    """A pcap (Ethernet, IPv4, UDP) of one PCMU stream with its own SSRC and timestamp base: each
    prompt starts at its ms offset, silence elsewhere. SIPp's play_pcap_audio sends it as it is
    (RTP headers included) from its media port, paced by the capture times."""
    frames = total_ms // 20
    audio = np.full(frames * FRAME_BYTES, ULAW_SILENCE[0], dtype=np.uint8)
    for at_ms, wav in prompts:
        codes = g711.encode(load_wav(wav))
        start = at_ms * 8
        audio[start : start + len(codes)] = codes[: len(audio) - start]
    out = [struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1)]
    for k in range(frames):
        rtp = struct.pack("!BBHII", 0x80, 0x80 if k == 0 else 0, (1000 + k) & 0xFFFF,
                          (PCAP_TS0 + FRAME_BYTES * k) & 0xFFFFFFFF, PCAP_SSRC)
        rtp += audio[k * FRAME_BYTES : (k + 1) * FRAME_BYTES].tobytes()
        udp = struct.pack("!HHHH", dport, dport, 8 + len(rtp), 0) + rtp
        ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), k & 0xFFFF, 0, 64, 17, 0,
                         socket.inet_aton("127.0.0.1"), socket.inet_aton("127.0.0.1"))
        eth = b"\x00" * 12 + b"\x08\x00"
        pkt = eth + ip + udp
        out.append(struct.pack("<IIII", k // 50, (k % 50) * 20000, len(pkt), len(pkt)) + pkt)
    path.write_bytes(b"".join(out))


def sipp_sent(log: Path, first_line_prefix: str) -> list[float]:
    """Unix times SIPp sent messages whose first line starts with `first_line_prefix`, from its -trace_msg log."""
    out = []
    lines = log.read_text(errors="replace").splitlines()
    for i, line in enumerate(lines):
        if (line.startswith("-----") and i + 3 < len(lines) and "message sent" in lines[i + 1]
                and lines[i + 3].startswith(first_line_prefix)):
            stamp = line.rsplit(" ", 2)[-2:]
            out.append(datetime.strptime(" ".join(stamp), "%Y-%m-%d %H:%M:%S.%f").timestamp())
    return out


@pytest.mark.parametrize("hold_dir,hold_c", [("sendonly", "127.0.0.1"), ("inactive", "127.0.0.1"),
                                             ("sendrecv", "0.0.0.0")], ids=["sendonly", "inactive", "c0"])
def test_reinvite_holds_then_moves_the_media(tmp_path: Path, hold_dir: str, hold_c: str) -> None:
    """A hold while the caller waits for a reply is no missing reply; after the move, turns are timed.

    The reply to turn 0 comes after the hold, from a new source (SSRC, timestamps) whose address
    the resume named: its onset must be where SIPp sent it, the hold out of its latency. Turn 1 is
    wholly after the move: the caller's speech goes to the new address, the reply is timed.
    """
    if os.geteuid() != 0:
        pytest.skip("SIPp's play_pcap_audio needs raw sockets (root)")
    work = tmp_path / "sipp"
    work.mkdir()
    b_at, c_at = 500, 5000  # ms into the pcap, which starts at the resume's ACK
    write_rtp_pcap(work / "reply.pcap", [(b_at, NAME), (c_at, WELCOME)], c_at + round(ms_of(WELCOME)) + 3000)
    lead = work / "silence.ulaw"
    lead.write_bytes(ULAW_SILENCE * FRAME_BYTES * 50)
    sink = Sink.open()
    try:
        keys = {"lead": f"{lead},-1,0", "prompt_a": f"{ulaw_file(WELCOME, work / 'a.ulaw', tail_ms=6000)},1,0",
                "music": f"{ulaw_file(BYE, work / 'music.ulaw')},-1,0", "hold_dir": hold_dir, "hold_c": hold_c,
                "moved_port": str(sink.port)}
        sipp = start_sipp(work, REINVITE_XML, 1, keys)
        try:
            scen = scenario(tmp_path / "reinvite.yaml", greeting=WELCOME,
                            replies=[(ORDER, NAME, 2000), (CALLER_NAME, WELCOME, 3000)])
            (call,) = run_against(sipp, scen, tmp_path / "run", 1)
        finally:
            sipp.stop()
    finally:
        sink.close()
    hold_sent, resume_sent = sipp_sent(work / "sipp_messages.log", "INVITE ")
    acks = [t for t in sipp_sent(work / "sipp_messages.log", "ACK ") if t > resume_sent]
    answered = call["started_at"] + call["setup_ms"] / 1000
    pcap_ms = (acks[0] - answered) * 1000  # play_pcap_audio runs right after that ACK
    assert call["outcome"] == "completed", call["reason"]
    t0, t1 = call["turns"]
    print(hold_dir, hold_c, "hold", round((hold_sent - answered) * 1000), "resume",
          round((resume_sent - answered) * 1000), "turns", t0, t1, "held", call["held_ms"], "rtp", call["rtp"])
    held_s = resume_sent - hold_sent
    assert call["held_ms"] == pytest.approx(held_s * 1000, abs=40)  # pjsua answers within a pump tick or two
    assert t0["utterance_end_ms"] < (hold_sent - answered) * 1000  # the hold came while the reply was pending
    assert near(t0["bot_onset_ms"], pcap_ms + b_at) and abs(t0["bot_onset_ms"] - pcap_ms - b_at) <= 20, t0
    assert t0["held_ms"] == pytest.approx(call["held_ms"], abs=1)
    assert t0["latency_ms"] == pytest.approx(t0["bot_onset_ms"] - t0["utterance_end_ms"] - t0["held_ms"], abs=0.2)
    assert abs(t1["bot_onset_ms"] - pcap_ms - c_at) <= 20, t1
    assert t1["held_ms"] is None
    assert t1["latency_ms"] == pytest.approx(t1["bot_onset_ms"] - t1["utterance_end_ms"], abs=0.2)
    assert call["media_moves"] == 1  # the resume's address; a hold gives none to go to
    assert call["rtp"]["rx_sources"] == 2  # SIPp's rtp_stream, then the pcap's source
    assert sink.loud >= 0.5 * ms_of(CALLER_NAME) / 20  # turn 1's utterance went to the new address


# --- (c) session timers -----------------------------------------------------------------------------

TIMER_XML = HERE / "uas_session_timer.xml"


def test_a_session_timer_is_answered_and_refreshes_keep_the_call(tmp_path: Path) -> None:
    """The far end requires a session timer and refreshes it by re-INVITE and by UPDATE mid-call.

    SIPp checks the INVITE supports timers and that each refresh's 200 OK carries Session-Expires
    (its exit code says so); the turns around the refreshes stay timed, and a refresh that keeps
    the media is no move.
    """
    work = tmp_path / "sipp"
    work.mkdir()
    lead = work / "silence.ulaw"
    lead.write_bytes(ULAW_SILENCE * FRAME_BYTES * 50)
    keys = {"lead": f"{lead},-1,0", "prompt_a": f"{ulaw_file(WELCOME, work / 'a.ulaw', tail_ms=8000)},1,0",
            "prompt_b": f"{ulaw_file(NAME, work / 'b.ulaw', tail_ms=5000)},1,0"}
    ack = pauses_after(TIMER_XML, ("recv", "ACK"), ("prompt_a", "prompt_b"))
    sipp = start_sipp(work, TIMER_XML, 2, keys)
    try:
        scen = scenario(tmp_path / "timer.yaml", greeting=WELCOME, replies=[(ORDER, NAME, 3000)])
        calls = run_against(sipp, scen, tmp_path / "run", 2)
    finally:
        sipp.stop()
    log = (work / "sipp_messages.log").read_text(errors="replace")
    assert log.count("Session-Expires: 90;refresher=uas") >= 2 * 3  # the 200 OK, the re-INVITE, the UPDATE
    for call in calls:
        assert call["outcome"] == "completed", call["reason"]
        g, (turn,) = call["greeting"], call["turns"]
        print("timer", call["call_id"][:12], g["bot_onset_ms"], turn["bot_onset_ms"], turn["latency_ms"])
        assert near(g["bot_onset_ms"], ack["prompt_a"] + onset_ms_in(WELCOME) + SIPP_START_LAG_MS), g
        # two refresh round trips (each answered on a 20 ms pump tick) sit between the prompts
        assert near(turn["bot_onset_ms"], ack["prompt_b"] + onset_ms_in(NAME) + SIPP_START_LAG_MS + 20), turn
        assert call["media_moves"] is None and call["held_ms"] is None
