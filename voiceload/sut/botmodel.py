"""The reference bot as a server with C workers, and a closed-loop model that predicts its knee.

`voiceload bot --capacity C` serves every bot utterance (greeting, each reply) as a job on one of
C workers, so a capacity search can be checked against a knee known in advance. `WorkerPool` is
that queue, used by the bot itself; `simulate` runs N model callers against the same queue in
simulated time, and `predict_knee` finds the largest N whose p95 turn latency meets a limit.
Pure: no clock, no sockets; only `ScenarioTiming.from_scenario` reads files (the WAVs). See docs/bot-model.md.

    python -m voiceload.sut.botmodel scenarios/demo.yaml --capacity 30 --think-ms 300 --p95-ms 900
"""

from __future__ import annotations

import argparse
import heapq
import math
import random
import sys
from dataclasses import dataclass
from pathlib import Path

from voiceload.audio import wav
from voiceload.audio.vad import samples_to_ms, speech_span
from voiceload.core.callflow import ThinkTime
from voiceload.core.scenario import Scenario, load_scenario
from voiceload.core.stats import LatencyHistogram
from voiceload.errors import EXIT_BAD_INPUT, ScenarioError, UserError

DEFAULT_ENDPOINT_MS = 350  # the bot's endpointing: silence that ends a caller utterance
GREETING_DELAY_MS = 200.0  # BotFlow.greeting_delay_ms: answer -> greeting, when a worker is free
CALL_SETUP_MS = 60.0  # INVITE -> 302 -> INVITE -> 200 OK -> media on 127.0.0.1 (about)
BEEP_MS = 400.0  # the bot's reply to a turn that has no reply prompt (bot.beep)
DEFAULT_SIM_S = 3600.0  # simulated time per N: enough turns that p95 moves < 1 % between seeds
DEFAULT_SEED = 1


class WorkerPool:
    """C workers, jobs first come first served by the earliest free worker; O(log C) per job."""

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be at least 1, got {capacity}")
        self.capacity = capacity
        self._free = [-math.inf] * capacity  # each worker's free time (ms); a constant list is a heap

    def schedule(self, arrival_ms: float, think_ms: float, speak_ms: float) -> float:
        """Start S of a job: max(arrival, earliest free worker); that worker is busy until S + think + speak."""
        start = max(arrival_ms, self._free[0])
        heapq.heapreplace(self._free, start + think_ms + speak_ms)
        return start

    def due(self, arrival_ms: float, think_ms: float, speak_ms: float) -> float:
        """BotFlow's scheduler: when the utterance is due (S + think)."""
        return self.schedule(arrival_ms, think_ms, speak_ms) + think_ms


@dataclass(frozen=True)
class ScenarioTiming:
    """Everything the model needs of a scenario and the bot, in ms."""

    greeting_ms: float | None  # greeting prompt duration (None: no greeting, the caller speaks first)
    utterance_ms: tuple[float, ...]  # per turn: where the caller's speech ends in its recording
    reply_ms: tuple[float, ...]  # per turn: the reply prompt's duration (the worker speaks it)
    silence_gap_ms: float
    hangup_by: str  # "caller" | "bot"
    hangup_after_ms: float
    endpoint_ms: float = DEFAULT_ENDPOINT_MS
    setup_ms: float = CALL_SETUP_MS
    greeting_delay_ms: float = GREETING_DELAY_MS
    think_jitter_ms: float = 0.0  # think time is uniform in [mean - jitter, mean + jitter], like the bot's
    hear_lag_ms: float = 0.0  # how long after the caller's wire end the bot hears it end (see docs)

    @classmethod
    def from_scenario(cls, scenario: Scenario, endpoint_ms: float = DEFAULT_ENDPOINT_MS, *,
                      think_jitter_ms: float = 0.0, hear_lag_ms: float = 0.0) -> ScenarioTiming:
        """Durations from the scenario's WAVs: prompts whole (the bot plays the file), utterances to speech end."""
        greeting = None if scenario.greeting is None else _wav_ms(scenario.greeting.path)
        speech = scenario.speech
        utterances = tuple(samples_to_ms(speech_span(wav.load_wav(t.caller), speech).end) if t.caller is not None
                           else float(t.dtmf.length_ms if t.dtmf else 0) for t in scenario.turns)
        replies = tuple(BEEP_MS if t.reply is None else _wav_ms(t.reply.path) for t in scenario.turns)
        return cls(greeting, utterances, replies, float(scenario.silence_gap_ms), scenario.hangup_by,
                   float(scenario.hangup_after_ms), float(endpoint_ms), think_jitter_ms=think_jitter_ms,
                   hear_lag_ms=hear_lag_ms)

    @property
    def hangup_wait_ms(self) -> float:
        """After the last reply ends: the caller hangs up after max(gap, after); the bot after `after`."""
        if self.hangup_by == "caller":
            return max(self.silence_gap_ms, self.hangup_after_ms)
        return self.hangup_after_ms

    def call_ms(self, think_ms: float) -> float:
        """One call's length with no queueing: the cycle each model caller repeats."""
        total = self.setup_ms + self.hangup_wait_ms
        if self.greeting_ms is not None:
            total += self.greeting_delay_ms + self.greeting_ms
        for utt, reply in zip(self.utterance_ms, self.reply_ms, strict=True):
            total += utt + self.hear_lag_ms + max(think_ms, self.endpoint_ms) + reply
        gaps = len(self.utterance_ms) if self.greeting_ms is not None else len(self.utterance_ms) - 1
        return total + self.silence_gap_ms * gaps


