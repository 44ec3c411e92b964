"""Show the live view without a SIP run: a LiveView fed with synthetic snapshots for a few seconds.

    .venv/bin/python bench/live_demo.py                 # panel on a terminal, plain lines otherwise
    .venv/bin/python bench/live_demo.py --seconds 16 2> live.log

The numbers imitate a 40-call run at concurrency 8 on two agents against the reference bot
(~430 ms turns), compressed so that it ends in `--seconds`; one agent runs hot near the end.
"""

from __future__ import annotations

import argparse
import math
import random
import time

from voiceload.run.live import AgentHealth, LiveSnapshot, LiveView, RateMeter

TOTAL_CALLS = 40
CONCURRENCY = 8
TURNS = 2


def snapshot(t: float, seconds: float, rng: random.Random, rate: RateMeter) -> LiveSnapshot:
    frac = min(t / seconds, 1.0)
    done = min(TOTAL_CALLS, int(TOTAL_CALLS * frac ** 1.1))
    failed = done // 17  # an occasional late reply
    started = min(TOTAL_CALLS, done + CONCURRENCY)
    active = started - done
    measured = max(done, 1)
    wobble = 1 + 0.05 * math.sin(t)
    p50: dict[int, float | None] = dict.fromkeys(range(TURNS))  # no data before the first call ends
    p95: dict[int, float | None] = dict.fromkeys(range(TURNS))
    if done:
        for i in range(TURNS):
            median = round((433 - 20 * i) * wobble + rng.uniform(-3, 3), 1)
            p50[i], p95[i] = median, round(median + 25 + 15 * i + 60 / math.sqrt(measured), 1)
    hot = frac > 0.8
    agents = [
        AgentHealth("a0", active_calls=(active + 1) // 2, cpu_percent=38 + rng.uniform(-4, 4),
                    pump_lag_ms=6 + rng.uniform(0, 3), alive=True),
        AgentHealth("a1", active_calls=active // 2, cpu_percent=(91.0 if hot else 41 + rng.uniform(-4, 4)),
                    pump_lag_ms=(128.0 if hot else 7 + rng.uniform(0, 3)), alive=True),
    ]
    return LiveSnapshot(
        elapsed_s=t, target_concurrency=CONCURRENCY, active_calls=active, started=started,
        completed=done - failed, failed=failed, calls_per_s=rate.observe(t, done),
        turn_p50_ms=p50, turn_p95_ms=p95, agents=agents,
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=6.0, help="how long the synthetic run lasts")
    ap.add_argument("--tty", choices=("auto", "yes", "no"), default="auto", help="force the panel or plain lines")
    args = ap.parse_args()
    tty = None if args.tty == "auto" else args.tty == "yes"
    rng = random.Random(4)
    rate = RateMeter()
    t0 = time.monotonic()
    with LiveView(TOTAL_CALLS, CONCURRENCY, "demo", "sip:bot@127.0.0.1:5080", tty=tty) as view:
        while (t := time.monotonic() - t0) < args.seconds:
            view.update(snapshot(t, args.seconds, rng, rate))
            time.sleep(0.25)
        view.update(snapshot(args.seconds, args.seconds, rng, rate))


if __name__ == "__main__":
    main()
