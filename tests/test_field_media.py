"""The agents against real far ends: `voiceload run` with --codecs and --srtp, and what each record says.

The issue's field peers (tests/test_peers.py proves each with a plain pjsua2 caller):

1. SIPp speaking one codec (tests/sipp_codecs.py): PCMA only, G.722 only. A PCMU-only offer gets 488.
   Its prompts leave at known times, so each bot onset voiceload measures is checked against the
   prompt's first packet in a loopback capture: its arrival, and its RTP timestamp (OnsetCheck).
2. baresip (tests/baresip.py) answering with Opus or G.722 only, or with mandatory SDES SRTP.
3. Kamailio + rtpengine in the path: a PCMU caller transcoded to an Opus-only baresip, a plain RTP
   caller bridged to an SRTP-only baresip, an SRTP caller bridged to a plain SIPp.

SIPp and baresip do not listen, so every call runs one timed scenario: the far end's greeting
300 ms into the call, the caller's utterance after it, and the far end's "reply" at a fixed time
after the answer, late enough to follow the utterance. baresip plays all of it as one WAV from its
200 OK. To keep the file short, each `voiceload run` (one per codec/SRTP setting) calls several
far ends at once (comma-separated --target, round-robin), and each record is matched to its far
end by its SIP Call-ID in that far end's log. Five runs, 80-105 s in all on this box.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.baresip import Baresip, baresip_uas
from tests.refbot import (
    ENGINE_CATCH_UP_MS,
    REPO,
    WIRE_SLACK_MS,
    Capture,
    RunResult,
    checked_summary,
    loopback_capture,
    voiceload,
)
from tests.rtpengine import kamailio_with_rtpengine, rtpengine, sdes_only_flags
from tests.sipp_codecs import FRAME_BYTES, FRAME_MS, CodecUas, Prompt, codec_uas
from voiceload.audio.vad import samples_to_ms, speech_span
from voiceload.audio.wav import SAMPLE_RATE, load_wav, write_wav
from voiceload.tools import referee

pytestmark = pytest.mark.real

DEMO = REPO / "recordings" / "demo"
WELCOME = DEMO / "bot-00-welcome.wav"  # 2.6 s: the far end's greeting
UTTERANCE = DEMO / "caller-02-name.wav"  # 1.0 s: the caller's one turn
NAME = DEMO / "bot-01-name.wav"  # 1.7 s: the far end's timed "reply"
GREETING_AT_MS = 300  # after the ACK (SIPp) or the 200 OK (baresip)
# the greeting's speech ends ~2.8 s in, the caller waits the 500 ms silence gap and speaks ~1 s: the
# reply at 5.4 s comes ~1 s after the utterance ends
REPLY_AT_MS = 5400
ONSET_TOLERANCE_MS = 20.0  # the bound: voiceload's bot onsets against the wire
RTP_RATE = 8000  # the RTP clock of every codec SIPp speaks here (G.722's too)
RUN_TIMEOUT_S = 90

SCENARIO = f"""\
version: 1
name: field-media
silence_gap_ms: 500
answer_timeout_ms: 5000
max_call_ms: 20000
greeting:
  prompt: {WELCOME}
  max_wait_ms: 3000
turns:
  - caller: {UTTERANCE}
    reply:
      prompt: {NAME}
      max_wait_ms: 4000
hangup:
  by: caller
  after_ms: 300
