"""bench/density.py's codec rows: the UAS answer each row writes, and (real) one call per row end to end.

The real test is the bench's own check that a codec row measures what it says: the agents
negotiate the row's codec (and SRTP), receive the streamer's packets, and none fails SRTP
authentication. SIPp, voiceload's engine and `voiceload run` on 127.0.0.1, 2 short calls per row.
"""

from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path

import pytest

from bench._harness import REPO, sipp, streamer
from bench._harness.bottrack import build_track, write_workdir
from bench._harness.codecrows import EVENT_PT, CodecRow, new_srtp_key, parse_rows, uas_xml
from voiceload.audio.wav import write_wav


def test_rows_parse_names_and_refuse_unknown() -> None:
    rows = parse_rows("PCMU, pcma,G722,OPUS,pcmu+SRTP,PCMU@sipp")
    assert [r.name for r in rows] == ["PCMU", "PCMA", "G722", "opus", "PCMU+srtp", "PCMU@sipp"]
    assert rows[4].agent_args() == ["--codecs", "PCMU", "--srtp", "required"]
    assert rows[3].agent_args() == ["--codecs", "opus", "--srtp", "off"]
    for bad in ("GSM", "PCMU+zrtp", "", "PCMU,PCMU"):
        with pytest.raises(ValueError):
            parse_rows(bad)


@pytest.mark.parametrize(("spec", "m_line", "rtpmap"), [
    ("PCMA", "m=audio [field1] RTP/AVP 8 120", "a=rtpmap:8 PCMA/8000"),
    ("G722", "m=audio [field1] RTP/AVP 9 120", "a=rtpmap:9 G722/8000"),
    ("opus", "m=audio [field1] RTP/AVP 96 120", "a=rtpmap:96 opus/48000/2"),
    ("PCMU+srtp", "m=audio [field1] RTP/SAVP 0 120", "a=rtpmap:0 PCMU/8000"),
])
def test_uas_answers_the_rows_codec_and_tells_the_streamer(spec: str, m_line: str, rtpmap: str,
                                                            tmp_path: Path) -> None:
    row = parse_rows(spec)[0]
    xml = uas_xml(row, new_srtp_key(), tmp_path / "events.txt")
    assert m_line in xml and rtpmap in xml and "a=rtcp-mux" in xml
    assert f"a=rtpmap:{EVENT_PT} telephone-event/{48000 if row.codec == 'opus' else 8000}" in xml
    assert ("a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:" in xml) == row.srtp
    assert "rtp_stream" not in xml and f">> {tmp_path / 'events.txt'}" in xml
    assert ("[$akey]" in xml) == row.srtp


@pytest.mark.real
@pytest.mark.parametrize("spec", ["opus", "PCMU+srtp"])
def test_a_codec_row_call_negotiates_and_receives_the_rows_media(spec: str, tmp_path: Path) -> None:
    if not Path(sipp.SIPP).exists():
        pytest.skip("sipp is not installed (Debian package sip-tester)")
    row: CodecRow = parse_rows(spec)[0]
    track = build_track(3.0)
    scenario = write_workdir(tmp_path, track)
    write_wav(tmp_path / "bot.wav", track.samples())
    key = new_srtp_key()
    with streamer.running(row.streamed(key), tmp_path / "bot.wav", 8, tmp_path, 90, "streamer") as st:
        xml = tmp_path / "uas.xml"
        xml.write_text(uas_xml(row, key, st.events))
        with sipp.running(sipp.start_uases(1, tmp_path, tmp_path, 90, random.Random(),
                                           scenarios=[xml], extra=[["-inf", str(st.ports)]])) as uases:
            out = tmp_path / "run"
            subprocess.run([sys.executable, "-m", "voiceload", "run", str(scenario), "--target",
                            f"sip:bot@127.0.0.1:{uases[0].port}", "-n", "2", "-c", "2", "--out", str(out),
                            *row.agent_args()], cwd=REPO, capture_output=True, timeout=80, check=False)
    calls = [json.loads(line) for line in (out / "calls.jsonl").read_text().splitlines() if line.strip()]
    assert len(calls) == 2
    for call in calls:
        rtp = call["rtp"]
        assert call["outcome"] == "completed", call.get("reason")
        assert rtp["codec"] == row.codec and bool(rtp.get("srtp")) == row.srtp
        assert rtp["rx_packets"] > 100 and not rtp.get("rx_auth_failed")
