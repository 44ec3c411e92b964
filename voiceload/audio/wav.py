"""WAV files as calls carry them: 8 kHz, mono, 16-bit PCM.

One rule for every recording a call plays (caller utterances, bot prompts), checked here once so
the scenario validator, the agent and the reference bot agree on what a usable file is: the
media path plays samples unconverted, so a file at another rate would play at the wrong speed.
"""

from __future__ import annotations

import os
import struct
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
import soundfile as sf

from voiceload.errors import UserError

SAMPLE_RATE = 8000
CHANNELS = 1
SUBTYPE = "PCM_16"

Samples = npt.NDArray[np.int16]


@dataclass(frozen=True)
class WavInfo:
    """What a WAV header says, without reading the samples."""

    path: Path
    sample_rate: int
    channels: int
    subtype: str  # soundfile's name, e.g. "PCM_16"
    frames: int

    @property
    def duration_s(self) -> float:
        return self.frames / self.sample_rate if self.sample_rate else 0.0


def probe_wav(path: str | Path) -> WavInfo:
    """Read a WAV header; a missing or unreadable file is the user's to fix, so it is a UserError."""
    info = _probe(Path(path))
    if isinstance(info, str):
        raise UserError(f"{path}: {info}")
    return info


def format_problems(info: WavInfo) -> list[str]:
    """The ways a probed file breaks the call-audio rule (8 kHz, mono, PCM_16), as short phrases."""
    problems = []
    if info.sample_rate != SAMPLE_RATE:
        problems.append(f"sample rate is {info.sample_rate} Hz, must be {SAMPLE_RATE} Hz")
    if info.channels != CHANNELS:
        problems.append(f"has {info.channels} channels, must be mono")
    if info.subtype != SUBTYPE:
        problems.append(f"sample format is {info.subtype}, must be 16-bit PCM ({SUBTYPE})")
    return problems


def call_wav_problems(path: str | Path) -> tuple[WavInfo | None, list[str]]:
    """Header (None if unreadable) and problems as phrases without the file name, for callers that
    name the file their own way (the scenario validator cites it as written in the YAML)."""
    info = _probe(Path(path))
    if isinstance(info, str):
        return None, [info]
    problems = format_problems(info)
    truncated = _truncation(info.path)
    if truncated:
        problems.append(truncated)
    return info, problems


def check_call_wav(path: str | Path) -> list[str]:
    """Problems that keep `path` from being played into a call, each naming the file (empty: fine)."""
    _, problems = call_wav_problems(path)
    return [f"{path}: {p}" for p in problems]


def load_wav(path: str | Path) -> Samples:
    """The samples of a call WAV as int16; refuses files a call could not play unchanged."""
    problems = check_call_wav(path)
    if problems:
        raise UserError("; ".join(problems))
    try:
        data, _ = sf.read(str(path), dtype="int16", always_2d=False)
    except (sf.LibsndfileError, RuntimeError, OSError) as exc:
        raise UserError(f"{path}: not a readable WAV file: {_reason(exc)}") from exc
    return np.ascontiguousarray(data, dtype=np.int16)


def write_wav(path: str | Path, samples: npt.NDArray[np.integer]) -> None:
    """Write 1-D int16 samples as an 8 kHz mono PCM_16 WAV (the only format calls play)."""
    x = np.asarray(samples)
    if x.ndim != 1:
        raise ValueError(f"write_wav wants 1-D samples, got shape {x.shape}")
    if x.dtype != np.int16:
        if not np.issubdtype(x.dtype, np.integer):
            raise ValueError(f"write_wav wants integer samples, got {x.dtype}")
        x = np.clip(x, -32768, 32767).astype(np.int16)
    sf.write(str(path), x, SAMPLE_RATE, subtype=SUBTYPE, format="WAV")


def _truncation(path: Path) -> str | None:
    """Why a WAV's data chunk is cut short, or None. libsndfile quietly plays what is there, so a file
    cut off in a copy or a download would pass as a shorter recording (and its prompt never match)."""
    try:
        with open(path, "rb") as f:
            riff = f.read(12)
            order = {b"RIFF": "<", b"RIFX": ">"}.get(riff[:4])
            if order is None or riff[8:12] != b"WAVE":
                return None  # not a RIFF WAV: the header check says what it is
            size = path.stat().st_size
            while len(head := f.read(8)) == 8:
                (length,) = struct.unpack(order + "I", head[4:])
                if head[:4] == b"data":
                    held = size - f.tell()
                    # 0 and 0xFFFFFFFF are a streaming writer's "length unknown", not a claim
                    if length not in (0, 0xFFFFFFFF) and length > held:
                        return f"truncated: its header says {length} bytes of audio, the file holds {held}"
                    return None
                f.seek(length + (length & 1), os.SEEK_CUR)  # chunks are padded to an even length
    except OSError:
        return None  # unreadable files are reported by the header check
    return None


