"""Each codec (and SRTP) timed on the wire: `voiceload run` against the reference bot under a loopback
capture, every turn's latency checked against the referee's reading of the capture (tools/referee.py:
the codec from the SDP answer, the engine's decoders, SRTP decrypted with the SDP's keys).

The issue's acceptance: turn latency within 20 ms of a packet capture, for each codec and through SRTP.
Opus runs with SRTP required, so one run covers both the stateful codec with a look-ahead and SRTP.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.refbot import (
    DEMO,
    assert_completed,
    assert_latencies_match_the_wire,
    checked_summary,
    loopback_capture,
    start_bot,
    voiceload,
)

pytestmark = pytest.mark.real


@pytest.mark.parametrize("codec,srtp", [("PCMA", "off"), ("G722", "off"), ("opus", "required")])
def test_each_codec_within_20ms_of_the_capture(tmp_path: Path, codec: str, srtp: str) -> None:
    out = tmp_path / "run"
    with loopback_capture(tmp_path / "lo.pcap") as capture:
        bot = start_bot(tmp_path, max_calls=8, extra=["--codecs", codec, "--srtp", "optional"])
        try:
            res = voiceload("run", str(DEMO), "--target", bot.target, "-c", "4", "-n", "8", "--out", str(out),
                            "--codecs", codec, "--srtp", srtp, out=out)
        finally:
            bot.stop()
    summary = checked_summary(res)
    calls = res.calls()
    assert len(calls) == 8
    assert_completed(summary, calls)
    completed = [c for c in calls if c["outcome"] == "completed"]
    assert all(bool(c["rtp"].get("srtp")) == (srtp == "required") for c in completed)
    assert_latencies_match_the_wire(capture, summary, completed, codec=codec)
