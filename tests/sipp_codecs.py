"""A SIPp UAS that speaks one codec only (PCMU, PCMA or G.722) and plays prompts at known times.

    with codec_uas(tmp_path, "PCMA", [Prompt("welcome", WELCOME_WAV, at_ms=500)]) as uas:
        ... call uas.target (offer PT 8, or get a 488) ...
    uas.played()                # [Played(call, "welcome", exec_time)], from SIPp's own log
    uas.wire_starts(pcap)       # when each played file's first packet was on the wire (exact)

The scenario is tests/sipp/uas_codec.xml: an offer without the codec's payload type gets 488;
otherwise SIPp answers with that payload type alone and, from the ACK, loops silence in the
codec and starts each prompt `at_ms` after the ACK. The caller must hang up after the last
prompt started (a BYE during SIPp's pauses aborts its call).

Why rtp_stream and pre-encoded files: SIPp 3.6.1's rtp_stream sends a file's bytes unchanged,
160 bytes per 20 ms, for PT 0, 8 and 9 (checked: PT 9 streams at 160 bytes, timestamps +160), so
no pcap and no raw socket (root) are needed. sox writes A-law and µ-law; G.722 comes from
libspandsp (tests/g722.py), since sox has none and ffmpeg's CLI is a heavy install.

Latency truth. `played()` gives SIPp's exec time of each prompt; its first packet leaves 20..40 ms
later (SIPp's playback tick, tests/test_sipp_interop.py). For the exact time, capture loopback
(tests.refbot.loopback_capture) and ask `wire_starts(pcap)`: it finds each prompt's first
distinctive frame by its bytes among the packets SIPp sent, and backs off by its index in the
file, which gives the wire time of the file's sample 0 (add the WAV's speech onset for the onset).
"""

from __future__ import annotations

import contextlib
import subprocess
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from tests import g722
from tests.refbot import stop_process
from tests.test_sipp_interop import SIPP, SOX, free_udp_port, sipp_errors, wait_for_sipp
from voiceload.audio.vad import samples_to_ms, speech_span
from voiceload.audio.wav import load_wav
from voiceload.tools import referee

HERE = Path(__file__).resolve().parent
TEMPLATE = HERE / "sipp" / "uas_codec.xml"
FRAME_MS = 20
FRAME_BYTES = 160  # all three codecs: 20 ms is 160 bytes
SILENCE_TAIL_MS = 2000  # each prompt file's silent tail, so the stream never stops between files


@dataclass(frozen=True)
class Codec:
    name: str
    pt: int
    rtpmap: str  # the a=rtpmap value


CODECS = {c.name: c for c in (Codec("PCMU", 0, "PCMU/8000"), Codec("PCMA", 8, "PCMA/8000"),
                              Codec("G722", 9, "G722/8000"))}


def encode_payload(wav: Path | None, codec: str, *, tail_ms: int = 0, silence_ms: int = 0) -> bytes:
    """The RTP payload bytes of a WAV (or of `silence_ms` of silence) in `codec`, whole 20 ms frames,
    plus `tail_ms` of silence, encoded in one pass (G.722 is stateful: no seams)."""
    rate = 16000 if codec == "G722" else 8000
    if wav is None:
        pcm = np.zeros(0, dtype=np.int16)
    else:
        raw = subprocess.run([SOX, str(wav), "-t", "raw", "-r", str(rate), "-c", "1", "-e", "signed", "-b", "16",
                              "-"], check=True, capture_output=True, timeout=30).stdout
        pcm = np.frombuffer(raw, dtype="<i2")
    per_frame = rate * FRAME_MS // 1000
    pad = -len(pcm) % per_frame + (tail_ms + silence_ms) * rate // 1000
    pcm = np.concatenate((pcm, np.zeros(pad, dtype=np.int16)))
    if codec == "G722":
        return g722.encode(pcm)
    law = {"PCMU": "u-law", "PCMA": "a-law"}[codec]
    return subprocess.run([SOX, "-t", "raw", "-r", "8000", "-c", "1", "-e", "signed", "-b", "16", "-", "-t", "raw",
                           "-e", law, "-b", "8", "-"], input=pcm.astype("<i2").tobytes(), check=True,
                          capture_output=True, timeout=30).stdout


@dataclass(frozen=True)
class Prompt:
    """A WAV the UAS starts `at_ms` after each call's ACK (its name appears in `played()`)."""

    name: str
    wav: Path
    at_ms: int


@dataclass(frozen=True)
class Played:
    call: int  # SIPp's call number (1 = its first call; an OPTIONS probe counts as one)
    name: str  # a Prompt's name, or "ack", "bye", "refused"
    time: float  # Unix time SIPp logged it (for a prompt: the exec; its first packet is 20..40 ms later)


