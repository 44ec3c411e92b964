"""Every codec and SRTP end to end: `voiceload run` against the reference bot, which speaks them too.

Each run's turns are checked against the bot's own truth (its per-turn latency on its own tape), and
each record names the codec and SRTP the call negotiated. The bot takes the same codec list, so the
offer's first codec is the one both speak.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.refbot import DEMO, assert_completed, checked_summary, latency_errors, start_bot, voiceload
from voiceload.errors import EXIT_BAD_INPUT

pytestmark = pytest.mark.real

TRUTH_MS = 20.0  # the bound: voiceload's turn latency within 20 ms of the bot's truth


@pytest.mark.parametrize("codec,srtp", [("PCMA", "off"), ("G722", "off"), ("opus", "off"),
                                        ("PCMU", "required"), ("opus", "required")])
def test_each_codec_completes_within_the_bots_truth(tmp_path: Path, codec: str, srtp: str) -> None:
    bot = start_bot(tmp_path, max_calls=8, extra=["--codecs", codec, "--srtp", "optional"])
    out = tmp_path / "run"
    try:
        res = voiceload("run", str(DEMO), "--target", bot.target, "-c", "4", "-n", "8", "--out", str(out),
                        "--codecs", f"{codec},PCMU", "--srtp", srtp, out=out)
        summary = checked_summary(res)
        calls = res.calls()
        assert len(calls) == 8
        assert_completed(summary, calls)
    finally:
        bot.stop()
    for call in calls:
        assert call["rtp"]["codec"] == codec, call["rtp"]
        assert bool(call["rtp"].get("srtp")) == (srtp == "required")
        assert not call["rtp"].get("rx_auth_failed"), call["rtp"]
        # the bot's pjmedia reports (SRTCP on an SRTP call) reach the engine's RTCP socket and are read
        assert (call["rtp"].get("rtcp_rx") or 0) >= 1 and call["rtp"].get("rtcp_tx"), call["rtp"]
        assert call["quality"]["codec"] == codec
    errors = latency_errors([c for c in calls if c["outcome"] == "completed"], bot.truth_lines())
    assert len(errors) >= 2 * len(calls) * 0.9, errors
    within = [e for e in errors if abs(e) <= TRUTH_MS]
    assert len(within) >= 0.95 * len(errors), sorted(errors)
    assert summary["media"]["codecs"] == {codec: len(calls)}, summary["media"]


def test_srtp_required_against_a_plain_bot_fails_each_call_by_name(tmp_path: Path) -> None:
    """A bot without SRTP refuses an RTP/SAVP offer: each call is a failed record with the bot's 488."""
    bot = start_bot(tmp_path, max_calls=4, extra=["--srtp", "off"])
    out = tmp_path / "run"
    try:
        res = voiceload("run", str(DEMO), "--target", bot.target, "-c", "2", "-n", "2", "--out", str(out),
                        "--srtp", "required", out=out)
    finally:
        bot.stop()
    calls = res.calls()
    assert len(calls) == 2 and all(c["outcome"] != "completed" for c in calls)
    assert all(c["sip_code"] == 488 for c in calls), [(c["sip_code"], c["reason"]) for c in calls]
    assert res.summary()["sip_codes"] == {"488": 2}


@pytest.mark.parametrize("flag,value,expected", [
    ("--codecs", "G711", "--codecs: unknown codec 'G711'"),
    ("--srtp", "maybe", "--srtp: must be one of off, optional, required"),
    ("--dtmf", "inband", "--dtmf: must be one of rfc4733, info"),
])
def test_bad_media_flags_exit_2_before_any_call(tmp_path: Path, flag: str, value: str, expected: str) -> None:
    out = tmp_path / "run"
    res = voiceload("run", str(DEMO), "--target", "sip:bot@127.0.0.1:9", "-c", "1", "-n", "1", "--out", str(out),
                    flag, value, out=out)
    assert res.code == EXIT_BAD_INPUT, res.stderr
    assert expected in res.stderr
    assert not (out / "calls.jsonl").exists()
