"""baresip (Debian's 1.0) as a far end: auto-answers over UDP with the codecs it is given, plays a WAV.

    with baresip_uas(tmp_path, codecs=["G722"], prompt=WELCOME_WAV) as far:
        ... call far.target ...
    far.answered_codecs()   # ["G722/16000/1"]: the encoder it chose for each call, in order
    far.calls_ended()       # how many calls it saw end

Its configuration is tests/baresip/config (filled in here) plus an `accounts` file with one
local account: `regint=0` (no registrar), `answermode=auto`, `audio_codecs=` the codecs in order
(PCMU, PCMA, G722, opus). An offer with none of them gets 488 Not Acceptable Here.
The prompt is converted to what its aufile source needs (16 kHz mono S16) and padded with
`hold_ms` of silence, because baresip 1.0's aufile ends the call when its file ends: a call lasts
at most the prompt plus `hold_ms`, which is how a test makes the far end hang up, too.

The prompt starts when baresip starts the call's audio, at its 200 OK: for exact timing, capture
loopback (tests.refbot.loopback_capture) and look at the first packets from its RTP port.
"""

from __future__ import annotations

import contextlib
import re
import shutil
import subprocess
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.kamailio import _free_port
from tests.refbot import stop_process
from tests.test_sipp_interop import SOX, udp_port_bound

HERE = Path(__file__).resolve().parent
BARESIP = shutil.which("baresip")
STDBUF = shutil.which("stdbuf")
MODULES = Path("/usr/lib/baresip/modules")
RTP_RANGE = 40  # RTP ports per instance (two per call: RTP and RTCP)
# baresip's codec ids; an account's audio_codecs needs rate and channels, or it looks for 8000/1
NAMES = {"pcmu": "PCMU/8000/1", "pcma": "PCMA/8000/1", "g722": "G722/16000/1", "opus": "opus/48000/2"}


@dataclass
class Baresip:
    proc: subprocess.Popen[bytes]
    target: str  # sip:bot@127.0.0.1:PORT
    workdir: Path
    log: Path
    rtp_ports: tuple[int, int]  # the range it takes its RTP ports from

    def text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def answered_codecs(self) -> list[str]:
        """The encoder baresip set for each call's audio, in order: "G722/16000/1", "opus/48000/2"…"""
        return [f"{m[0]}/{m[1]}/{m[2]}" for m in re.findall(r"audio: Set audio encoder: (\S+) (\d+)Hz (\d+)ch",
                                                             self.text())]

    def answers(self) -> list[str]:
        """The SDP of each 200 OK it sent (from its SIP trace): RTP/AVP or RTP/SAVP, a=crypto, the payload types."""
        out = []
        for block in self.text().split("SIP/2.0 200 ")[1:]:
            head = block.split("\x1b[;m", 1)[0]  # its trace ends each message with a colour reset
            if "\nv=0" in head:
                out.append(head[head.index("\nv=0") + 1:].strip())
        return out

    def calls_ended(self) -> int:
        return len(re.findall(r": Call with \S+ terminated", self.text()))

    def stop(self) -> None:
        stop_process(self.proc)


def start_baresip(work: Path, *, codecs: Sequence[str], prompt: Path, hold_ms: int = 30000,
                  max_calls: int = 4, srtp: str | None = None, timeout_s: float = 10.0) -> Baresip:
    """baresip answering on a free UDP port with `codecs` only (in its order of preference).

    `srtp`: its srtp module's media encryption, SDES: "srtp-mand" (RTP/SAVP offers only: a plain
    RTP offer gets 488), "srtp" (SRTP when the offer has crypto, else plain RTP), None (plain RTP).

    Skips the test when baresip, its modules or sox are missing; fails it when baresip does not
    bind its SIP port within `timeout_s`.
    """
    if BARESIP is None:
        pytest.skip("baresip is not installed (Debian package baresip)")
    if not Path(SOX).exists():
        pytest.skip("sox is not installed")
    wanted = [NAMES[c.lower()] for c in codecs]
    for mod in ("g711", "g722", "opus", "srtp"):
        if not (MODULES / f"{mod}.so").exists():
            pytest.skip(f"baresip's {mod} module is missing ({MODULES})")
    work.mkdir(parents=True, exist_ok=True)
    wav = work / "prompt16k.wav"
    subprocess.run([SOX, str(prompt), "-r", "16000", "-c", "1", "-b", "16", "-e", "signed", str(wav),
                    "pad", "0", f"{hold_ms / 1000:.3f}"], check=True, capture_output=True, timeout=30)
    sip_port = _free_port()
    rtp_first = _free_port() & ~1
    cfg = (HERE / "baresip" / "config").read_text()
    for key, value in {"SIP_PORT": sip_port, "MAX_CALLS": max_calls, "PROMPT": wav, "RTP_FIRST": rtp_first,
                       "RTP_LAST": rtp_first + RTP_RANGE - 1}.items():
        cfg = cfg.replace(f"@@{key}@@", str(value))
    (work / "config").write_text(cfg)
    mediaenc = f";mediaenc={srtp}" if srtp else ""
    (work / "accounts").write_text(
        f"<sip:bot@127.0.0.1>;regint=0;answermode=auto;audio_codecs={','.join(wanted)}{mediaenc}\n")
    (work / "contacts").write_text("")
    log = work / "baresip.log"
    # -n 127.0.0.1: its SDP names loopback, not the host's first interface; -s: the SIP trace;
    # -t: it quits on its own even if the test forgets it. stdbuf: its log is readable while it runs.
    cmd = [BARESIP, "-f", str(work), "-n", "127.0.0.1", "-s", "-t", str(max(120, hold_ms // 1000 + 60))]
    if STDBUF is not None:
        cmd = [STDBUF, "-oL", "-eL", *cmd]
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=work)
    far = Baresip(proc, f"sip:bot@127.0.0.1:{sip_port}", work, log, (rtp_first, rtp_first + RTP_RANGE - 1))
    deadline = time.monotonic() + timeout_s
    while not (udp_port_bound(sip_port) and "baresip is ready" in far.text()):
        if proc.poll() is not None or time.monotonic() > deadline:
            far.stop()
            pytest.fail(f"baresip did not start (exit {proc.returncode}); its log:\n{far.text()[-3000:]}")
        time.sleep(0.05)
    if "audio codec not found" in far.text():  # it would answer with every codec it has instead
        far.stop()
        pytest.fail(f"baresip does not know one of {wanted}: {far.text()[-2000:]}")
    return far


@contextlib.contextmanager
def baresip_uas(work: Path, *, codecs: Sequence[str], prompt: Path, hold_ms: int = 30000,
                max_calls: int = 4, srtp: str | None = None) -> Iterator[Baresip]:
    far = start_baresip(work, codecs=codecs, prompt=prompt, hold_ms=hold_ms, max_calls=max_calls, srtp=srtp)
    try:
        yield far
    finally:
        far.stop()
