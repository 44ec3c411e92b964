"""Speech recognition for the reference gateway: pocketsphinx restricted to a scenario's caller phrases.

Why a grammar: open-vocabulary pocketsphinx is slow (~0.5 CPU-s per audio-s) and weak on synthetic
voices, while a JSGF grammar of the phrases a load test's callers actually say is cheap and
accurate, and that is all a load test needs: the recognised text must be the caller's transcript
so that the bot behind the gateway follows the scripted conversation.

Why these decoder settings: the en-us model is trained on wideband speech, and a call tape holds
telephone-band audio with *digital* silence around the caller's speech. Measured on the shipped
caller recordings (demo, booking, the Rasa moodbot example), each through G.711 µ-law and padded
with silence, over 20 variants (10-100 ms of silence kept either side of the speech, full and 30 %
level, with and without a 20 ms gap mid-utterance): pocketsphinx's defaults recognised as little as
1 in 5 ("final result does not match the grammar"); decoding the speech span alone (edges at
-40 dBFS) without filler (silence) words, without the lattice best-path pass (it returned partial,
wrong phrases such as "i would like to" for "at eight tonight please"), and with dither (digital
silence has no spectrum: log of zero) recognised 180 of 180. Adding filler words back lost 1 to 5 of
the 9 utterances in every variant tried.

pocketsphinx holds the GIL while it decodes (measured: a 2.3 s utterance stalls every other Python
thread for 60-70 ms), so audio is fed in 100 ms chunks (2-3 ms of CPU each): between chunks the
bot's pump thread gets the GIL back within about one switch interval (measured: a 5 ms sleep
overran by 7 ms at most), and the recognised text is the same. Activating a grammar also holds the
GIL (~45 ms), so a recogniser activates its grammar when it is made, not at its first utterance.

The acoustic model wants 16 kHz; calls carry 8 kHz. `upsample_2x` is a windowed-sinc interpolator
(32 taps per phase, Kaiser β = 8): below 3.6 kHz its error on a sine is under -80 dB, and 10 s of
audio take about 10 ms.
"""

from __future__ import annotations

import functools
import hashlib
import re
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from voiceload.core.scenario import Scenario
from voiceload.errors import UserError

IN_RATE = 8000
MODEL_RATE = 16000
# speech edges for decoding: above -40 dBFS, keeping 10 ms of what is around them
EDGE_THRESHOLD = 300
EDGE_MARGIN_MS = 10
TAPS_PER_PHASE = 32
CHUNK_SAMPLES = MODEL_RATE // 10  # 100 ms per process_raw call: the GIL is released between calls
KAISER_BETA = 8.0

_WORD = re.compile(r"[a-z0-9]+(?:'[a-z0-9]+)*")


def normalise(text: str) -> list[str]:
    """Lowercase words without punctuation; apostrophes inside a word stay ("luigi's" is in the dictionary)."""
    return _WORD.findall(text.lower().replace("\u2019", "'"))


def phrases_of(texts: Iterable[str]) -> list[str]:
    """Distinct normalised phrases, in first-seen order (empty ones dropped)."""
    seen: dict[str, None] = {}
    for t in texts:
        words = normalise(t)
        if words:
            seen.setdefault(" ".join(words), None)
    return list(seen)


def scenario_phrases(scenario: Scenario) -> list[str]:
    """The caller transcripts of a scenario as grammar phrases; every turn needs one."""
    dialled = scenario.dtmf_turns
    if dialled:
        raise UserError(f"{scenario.path}: turn {dialled[0]} dials DTMF; the rasa brain recognises speech only "
                        "(run the scripted bot for DTMF scenarios)")
    missing = [f"turn {t.index} ({t.caller.name if t.caller else 'dtmf'})" for t in scenario.turns
               if not t.transcript]
    if missing:
        raise UserError(
            f"{scenario.path}: the rasa brain recognises speech with a grammar built from the caller "
            f"transcripts, and {', '.join(missing)} has none: add `transcript:` to the turn or a .txt "
            "beside its recording"
        )
    phrases = phrases_of(t.transcript or "" for t in scenario.turns)
    if not phrases:
        raise UserError(f"{scenario.path}: the caller transcripts contain no words to recognise")
    return phrases


def jsgf(phrases: Sequence[str]) -> str:
    """A JSGF grammar accepting exactly one of the phrases."""
    if not phrases:
        raise ValueError("a grammar needs at least one phrase")
    alternatives = "\n    | ".join(f"( {p} )" for p in phrases)
    return f"#JSGF V1.0;\ngrammar voiceload;\npublic <utterance> =\n      {alternatives};\n"


def missing_words(phrases: Sequence[str], known: Any) -> list[str]:
    """Words of the phrases for which `known(word)` is falsy (the decoder's `lookup_word`)."""
    words = dict.fromkeys(w for p in phrases for w in p.split())
    return [w for w in words if not known(w)]


def _kernel() -> npt.NDArray[np.float64]:
    """The odd phase of a Kaiser-windowed sinc interpolator for factor 2 (the even phase is the input)."""
    k = np.arange(-2 * TAPS_PER_PHASE + 1, 2 * TAPS_PER_PHASE)  # odd length, centred, starts odd
    h = np.sinc(k / 2.0) * np.kaiser(len(k), KAISER_BETA)
    return np.asarray(h[0::2], dtype=np.float64)  # the taps at odd k


