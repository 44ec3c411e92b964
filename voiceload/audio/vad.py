"""Speech activity on sample arrays: segments with sample-accurate edges, alignment, prompt matching.

Pure numpy, no I/O, so every rule here is testable on WAV files alone. The same functions run on
the reference recordings (to know where speech starts and ends inside a file) and on the call
tapes recorded by agents and the reference bot: applying one definition of "speech" to both
sides is what makes caller-end and bot-onset comparable to the sample.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

SAMPLE_RATE = 8000

FULL_SCALE = 32767  # 0 dBFS: a sample of this magnitude
BLOCK = 16  # 2 ms blocks for the envelope; edges are then refined to the sample

Samples = npt.NDArray[np.int16]


def dbfs_to_amplitude(dbfs: float) -> float:
    """The sample magnitude that is `dbfs` relative to full scale (32767)."""
    return FULL_SCALE * 10.0 ** (dbfs / 20.0)


def amplitude_to_dbfs(amplitude: float) -> float:
    return 20.0 * math.log10(max(amplitude, 1e-9) / FULL_SCALE)


# Every speech level here is the *peak* |sample| of a 2 ms block in dBFS (relative to 32767).
# A block is speech when its peak exceeds the threshold: -36.3 dBFS is the historical integer 500.
# TTS and recorded prompts sit 30+ dB above it; PCMU's quantisation noise around digital silence is
# far below it. Soft sounds are not: an /s/, /f/ or /h/ peaks at -40..-55 dBFS, so a segment found
# at the threshold then grows outwards while its blocks stay above the (lower) edge level.
SPEECH_THRESHOLD = 500
SPEECH_THRESHOLD_DBFS = amplitude_to_dbfs(SPEECH_THRESHOLD)  # -36.3
EDGE_DBFS = -55.0  # measured on the Asterisk prompts (docs/accuracy.md): fricatives peak above it
MIN_SPEECH_MS = 30  # shorter bursts (clicks, codec artefacts) are not speech
DEFAULT_HANGOVER_MS = 400  # pauses shorter than this stay inside one speech segment
# On a tape, the background (a noise bed, hold music, comfort noise) is the mean block peak of the
# quietest 300 ms (a tape has longer stretches without the far end's speech: while the caller
# talks); speech must rise this far above it to be detected. A "background" above the threshold is
# speech, and digital silence has none: the absolute levels alone apply then, and on recordings,
# whose pauses are too short to tell a bed from quiet speech.
FLOOR_WINDOW_MS = 300
DETECT_OVER_FLOOR_DB = 15.0  # a noise bed's block peaks stay within ~7 dB of their mean
# Edges are judged on block peaks averaged over EDGE_SMOOTH_MS (a noise bed's blocks scatter by
# several dB, their average by about one) and stop at the bed: its loud moments (BED_PERCENTILE of
# the averaged peaks, away from speech) + BED_MARGIN_DB; with under BED_MIN_MS of bed, the quietest
# stretch + EDGE_OVER_FLOOR_DB.
EDGE_SMOOTH_MS = 10
BED_PERCENTILE = 98
BED_MARGIN_DB = 1.0
BED_MIN_MS = 100
EDGE_OVER_FLOOR_DB = 4.0
EDGE_MAX_MS = 300  # an edge grows at most this far (the /s/ of "six" is 170 ms before its vowel)
EDGE_GAP_MS = 10  # dips shorter than this do not stop an edge (the gaps between a fricative's bursts)
# Real-time turn taking (the RTP engine's and pjmedia's level meters) works on 20 ms frames: a frame
# is loud when its *mean* |sample| is above this; LEVEL_SPEECH 5 on the meters' 0..127 scale.
LOUD_DBFS = amplitude_to_dbfs(36)  # -59.2


@dataclass(frozen=True)
class SpeechSettings:
    """Where speech starts and ends (scenario `speech:`, docs/accuracy.md): levels in dBFS of a 2 ms
    block's peak, except `loud_dbfs` (the real-time meters' 20 ms mean |sample|)."""

    threshold_dbfs: float = SPEECH_THRESHOLD_DBFS  # a block above this (and a tape's bed + 15 dB) is speech
    edge_dbfs: float | None = EDGE_DBFS  # edges grow outwards above this; None: they stop at the threshold
    min_speech_ms: float = MIN_SPEECH_MS
    hangover_ms: float = DEFAULT_HANGOVER_MS  # pauses inside one reply are shorter (tapes; a recording: whole)
    loud_dbfs: float = LOUD_DBFS  # real time: a 20 ms frame this loud keeps the far end "speaking"

    @property
    def loud_level(self) -> int:
        """`loud_dbfs` on the level meters' scale (µ-law code of the frame's mean |sample|, 0..127)."""
        return meter_level(round(dbfs_to_amplitude(self.loud_dbfs)))

    def to_dict(self) -> dict[str, float | None]:
        return {"threshold_dbfs": self.threshold_dbfs, "edge_dbfs": self.edge_dbfs,
                "min_speech_ms": self.min_speech_ms, "hangover_ms": self.hangover_ms, "loud_dbfs": self.loud_dbfs}


DEFAULT_SPEECH = SpeechSettings()


def meter_level(mean_abs: int) -> int:
    """The level meters' reading for a frame whose mean |sample| is `mean_abs`: pjmedia's
    `linear2ulaw(mean) ^ 0xFF`, as the RTP engine computes it (media/engine.c)."""
    pcm = min(max(mean_abs, 0) >> 2, 8159) + (0x84 >> 2)
    seg = 0
    while seg < 8 and pcm > (0x40 << seg) - 1:
        seg += 1
    if seg >= 8:
        return 0x7F
    return (seg << 4) | ((pcm >> (seg + 1)) & 0xF)


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


def block_peaks(x: npt.NDArray[np.integer]) -> tuple[npt.NDArray[np.int32], npt.NDArray[np.int32]]:
    """(|x|, peak |x| of each 2 ms block): the envelope every level here is measured on."""
    mag = np.abs(x.astype(np.int32))
    nblocks = (len(x) + BLOCK - 1) // BLOCK
    padded = np.zeros(nblocks * BLOCK, dtype=np.int32)
    padded[: len(x)] = mag
    return mag, padded.reshape(nblocks, BLOCK).max(axis=1)


def background(peaks: npt.NDArray[np.int32], rate: int = SAMPLE_RATE) -> float:
    """The background's block peak: their mean over the quietest FLOOR_WINDOW_MS (0: digital silence)."""
    win = max(1, round(FLOOR_WINDOW_MS * rate / 1000 / BLOCK))
    if len(peaks) <= win:
        return 0.0
    csum = np.concatenate(([0], np.cumsum(peaks, dtype=np.int64)))
    return float((csum[win:] - csum[:-win]).min()) / win


