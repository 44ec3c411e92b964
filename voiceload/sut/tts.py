"""Speech synthesis for the reference gateway: a brain's reply text → call audio, cached on disk.

It runs the very commands `voiceload recordings make` runs for bot prompts (the bot's espeak-ng
voice, then sox to 8 kHz mono 16-bit, trimmed and normalised), so a reply whose text is a
scenario prompt's transcript is sample-identical to that prompt: the agent then scores it as the
expected prompt, and a load test against a real bot can check replies as strictly as the
scripted one.

A dialogue repeats the same few replies, so each (voice, text) is synthesised once and kept in a
cache directory shared by all the bot's worker processes: written to a temporary file and renamed
into place, so concurrent writers of one reply never expose a half-written WAV.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from voiceload.audio import wav as wavfile
from voiceload.audio.recordings import BOT_VOICE, clean_text, espeak_command, sox_command


@dataclass(frozen=True)
class Speech:
    path: Path  # an 8 kHz mono PCM_16 WAV, ready to play into a call
    synth_ms: float  # wall time spent here (a cache hit costs well under 1 ms)
    cached: bool


def cache_key(voice: tuple[str, ...], text: str) -> str:
    """A file name for (voice, text): the same reply always maps to the same file."""
    blob = "\0".join((*voice, clean_text(text))).encode("utf-8")
    return hashlib.sha256(blob).hexdigest()[:32]


class Synthesiser:
    """espeak-ng + sox with the bot's voice, caching WAVs under `cache_dir`. Blocking: call it off the pump."""

    def __init__(self, cache_dir: Path, voice: tuple[str, ...] = BOT_VOICE) -> None:
        self.cache_dir = Path(cache_dir)
        self.voice = voice

    def path_for(self, text: str) -> Path:
        return self.cache_dir / f"{cache_key(self.voice, text)}.wav"

    def speak(self, text: str) -> Speech:
        text = clean_text(text)
        if not text:
            raise ValueError("nothing to say: the text is empty")
        t0 = time.perf_counter()
        path = self.path_for(text)
        if path.exists():
            return Speech(path, round((time.perf_counter() - t0) * 1000, 1), cached=True)
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        # unique per process and thread: two writers of one reply each write their own file
        tmp = path.with_name(f".{path.stem}.{os.getpid()}.{threading.get_ident()}.tmp")
        try:
            wav = _run(espeak_command(self.voice), text.encode("utf-8"))
            _run(sox_command(tmp), wav)
            problems = wavfile.check_call_wav(tmp)
            if problems:
                raise RuntimeError("; ".join(problems))
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
        return Speech(path, round((time.perf_counter() - t0) * 1000, 1), cached=False)


def _run(cmd: list[str], stdin: bytes) -> bytes:
    done = subprocess.run(cmd, input=stdin, capture_output=True, check=False, timeout=30)
    if done.returncode != 0:
        err = done.stderr.decode("utf-8", "replace").strip().splitlines()
        raise RuntimeError(f"{cmd[0]} failed (exit {done.returncode}): {err[-1] if err else ''}")
    return done.stdout
