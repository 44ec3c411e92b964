"""Kept tapes: a stereo tape (caller left, far end right) measures exactly as the mono one, and the
report links the slowest calls' tapes with their waveforms."""

from __future__ import annotations

import base64
import re
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from tests.test_report import make_run, record
from tests.test_vad import place, tone
from voiceload.audio import wav
from voiceload.audio.analysis import CallerTapeResult, Played, Reference, analyse_caller_tape
from voiceload.protocol import CallRecord
from voiceload.report import write_reports
from voiceload.report.rundir import TAPES_DIR, kept_tape


def ms(n: float) -> int:
    return round(n * 8)


def two_directions(*, barge_in: bool = True) -> tuple[np.ndarray, np.ndarray, Reference, Reference, Reference, int]:
    """A call's two tracks: the bot greets and replies (right), the caller speaks (left); with
    `barge_in`, the reply starts over the caller's last 300 ms, loudly enough that the sum saturates."""
    greeting, utt = Reference.of(tone(ms(1500))), Reference.of(tone(ms(1200), amp=24000, seed=1))
    reply = Reference.of(tone(ms(1000), amp=24000, seed=2))
    utt_at, n = ms(2000), ms(6000)
    caller = place(n, (utt_at, utt.samples))
    far = place(n, (ms(100), greeting.samples), (ms(2900 if barge_in else 3637.5), reply.samples))
    return caller, far, greeting, utt, reply, utt_at


def write_stereo(path: Path, left: np.ndarray, right: np.ndarray) -> None:
    sf.write(str(path), np.stack([left, right], axis=1), wav.SAMPLE_RATE, subtype="PCM_16", format="WAV")


def test_a_stereo_tape_reads_as_the_mono_tape_exactly(tmp_path: Path) -> None:
    caller, far, *_ = two_directions()
    mono = place(len(caller), (0, caller), (0, far))  # the engine's mono tape: rx + tx, saturated
    assert np.abs(caller.astype(np.int32) + far).max() > 32767  # the test does cover saturation
    write_stereo(tmp_path / "s.wav", caller, far)
    wav.write_wav(tmp_path / "m.wav", mono)
    assert np.array_equal(wav.read_tape(tmp_path / "s.wav"), mono)
    assert np.array_equal(wav.read_tape(tmp_path / "m.wav"), mono)
    tracks = wav.read_tape_tracks(tmp_path / "s.wav")
    assert tracks.caller is not None and tracks.far is not None
    assert np.array_equal(tracks.caller, caller) and np.array_equal(tracks.far, far)
    assert np.array_equal(tracks.mixed, mono)
    plain = wav.read_tape_tracks(tmp_path / "m.wav")
    assert plain.caller is None and plain.far is None and np.array_equal(plain.mixed, mono)


def test_a_stereo_tape_measures_as_the_mono_tape(tmp_path: Path) -> None:
    caller, far, greeting, utt, reply, utt_at = two_directions(barge_in=False)
    write_stereo(tmp_path / "s.wav", caller, far)
    wav.write_wav(tmp_path / "m.wav", place(len(caller), (0, caller), (0, far)))

    def measure(path: Path) -> CallerTapeResult:
        return analyse_caller_tape(
            wav.read_tape(path), tape_offset_ms=-20.0, rx_delay_ms=0.0, greeting=greeting,
            greeting_max_wait_ms=3000, utterances=[Played(utt, utt_at + 20)], replies=[reply], max_waits_ms=[3000])

    stereo, mono = measure(tmp_path / "s.wav"), measure(tmp_path / "m.wav")
    assert stereo == mono
    assert stereo.greeting is not None and stereo.greeting.ok
    (turn,) = stereo.turns
    assert turn.ok and turn.latency_ms == 437.5, turn


def test_mix_to_mono_refuses_other_layouts() -> None:
    assert wav.mix_to_mono(np.zeros((4, 1), dtype=np.int16)).shape == (4,)
    with pytest.raises(ValueError, match="mono or stereo"):
        wav.mix_to_mono(np.zeros((4, 3), dtype=np.int16))


def test_an_empty_or_missing_tape_reads_empty(tmp_path: Path) -> None:
    assert wav.read_tape(tmp_path / "gone.wav").size == 0
    assert wav.read_tape_tracks(tmp_path / "gone.wav").mixed.size == 0


# --- the report ---------------------------------------------------------------------------------

def kept(rec: CallRecord, name: str | None) -> CallRecord:
    rec.tape, rec.tape_start_ms = name, -20.0
    return rec


def test_the_report_links_the_slowest_calls_tapes_with_waveforms(tmp_path: Path) -> None:
    recs = [kept(record(0), "tapes/r1-a0/1.wav"), kept(record(1, lat1=900.0), "tapes/r1-a1/1.wav"),
            kept(record(2, lat1=950.0), "../outside.wav"), kept(record(3, lat1=990.0), "tapes/r1-a1/gone.wav")]
    run_dir, _ = make_run(tmp_path, recs)
    caller, far, *_ = two_directions()
    for name in ("r1-a0/1.wav", "r1-a1/1.wav"):
        (run_dir / TAPES_DIR / name).parent.mkdir(parents=True, exist_ok=True)
    write_stereo(run_dir / TAPES_DIR / "r1-a0" / "1.wav", caller, far)
    wav.write_wav(run_dir / TAPES_DIR / "r1-a1" / "1.wav", place(len(caller), (0, caller), (0, far)))
    (tmp_path / "outside.wav").write_bytes(b"")
    write_reports(run_dir)
    page = (run_dir / "report.html").read_text()
    links = set(re.findall(r"href='(tapes/[^']+)'", page))
    assert links == {"tapes/r1-a0/1.wav", "tapes/r1-a1/1.wav"}
    assert all((run_dir / link).is_file() for link in links)
    assert "outside.wav" not in page and "gone.wav" not in page
    waveforms = re.findall(r"<figure class='tape'><img alt='waveform of [^']+' src='data:image/png;base64,([^']+)'",
                           page)
    assert len(waveforms) == 2
    assert all(base64.b64decode(w).startswith(b"\x89PNG") for w in waveforms)
    assert kept_tape(run_dir, recs[2]) is None and kept_tape(run_dir, recs[3]) is None


def test_no_tape_section_without_kept_tapes(tmp_path: Path) -> None:
    run_dir, _ = make_run(tmp_path)
    write_reports(run_dir)
    page = (run_dir / "report.html").read_text()
    assert "Tapes of the slowest calls" not in page and "tapes/" not in page
