"""Speech activity on sample arrays: segments with sample-accurate edges, alignment, prompt matching.

Pure numpy, no I/O, so every rule here is testable on WAV files alone. The same functions run on
the reference recordings (to know where speech starts and ends inside a file) and on the call
tapes recorded by agents and the reference bot: applying one definition of "speech" to both
sides is what makes caller-end and bot-onset comparable to the sample.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

SAMPLE_RATE = 8000

# A block is "speech" when its peak amplitude exceeds this (about -36 dBFS). TTS and recorded
# prompts sit 30+ dB above it; PCMU's quantisation noise around digital silence is far below it.
SPEECH_THRESHOLD = 500
BLOCK = 16  # 2 ms blocks for the envelope; edges are then refined to the sample
MIN_SPEECH_MS = 30  # shorter bursts (clicks, codec artefacts) are not speech
DEFAULT_HANGOVER_MS = 300  # pauses shorter than this stay inside one speech segment

Samples = npt.NDArray[np.int16]


@dataclass(frozen=True)
class Segment:
    """Speech from sample `start` (inclusive) to `end` (exclusive)."""

    start: int
    end: int

    @property
    def length(self) -> int:
        return self.end - self.start


def ms_to_samples(ms: float, rate: int = SAMPLE_RATE) -> int:
    return round(ms * rate / 1000)


def samples_to_ms(n: float, rate: int = SAMPLE_RATE) -> float:
    return n * 1000.0 / rate


def speech_segments(
    x: npt.NDArray[np.integer],
    *,
    threshold: int = SPEECH_THRESHOLD,
    hangover_ms: float = DEFAULT_HANGOVER_MS,
    min_speech_ms: float = MIN_SPEECH_MS,
    rate: int = SAMPLE_RATE,
) -> list[Segment]:
    """Speech segments of `x`: blocks above threshold, gaps under the hangover bridged, edges to the sample."""
    n = len(x)
    if n == 0:
        return []
    mag = np.abs(x.astype(np.int32))
    nblocks = (n + BLOCK - 1) // BLOCK
    padded = np.zeros(nblocks * BLOCK, dtype=np.int32)
    padded[:n] = mag
    active = padded.reshape(nblocks, BLOCK).max(axis=1) > threshold
    if not active.any():
        return []
    # runs of active blocks: rising and falling edges
    edges = np.diff(np.concatenate(([0], active.astype(np.int8), [0])))
    starts = np.flatnonzero(edges == 1)
    ends = np.flatnonzero(edges == -1)
    gap_blocks = max(1, round(hangover_ms * rate / 1000 / BLOCK))
    merged: list[list[int]] = []
    for s, e in zip(starts.tolist(), ends.tolist(), strict=True):
        if merged and s - merged[-1][1] < gap_blocks:
            merged[-1][1] = e
        else:
            merged.append([s, e])
    min_len = ms_to_samples(min_speech_ms, rate)
    out: list[Segment] = []
    for sb, eb in merged:
        lo, hi = sb * BLOCK, min(eb * BLOCK, n)
        above = np.flatnonzero(mag[lo:hi] > threshold)
        seg = Segment(lo + int(above[0]), lo + int(above[-1]) + 1)
        if seg.length >= min_len:
            out.append(seg)
    return out


@dataclass(frozen=True)
class SpeechSpan:
    """Where speech begins and ends inside a reference recording (sample offsets)."""

    onset: int
    end: int
    length: int  # total samples in the file


def speech_span(x: npt.NDArray[np.integer], *, rate: int = SAMPLE_RATE) -> SpeechSpan:
    """Onset of the first and end of the last speech segment of a whole recording."""
    segs = speech_segments(x, hangover_ms=10_000, rate=rate)
    if not segs:
        return SpeechSpan(0, 0, len(x))
    return SpeechSpan(segs[0].start, segs[-1].end, len(x))


def locate(
    haystack: npt.NDArray[np.integer], needle: npt.NDArray[np.integer], *, lo: int, hi: int,
    template_len: int = 4000,
) -> tuple[int, float]:
    """Exact start of `needle` in `haystack` with its start searched in [lo, hi).

    Returns (index, normalised correlation 0..1). Used to find where a player's audio entered a
    tape: the bridge copies samples unchanged, so a correct match scores ~1.0.
    """
    tpl = needle[:template_len].astype(np.float64)
    lo = max(0, lo)
    hi = min(hi, len(haystack) - len(tpl) + 1)
    if hi <= lo or len(tpl) == 0:
        return -1, 0.0
    win = haystack[lo : hi + len(tpl) - 1].astype(np.float64)
    corr = np.correlate(win, tpl, mode="valid")
    # normalise by the window energy under each lag
    csum = np.concatenate(([0.0], np.cumsum(win * win)))
    energy = csum[len(tpl) :] - csum[: len(corr)]
    tnorm = float(np.sqrt(np.dot(tpl, tpl)))
    denom = np.sqrt(np.maximum(energy, 1e-9)) * max(tnorm, 1e-9)
    score = corr / denom
    best = int(np.argmax(score))
    return lo + best, float(score[best])


def _best_ncc(window: npt.NDArray[np.float64], tpl: npt.NDArray[np.float64]) -> tuple[int, float]:
    """Best normalised correlation of `tpl` inside `window`: (offset, score)."""
    corr = np.correlate(window, tpl, mode="valid")
    csum = np.concatenate(([0.0], np.cumsum(window * window)))
    energy = csum[len(tpl) :] - csum[: len(corr)]
    score = corr / (np.sqrt(np.maximum(energy, 1e-9)) * max(float(np.sqrt(np.dot(tpl, tpl))), 1e-9))
    best = int(np.argmax(score))
    return best, float(score[best])


MATCH_CHUNK = 1600  # 200 ms pieces of the reference are matched one by one...
MATCH_STEP = 200  # ...each allowed 25 ms of drift from the previous piece (a jitter-buffer frame is 20)


def match_score(
    received: npt.NDArray[np.integer], reference: npt.NDArray[np.integer], *, max_lag: int = 400
) -> float:
    """How closely `received` (starting near the reference's start) reproduces the reference, 0..1.

    The reference is matched in 200 ms pieces, each free to drift 25 ms from the previous one:
    a jitter buffer that inserts or drops a frame mid-prompt shifts the rest by 20 ms, which must
    not turn the right prompt into a "wrong" one. ~1.0 for the same prompt through G.711, low for
    another prompt or noise; pieces that are silence in the reference are skipped.
    """
    if len(received) == 0 or len(reference) == 0:
        return 0.0
    ref = reference.astype(np.float64)
    rec = np.concatenate((np.zeros(max_lag), received.astype(np.float64), np.zeros(len(ref) + 2 * max_lag)))
    lag = max_lag  # where reference sample 0 sits in `rec`
    radius = max_lag
    total = weight = 0.0
    for start in range(0, len(ref), MATCH_CHUNK):
        tpl = ref[start : start + MATCH_CHUNK]
        energy = float(np.dot(tpl, tpl))
        if len(tpl) < MATCH_CHUNK // 4 or energy < len(tpl) * SPEECH_THRESHOLD**2 / 16:
            continue  # too short or a pause: nothing to compare
        lo = max(0, lag + start - radius)
        window = rec[lo : lag + start + radius + len(tpl)]
        if len(window) < len(tpl):
            break
        off, score = _best_ncc(window, tpl)
        lag = lo + off - start
        radius = MATCH_STEP
        total += max(score, 0.0) * energy
        weight += energy
    return float(np.clip(total / weight, 0.0, 1.0)) if weight else 0.0