def _grow(above: npt.NDArray[np.bool_], start: int, step: int, limit: int, gap: int) -> int:
    """From block `start` (in the segment), the farthest block in direction `step` (not past `limit`)
    reached through blocks in `above`, across dips shorter than `gap` blocks."""
    edge = start
    below = 0
    b = start + step
    while (b >= limit) if step < 0 else (b <= limit):
        if above[b]:
            edge, below = b, 0
        else:
            below += 1
            if below >= gap:
                break
        b += step
    return edge


def speech_segments(
    x: npt.NDArray[np.integer],
    speech: SpeechSettings = DEFAULT_SPEECH,
    *,
    hangover_ms: float | None = None,
    bed: bool = True,
    rate: int = SAMPLE_RATE,
) -> list[Segment]:
    """Speech segments of `x`: blocks above the threshold, gaps under the hangover bridged, edges grown
    to the edge level and refined to the sample. `hangover_ms` overrides the settings' one; `bed`:
    raise the levels over a background found in the signal (a tape), not on a recording."""
    n = len(x)
    if n == 0:
        return []
    mag, peaks = block_peaks(x)
    floor = background(peaks, rate) if bed else 0.0
    if floor > dbfs_to_amplitude(speech.threshold_dbfs):
        floor = 0.0  # its quietest stretch is as loud as speech: that is speech, not a bed
    detect = max(dbfs_to_amplitude(speech.threshold_dbfs), floor * 10 ** (DETECT_OVER_FLOOR_DB / 20))
    active = peaks > detect
    if not active.any():
        return []
    # runs of active blocks: rising and falling edges
    edges = np.diff(np.concatenate(([0], active.astype(np.int8), [0])))
    starts = np.flatnonzero(edges == 1)
    ends = np.flatnonzero(edges == -1)
    hang = speech.hangover_ms if hangover_ms is None else hangover_ms
    gap_blocks = max(1, round(hang * rate / 1000 / BLOCK))
    merged: list[list[int]] = []
    for s, e in zip(starts.tolist(), ends.tolist(), strict=True):
        if merged and s - merged[-1][1] < gap_blocks:
            merged[-1][1] = e
        else:
            merged.append([s, e])
    min_len = ms_to_samples(speech.min_speech_ms, rate)
    cores = [(sb, eb) for sb, eb in merged if _to_samples(mag, sb, eb, detect, n).length >= min_len]
    if speech.edge_dbfs is None or not cores:
        return [_to_samples(mag, sb, eb, detect, n) for sb, eb in cores]
    k = max(1, round(EDGE_SMOOTH_MS * rate / 1000 / BLOCK))
    smooth = np.convolve(peaks.astype(np.float64), np.ones(k) / k, mode="same")
    reach = max(1, round(EDGE_MAX_MS * rate / 1000 / BLOCK))
    bed_level = _bed_level(smooth, cores, reach + k, floor, rate) if bed else 0.0
    edge = min(detect, max(dbfs_to_amplitude(speech.edge_dbfs), bed_level))
    if edge >= detect:
        return [_to_samples(mag, sb, eb, detect, n) for sb, eb in cores]
    above = smooth > edge
    gap = max(1, round(EDGE_GAP_MS * rate / 1000 / BLOCK))
    out: list[Segment] = []
    for i, (sb, eb) in enumerate(cores):
        prev_end = (out[-1].end - 1) // BLOCK + 1 if out else 0
        next_start = cores[i + 1][0] - 1 if i + 1 < len(cores) else len(peaks) - 1
        first = _grow(above, sb, -1, max(prev_end, sb - reach), gap)
        last = _grow(above, eb - 1, 1, min(next_start, eb - 1 + reach), gap)
        out.append(_to_samples(mag, first, last + 1, edge, n))
    return out


