"""A plain pjsua2 caller for peer tests: one call offering chosen codecs, a WAV played, the far end recorded.

It is not voiceload's agent (no RTP engine, no scenario): it proves a far end answers and sends
audio in a codec before the agents speak that codec. It runs in its own process, because a
pjsua2 Endpoint is one per process and must not share pytest's:

    res = call(target, codecs=["PCMA"], play=WAV, record=tmp / "heard.wav", seconds=4)
    res.code, res.codec, res.rx_packets, res.heard   # final status, negotiated codec, RTP in, the recording

`python -m tests.pjcaller --target URI --codec PCMA [--codec ...] --record OUT.wav [--play WAV]
[--seconds S]` prints one JSON line. The recording is 8 kHz mono (the bridge's clock), after
pjmedia's jitter buffer and decoder: good for "the right prompt arrived", not for timing.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.refbot import REPO

CLOCK_RATE = 8000


@dataclass
class CallResult:
    code: int  # the final status (200 when answered; 488, 503, ... when refused; 0: no answer at all)
    codec: str | None  # "PCMA/8000" as pjmedia's stream named it, None if no media came up
    rx_packets: int
    tx_packets: int
    heard: Path | None  # the far end's audio (8 kHz WAV), when asked to record
    reason: str
    far_hangup: bool  # the far end ended the call before we did
    log: str  # the caller's stderr tail, for assertion messages

    @classmethod
    def of(cls, line: str, log: str) -> CallResult:
        d = json.loads(line)
        return cls(d["code"], d["codec"], d["rx_packets"], d["tx_packets"],
                   Path(d["heard"]) if d["heard"] else None, d["reason"], d["far_hangup"], log)


def call(target: str, *, codecs: list[str], record: Path | None = None, play: Path | None = None,
         seconds: float = 3.0, timeout_s: float = 30.0) -> CallResult:
    """One call to `target` offering `codecs` only (pjmedia names: PCMU, PCMA, G722, opus), in a child process."""
    cmd = [sys.executable, "-m", "tests.pjcaller", "--target", target, "--seconds", str(seconds)]
    for c in codecs:
        cmd += ["--codec", c]
    if record is not None:
        cmd += ["--record", str(record)]
    if play is not None:
        cmd += ["--play", str(play)]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, cwd=REPO)
    lines = [ln for ln in res.stdout.splitlines() if ln.startswith("{")]
    assert res.returncode == 0 and lines, f"pjcaller failed ({res.returncode}): {res.stderr[-3000:]}"
    return CallResult.of(lines[-1], res.stderr[-3000:])


def available_codecs() -> list[str]:
    """The codec ids (e.g. "G722/16000/1") of the installed pjsua2, from a child process."""
    res = subprocess.run([sys.executable, "-m", "tests.pjcaller", "--list"], capture_output=True, text=True,
                         timeout=30, cwd=REPO)
    return [ln for ln in res.stdout.splitlines() if "/" in ln]


def _main(argv: list[str]) -> int:
    import pjsua2 as pj  # only in the child: one Endpoint per process

    ap = argparse.ArgumentParser()
    ap.add_argument("--target")
    ap.add_argument("--codec", action="append", default=[])
    ap.add_argument("--record")
    ap.add_argument("--play")
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--list", action="store_true")
    args = ap.parse_args(argv)

    ep = pj.Endpoint()
    ep.libCreate()
    cfg = pj.EpConfig()
    cfg.uaConfig.threadCnt = 0
    cfg.uaConfig.mainThreadOnly = True
    cfg.logConfig.level = 3
    cfg.logConfig.consoleLevel = 3
    cfg.medConfig.clockRate = CLOCK_RATE
    cfg.medConfig.sndClockRate = CLOCK_RATE
    cfg.medConfig.noVad = True
    cfg.medConfig.ecTailLen = 0
    ep.libInit(cfg)
    if args.list:
        for ci in ep.codecEnum2():
            print(ci.codecId)
        ep.libDestroy()
        return 0
    tcfg = pj.TransportConfig()
    tcfg.boundAddress = "127.0.0.1"
    tcfg.port = 0
    ep.transportCreate(pj.PJSIP_TRANSPORT_UDP, tcfg)
    ep.audDevManager().setNullDev()
    ep.libStart()
    wanted = [c.lower() for c in args.codec]
    for ci in ep.codecEnum2():
        name = ci.codecId.split("/")[0].lower()
        ep.codecSetPriority(ci.codecId, 255 - wanted.index(name) if name in wanted else 0)

    acfg = pj.AccountConfig()
    acfg.idUri = "sip:pjcaller@127.0.0.1"
    acfg.mediaConfig.transportConfig.boundAddress = "127.0.0.1"
    account = pj.Account()
    account.create(acfg)

    state: dict[str, Any] = {"code": 0, "codec": None, "reason": "", "done": False, "media": False}
    keep: list[Any] = []

    class Call(pj.Call):
        def onCallState(self, prm: Any) -> None:
            ci = self.getInfo()
            if ci.lastStatusCode >= 200 and state["code"] < 200:  # the INVITE's final answer, kept
                state["code"], state["reason"] = ci.lastStatusCode, ci.lastReason
            if ci.state == pj.PJSIP_INV_STATE_DISCONNECTED:
                state["done"] = True

        def onCallMediaState(self, prm: Any) -> None:
            ci = self.getInfo()
            for i, mi in enumerate(ci.media):
                if mi.type != pj.PJMEDIA_TYPE_AUDIO or mi.status != pj.PJSUA_CALL_MEDIA_ACTIVE:
                    continue
                am = self.getAudioMedia(i)
                state["media"] = True
                state["codec"] = self.getStreamInfo(i).codecName + f"/{self.getStreamInfo(i).codecClockRate}"
                if args.record and not any(isinstance(k, pj.AudioMediaRecorder) for k in keep):
                    rec = pj.AudioMediaRecorder()
                    rec.createRecorder(args.record)
                    am.startTransmit(rec)
                    keep.append(rec)
                if args.play and not any(isinstance(k, pj.AudioMediaPlayer) for k in keep):
                    player = pj.AudioMediaPlayer()
                    player.createPlayer(args.play, pj.PJMEDIA_FILE_NO_LOOP)
                    player.startTransmit(am)
                    keep.append(player)

    c = Call(account)
    prm = pj.CallOpParam(True)
    c.makeCall(args.target, prm)
    answered_at: float | None = None
    deadline = time.monotonic() + args.seconds + 15
    stats = (0, 0)
    next_stat = 0.0
    while not state["done"] and time.monotonic() < deadline:
        ep.libHandleEvents(20)
        if state["code"] == 200 and answered_at is None:
            answered_at = time.monotonic()
        if state["media"] and not state["done"] and time.monotonic() >= next_stat:
            with contextlib.suppress(pj.Error):  # the stream is gone once the far end hung up
                st = c.getStreamStat(0).rtcp
                stats = (st.rxStat.pkt, st.txStat.pkt)
            next_stat = time.monotonic() + 0.1
        if answered_at is not None and time.monotonic() - answered_at >= args.seconds:
            c.hangup(pj.CallOpParam(True))
            answered_at = float("inf")
            state["we_hung_up"] = True
    for _ in range(50):
        ep.libHandleEvents(20)
    keep.clear()
    print(json.dumps({"code": state["code"], "codec": state["codec"], "rx_packets": stats[0],
                      "tx_packets": stats[1], "heard": args.record if state["media"] else None,
                      "reason": state["reason"],
                      "far_hangup": state["done"] and not state.get("we_hung_up", False)}), flush=True)
    ep.hangupAllCalls()
    ep.libDestroy()
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