def _wav_ms(path: Path) -> float:
    return 1000.0 * wav.probe_wav(path).duration_s


_GREETING = -1


def simulate(n_calls: int, capacity: int, think_ms: float, timing: ScenarioTiming,
             duration_s: float = DEFAULT_SIM_S, seed: int = DEFAULT_SEED) -> list[float]:
    """Turn latencies (reply start - caller speech end, ms) of N callers looping calls for `duration_s`.

    Callers start spread over one call length; turns whose utterance ends in that first call
    length are warm-up and not returned. Jobs reach the pool in the order the bot learns of them.
    """
    if n_calls < 1:
        return []
    rng = random.Random(seed)
    think = ThinkTime(think_ms, timing.think_jitter_ms)
    pool = WorkerPool(capacity)
    warmup = timing.call_ms(think_ms)
    end = warmup + duration_s * 1000.0
    n_turns = len(timing.utterance_ms)
    # (time the bot learns of the job, tie-break, turn or _GREETING, arrival, caller's speech end)
    jobs: list[tuple[float, int, int, float, float]] = []
    seq = 0
    latencies: list[float] = []

    def push(known: float, turn: int, arrival: float, speech_end: float) -> None:
        nonlocal seq
        seq += 1
        heapq.heappush(jobs, (known, seq, turn, arrival, speech_end))

    def caller_speaks(at: float, turn: int) -> None:
        speech_end = at + timing.utterance_ms[turn]
        heard = speech_end + timing.hear_lag_ms
        push(heard + timing.endpoint_ms, turn, heard, speech_end)

    def start_call(at: float) -> None:
        answer = at + timing.setup_ms
        if timing.greeting_ms is not None:
            push(answer, _GREETING, answer, answer)
        elif n_turns:
            caller_speaks(answer, 0)

    def bot_spoke(until: float, next_turn: int) -> None:
        if next_turn < n_turns:
            caller_speaks(until + timing.silence_gap_ms, next_turn)
        else:
            start_call(until + timing.hangup_wait_ms)

    for _ in range(n_calls):
        start_call(rng.uniform(0.0, warmup))
    while jobs:
        known, _, turn, arrival, speech_end = heapq.heappop(jobs)
        if known > end:
            break
        if turn == _GREETING:
            assert timing.greeting_ms is not None
            start = pool.schedule(arrival, timing.greeting_delay_ms, timing.greeting_ms)
            bot_spoke(start + timing.greeting_delay_ms + timing.greeting_ms, 0)
            continue
        t = think.sample(rng)
        start = pool.schedule(arrival, t, timing.reply_ms[turn])
        reply_start = max(start + t, known)  # the bot cannot reply before its endpointing fired
        if speech_end >= warmup:
            latencies.append(reply_start - speech_end)
        bot_spoke(reply_start + timing.reply_ms[turn], turn + 1)
    return latencies


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile from an HDR histogram, like every percentile voiceload reports (nan when empty)."""
    if not values:
        return math.nan
    h = LatencyHistogram()
    for v in values:
        h.record(v)
    return h.value_at(q)


def predict_knee(capacity: int, think_ms: float, timing: ScenarioTiming, p95_limit_ms: float, n_max: int, *,
                 duration_s: float = DEFAULT_SIM_S, seed: int = DEFAULT_SEED) -> int:
    """The largest N <= n_max whose simulated p95 turn latency is <= the limit (0: not even one call).

    Up to C callers never queue (each has at most one job outstanding), so the search starts at
    N = C and walks up until the first N over the limit.
    """
    first = max(1, min(capacity, n_max))
    if percentile(simulate(first, capacity, think_ms, timing, duration_s, seed), 95) > p95_limit_ms:
        return 0
    knee = first
    for n in range(first + 1, n_max + 1):
        if percentile(simulate(n, capacity, think_ms, timing, duration_s, seed), 95) > p95_limit_ms:
            break
        knee = n
    return knee


def main(argv: list[str] | None = None) -> int:
    """Print the predicted knee and the latency per N around it (docs and bench scripts quote this)."""
    ap = argparse.ArgumentParser(prog="python -m voiceload.sut.botmodel", description=main.__doc__)
    ap.add_argument("scenario", help="scenario YAML file")
    ap.add_argument("--capacity", type=int, required=True, help="the bot's workers (voiceload bot --capacity)")
    ap.add_argument("--think-ms", required=True, help="think time MEAN[:JITTER] in ms, as for voiceload bot")
    ap.add_argument("--p95-ms", type=float, required=True, help="p95 turn latency limit in ms")
    ap.add_argument("--endpoint-ms", type=float, default=DEFAULT_ENDPOINT_MS, help="the bot's endpointing")
    ap.add_argument("--hear-lag-ms", type=float, default=0.0, help="wire end -> bot hears the end (about 30)")
    ap.add_argument("--n-max", type=int, default=None, help="largest N tried (default 4 x capacity + 20)")
    ap.add_argument("--duration-s", type=float, default=DEFAULT_SIM_S, help="simulated time per N")
    ap.add_argument("--seed", type=int, default=DEFAULT_SEED)
    args = ap.parse_args(argv)
    if args.capacity < 1:
        ap.error(f"--capacity {args.capacity}: expected at least 1 worker")
    try:
        think = ThinkTime.parse(args.think_ms)
        scenario = load_scenario(args.scenario)
        timing = ScenarioTiming.from_scenario(scenario, args.endpoint_ms, think_jitter_ms=think.jitter_ms,
                                              hear_lag_ms=args.hear_lag_ms)
    except ScenarioError as exc:
        print("\n".join(exc.problems), file=sys.stderr)
        return EXIT_BAD_INPUT
    except (UserError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    n_max = args.n_max if args.n_max is not None else 4 * args.capacity + 20
    knee = predict_knee(args.capacity, think.mean_ms, timing, args.p95_ms, n_max, duration_s=args.duration_s,
                        seed=args.seed)
    print(f"scenario {scenario.name}: call {timing.call_ms(think.mean_ms) / 1000:.1f} s unqueued; "
          f"capacity {args.capacity}, think {args.think_ms} ms, endpoint {args.endpoint_ms:g} ms")
    verdict = f"N = {knee}" if knee < n_max else f"N >= {n_max} (raise --n-max)"
    print(f"predicted knee: {verdict} concurrent calls with p95 turn latency <= {args.p95_ms:g} ms")
    print(f"{'N':>5} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8} {'turns':>7}")
    for n in range(max(1, knee - 4), knee + 5):
        lat = simulate(n, args.capacity, think.mean_ms, timing, args.duration_s, args.seed)
        mark = "  <- knee" if n == knee else ""
        print(f"{n:>5} {percentile(lat, 50):>8.0f} {percentile(lat, 95):>8.0f} {percentile(lat, 99):>8.0f} "
              f"{len(lat):>7}{mark}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