_ODD_PHASE = _kernel()


def upsample_2x(x: npt.NDArray[np.integer]) -> npt.NDArray[np.int16]:
    """8 kHz → 16 kHz: input samples kept, the samples between them interpolated (windowed sinc)."""
    n = len(x)
    y = np.empty(2 * n, dtype=np.float64)
    xf = np.asarray(x, dtype=np.float64)
    y[0::2] = xf
    if n:
        y[1::2] = np.convolve(xf, _ODD_PHASE, mode="full")[TAPS_PER_PHASE : TAPS_PER_PHASE + n]
    return np.clip(np.rint(y), -32768, 32767).astype(np.int16)


def speech_only(x: npt.NDArray[np.integer], *, threshold: int = EDGE_THRESHOLD,
                margin_ms: float = EDGE_MARGIN_MS, rate: int = IN_RATE) -> npt.NDArray[np.int16]:
    """The span from the first to the last sample above `threshold`, plus a margin (empty: no speech)."""
    loud = np.flatnonzero(np.abs(np.asarray(x, dtype=np.int32)) > threshold)
    if len(loud) == 0:
        return np.zeros(0, dtype=np.int16)
    margin = round(margin_ms * rate / 1000)
    lo, hi = max(0, int(loud[0]) - margin), min(len(x), int(loud[-1]) + 1 + margin)
    return np.asarray(x[lo:hi], dtype=np.int16)


@dataclass(frozen=True)
class Recognition:
    text: str  # normalised words, "" when nothing was recognised
    decode_ms: float  # wall time of trimming, resampling and decoding
    speech_ms: float  # length of the speech span that was decoded


_lock = threading.Lock()  # one decoder per process; pocketsphinx decoders are not thread-safe
_searches: set[str] = set()  # grammars added to the decoder (re-adding the active one is unsafe)
_active: list[str] = []  # the active search (`Decoder.current_search()` crashes before any is active)


@functools.cache
def _decoder() -> Any:
    """The process's one pocketsphinx Decoder (loading the model takes ~0.2 s and ~30 MB)."""
    from pocketsphinx import Decoder

    # settings measured in the module docstring; seed: dither the same way in every process
    return Decoder(lm=None, fsgusefiller=False, bestpath=False, dither=True, seed=1, loglevel="FATAL")


_primed: list[bool] = []  # non-empty once the process's decoder has heard one utterance


class Recogniser:
    """Recognises 8 kHz call audio as one of a fixed set of phrases, on the process's shared decoder."""

    def __init__(self, phrases: Sequence[str]) -> None:
        self.phrases = list(phrases)
        grammar = jsgf(self.phrases)
        self.search = "g" + hashlib.sha256(grammar.encode()).hexdigest()[:16]
        with _lock:
            dec = _decoder()
            unknown = missing_words(self.phrases, dec.lookup_word)
            if unknown:
                where = "; ".join(f"{w!r} in {next(p for p in self.phrases if w in p.split())!r}" for w in unknown)
                raise UserError(
                    f"caller transcripts use words the speech recogniser's dictionary lacks: {where}. "
                    "Write numbers as words ('four', not '4') and respell unusual names the way they sound"
                )
            if self.search not in _searches:
                dec.add_jsgf_string(self.search, grammar)
                _searches.add(self.search)
            self._activate(dec)

    def _activate(self, dec: Any) -> None:
        """Make this grammar the decoder's search (callers hold `_lock`)."""
        if _active != [self.search]:
            dec.activate_search(self.search)
            _active[:] = [self.search]

    @classmethod
    def for_scenario(cls, scenario: Scenario) -> Recogniser:
        return cls(scenario_phrases(scenario))

    def recognise(self, samples: npt.NDArray[np.integer]) -> Recognition:
        """Blocking (~20 ms of CPU per second of speech): run it off the pump thread."""
        t0 = time.perf_counter()
        speech = speech_only(samples)
        if len(speech) < IN_RATE // 20:  # under 50 ms: nothing to decode
            return Recognition("", round((time.perf_counter() - t0) * 1000, 1), len(speech) * 1000 / IN_RATE)
        wide = upsample_2x(speech)
        with _lock:
            dec = _decoder()
            self._activate(dec)
            # a fresh decoder's cepstral mean normalisation starts from a default mean: its first
            # utterance comes out empty (measured on every worker's first call), so prime it once
            for _ in range(1 if _primed else 2):
                dec.start_utt()
                for i in range(0, len(wide), CHUNK_SAMPLES):
                    dec.process_raw(wide[i : i + CHUNK_SAMPLES].tobytes())
                dec.end_utt()
            _primed.append(True)
            hyp = dec.hyp()
        text = " ".join(normalise(hyp.hypstr)) if hyp is not None else ""
        return Recognition(text, round((time.perf_counter() - t0) * 1000, 1), len(speech) * 1000 / IN_RATE)


def word_errors(reference: Sequence[str], hypothesis: Sequence[str]) -> int:
    """Substitutions + deletions + insertions turning `reference` into `hypothesis` (Levenshtein on words)."""
    prev = list(range(len(hypothesis) + 1))
    for i, r in enumerate(reference, 1):
        cur = [i]
        for j, h in enumerate(hypothesis, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (r != h)))
        prev = cur
    return prev[-1]
