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
from collections.abc import Iterator
from dataclasses import dataclass, field
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
    udp_port_bound,
    ulaw_file,
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
    deadline = time.monotonic() + 10
    while not udp_port_bound(sip_port):
        if proc.poll() is not None:
            pytest.fail(f"sipp exited with {proc.returncode}: {s.errors()}")
        if time.monotonic() > deadline:
            s.stop()
            pytest.fail("sipp did not bind its SIP port within 10 s")
        time.sleep(0.05)
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
