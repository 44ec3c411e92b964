"""The bot's audio for the codec rows of bench/density.py: voiceload's RTP engine as the far end's media.

SIPp's UAS can stream only G.711 and G.722 from a file (rtp_stream, payload types 0, 8, 9) and
has no SRTP. Its pcap player could send pre-encoded Opus or SRTP packets, but it opens one raw
IPPROTO_UDP socket per call, and Linux hands every raw UDP socket a clone of every UDP datagram
on the host: at 200 calls that is 200 clones of each of the ~20,000 datagrams a second, charged
to whoever sends them (the agents too). So in the codec rows SIPp does the signalling only, and
this process, one engine with a channel per call, streams the bot track in the row's codec, SRTP
included, exactly as an agent's engine sends: the same work for every row, PCMU too.

How the two meet, with no port guessing:
- Before the run this process opens its channels and writes their ports as a SIPp injection file
  (`-inf`, SEQUENTIAL): call k of the UAS answers with channel k's RTP port (and RTCP muxed on it).
- On the ACK the UAS appends `ack CHANNEL AGENT_RTP_PORT [AGENT_SRTP_KEY]` to the events file
  (`<exec command>`), on the BYE `bye CHANNEL`; this process follows the file every 20 ms, starts
  the channel towards the agent and plays the track, and closes it at the BYE.

    python -m bench._harness.streamer --codec opus --pt 96 --track bot.wav --channels 220 \\
        --ports ports.csv --events events.txt --lifetime-s 300
"""

from __future__ import annotations

import argparse
import base64
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from bench._harness import REPO
from voiceload.media.engine import ChannelMedia, MediaEngine, RtpChannel

HOST = "127.0.0.1"
POLL_S = 0.02
LOUD_LEVEL = 300  # only last_loud uses it, and nothing here asks


@dataclass(frozen=True)
class Streamed:
    """What a UAS of one codec row answers with and streams."""

    codec: str  # core/mediaprofile.py's name
    pt: int
    event_pt: int | None
    srtp_key: bytes | None  # the UAS's own key (its a=crypto): the streamer encrypts with it


def follow_events(engine: MediaEngine, path: Path, channels: list[RtpChannel], media: Streamed, track: Path,
                  deadline: float) -> dict[str, float]:
    """Start and stop channels as the UAS's events say, until the deadline or SIGTERM; what was done, and
    how late the streamer's own clock ran (a late far end shows on the agents' tapes, not in their CPU)."""
    done: dict[str, float] = {"started": 0, "closed": 0, "bad": 0, "late_max_ms": 0.0, "skipped_ticks": 0}
    next_health = time.monotonic() + 1.0
    stop = False

    def on_term(_sig: int, _frame: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_term)
    offset = 0
    rng = random.Random()
    while not stop and time.monotonic() < deadline:
        try:
            with path.open("rb") as f:
                f.seek(offset)
                chunk = f.read()
        except FileNotFoundError:
            chunk = b""
        complete = chunk[: chunk.rfind(b"\n") + 1]
        offset += len(complete)
        for line in complete.decode(errors="replace").splitlines():
            words = line.split()
            try:
                idx = int(words[1])
                ch = channels[idx]
                if words[0] == "ack" and ch.started is None:
                    rx_key = base64.b64decode(words[3]) if len(words) > 3 and media.srtp_key else None
                    ch.start(f"{HOST}:{int(words[2])}", None, rng.getrandbits(32), ChannelMedia(
                        codec=media.codec, pt=media.pt, event_pt=media.event_pt,
                        srtp_tx=media.srtp_key, srtp_rx=rx_key, rtcp_mux=True))
                    ch.play(track)
                    done["started"] += 1
                elif words[0] == "bye" and not ch.closed:
                    ch.close()
                    done["closed"] += 1
            except (IndexError, ValueError, OSError):
                done["bad"] += 1
        if time.monotonic() >= next_health:
            next_health += 1.0
            health = engine.health()
            if health.late_max_ms > 40:
                print(f"streamer: clock {health.late_max_ms:.0f} ms late, {health.skipped_ticks} ticks skipped, "
                      f"{health.running} channels", flush=True)
            done["late_max_ms"] = max(done["late_max_ms"], round(health.late_max_ms, 1))
            done["skipped_ticks"] += health.skipped_ticks
        time.sleep(POLL_S)
    return done


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--codec", required=True)
    ap.add_argument("--pt", type=int, required=True)
    ap.add_argument("--event-pt", type=int, default=None)
    ap.add_argument("--srtp-key", default=None, help="base64 master key + salt the UAS answered with")
    ap.add_argument("--track", type=Path, required=True, help="the bot track, 8 kHz WAV")
    ap.add_argument("--channels", type=int, required=True)
    ap.add_argument("--ports", type=Path, required=True, help="SIPp injection file to write")
    ap.add_argument("--events", type=Path, required=True)
    ap.add_argument("--lifetime-s", type=float, required=True)
    args = ap.parse_args()
    media = Streamed(args.codec, args.pt, args.event_pt,
                     base64.b64decode(args.srtp_key) if args.srtp_key else None)
    engine = MediaEngine(HOST, args.channels, LOUD_LEVEL)
    channels = [engine.open() for _ in range(args.channels)]
    engine.clip(args.track, media.codec)  # encoded before the first call needs it
    tmp = args.ports.with_suffix(".tmp")
    tmp.write_text("SEQUENTIAL\n" + "".join(f"{i};{c.port}\n" for i, c in enumerate(channels)))
    tmp.rename(args.ports)  # whole, or not there: the launcher waits for it
    try:
        done = follow_events(engine, args.events, channels, media, args.track, time.monotonic() + args.lifetime_s)
    finally:
        for c in channels:
            c.close()
        engine.shutdown()
    print(f"streamer: {done}", flush=True)
    return 0


@dataclass
class Streamer:
    """A running streamer process and the injection file its UAS reads."""

    proc: subprocess.Popen[bytes]
    ports: Path
    events: Path
    command: str


@contextmanager
def running(media: Streamed, track: Path, channels: int, work: Path, lifetime_s: float, tag: str) -> Iterator[Streamer]:
    """Start a streamer, wait for its injection file (bounded), stop it at the end."""
    ports, events = work / f"{tag}-ports.csv", work / f"{tag}-events.txt"
    for p in (ports, events):
        p.unlink(missing_ok=True)
    events.touch()
    cmd = [sys.executable, "-m", "bench._harness.streamer", "--codec", media.codec, "--pt", str(media.pt),
           "--track", str(track), "--channels", str(channels), "--ports", str(ports), "--events", str(events),
           "--lifetime-s", f"{lifetime_s:.0f}"]
    if media.event_pt is not None:
        cmd += ["--event-pt", str(media.event_pt)]
    if media.srtp_key is not None:
        cmd += ["--srtp-key", base64.b64encode(media.srtp_key).decode()]
    with open(work / f"{tag}.log", "wb") as log:
        proc = subprocess.Popen(cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env={**os.environ, "PYTHONPATH": str(REPO)})
    streamer = Streamer(proc, ports, events, f"(cd {REPO} && PYTHONPATH=. {' '.join(cmd)})")
    try:
        for _ in range(300):  # 30 s: opening sockets and encoding a minute of track
            if ports.exists() or proc.poll() is not None:
                break
            time.sleep(0.1)
        if not ports.exists():
            raise RuntimeError(f"streamer did not write {ports} (exit {proc.poll()}, log {work / f'{tag}.log'})")
        yield streamer
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)


if __name__ == "__main__":
    raise SystemExit(main())
