"""Synthesised recordings: every `<name>.txt` transcript in a directory becomes `<name>.wav`.

espeak-ng speaks the text, sox turns it into call audio (8 kHz, mono, 16-bit), trims the silence
at both ends and normalises the peak. Trimmed edges matter: the agent times a turn from the end
of the caller's speech and the bot's onset, so a recording that starts with speech makes "when
the file starts playing" and "when speech starts" the same instant. Fixed voices and parameters
make the output reproducible, so shipped WAVs can be regenerated and compared.

Command lines and the manifest are built by pure functions; `make_recordings` only runs them.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from voiceload.audio import wav as wavfile
from voiceload.errors import UserError

# Two clearly different voices, so a listener (and a tape) can tell caller from bot.
BOT_VOICE = ("-v", "en-us", "-s", "165", "-p", "50")
CALLER_VOICE = ("-v", "en-gb+m3", "-s", "150", "-p", "40")
BOT_PREFIX = "bot-"

PEAK_DBFS = -3.0
# Silence trimming: audio below this level counts as silence. A fixed threshold, so the edges of
# a file do not depend on its loudness before normalisation (espeak's level is constant anyway).
SILENCE_THRESHOLD = "-50d"
EDGE_ABOVE_S = "0.005"  # this much sound above the threshold marks the edge of speech
# Pauses inside a file are shortened to about this at most (0.2 leaves <= ~220 ms at the VAD's
# -36 dBFS). espeak pauses ~340 ms between sentences, long enough for a voice-activity detector
# with a 300 ms hangover to split one prompt in two, which a caller waiting for silence would
# take as the end of the bot's turn.
MAX_PAUSE_S = "0.2"

MANIFEST = "MANIFEST.tsv"


@dataclass(frozen=True)
class Job:
    """One transcript to synthesise."""

    transcript: Path
    wav: Path
    text: str
    voice: tuple[str, ...]


def voice_for(name: str) -> tuple[str, ...]:
    """`bot-*` files get the bot's voice; everything else (`caller-*`, ...) the caller's."""
    return BOT_VOICE if name.startswith(BOT_PREFIX) else CALLER_VOICE


def clean_text(text: str) -> str:
    """One line of text: espeak reads line breaks as sentence ends, and the manifest is one row per file."""
    return " ".join(text.split())


def espeak_command(voice: tuple[str, ...]) -> list[str]:
    """espeak-ng reading the text from stdin and writing a WAV to stdout."""
    return ["espeak-ng", *voice, "--stdin", "--stdout"]


def sox_command(out: Path) -> list[str]:
    """sox from a WAV on stdin to call audio in `out`: rate, edge trimming, pause cap, peak level.

    `-R` (repeatable) and `-D` (no dither) keep the output bit-identical across runs.
    """
    return [
        "sox", "-R", "-D", "-t", "wav", "-",
        "-t", "wav", "-r", str(wavfile.SAMPLE_RATE), "-c", "1", "-b", "16", "-e", "signed-integer", str(out),
        "rate", "-h", str(wavfile.SAMPLE_RATE),
        # leading silence off, and inner pauses capped at MAX_PAUSE_S
        "silence", "-l", "1", EDGE_ABOVE_S, SILENCE_THRESHOLD, "-1", MAX_PAUSE_S, SILENCE_THRESHOLD,
        # trailing silence off: the same effect on the reversed audio
        "reverse", "silence", "1", EDGE_ABOVE_S, SILENCE_THRESHOLD, "reverse",
        "norm", str(PEAK_DBFS),
    ]


def is_up_to_date(transcript: Path, wav: Path) -> bool:
    """The WAV exists and is not older than its transcript."""
    return wav.exists() and wav.stat().st_mtime >= transcript.stat().st_mtime


def plan(directory: Path, *, force: bool = False) -> list[Job]:
    """The transcripts in `directory` whose WAV is missing or stale (all of them when forced)."""
    jobs = []
    for txt in sorted(directory.glob("*.txt")):
        wav = txt.with_suffix(".wav")
        if not force and is_up_to_date(txt, wav):
            continue
        text = clean_text(_read_text(txt))
        if not text:
            raise UserError(f"{txt}: empty transcript")
        jobs.append(Job(transcript=txt, wav=wav, text=text, voice=voice_for(txt.name)))
    return jobs


def manifest_text(rows: list[tuple[str, int, str]]) -> str:
    """MANIFEST.tsv: one row per recording (file, duration in ms, transcript), sorted by file."""
    lines = ["file\tduration_ms\ttranscript"]
    lines += [f"{name}\t{ms}\t{clean_text(text)}" for name, ms, text in sorted(rows)]
    return "\n".join(lines) + "\n"


def make_recordings(directory: Path, *, force: bool = False) -> list[Path]:
    """Synthesise the missing or stale WAVs of `directory`, refresh its manifest, return the WAVs written."""
    directory = Path(directory)
    if not directory.is_dir():
        raise UserError(f"{directory}: no such directory")
    jobs = plan(directory, force=force)
    if jobs:
        _require_tools()
    written = []
    for job in jobs:
        _synthesise(job)
        written.append(job.wav)
    _write_manifest(directory)
    return written


def _require_tools() -> None:
    for tool, package in (("espeak-ng", "espeak-ng"), ("sox", "sox")):
        if shutil.which(tool) is None:
            raise UserError(
                f"{tool} not found: run `make demo` (it installs what is missing) "
                f"or install the Debian package: apt-get install {package}"
            )


def _synthesise(job: Job) -> None:
    """espeak-ng → sox into a temporary file, renamed into place so a WAV is never half-written."""
    tmp = job.wav.with_name(f".{job.wav.name}.tmp")
    try:
        speech = _run(espeak_command(job.voice), job.text.encode("utf-8"), job.transcript)
        _run(sox_command(tmp), speech, job.transcript)
        os.replace(tmp, job.wav)
    finally:
        tmp.unlink(missing_ok=True)
    problems = wavfile.check_call_wav(job.wav)
    if problems:  # sox was told the format; this guards against an odd sox build
        raise UserError("; ".join(problems))


def _run(cmd: list[str], stdin: bytes, source: Path) -> bytes:
    try:
        done = subprocess.run(cmd, input=stdin, capture_output=True, check=False)
    except OSError as exc:
        raise UserError(f"{source}: cannot run {cmd[0]}: {exc}") from exc
    if done.returncode != 0:
        err = done.stderr.decode("utf-8", "replace").strip().splitlines()
        raise UserError(f"{source}: {cmd[0]} failed (exit {done.returncode}): {err[-1] if err else ''}")
    return done.stdout


def _write_manifest(directory: Path) -> None:
    """Rewrite MANIFEST.tsv only when its content changes, so a no-op run leaves the tree untouched."""
    rows = []
    for txt in sorted(directory.glob("*.txt")):
        wav = txt.with_suffix(".wav")
        if wav.exists():
            info = wavfile.probe_wav(wav)
            rows.append((wav.name, round(info.duration_s * 1000), _read_text(txt)))
    path = directory / MANIFEST
    text = manifest_text(rows)
    if not path.exists() or path.read_text(encoding="utf-8") != text:
        path.write_text(text, encoding="utf-8")


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"{path}: cannot read transcript: {exc}") from exc