def _probe(p: Path) -> WavInfo | str:
    """The header, or why there is none (a phrase without the file name)."""
    if not p.exists():
        return "no such file"
    if not p.is_file():
        return "not a file"
    try:
        info = sf.info(str(p))
    except (sf.LibsndfileError, RuntimeError, OSError) as exc:
        return f"not a readable WAV file: {_reason(exc)}"
    if info.format != "WAV":
        return f"not a readable WAV file: it is {info.format}, not WAV"
    return WavInfo(
        path=p,
        sample_rate=int(info.samplerate),
        channels=int(info.channels),
        subtype=str(info.subtype),
        frames=int(info.frames),
    )


def _reason(exc: BaseException) -> str:
    """libsndfile's own message, without the file name soundfile prepends (we name the file ourselves)."""
    text = str(getattr(exc, "error_string", "") or exc).strip()
    return text or type(exc).__name__


def default_tape_dir() -> Path:
    """Tapes are written and read once per call: keep them in RAM when the box has a tmpfs."""
    shm = Path("/dev/shm")
    base = shm if shm.is_dir() and os.access(shm, os.W_OK) else Path(tempfile.gettempdir())
    return base / "voiceload"


WAV_HEADER_BYTES = 44  # a tape's header as pjmedia's recorder writes it (no extra chunks)


def mix_to_mono(data: npt.NDArray[np.integer]) -> Samples:
    """A tape's samples as the one track every measurement reads.

    A stereo tape (kept with --keep-tapes: the caller left, the far end right) is mixed L+R with
    int16 saturation, which is exactly the mono tape the engine writes otherwise (it sums its two
    tracks the same way), so a kept tape measures the same as a measured-and-deleted one.
    """
    x = np.asarray(data)
    if x.ndim == 2 and x.shape[1] == 1:
        x = x[:, 0]
    if x.ndim == 1:
        return np.ascontiguousarray(x, dtype=np.int16)
    if x.ndim == 2 and x.shape[1] == 2:
        return np.clip(x[:, 0].astype(np.int32) + x[:, 1], -32768, 32767).astype(np.int16)
    raise ValueError(f"a tape is mono or stereo, not of shape {x.shape}")


@dataclass(frozen=True)
class TapeTracks:
    """A tape for people to look at: both directions apart when the tape is stereo."""

    caller: Samples | None  # what the caller sent (left); None: a mono tape, both in `mixed`
    far: Samples | None  # what the far end sent (right)
    mixed: Samples  # what the measurement reads (mix_to_mono)


def _read_tape_frames(path: Path) -> np.ndarray:
    """A closed tape's frames, (n, channels) int16; no rows when empty or gone."""
    try:
        if path.stat().st_size <= WAV_HEADER_BYTES:
            return np.zeros((0, 1), dtype=np.int16)
        data, _rate = sf.read(str(path), dtype="int16", always_2d=True)
    except (OSError, RuntimeError):
        return np.zeros((0, 1), dtype=np.int16)
    return np.asarray(data, dtype=np.int16)


def read_tape(path: Path) -> np.ndarray:
    """A closed tape's samples, mono or stereo mixed to one track (empty when no frame was ever
    written or the file is gone)."""
    return mix_to_mono(_read_tape_frames(path))


def read_tape_tracks(path: Path) -> TapeTracks:
    """A closed tape with its directions apart when it has two channels."""
    frames = _read_tape_frames(path)
    if frames.shape[1] == 2:
        return TapeTracks(np.ascontiguousarray(frames[:, 0]), np.ascontiguousarray(frames[:, 1]), mix_to_mono(frames))
    return TapeTracks(None, None, mix_to_mono(frames))


def read_tape_span(path: Path, start: int, stop: int) -> np.ndarray:
    """Samples [start, stop) of a mono tape that may still be recording, as far as they are on disk
    (the reference bot's recorder, which is always mono).

    While recording, pjmedia's WAV header still says the file is empty and its writer buffers a
    few hundred ms, so the header is skipped, not parsed, and the span may come back short.
    """
    if stop <= start:
        return np.zeros(0, dtype=np.int16)
    try:
        with open(path, "rb") as f:
            f.seek(WAV_HEADER_BYTES + 2 * start)
            data = f.read(2 * (stop - start))
    except OSError:
        return np.zeros(0, dtype=np.int16)
    return np.frombuffer(data[: len(data) // 2 * 2], dtype="<i2").astype(np.int16)