"""
SIPP_PROMPTS = [Prompt("welcome", WELCOME, at_ms=GREETING_AT_MS), Prompt("name", NAME, at_ms=REPLY_AT_MS)]


def timed_prompt(path: Path) -> Path:
    """baresip's one WAV: the greeting at GREETING_AT_MS, the reply at REPLY_AT_MS (8 kHz mono)."""
    welcome, name = load_wav(WELCOME), load_wav(NAME)
    out = np.zeros(REPLY_AT_MS * SAMPLE_RATE // 1000 + len(name), dtype=np.int16)
    at = GREETING_AT_MS * SAMPLE_RATE // 1000
    out[at:at + len(welcome)] = welcome
    out[len(out) - len(name):] = name
    write_wav(path, out)
    return path


# --- one run, its far ends, its records ---------------------------------------------------------------


@dataclass
class FarEnd:
    """A far end in a run: where voiceload calls it, and the log its Call-IDs show up in."""

    target: str
    log_text: Callable[[], str]
    sipp: CodecUas | None = None
    baresip: Baresip | None = None

    @property
    def bpf(self) -> str:
        """The capture filter for its media (what the wire checks read)."""
        if self.sipp is not None:
            return f"udp port {self.sipp.media_port}"
        assert self.baresip is not None
        return "udp portrange {}-{}".format(*self.baresip.rtp_ports)


@dataclass
class FieldRun:
    res: RunResult
    cap: Capture
    far: dict[str, FarEnd]
    summary: dict[str, Any] = field(default_factory=dict)
    by_far: dict[str, dict[str, Any]] = field(default_factory=dict)

    def call(self, label: str) -> dict[str, Any]:
        assert label in self.by_far, (label, [(c["call_id"], c["outcome"], c["reason"]) for c in self.res.calls()])
        return self.by_far[label]

    def sipp(self, label: str) -> CodecUas:
        uas = self.far[label].sipp
        assert uas is not None, f"{label} is not a SIPp"
        return uas

    def baresip(self, label: str) -> Baresip:
        far = self.far[label].baresip
        assert far is not None, f"{label} is not a baresip"
        return far


def sipp_far(uas: CodecUas) -> FarEnd:
    return FarEnd(uas.target, lambda: (uas.workdir / "sipp_messages.log").read_text(errors="replace"), sipp=uas)


def baresip_far(far: Baresip, target: str | None = None) -> FarEnd:
    return FarEnd(target or far.target, far.text, baresip=far)


def field_run(tmp: Path, args: Sequence[str], far: dict[str, FarEnd], cap: Capture) -> FieldRun:
    """`voiceload run` of the timed scenario, one call to each far end at once; records matched by Call-ID."""
    scen = tmp / "field.yaml"
    scen.write_text(SCENARIO)
    out = tmp / "run"
    n = str(len(far))
    res = voiceload("run", str(scen), "--target", ",".join(f.target for f in far.values()), "-c", n, "-n", n,
                    "--no-probe", "--out", str(out), *args, timeout=RUN_TIMEOUT_S, out=out)
    run = FieldRun(res, cap, far)
    assert (out / "summary.json").exists(), res.stderr[-3000:]
    calls = res.calls()
    assert len(calls) == len(far), [(c["call_id"], c["outcome"], c["reason"]) for c in calls]
    for label, f in far.items():
        text = f.log_text()
        mine = [c for c in calls if c["call_id"] in text]
        assert len(mine) == 1, (label, [c["call_id"] for c in calls])
        run.by_far[label] = mine[0]
    return run


def run_with(tmp: Path, args: Sequence[str], setup: Callable[[contextlib.ExitStack, Path], dict[str, FarEnd]]
             ) -> FieldRun:
    """Start the far ends `setup` builds and a capture of their media, run, stop them all (each bounded)."""
    with contextlib.ExitStack() as stack:
        far = setup(stack, tmp)
        bpf = " or ".join(f"({f.bpf})" for f in far.values())
        cap = stack.enter_context(loopback_capture(tmp / "lo.pcap", bpf=bpf))
        run = field_run(tmp, args, far, cap)
        for f in far.values():
            if f.sipp is not None:  # every SIPp has had its one call: it exits by itself
                assert f.sipp.wait() == 0, f.sipp.errors()
    run.summary = checked_summary(run.res)
    return run


def assert_hears_the_far_end(run: FieldRun, label: str, codec: str, *, srtp: bool = False,
                             auth_failed_ok: bool = False) -> dict[str, Any]:
    """The call to `label` completed, its codec and SRTP as negotiated, the greeting and the reply
    heard, every packet authenticated (unless the caller accounts for rx_auth_failed itself).

    As tests.refbot.assert_completed has it: when the run's own media clock fell behind past the
    engine's catch-up (another process holding the box's two cores: seen at 325 ms, with the
    caller's audio missing from its tape), the run is invalid and says so, and a call may fail with
    a reason; the test cannot judge the far end then, and skips.
    """
    call = run.call(label)
    if call["outcome"] != "completed" and (run.summary["generator"]["max_media_lag_ms"] or 0.0) >= ENGINE_CATCH_UP_MS:
        assert not run.summary["valid"] and call["reason"], call
        pytest.skip(f"{label}: {call['reason']}, in a run invalid for its own load: {run.summary['invalid_reasons']}")
    assert call["outcome"] == "completed", (call["outcome"], call["sip_code"], call["reason"])
    rtp = call["rtp"]
    assert rtp["codec"] == codec, rtp
    assert bool(rtp.get("srtp")) == srtp, rtp
    assert auth_failed_ok or not rtp.get("rx_auth_failed"), rtp
    assert rtp["rx_packets"] >= 200, rtp
    assert call["greeting"]["ok"] and call["greeting"]["bot_onset_ms"] is not None, call["greeting"]
    (turn,) = call["turns"]
    assert turn["ok"] and turn["latency_ms"] is not None, turn
    return call


def assert_refused(call: dict[str, Any]) -> None:
    """A failed record with the far end's 488 and a reason that names it."""
    assert call["outcome"] != "completed", call
    assert call["sip_code"] == 488, (call["sip_code"], call["reason"])
    assert call["reason"] and "488" in call["reason"], call["reason"]
    assert call["rtp"] is None or not call["rtp"].get("rx_packets"), call["rtp"]


@dataclass(frozen=True)
class OnsetCheck:
    """One bot onset voiceload measured, against two readings of SIPp's wire.

    `arrival`: when the prompt's first packet was captured. `sent`: that packet's RTP timestamp on
    the stream's own timeline, anchored at its fastest packet until then. SIPp paces its stream in bursts (two
    packets at once, then a 36 ms gap: seen in every run on this box), so a prompt's first packet
    can arrive up to a frame after its timestamp says; voiceload tapes on the sender's timeline, as
    a jitter buffer plays, so it is earlier than `arrival` by that packet's delay (rx_delay_ms_max).
    """

    name: str
    measured: float
    arrival: float
    sent: float

    @property
    def to_arrival(self) -> float:
        return round(self.measured - self.arrival, 1)

    @property
    def to_sent(self) -> float:
        return round(self.measured - self.sent, 1)


def onsets_against_the_wire(run: FieldRun, label: str) -> list[OnsetCheck]:
    """voiceload's greeting and reply onsets against when SIPp's prompts were on the wire (speech onset)."""
    uas = run.sipp(label)
    if run.cap.why_not:
        pytest.skip(f"{run.cap.why_not}: no wire truth")
    call = run.call(label)
    answered = call["started_at"] + call["setup_ms"] / 1000
    sent = [d for d in referee.read_pcap(run.cap.pcap.read_bytes())
            if d.src[1] == uas.media_port and len(d.payload) >= 12 + FRAME_BYTES]
    assert sent, f"no packets from SIPp's media port {uas.media_port} in the capture"

    def ts(d: referee.Datagram) -> int:
        return int.from_bytes(d.payload[4:8], "big")

    def on_sender(hit: referee.Datagram) -> float:
        """`hit`'s time on the sender's clock as a receiver knew it then: its timestamp, anchored at
        the fastest packet so far (no timestamp wrap in a short call)."""
        return min(d.time - (ts(d) - ts(hit)) / RTP_RATE for d in sent if d.time <= hit.time)

    played = {p.name: p.time for p in uas.played()}
    measured = {"welcome": call["greeting"]["bot_onset_ms"], "name": call["turns"][0]["bot_onset_ms"]}
    out = []
    for name, wav in (("welcome", WELCOME), ("name", NAME)):
        data = uas.files[name]
        k = next(i for i in range(len(data) // FRAME_BYTES)
                 if data[i * FRAME_BYTES:(i + 1) * FRAME_BYTES] not in uas.files["_silence"])
        frame = data[k * FRAME_BYTES:(k + 1) * FRAME_BYTES]
        hit = next((d for d in sent if d.time >= played[name] and d.payload[12:12 + FRAME_BYTES] == frame), None)
        assert hit is not None, (name, uas.played())
        onset_ms = samples_to_ms(speech_span(load_wav(wav)).onset) - k * FRAME_MS
        check = OnsetCheck(name, measured[name], (hit.time - answered) * 1000 + onset_ms,
                           (on_sender(hit) - answered) * 1000 + onset_ms)
        print(label, name, "voiceload", check.measured, "arrival", round(check.arrival, 1), "diff",
              check.to_arrival, "| sent", round(check.sent, 1), "diff", check.to_sent)
        out.append(check)
    return out


def assert_onsets_match_the_wire(run: FieldRun, label: str) -> None:
    """Within the issue's 20 ms of the sender's timeline; against arrival, never later than 20 ms and
    earlier by at most the call's own largest packet delay (tests.refbot.assert_latencies_match_the_wire's rule)."""
    checks = onsets_against_the_wire(run, label)
    delay = run.call(label)["rtp"]["rx_delay_ms_max"]
    for c in checks:
        assert abs(c.to_sent) <= ONSET_TOLERANCE_MS, c
        assert -delay - WIRE_SLACK_MS <= c.to_arrival <= ONSET_TOLERANCE_MS, (c, delay)


def rtcp_from(run: FieldRun, port: int) -> list[bytes]:
    """The RTCP packets the capture saw leave `port` (a far end's RTCP port)."""
    return [d.payload for d in referee.read_pcap(run.cap.pcap.read_bytes())
            if d.src[1] == port and len(d.payload) >= 8 and 192 <= d.payload[1] <= 223]


# --- the runs (one per codec/SRTP setting, shared by the tests that read its records) -------------------


@pytest.fixture(scope="module")
def pcma_run(tmp_path_factory: pytest.TempPathFactory) -> FieldRun:
    def setup(stack: contextlib.ExitStack, tmp: Path) -> dict[str, FarEnd]:
        return {"sipp-pcma": sipp_far(stack.enter_context(codec_uas(tmp / "sipp", "PCMA", SIPP_PROMPTS)))}
    return run_with(tmp_path_factory.mktemp("pcma"), ["--codecs", "PCMA"], setup)


@pytest.fixture(scope="module")
def g722_run(tmp_path_factory: pytest.TempPathFactory) -> FieldRun:
    def setup(stack: contextlib.ExitStack, tmp: Path) -> dict[str, FarEnd]:
        prompt = timed_prompt(tmp / "timed.wav")
        return {"sipp-g722": sipp_far(stack.enter_context(codec_uas(tmp / "sipp", "G722", SIPP_PROMPTS))),
                "baresip-g722": baresip_far(stack.enter_context(
                    baresip_uas(tmp / "baresip", codecs=["G722"], prompt=prompt, hold_ms=3000)))}
    return run_with(tmp_path_factory.mktemp("g722"), ["--codecs", "G722"], setup)


@pytest.fixture(scope="module")
def opus_run(tmp_path_factory: pytest.TempPathFactory) -> FieldRun:
    def setup(stack: contextlib.ExitStack, tmp: Path) -> dict[str, FarEnd]:
        prompt = timed_prompt(tmp / "timed.wav")
        return {"baresip-opus": baresip_far(stack.enter_context(
            baresip_uas(tmp / "baresip", codecs=["opus"], prompt=prompt, hold_ms=3000)))}
    return run_with(tmp_path_factory.mktemp("opus"), ["--codecs", "opus"], setup)


@pytest.fixture(scope="module")
def pcmu_plain_run(tmp_path_factory: pytest.TempPathFactory) -> FieldRun:
    """PCMU over plain RTP (the defaults, said out loud): refused by the PCMA-only SIPp and the SRTP-only
    baresip; through rtpengine, transcoded to an Opus-only baresip and encrypted to an SRTP-only one."""
    def setup(stack: contextlib.ExitStack, tmp: Path) -> dict[str, FarEnd]:
        prompt = timed_prompt(tmp / "timed.wav")
        sipp = stack.enter_context(codec_uas(tmp / "sipp", "PCMA", SIPP_PROMPTS))
        mand = stack.enter_context(baresip_uas(tmp / "mand", codecs=["PCMU"], prompt=prompt, hold_ms=3000,
                                               srtp="srtp-mand"))
        opus = stack.enter_context(baresip_uas(tmp / "opus", codecs=["opus"], prompt=prompt, hold_ms=3000))
        mand2 = stack.enter_context(baresip_uas(tmp / "mand2", codecs=["PCMU"], prompt=prompt, hold_ms=3000,
                                                srtp="srtp-mand"))
        rtpe = stack.enter_context(rtpengine(tmp / "rtpe"))
        to_opus = kamailio_with_rtpengine(tmp / "k-opus", rtpe, opus.target,
                                          offer_flags="codec-mask=PCMU codec-transcode=opus")
        to_srtp = kamailio_with_rtpengine(tmp / "k-srtp", rtpe, mand2.target,
                                          offer_flags=f"RTP/SAVP {sdes_only_flags()}")
        return {"sipp-pcma": sipp_far(sipp), "baresip-srtp-mand": baresip_far(mand),
                "rtpe-baresip-opus": baresip_far(opus, to_opus.uri("udp")),
                "rtpe-baresip-srtp-mand": baresip_far(mand2, to_srtp.uri("udp"))}
    return run_with(tmp_path_factory.mktemp("pcmu"), ["--codecs", "PCMU", "--srtp", "off"], setup)


@pytest.fixture(scope="module")
def srtp_run(tmp_path_factory: pytest.TempPathFactory) -> FieldRun:
    """--srtp required (RTP/SAVP, PCMU): an SRTP-only baresip, and through rtpengine a plain PCMU SIPp."""
    def setup(stack: contextlib.ExitStack, tmp: Path) -> dict[str, FarEnd]:
        prompt = timed_prompt(tmp / "timed.wav")
        mand = stack.enter_context(baresip_uas(tmp / "mand", codecs=["PCMU"], prompt=prompt, hold_ms=3000,
                                               srtp="srtp-mand"))
        sipp = stack.enter_context(codec_uas(tmp / "sipp", "PCMU", SIPP_PROMPTS))
        rtpe = stack.enter_context(rtpengine(tmp / "rtpe"))
        to_plain = kamailio_with_rtpengine(tmp / "k-plain", rtpe, sipp.target, offer_flags="RTP/AVP")
        return {"baresip-srtp-mand": baresip_far(mand), "rtpe-sipp-pcmu": FarEnd(
            to_plain.uri("udp"), lambda: (sipp.workdir / "sipp_messages.log").read_text(errors="replace"), sipp=sipp)}
    return run_with(tmp_path_factory.mktemp("srtp"), ["--srtp", "required"], setup)


# --- 1. SIPp speaking one codec -----------------------------------------------------------------------


@pytest.mark.parametrize("run_name,label,codec", [("pcma_run", "sipp-pcma", "PCMA"),
                                                  ("g722_run", "sipp-g722", "G722")])
def test_one_codec_sipp_is_heard_and_timed_against_the_wire(request: pytest.FixtureRequest, run_name: str,
                                                            label: str, codec: str) -> None:
    run: FieldRun = request.getfixturevalue(run_name)
    assert_hears_the_far_end(run, label, codec)
    assert_onsets_match_the_wire(run, label)


def test_pcmu_offer_to_a_pcma_only_sipp_is_a_named_488(pcmu_plain_run: FieldRun) -> None:
    assert_refused(pcmu_plain_run.call("sipp-pcma"))
    assert [p.name for p in pcmu_plain_run.sipp("sipp-pcma").played()] == ["refused"]
    assert pcmu_plain_run.summary["sip_codes"] == {"200": 2, "488": 2}, pcmu_plain_run.summary["sip_codes"]


# --- 2. baresip ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("run_name,label,codec,answered", [
    ("opus_run", "baresip-opus", "opus", "opus/48000/2"),
    ("g722_run", "baresip-g722", "G722", "G722/16000/1"),
])
def test_baresip_answers_with_its_codec_and_is_heard(request: pytest.FixtureRequest, run_name: str, label: str,
                                                     codec: str, answered: str) -> None:
    run: FieldRun = request.getfixturevalue(run_name)
    assert_hears_the_far_end(run, label, codec)
    assert run.baresip(label).answered_codecs() == [answered]