def _bed_level(smooth: npt.NDArray[np.float64], cores: list[tuple[int, int]], guard: int, floor: float,
               rate: int) -> float:
    """Where an edge stops, from the bed: the signal farther than `guard` blocks from any speech.

    Its loud moments (BED_PERCENTILE of the smoothed block peaks) plus BED_MARGIN_DB: a voice no
    louder than the bed's loud moments cannot be told from it by level, and stopping there keeps an
    edge out of a music bed's notes. A signal with too little bed (a short recording) falls back
    to the quietest stretch's level plus EDGE_OVER_FLOOR_DB.
    """
    near = np.zeros(len(smooth), dtype=bool)
    for sb, eb in cores:
        near[max(0, sb - guard) : eb + guard] = True
    bed = smooth[~near]
    if len(bed) * BLOCK < BED_MIN_MS * rate / 1000:
        return floor * 10 ** (EDGE_OVER_FLOOR_DB / 20)
    return float(np.percentile(bed, BED_PERCENTILE)) * 10 ** (BED_MARGIN_DB / 20)


def _to_samples(mag: npt.NDArray[np.int32], sb: int, eb: int, level: float, n: int) -> Segment:
    """Blocks [sb, eb) -> from the first to the last sample above `level` inside them."""
    lo, hi = sb * BLOCK, min(eb * BLOCK, n)
    above = np.flatnonzero(mag[lo:hi] > level)
    return Segment(lo + int(above[0]), lo + int(above[-1]) + 1)


@dataclass(frozen=True)
class SpeechSpan:
    """Where speech begins and ends inside a reference recording (sample offsets)."""

    onset: int
    end: int
    length: int  # total samples in the file


def speech_span(
    x: npt.NDArray[np.integer], speech: SpeechSettings = DEFAULT_SPEECH, *, rate: int = SAMPLE_RATE
) -> SpeechSpan:
    """Onset of the first and end of the last speech segment of a whole recording."""
    segs = speech_segments(x, speech, hangover_ms=10_000, bed=False, rate=rate)
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
