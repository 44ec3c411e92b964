"""Kept tapes of a real run: `voiceload run --keep-tapes` against the reference bot, then its report."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from tests.refbot import DEMO, assert_completed, checked_summary, start_bot, voiceload
from voiceload.audio import wav
from voiceload.report.rundir import TAPES_DIR

pytestmark = pytest.mark.real


def test_a_kept_tape_run_reports_the_slowest_calls_tapes(tmp_path: Path) -> None:
    bot = start_bot(tmp_path, think_ms="400", max_calls=4)
    try:
        out = tmp_path / "run"
        res = voiceload("run", str(DEMO), "--target", bot.target, "-c", "2", "-n", "4", "--out", str(out),
                        "--keep-tapes", out=out)
    finally:
        bot.stop()
    summary = checked_summary(res)
    calls = res.calls()
    assert len(calls) == 4
    assert_completed(summary, calls)
    for call in calls:  # every call names its tape, inside OUT/tapes, and the tape holds the call
        assert call["tape"] is not None and call["tape"].startswith(f"{TAPES_DIR}/"), call["tape"]
        tape = out / call["tape"]
        assert tape.is_file()
        info = wav.probe_wav(tape)
        assert info.sample_rate == 8000 and info.channels == 2  # kept: the caller left, the bot right
        assert info.duration_s * 1000 >= call["duration_ms"] - 100  # from media start to the hang-up
        assert call["tape_start_ms"] is not None and call["tape_start_ms"] < 100  # taped from about the answer
        tracks = wav.read_tape_tracks(tape)
        assert tracks.caller is not None and tracks.far is not None
        answer = round(-call["tape_start_ms"] * 8)  # the greeting is the bot's alone; the caller is silent
        greeting = slice(answer + round(call["greeting"]["bot_onset_ms"] * 8),
                         answer + round(call["greeting"]["bot_end_ms"] * 8))
        assert np.abs(tracks.far[greeting].astype(np.int32)).max() > 1000
        assert np.abs(tracks.caller[greeting].astype(np.int32)).max() == 0
        first = call["turns"][0]
        spoken = slice(answer + round(first["utterance_start_ms"] * 8), answer + round(first["utterance_end_ms"] * 8))
        assert np.abs(tracks.caller[spoken].astype(np.int32)).max() > 1000
    page = (out / "report.html").read_text()
    links = set(re.findall(r"href='(tapes/[^']+\.wav)'", page))
    assert links == {c["tape"] for c in calls}  # 4 calls: all among the slowest 10
    assert all((out / link).is_file() for link in links)
    assert len(re.findall(r"<figure class='tape'><img alt='waveform of ", page)) == len(calls)
