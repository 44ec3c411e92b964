#!/usr/bin/env python3
"""How fast is the Rasa brain? Train time, start-up time and REST requests/s of the moodbot.

Sizes what a Rasa-backed bot can serve before voice load tests start measuring Rasa instead of the
gateway: each level keeps C conversations in flight (one REST request outstanding each, a fresh
sender per conversation, the mood dialog on a loop) on 127.0.0.1 for --seconds and reports
requests/s, latency and the Rasa process's CPU. Not a test: it takes about a minute and a half.

    .venv/bin/python bench/rasa_rest.py                 # cached model
    .venv/bin/python bench/rasa_rest.py --fresh-model   # also time a training from scratch
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
import psutil

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from voiceload import rasa  # noqa: E402

DIALOG = ["hello", "i am sad", "no not really", "goodbye"]


async def level(url: str, concurrency: int, seconds: float) -> tuple[int, list[float]]:
    """Run `concurrency` looping conversations until the deadline; return (requests, latencies in s)."""
    latencies: list[float] = []
    deadline = time.monotonic() + seconds

    async def caller(worker: int) -> None:
        n = 0
        while time.monotonic() < deadline:
            sender = f"bench-c{concurrency}-w{worker}-{n}"
            for text in DIALOG:
                t0 = time.monotonic()
                replies = await rasa.send_message(session, url, sender, text)
                latencies.append(time.monotonic() - t0)
                if not replies:
                    raise RuntimeError(f"no reply to {text!r} for {sender}")
                if time.monotonic() >= deadline:
                    return
            n += 1

    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:
        await asyncio.gather(*(caller(w) for w in range(concurrency)))
    return len(latencies), latencies


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=20.0, help="duration of each concurrency level")
    ap.add_argument("--levels", default="1,4,16", help="comma-separated concurrency levels")
    ap.add_argument("--fresh-model", action="store_true", help="train into a scratch dir to time the training")
    args = ap.parse_args()

    t0 = time.monotonic()
    python = rasa.find_rasa_python()
    print(f"rasa venv: {python} ({time.monotonic() - t0:.1f} s to locate/build)")
    with tempfile.TemporaryDirectory(prefix="vl-rasa-bench-") as scratch:
        t0 = time.monotonic()
        if args.fresh_model:
            model = rasa.ensure_model(rasa.MOODBOT_DIR, rasa_python=python, models_dir=Path(scratch))
            print(f"train (fresh): {time.monotonic() - t0:.1f} s")
        else:
            model = rasa.ensure_model(rasa.MOODBOT_DIR, rasa_python=python)
            print(f"model: {model.name} ({time.monotonic() - t0:.1f} s, cached unless this is the first run)")
        serve(model, python, args.levels, args.seconds)
    return 0


def serve(model: Path, python: Path, levels: str, seconds: float) -> None:
    """Start Rasa on the model and drive each concurrency level against it, printing one row per level."""
    with rasa.RasaServer(model, project_dir=rasa.MOODBOT_DIR, rasa_python=python) as server:
        print(f"start-up: {server.startup_s:.1f} s to GET /status 200 ({server.url}, log {server.log_path})")
        assert server.proc is not None
        proc = psutil.Process(server.proc.pid)
        asyncio.run(level(server.url, 1, 2.0))  # warm-up: first requests build TensorFlow graphs
        print(f"\n{'conc':>4} {'requests':>8} {'req/s':>7} {'p50 ms':>7} {'p95 ms':>7} {'max ms':>7} {'rasa CPU':>8}")
        for c in (int(x) for x in levels.split(",")):
            cpu0 = sum(proc.cpu_times()[:2])
            w0 = time.monotonic()
            n, lat = asyncio.run(level(server.url, c, seconds))
            wall = time.monotonic() - w0
            cpu = (sum(proc.cpu_times()[:2]) - cpu0) / wall
            ms = sorted(x * 1000 for x in lat)
            p95 = ms[min(len(ms) - 1, int(0.95 * len(ms)))]
            print(f"{c:>4} {n:>8} {n / wall:>7.1f} {statistics.median(ms):>7.0f} {p95:>7.0f} {ms[-1]:>7.0f} "
                  f"{cpu:>7.0%}")


if __name__ == "__main__":
    sys.exit(main())
