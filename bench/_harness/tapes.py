"""Dropouts on call tapes: where a known source lies on each tape, and which of its 20 ms frames went silent."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import soundfile as sf

from voiceload.audio.vad import SPEECH_THRESHOLD, locate
from voiceload.audio.wav import SAMPLE_RATE, mix_to_mono

Samples = npt.NDArray[np.int16]

RATE = SAMPLE_RATE
FRAME = RATE // 50  # 20 ms
SILENT_DBFS = -50.0  # a 20 ms frame below this RMS is silence
START_FRAMES = 5  # the source's first 100 ms on a tape: stream start-up, counted apart from dropouts
CHUNK = 1600  # 200 ms: the tape is followed against the source chunk by chunk
FOLLOW_RADIUS = 240  # samples (30 ms) a chunk may move from the previous one


def _dbfs(rms: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    return np.asarray(20 * np.log10(np.maximum(rms, 1e-3) / 32768.0), dtype=np.float64)


def frame_dbfs(x: Samples) -> npt.NDArray[np.float64]:
    """RMS level of each whole 20 ms frame, dBFS."""
    n = len(x) // FRAME
    frames = x[: n * FRAME].astype(np.float64).reshape(n, FRAME)
    return _dbfs(np.sqrt(np.mean(frames * frames, axis=1)))


def align(tape: Samples, ref: Samples, *, search_s: float = 6.0, template_s: float = 3.0) -> tuple[int, float]:
    """Where `ref` starts on the tape (searched in its first search_s seconds): (index, normalised score).

    By FFT: a 3 s template over a 9 s window is ~1e9 multiply-adds per tape in np.correlate (vad.locate).
    """
    tpl = ref[: round(template_s * RATE)].astype(np.float64)
    win = tape[: len(tpl) + round(search_s * RATE)].astype(np.float64)
    if len(win) < len(tpl) or not tpl.any():
        return -1, 0.0
    nfft = 1 << (len(win) + len(tpl)).bit_length()
    corr = np.fft.irfft(np.fft.rfft(win, nfft) * np.conj(np.fft.rfft(tpl, nfft)), nfft)[: len(win) - len(tpl) + 1]
    csum = np.concatenate(([0.0], np.cumsum(win * win)))
    energy = csum[len(tpl) :] - csum[: len(corr)]
    score = corr / (np.sqrt(np.maximum(energy, 1e-9)) * float(np.sqrt(np.dot(tpl, tpl))))
    best = int(np.argmax(score))
    return best, float(score[best])


def follow(tape: Samples, ref: Samples, at: int) -> list[int] | None:
    """Where each 200 ms chunk of `ref` lies on the tape, following the receive path's re-timing.

    The receive path may move the audio by a fraction of a frame mid-call (jitter buffer growth,
    the bridge's clock-drift compensation): comparing frame i with frame i would then call
    shifted speech "lost". Each chunk with speech is located within ±30 ms of the previous one's
    position; pauses keep the last. None when the tape ends before the source does.
    """
    lags: list[int] = []
    lag = at  # tape index of ref sample 0
    for start in range(0, len(ref), CHUNK):
        tpl = ref[start : start + CHUNK]
        if lag + start + len(tpl) + FOLLOW_RADIUS > len(tape):
            return None
        if len(tpl) == CHUNK and int(np.abs(tpl).max()) > SPEECH_THRESHOLD:
            idx, score = locate(tape, tpl, lo=lag + start - FOLLOW_RADIUS, hi=lag + start + FOLLOW_RADIUS + 1,
                                template_len=CHUNK)
            if idx >= 0 and score >= 0.5:
                lag = idx - start
        lags.append(lag)
    return lags


def tape_frames_dbfs(tape: Samples, lags: list[int], frames: int) -> npt.NDArray[np.float64]:
    """The level of the tape frame that carries each source frame (source frame i at lags[i // 10] + 160 i)."""
    per_chunk = CHUNK // FRAME
    starts = np.array([lags[i // per_chunk] + i * FRAME for i in range(frames)])
    x = tape[starts[:, None] + np.arange(FRAME)[None, :]].astype(np.float64)
    return _dbfs(np.sqrt(np.mean(x * x, axis=1)))


def sample(found: list[Path], limit: int) -> list[Path]:
    """At most `limit` of the tapes, spread evenly over the sorted list (agents, call start times)."""
    if len(found) <= limit:
        return found
    return [found[i] for i in sorted({round(x) for x in np.linspace(0, len(found) - 1, limit)})]


def analyse_tapes(tape_root: Path, source: Samples, limit: int) -> dict[str, Any]:
    """Silent 20 ms frames over the source's span: in a sample of tapes, in the source, and where it spoke.

    The tape is the call's mono mix (audio received + what the caller played); while the source
    (the bot's greeting) plays the caller is silent, so every frame there should be the source's.
    A frame the source has speech in but the tape is silent in (at the followed position) is a
    dropout: a lost or late packet the jitter buffer could not cover. The first START_FRAMES frames
    are left out of both and counted on their own: the stream's first packet is a start-up effect,
    not load.
    """
    found = sorted(tape_root.glob("*/*.wav"))
    tapes = sample(found, limit)
    nframes = len(source) // FRAME
    src_speech_all = frame_dbfs(source) >= SILENT_DBFS
    src_speech = src_speech_all[START_FRAMES:]
    silent_fracs: list[float] = []
    dropped: list[float] = []
    unaligned = short = start_missing = retimed = 0
    for path in tapes:
        try:  # only the span the source can lie in: tapes are whole calls
            data, _ = sf.read(str(path), dtype="int16", frames=len(source) + 8 * RATE, always_2d=True)
        except (OSError, RuntimeError):
            unaligned += 1
            continue
        tape = mix_to_mono(data)  # a stereo (kept) tape measures as its mono mix
        at, score = align(tape, source)
        if at < 0 or score < 0.5:
            unaligned += 1
            continue
        lags = follow(tape, source, at)
        if lags is None:
            short += 1
            continue
        retimed += int(len(set(lags)) > 1)
        speech_all = tape_frames_dbfs(tape, lags, nframes) >= SILENT_DBFS
        start_missing += int(np.any(src_speech_all[:START_FRAMES] & ~speech_all[:START_FRAMES]))
        speech = speech_all[START_FRAMES:]
        silent_fracs.append(1 - float(np.mean(speech)))
        dropped.append(float(np.sum(src_speech & ~speech)) / max(1, int(np.sum(src_speech))))
    src_silent = 100 * (1 - float(np.mean(src_speech)))
    tape_silent = 100 * float(np.mean(silent_fracs)) if silent_fracs else None
    return {
        "tapes_found": len(found), "analysed": len(silent_fracs), "unaligned": unaligned, "short": short,
        "source_silent_pct": round(src_silent, 2),
        "tape_silent_pct": None if tape_silent is None else round(tape_silent, 2),
        "excess_silent_pct": None if tape_silent is None else round(tape_silent - src_silent, 3),
        "dropout_pct_mean": round(100 * float(np.mean(dropped)), 3) if dropped else None,
        "dropout_pct_max": round(100 * float(np.max(dropped)), 3) if dropped else None,
        "tapes_with_dropouts": sum(1 for d in dropped if d > 0),
        "tapes_missing_stream_start": start_missing,
        "tapes_retimed": retimed,
    }
