"""A corpus of human and synthetic prompts with known speech edges, and the beds laid under them.

Used by bench/vad_prompts.py (the table in docs/accuracy.md) and tests/test_vad_prompts.py.

Truth: on the voice alone (the clean recording), the RMS over a centred 5 ms window, in dBFS. Speech
is where it exceeds TRUTH_DBFS (-60 dBFS: 20-35 dB above the recordings' own floor, 50 dB under the
voice's loudest) in runs of at least 20 ms (shorter ones are clicks); the onset is the first
sample of the first run, the end the last sample of the last run. Checked by eye on every prompt's
envelope (bench/vad_prompts.py --plot). Beds are added after the truth is taken, so a fricative
buried under a bed still counts as speech: an error there is the detector's, honestly.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from voiceload.audio import g711, wav
from voiceload.audio.vad import FULL_SCALE, SAMPLE_RATE, SpeechSettings, speech_segments, speech_span

ASTERISK_DIRS = (Path("/usr/share/asterisk/sounds/en_US_f_Allison"), Path("/usr/share/asterisk/sounds/en"))
# soft onsets (f, h, s, th) and fricative or sibilant endings
ASTERISK_PROMPTS = (
    "for", "hello", "hours", "seconds", "sorry", "auth-thankyou", "vm-messages", "minutes", "vm-press",
    "digits/6", "digits/3", "digits/5", "vm-first",
)
TRUTH_DBFS = -60.0
TRUTH_WINDOW = 40  # 5 ms
TRUTH_MIN_RUN = 160  # 20 ms
LEAD_MS = 600  # bed alone before the prompt, and after it (the detector must not start in the bed)

Signal = npt.NDArray[np.float64]


def asterisk_dir() -> Path | None:
    """Where Debian's asterisk-core-sounds-en-wav put the prompts, or None when it is not installed."""
    for d in ASTERISK_DIRS:
        if (d / "for.wav").is_file():
            return d
    return None


@dataclass(frozen=True)
class Prompt:
    name: str
    samples: npt.NDArray[np.int16]
    onset: int  # truth, samples
    end: int
    kind: str  # what makes it hard: "soft onset", "fricative end", or both


def truth_edges(x: npt.NDArray[np.integer], level_dbfs: float = TRUTH_DBFS) -> tuple[int, int]:
    """(onset, end) of the voice alone, by the definition in the module docstring; with a higher
    `level_dbfs` (a bed's RMS), where the voice is at least as loud as that bed."""
    sq = x.astype(np.float64) ** 2
    csum = np.concatenate(([0.0], np.cumsum(sq)))
    half = TRUTH_WINDOW // 2
    lo = np.clip(np.arange(len(x)) - half, 0, len(x))
    hi = np.clip(np.arange(len(x)) + half, 0, len(x))
    rms = np.sqrt((csum[hi] - csum[lo]) / np.maximum(hi - lo, 1))
    above = rms > FULL_SCALE * 10 ** (level_dbfs / 20)
    edges = np.diff(np.concatenate(([0], above.astype(np.int8), [0])))
    runs = [(s, e) for s, e in zip(np.flatnonzero(edges == 1), np.flatnonzero(edges == -1), strict=True)
            if e - s >= TRUTH_MIN_RUN]
    if not runs:
        return 0, 0
    return int(runs[0][0]), int(runs[-1][1])


def _kind(name: str) -> str:
    soft = name.split("/")[-1][0] in "fhst" or name in ("auth-thankyou", "digits/3", "digits/5", "digits/6")
    fric = name in ("hours", "seconds", "vm-messages", "minutes", "vm-press", "digits/6", "vm-first")
    return "soft onset + fricative end" if soft and fric else "soft onset" if soft else "fricative end"


def asterisk_prompts(directory: Path) -> list[Prompt]:
    out = []
    for name in ASTERISK_PROMPTS:
        x = wav.load_wav(directory / f"{name}.wav")
        onset, end = truth_edges(x)
        out.append(Prompt(name, x, onset, end, _kind(name)))
    return out


def _noise(n: int, rng: np.random.Generator, lo_hz: float, hi_hz: float) -> Signal:
    """Band-limited noise of unit RMS: the stuff of fricatives and comfort noise."""
    spec = np.fft.rfft(rng.standard_normal(n))
    f = np.fft.rfftfreq(n, 1 / SAMPLE_RATE)
    spec[(f < lo_hz) | (f > hi_hz)] = 0
    y = np.fft.irfft(spec, n)
    return y / max(float(np.sqrt(np.mean(y * y))), 1e-12)


def _ramp(n: int, up: int, down: int) -> Signal:
    env = np.ones(n)
    env[:up] = np.linspace(0, 1, up)
    env[n - down :] = np.linspace(1, 0, down)
    return env


def _vowel(n: int, f0: float, amp: float) -> Signal:
    t = np.arange(n) / SAMPLE_RATE
    y = sum(np.sin(2 * np.pi * f0 * k * t) / k for k in range(1, 12) if f0 * k < 3600)
    return amp * y * _ramp(n, 160, 240) / 1.3


