#!/usr/bin/env python3
"""The reference bot's receive delay per codec, from both ends' tapes of the same calls.

    bench/codec_delay.py [--calls 8] [--codecs PCMU,PCMA,G722,opus]

A pjsua2 caller with pjmedia's media (bench/_harness/pjcaller.py) calls `voiceload bot` on 127.0.0.1
and speaks the demo scenario's first turn after the greeting. Each side tapes the call on its own
bridge, where its own speech sits at its send time. The caller's raw latency (bot onset on its tape
minus its own speech end) is L + d, and the bot's (its reply onset minus the caller's speech end on
its tape) is L - d, each d being one pjmedia receive path (jitter buffer, bridge tick, codec): their
sum is 2d, whatever the two bridges' tick phases (they add up to one frame). Both ends are pjmedia
with the same codec, so d is the bot's receive delay for that codec; PCMU's d checks the method
against the constant measured from a packet capture (audio/calibration.py).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tests.refbot import DEMO, start_bot
from voiceload.audio.calibration import bot_rx_delay_ms
from voiceload.core.mediaprofile import MediaProfile, parse_codecs

QUIET_S = 0.7  # silence that ends the bot's greeting or reply, as the caller hears it


def _heard_then_quiet(caller: Any, call: Any, *, after: float, timeout_s: float = 15.0) -> None:
    """Pump until the far end was loud after `after` and then quiet for QUIET_S (or the call ended)."""
    last_loud = 0.0

    def done() -> bool:
        nonlocal last_loud
        now = time.monotonic()
        if call.level() > 5:
            last_loud = now
        return bool(call.ended) or (last_loud > after and now - last_loud > QUIET_S)

    caller.pump_until(done, timeout_s)


def _caller(uri: str, codec: str, calls: int, tapes: Path, out: Path) -> None:
    """Child process (one pjsua2 endpoint per process): `calls` one-turn calls; per call its raw latency."""
    from bench._harness.pjcaller import PjCaller
    from voiceload.audio import wav
    from voiceload.audio.analysis import Played, Reference, analyse_caller_tape
    from voiceload.audio.wav import read_tape
    from voiceload.core.scenario import load_scenario

    sc = load_scenario(DEMO)
    assert sc.greeting is not None and sc.turns[0].reply is not None
    greeting = Reference.of(wav.load_wav(sc.greeting.path))
    utterance = Reference.of(wav.load_wav(sc.turns[0].caller))
    reply = Reference.of(wav.load_wav(sc.turns[0].reply.path))
    rows: list[dict[str, Any]] = []
    with PjCaller(MediaProfile(codecs=(codec,), srtp="off"), tape_dir=tapes) as caller:
        for _ in range(calls):
            placed = caller.call(uri, listen_s=0.0)
            call = placed.call

            _heard_then_quiet(caller, call, after=time.monotonic())  # the greeting
            assert call.tape is not None
            started = call.play(sc.turns[0].caller)
            played = Played(utterance, call.tape.index_at(started))
            speech_end = started + len(utterance.samples) / 8000
            _heard_then_quiet(caller, call, after=speech_end + 0.2)  # the reply
            tape, answered, call_id = call.tape, call.times.confirmed or time.monotonic(), call.sip_call_id
            caller.hangup(call)
            res = analyse_caller_tape(read_tape(tape.path), tape_offset_ms=(tape.started - answered) * 1000,
                                      rx_delay_ms=0.0, greeting=greeting, greeting_max_wait_ms=10_000,
                                      utterances=[played], replies=[reply], max_waits_ms=[10_000])
            turn = res.turns[0]
            rows.append({"call_id": call_id, "codec": placed.codec, "raw_ms": turn.latency_ms,
                         "score": turn.prompt_score})
    out.write_text(json.dumps(rows))


def measure(codec: str, calls: int, tmp: Path) -> list[float]:
    bot = start_bot(tmp, think_ms="400", max_calls=4, extra=["--codecs", codec, "--srtp", "off"])
    out = tmp / f"{codec}.json"
    try:
        proc = multiprocessing.get_context("spawn").Process(target=_caller, args=(bot.target, codec, calls, tmp, out))
        proc.start()
        proc.join(30 * calls)
        if proc.is_alive():
            proc.kill()
            raise SystemExit(f"{codec}: the caller did not finish")
    finally:
        bot.stop()
    truth = {line["call_id"]: line for line in bot.truth_lines() if line["turn"] == 0}
    ds: list[float] = []
    for row in json.loads(out.read_text()):
        line = truth.get(row["call_id"])
        if line is None or row["raw_ms"] is None or line["latency_ms"] is None:
            print(f"  {codec}: call {row['call_id']} unmatched ({row}, {line})")
            continue
        raw_bot = line["latency_ms"] - bot_rx_delay_ms(line.get("codec"))  # the truth had the constant removed
        ds.append((row["raw_ms"] - raw_bot) / 2)
    return ds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--calls", type=int, default=8)
    ap.add_argument("--codecs", default="PCMU,PCMA,G722,opus")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp_s:
        for codec in parse_codecs(args.codecs):
            tmp = Path(tmp_s) / codec
            tmp.mkdir()
            ds = measure(codec, args.calls, tmp)
            if not ds:
                print(f"{codec:5s} no calls measured")
                continue
            sd = statistics.stdev(ds) if len(ds) > 1 else 0.0
            print(f"{codec:5s} n={len(ds):2d} receive delay mean {statistics.mean(ds):5.1f} ms  "
                  f"median {statistics.median(ds):5.1f}  sd {sd:4.1f}  min {min(ds):5.1f}  max {max(ds):5.1f}",
                  flush=True)


if __name__ == "__main__":
    main()