def test_srtp_required_to_an_srtp_only_baresip(srtp_run: FieldRun) -> None:
    """Every RTP packet authenticates. baresip 1.0 sends two RTCP packets in the clear even with
    mandatory SRTP (an APP "PINGPONG" before its 200 OK, its BYE at hangup: checked against its
    key, the SRTCP ones between them authenticate); voiceload drops them as a receiver must and
    counts them in rx_auth_failed, so each failure must be one of the far end's RTCP packets."""
    call = assert_hears_the_far_end(srtp_run, "baresip-srtp-mand", "PCMU", srtp=True, auth_failed_ok=True)
    (answer,) = srtp_run.baresip("baresip-srtp-mand").answers()
    assert "RTP/SAVP" in answer and "a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:" in answer, answer
    failed = call["rtp"].get("rx_auth_failed") or 0
    if failed:
        if srtp_run.cap.why_not:
            pytest.skip(f"{failed} SRTP packets failed authentication; {srtp_run.cap.why_not}: cannot tell which")
        far_rtcp = rtcp_from(srtp_run, int(answer.split("m=audio ")[1].split()[0]) + 1)
        print("rx_auth_failed", failed, "of the far end's", len(far_rtcp), "RTCP packets, rtcp_rx",
              call["rtp"].get("rtcp_rx"))
        assert failed <= len(far_rtcp) - (call["rtp"].get("rtcp_rx") or 0), (failed, len(far_rtcp), call["rtp"])