@dataclass
class CodecUas:
    proc: subprocess.Popen[bytes]
    target: str  # sip:bot@127.0.0.1:PORT
    workdir: Path
    codec: Codec
    prompts: list[Prompt]
    media_port: int
    files: dict[str, bytes]  # prompt name -> the payload bytes SIPp streams for it

    def played(self) -> list[Played]:
        """What SIPp logged: each call's ack, each prompt's exec, bye, or refused (488)."""
        log = self.workdir / "sipp_logs.log"
        out = []
        for line in log.read_text(errors="replace").splitlines() if log.exists() else []:
            parts = line.split()
            if len(parts) >= 3 and parts[1].isdigit():
                out.append(Played(int(parts[1]), parts[0], float(parts[-1])))
        return out

    def wire_starts(self, pcap: Path) -> dict[tuple[int, str], float]:
        """(call, prompt) -> capture time of the prompt file's sample 0 as SIPp sent it.

        A prompt is found by the bytes of its first frame that silence never has, among packets
        from SIPp's media port after that prompt's exec; calls are told apart by their exec times.
        """
        sent = [d for d in referee.read_pcap(pcap.read_bytes())
                if d.src[1] == self.media_port and len(d.payload) >= 12 + FRAME_BYTES]
        silence = self.files["_silence"]
        out: dict[tuple[int, str], float] = {}
        for p in self.played():
            data = self.files.get(p.name)
            if data is None:
                continue
            k = next((i for i in range(len(data) // FRAME_BYTES)
                      if data[i * FRAME_BYTES:(i + 1) * FRAME_BYTES] not in silence), None)
            if k is None:
                continue
            frame = data[k * FRAME_BYTES:(k + 1) * FRAME_BYTES]
            hit = next((d for d in sent if d.time >= p.time and d.payload[12:12 + FRAME_BYTES] == frame), None)
            if hit is not None:
                out[(p.call, p.name)] = hit.time - k * FRAME_MS / 1000
        return out

    def speech_onset_ms(self, name: str) -> float:
        """Where speech starts inside a prompt's WAV (ms from its sample 0)."""
        wav = next(p.wav for p in self.prompts if p.name == name)
        return samples_to_ms(speech_span(load_wav(wav)).onset)

    def wait(self, timeout_s: float = 15.0) -> int:
        """SIPp's exit code once its calls are done (0: every call went as scripted)."""
        try:
            return self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            pytest.fail(f"sipp did not finish its calls within {timeout_s:.0f} s: {self.errors()}")

    def stop(self) -> None:
        stop_process(self.proc)

    def errors(self) -> str:
        return sipp_errors(self.workdir)


def _playback_block(codec: Codec, prompts: Sequence[Prompt], files: dict[str, Path]) -> str:
    """The scenario steps after the ACK: silence at once, then each prompt at its offset."""
    def stream(path: Path, loops: int) -> str:
        return f'<exec rtp_stream="{path},{loops},{codec.pt}"/>'

    steps = [f"  <nop><action>{stream(files['_silence'], -1)}</action></nop>"]
    t = 0
    for p in sorted(prompts, key=lambda p: p.at_ms):
        if p.at_ms > t:
            steps.append(f'  <pause milliseconds="{p.at_ms - t}"/>')
            t = p.at_ms
        steps.append(f'  <nop><action><log message="{p.name} [call_number] [timestamp]"/>'
                     f"{stream(files[p.name], 1)}</action></nop>")
    return "\n".join(steps)


def start_codec_uas(work: Path, codec: str, prompts: Sequence[Prompt], *, calls: int = 1,
                    timeout_s: float = 10.0) -> CodecUas:
    """SIPp answering `calls` calls (then it exits) in `codec` only, on free ports, up within `timeout_s`.

    Skips the test when sipp or sox is missing; fails it when SIPp does not come up.
    """
    if not Path(SIPP).exists():
        pytest.skip("sipp is not installed (Debian package sip-tester)")
    if not Path(SOX).exists():
        pytest.skip("sox is not installed")
    if codec == "G722":
        try:
            g722.encode(np.zeros(2, dtype=np.int16))
        except g722.G722Unavailable as exc:
            pytest.skip(str(exc))
    c = CODECS[codec]
    if len({p.name for p in prompts}) != len(prompts) or any(p.name in ("ack", "bye", "refused") for p in prompts):
        raise ValueError("prompt names must be unique and not ack/bye/refused")
    work.mkdir(parents=True, exist_ok=True)
    payloads = {"_silence": encode_payload(None, codec, silence_ms=1000)}
    for p in prompts:
        payloads[p.name] = encode_payload(p.wav, codec, tail_ms=SILENCE_TAIL_MS)
    files = {}
    for name, data in payloads.items():
        files[name] = work / f"{name}.{codec.lower()}"
        files[name].write_bytes(data)
    xml = TEMPLATE.read_text()
    for key, value in {"PT": str(c.pt), "RTPMAP": c.rtpmap, "PLAYBACK": _playback_block(c, prompts, files)}.items():
        xml = xml.replace(f"@@{key}@@", value)
    scen = work / f"uas_{codec.lower()}.xml"
    scen.write_text(xml)
    sip_port = free_udp_port()
    media_port = free_udp_port(also_plus_2=True)
    cmd = [SIPP, "-sf", str(scen), "-i", "127.0.0.1", "-mi", "127.0.0.1", "-p", str(sip_port),
           "-mp", str(media_port), "-m", str(calls), "-nostdin",
           "-trace_err", "-error_file", str(work / "sipp_errors.log"),
           "-trace_msg", "-message_file", str(work / "sipp_messages.log"),
           "-trace_logs", "-log_file", str(work / "sipp_logs.log")]
    with open(work / "sipp.out", "wb") as out, open(work / "sipp.err", "wb") as err:
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, stdin=subprocess.DEVNULL, cwd=work)
    uas = CodecUas(proc, f"sip:bot@127.0.0.1:{sip_port}", work, c, list(prompts), media_port, payloads)
    try:
        wait_for_sipp(proc, sip_port, uas.errors, timeout_s=timeout_s)
    except BaseException:
        uas.stop()
        raise
    return uas


@contextlib.contextmanager
def codec_uas(work: Path, codec: str, prompts: Sequence[Prompt], *, calls: int = 1) -> Iterator[CodecUas]:
    uas = start_codec_uas(work, codec, prompts, calls=calls)
    try:
        yield uas
    finally:
        uas.stop()


def prompt_ms(wav: Path) -> float:
    return samples_to_ms(len(load_wav(wav)))