def synthetic_prompts(seed: int = 7) -> list[Prompt]:
    """A vowel (-12 dBFS peak) after an /s/, /f/ or /h/-like noise (-45..-50 dBFS RMS, 40 ms rise) and
    before one (60 ms decay).

    Truth here is by construction (the fricative's first and last non-zero sample), not measured.
    """
    rng = np.random.default_rng(seed)
    out = []
    specs = (  # name, fricative before (samples, dB under full scale), fricative after
        ("syn-s-vowel-s", 1200, 45, 900, 45), ("syn-f-vowel-f", 1000, 50, 1000, 50), ("syn-h-vowel", 800, 48, 0, 0),
    )
    for name, on_n, on_db, off_n, off_db in specs:
        lead = np.zeros(800)
        parts: list[Signal] = [lead]
        if on_n:
            parts.append(_noise(on_n, rng, 2500, 3900) * FULL_SCALE * 10 ** (-on_db / 20) * _ramp(on_n, 320, 40))
        parts.append(_vowel(2400, 180.0, FULL_SCALE * 0.25))
        if off_n:
            parts.append(_noise(off_n, rng, 2000, 3900) * FULL_SCALE * 10 ** (-off_db / 20) * _ramp(off_n, 40, 480))
        parts.append(np.zeros(800))
        x = np.concatenate(parts)
        nz = np.flatnonzero(np.abs(np.round(x)) >= 1)
        kind = "soft onset + fricative end" if off_n else "soft onset"
        out.append(Prompt(name, np.round(x).astype(np.int16), int(nz[0]), int(nz[-1]) + 1, kind))
    return out


def comfort_noise(n: int, dbfs: float, seed: int = 1) -> Signal:
    """Comfort noise as a far end generates it: smooth, telephone-band noise at `dbfs` RMS."""
    return _noise(n, np.random.default_rng(seed), 100, 3400) * FULL_SCALE * 10 ** (dbfs / 20)


def hold_music(n: int, dbfs: float, seed: int = 2) -> Signal:
    """Synthetic hold music at `dbfs` RMS: notes of a few harmonics with attack and decay, two voices."""
    rng = np.random.default_rng(seed)
    y = np.zeros(n)
    scale = 220.0 * 2 ** (np.array([0, 2, 4, 5, 7, 9, 11, 12]) / 12)
    for voice, note_ms in ((0, 250), (1, 500)):
        step = note_ms * SAMPLE_RATE // 1000
        for at in range(0, n, step):
            m = min(step, n - at)
            t = np.arange(m) / SAMPLE_RATE
            f0 = float(rng.choice(scale)) / (2 if voice else 1)
            note = sum(np.sin(2 * np.pi * f0 * k * t) / k**1.5 for k in range(1, 6) if f0 * k < 3600)
            y[at : at + m] += note * np.exp(-t * 3.0) * _ramp(m, 40, 40)
    return y * FULL_SCALE * 10 ** (dbfs / 20) / max(float(np.sqrt(np.mean(y * y))), 1e-12)


# name -> (the bed's RMS in dBFS, how to make n samples of it)
BEDS: dict[str, tuple[float, Callable[[int], Signal]] | None] = {
    "clean": None,
    "comfort noise -60": (-60.0, lambda n: comfort_noise(n, -60.0)),
    "comfort noise -50": (-50.0, lambda n: comfort_noise(n, -50.0)),
    "hold music -50": (-50.0, lambda n: hold_music(n, -50.0)),
    "hold music -40": (-40.0, lambda n: hold_music(n, -40.0)),
}


def on_the_wire(p: Prompt, bed: str) -> tuple[npt.NDArray[np.int16], int]:
    """The prompt as a tape receives it: LEAD_MS of bed before and after, the bed under the voice,
    through PCMU. Returns (samples, where the prompt's sample 0 sits)."""
    lead = LEAD_MS * SAMPLE_RATE // 1000
    x = np.zeros(lead + len(p.samples) + lead)
    x[lead : lead + len(p.samples)] = p.samples
    made = BEDS[bed]
    if made is not None:
        x += made[1](len(x))
    pcm = np.clip(np.round(x), -32768, 32767).astype(np.int16)
    return g711.decode(g711.encode(pcm)), lead


@dataclass(frozen=True)
class Measured:
    prompt: Prompt
    bed: str
    onset_err_ms: float | None  # detected - truth: > 0 is late
    end_err_ms: float | None  # detected - truth: < 0 is cut
    audible_onset_err_ms: float | None = None  # the same against where the voice is above the bed
    audible_end_err_ms: float | None = None


def measure(p: Prompt, bed: str, speech: SpeechSettings) -> Measured:
    """Detected vs true edges: the recording itself (`bed` "file": speech_span, how a reference's
    span is taken) or the prompt received on a tape over a bed (speech_segments, as on every tape)."""
    ms = 1000 / SAMPLE_RATE
    if bed == "file":
        span = speech_span(p.samples, speech)
        if span.end == 0:
            return Measured(p, bed, None, None)
        return Measured(p, bed, (span.onset - p.onset) * ms, (span.end - p.end) * ms)
    x, at = on_the_wire(p, bed)
    segs = speech_segments(x, speech)
    if not segs:
        return Measured(p, bed, None, None)
    start, end = segs[0].start - at, segs[-1].end - at
    made = BEDS[bed]
    a_on, a_end = truth_edges(p.samples, max(TRUTH_DBFS, made[0])) if made is not None else (p.onset, p.end)
    return Measured(p, bed, (start - p.onset) * ms, (end - p.end) * ms, (start - a_on) * ms, (end - a_end) * ms)