def test_srtp_off_to_an_srtp_only_baresip_is_a_named_488(pcmu_plain_run: FieldRun) -> None:
    assert_refused(pcmu_plain_run.call("baresip-srtp-mand"))
    assert pcmu_plain_run.baresip("baresip-srtp-mand").answered_codecs() == []


# --- 3. Kamailio + rtpengine in the path --------------------------------------------------------------


def test_pcmu_caller_transcoded_by_rtpengine_to_an_opus_only_baresip(pcmu_plain_run: FieldRun) -> None:
    assert_hears_the_far_end(pcmu_plain_run, "rtpe-baresip-opus", "PCMU")
    assert pcmu_plain_run.baresip("rtpe-baresip-opus").answered_codecs() == ["opus/48000/2"]


def test_plain_caller_bridged_by_rtpengine_to_an_srtp_only_baresip(pcmu_plain_run: FieldRun) -> None:
    assert_hears_the_far_end(pcmu_plain_run, "rtpe-baresip-srtp-mand", "PCMU", srtp=False)
    (answer,) = pcmu_plain_run.baresip("rtpe-baresip-srtp-mand").answers()
    assert "RTP/SAVP" in answer and "a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:" in answer, answer


def test_srtp_caller_bridged_by_rtpengine_to_a_plain_sipp(srtp_run: FieldRun) -> None:
    assert_hears_the_far_end(srtp_run, "rtpe-sipp-pcmu", "PCMU", srtp=True)
    log = (srtp_run.sipp("rtpe-sipp-pcmu").workdir / "sipp_messages.log").read_text()
    invite = log.split("INVITE sip:", 1)[1].split("\n-----", 1)[0]  # the offer SIPp got from rtpengine
    m_line = next(ln for ln in invite.splitlines() if ln.startswith("m=audio"))
    assert " RTP/AVP " in m_line and "a=crypto" not in invite, invite
    assert_onsets_match_the_wire(srtp_run, "rtpe-sipp-pcmu")  # rtpengine relays SIPp's timestamps as they are
