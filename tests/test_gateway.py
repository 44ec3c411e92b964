"""The bot as a reference voice gateway (`voiceload bot --brain rasa`) in front of a fake Rasa server."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import random
import shutil
import threading
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
from aiohttp import web

from tests.refbot import (
    DEMO,
    REPO,
    assert_completed,
    assert_latencies_match_the_wire,
    checked_summary,
    latency_errors,
    loopback_capture,
    start_bot,
    voiceload,
)
from voiceload.audio import g711
from voiceload.audio import wav as wavfile
from voiceload.audio.wav import WAV_HEADER_BYTES, read_tape_span
from voiceload.core.callflow import Ask, BotFlow, BotState, Play, PlayFile, ThinkTime
from voiceload.core.scenario import load_scenario
from voiceload.errors import UserError
from voiceload.rasa import parse_rasa_url
from voiceload.sip.ua import SipCall
from voiceload.sut import asr
from voiceload.sut.gateway import RasaGateway, session_id

DEMO_DIR = REPO / "recordings" / "demo"
# what the fake Rasa answers to each demo caller utterance: the demo's own next prompt, so that the
# synthesised reply *is* that prompt and the agent's prompt check passes
DEMO_REPLIES = {
    "a large latte please": (DEMO_DIR / "bot-01-name.txt").read_text().strip(),
    "it is for alex": (DEMO_DIR / "bot-02-bye.txt").read_text().strip(),
}

needs_tts = pytest.mark.skipif(
    shutil.which("espeak-ng") is None or shutil.which("sox") is None, reason="espeak-ng and sox not installed"
)

# --- pure parts ----------------------------------------------------------------------------------


def test_rasa_url_must_be_http_host_port() -> None:
    assert parse_rasa_url("http://127.0.0.1:5005") == "http://127.0.0.1:5005"
    assert parse_rasa_url("https://rasa.example:443/") == "https://rasa.example:443"
    for bad in ("127.0.0.1:5005", "ftp://h:21", "http://h:5005/webhooks", "http://:5005",
                "http://h:99999", "http://h:5005?x=1", "http://u@h:5005"):
        with pytest.raises(UserError, match="expected http://HOST"):
            parse_rasa_url(bad)


def test_the_session_header_is_the_sender_else_the_call_id() -> None:
    assert session_id("run-a0-3", "abc@host") == "run-a0-3"
    assert session_id(None, "abc@host") == "abc@host"
    assert session_id("  ", "abc@host") == "abc@host"


def test_an_invite_header_is_read_by_name_case_insensitively() -> None:
    invite = ("INVITE sip:bot@127.0.0.1:5080 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5000\r\n"
              "x-voiceload-session:  run-a0-7 \r\nContent-Type: application/sdp\r\n\r\n"
              "v=0\r\nX-Voiceload-Session: not-a-header\r\n")
    call = SimpleNamespace(invite=invite)
    assert SipCall.header(call, "X-Voiceload-Session") == "run-a0-7"  # type: ignore[arg-type]
    assert SipCall.header(call, "Subject") is None  # type: ignore[arg-type]
    assert SipCall.header(SimpleNamespace(invite=""), "Via") is None  # type: ignore[arg-type]


def test_a_growing_tape_is_read_past_its_unfinished_header(tmp_path: Path) -> None:
    tape = tmp_path / "1.wav"
    samples = np.arange(1000, dtype=np.int16)
    tape.write_bytes(b"RIFF" + bytes(WAV_HEADER_BYTES - 4) + samples.tobytes())  # sizes not written yet
    assert np.array_equal(read_tape_span(tape, 100, 200), samples[100:200])
    assert np.array_equal(read_tape_span(tape, 900, 1500), samples[900:])  # only what is on disk
    assert len(read_tape_span(tape, 1200, 1300)) == 0
    assert len(read_tape_span(tape, 50, 50)) == 0
    assert len(read_tape_span(tmp_path / "gone.wav", 0, 10)) == 0


def _brain_flow(*, hangup_by: str = "caller") -> BotFlow:
    return BotFlow(prompt_ms=[1000.0, 800.0, 900.0], has_greeting=True, n_turns=2, think=ThinkTime(400),
                   endpoint_ms=350, hangup_by=hangup_by, hangup_after_ms=500, rng=random.Random(1), brain=True)


def _speak(flow: BotFlow, start: float, ms: float) -> tuple[float, Any]:
    """The caller speaks from `start` for `ms`, then is silent; returns (time, first action) polling every 5 ms."""
    t = start
    while True:
        action = flow.step(t, 20 if t < start + ms else 0)
        if action is not None:
            return t, action
        t += 5
        assert t < start + ms + 5000, "no action"


def test_a_brain_flow_asks_waits_and_plays_the_reply_it_is_given() -> None:
    flow = _brain_flow()
    flow.on_answer(0)
    assert flow.step(200, 0) == Play(0)  # the greeting is still the scenario's
    assert flow.step(1200, 0) is None and flow.state is BotState.LISTENING
    t, action = _speak(flow, 1700, 1500)
    assert isinstance(action, Ask)
    assert action.turn == 0 and action.since_ms == 1200 and action.speech_end_ms == 3195
    assert t >= 3195 + 350 and flow.state is BotState.WAITING
    assert flow.think_ms == [] and flow.queued_ms == []  # no think time: the brain's time is the delay
    assert all(flow.step(t + k * 5, 0) is None for k in range(1, 400))  # waits as long as it takes
    flow.on_reply(t + 2000, Path("/cache/r1.wav"), 700)
    assert flow.step(t + 2000, 0) == PlayFile(Path("/cache/r1.wav"), 0)
    assert flow.step(t + 2690, 0) is None and flow.state is BotState.SPEAKING
    assert flow.step(t + 2700, 0) is None and flow.state is BotState.LISTENING and flow.replies_done == 1
    t2, action = _speak(flow, t + 3300, 900)
    assert isinstance(action, Ask) and action.turn == 1 and action.since_ms == t + 2700
    flow.on_reply(t2 + 100, Path("/cache/r2.wav"), 600)
    assert flow.step(t2 + 100, 0) == PlayFile(Path("/cache/r2.wav"), 1)
    assert flow.step(t2 + 700, 0) is None and flow.state is BotState.DONE and flow.replies_done == 2


def test_a_brain_flow_without_a_reply_listens_again() -> None:
    flow = _brain_flow(hangup_by="bot")
    flow.on_answer(0)
    flow.step(200, 0)
    flow.step(1200, 0)
    t, action = _speak(flow, 1700, 1000)
    assert isinstance(action, Ask)
    flow.on_no_reply(t + 50)
    assert flow.state is BotState.LISTENING and flow.replies_done == 0
    flow.on_reply(t + 60, Path("/late.wav"), 500)  # a reply for a turn no longer waited for is ignored
    assert flow.state is BotState.LISTENING
    _, again = _speak(flow, t + 500, 800)  # the caller (or a retry) speaks again: asked again, same turn
    assert isinstance(again, Ask) and again.turn == 0


def test_the_scripted_flow_never_asks() -> None:
    flow = dataclasses.replace(_brain_flow(), brain=False)
    flow.on_answer(0)
    flow.step(200, 0)
    flow.step(1200, 0)
    _, action = _speak(flow, 1700, 1000)
    assert action == Play(1) and flow.think_ms == [400.0]


# --- the gateway against a fake Rasa, in process ------------------------------------------------------


class FakeRasa:
    """Rasa's REST channel, canned: a reply per message; records what it was sent. 127.0.0.1, a free port."""

    def __init__(self, replies: dict[str, str], *, status: int = 200) -> None:
        self.replies, self.status = replies, status
        self.received: list[dict[str, Any]] = []
        self.tokens: list[str | None] = []
        self.url = ""
        self._runner: web.AppRunner | None = None

    async def _webhook(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.received.append(body)
        self.tokens.append(request.query.get("token"))
        if self.status != 200:
            return web.Response(status=self.status, text="boom")
        reply = self.replies.get(body.get("message", ""))
        return web.json_response([{"recipient_id": body["sender"], "text": reply}] if reply else [])

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/webhooks/rest/webhook", self._webhook)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = self._runner.addresses[0][1]
        self.url = f"http://127.0.0.1:{port}"

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()


def _tape(tmp_path: Path, wav: Path) -> tuple[Path, int, int]:
    """A call tape still recording: unfinished header, silence, the caller's utterance through G.711, silence."""
    pad = np.zeros(4000, dtype=np.int16)
    x = g711.round_trip(np.concatenate([pad, wavfile.load_wav(wav), pad]))
    path = tmp_path / "tape.wav"
    path.write_bytes(bytes(WAV_HEADER_BYTES) + x.tobytes())
    return path, 800, len(x)


def _with_rasa(replies: dict[str, str], run: Callable[[FakeRasa], Awaitable[None]], *, status: int = 200) -> FakeRasa:
    server = FakeRasa(replies, status=status)

    async def main() -> None:
        await server.start()
        try:
            await asyncio.wait_for(run(server), 30)
        finally:
            await server.stop()

    asyncio.run(main())
    return server


@needs_tts
def test_an_utterance_goes_through_recognition_rasa_and_synthesis(tmp_path: Path) -> None:
    demo = load_scenario(DEMO)
    tape, start, stop = _tape(tmp_path, demo.turns[0].caller)

    async def run(server: FakeRasa) -> None:
        gw = RasaGateway(demo, server.url, token="s3cret", cache_dir=tmp_path / "tts")
        await gw.start()
        try:
            reply = await gw.respond(turn=0, sender="run-a0-1", tape=tape, start=start, stop=stop)
        finally:
            await gw.close()
        assert reply.error is None and gw.errors == 0
        assert reply.asr_text == "a large latte please" and reply.reply_text == DEMO_REPLIES["a large latte please"]
        assert reply.speech is not None and reply.speech.parent == tmp_path / "tts" and reply.ref is not None
        assert np.array_equal(reply.ref.samples, wavfile.load_wav(DEMO_DIR / "bot-01-name.wav"))
        assert reply.duration_ms == pytest.approx(len(reply.ref.samples) / 8)
        assert all(v is not None and v >= 0 for v in (reply.asr_ms, reply.rasa_ms, reply.tts_ms))
        assert set(reply.truth()) == {"sender", "asr_text", "asr_ms", "rasa_ms", "tts_ms", "reply_text"}

    server = _with_rasa(DEMO_REPLIES, run)
    assert server.received == [{"sender": "run-a0-1", "message": "a large latte please"}]
    assert server.tokens == ["s3cret"]  # Rasa's --auth-token goes as ?token=


@pytest.mark.parametrize("case", ["no text", "http error", "unreachable", "silence"])
def test_a_turn_without_a_reply_is_counted_not_raised(tmp_path: Path, case: str) -> None:
    demo = load_scenario(DEMO)
    tape, start, stop = _tape(tmp_path, demo.turns[1].caller)
    if case == "silence":
        start, stop = 0, 3000  # only the leading silence

    async def run(server: FakeRasa) -> None:
        url = "http://127.0.0.1:9" if case == "unreachable" else server.url  # discard port: nothing listens
        gw = RasaGateway(demo, url, cache_dir=tmp_path / "tts", timeout_s=5)
        await gw.start()
        try:
            reply = await gw.respond(turn=1, sender="s", tape=tape, start=start, stop=stop)
        finally:
            await gw.close()
        assert reply.speech is None and reply.error and gw.errors == 1 and gw.utterances == 1
        assert reply.truth()["brain_error"] == reply.error
        if case == "silence":
            assert reply.asr_text == "" and reply.rasa_ms is None
        else:
            assert reply.asr_text == "it is for alex"

    server = _with_rasa({} if case == "no text" else DEMO_REPLIES, run, status=500 if case == "http error" else 200)
    assert len(server.received) == (0 if case in ("unreachable", "silence") else 1)


# --- the CLI -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(("args", "message"), [
    (["--brain", "rasa"], "--brain rasa needs --rasa-url"),
    (["--brain", "rasa", "--rasa-url", "127.0.0.1:5005"], "expected http://HOST"),
    (["--brain", "rasa", "--rasa-url", "http://127.0.0.1:5005/webhooks"], "expected http://HOST"),
    (["--rasa-url", "http://127.0.0.1:5005"], "--rasa-url needs --brain rasa"),
    (["--brain", "gpt"], "--brain 'gpt': expected one of scripted, rasa"),
    (["--brain", "rasa", "--rasa-url", "http://127.0.0.1:5005", "--capacity", "2"], "--capacity models"),
])
def test_bad_brain_options_exit_2_with_a_clear_message(args: list[str], message: str) -> None:
    res = voiceload("bot", "--scenario", str(DEMO), "--listen", "127.0.0.1:0", *args, timeout=60)
    assert res.code == 2, res.stderr
    assert message in res.stderr


def test_a_scenario_turn_without_transcript_is_refused_for_the_rasa_brain(tmp_path: Path) -> None:
    for name in ("caller-01-order.wav", "caller-02-name.wav", "bot-00-welcome.wav", "bot-01-name.wav",
                 "bot-02-bye.wav"):
        shutil.copy(DEMO_DIR / name, tmp_path / name)
    (tmp_path / "caller-01-order.txt").write_text("A large latte, please.\n")  # turn 1 has none
    scenario = tmp_path / "demo.yaml"
    scenario.write_text(DEMO.read_text().replace("../recordings/demo/", ""))
    res = voiceload("bot", "--scenario", str(scenario), "--brain", "rasa", "--rasa-url", "http://127.0.0.1:5005",
                    timeout=60)
    assert res.code == 2, res.stderr
    assert "turn 1 (caller-02-name.wav) has none" in res.stderr


# --- real calls: agents → bot (gateway) → fake Rasa ---------------------------------------------------


@pytest.fixture
def fake_rasa() -> Iterator[FakeRasa]:
    """The fake Rasa on its own event loop thread, for a bot in another process to call."""
    server = FakeRasa(DEMO_REPLIES)
    loop = asyncio.new_event_loop()
    started = threading.Event()

    def serve() -> None:
        asyncio.set_event_loop(loop)
        loop.run_until_complete(server.start())
        started.set()
        loop.run_forever()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    assert started.wait(10)
    try:
        yield server
    finally:
        asyncio.run_coroutine_threadsafe(server.stop(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


@pytest.mark.real
@pytest.mark.timeout(240)  # a hang guard: the bot's ASR and TTS start slowly on a busy box
@needs_tts
def test_calls_through_the_gateway_complete_with_recognised_text_and_spoken_replies(
        fake_rasa: FakeRasa, tmp_path: Path) -> None:
    # 8 calls: above the wheel's 4 per process, so a 302 front with worker processes, which must get
    # the brain options too
    bot = start_bot(tmp_path, max_calls=8, extra=["--brain", "rasa", "--rasa-url", fake_rasa.url,
                                                  "--rasa-token", "s3cret", "--tape-dir", str(tmp_path / "tapes")])
    try:
        out = tmp_path / "run"
        with loopback_capture(tmp_path / "lo.pcap") as capture:
            res = voiceload("run", str(DEMO), "--target", bot.target, "-c", "2", "-n", "2", "--out", str(out),
                            out=out, timeout=60)
    finally:
        bot.stop()
    summary = checked_summary(res)
    calls = res.calls()
    assert len(calls) == 2
    assert_completed(summary, calls)
    if any(c["outcome"] != "completed" for c in calls):
        pytest.skip("the generator's media clock stalled past its catch-up: the calls were not judged")
    for call in calls:
        assert call["greeting"]["ok"]
        for turn in call["turns"]:  # the reply was played, and it is the demo prompt, sample for sample
            assert turn["ok"] and turn["bot_onset_ms"] is not None and turn["prompt_score"] >= 0.95

    truth = bot.truth_lines()
    print(json.dumps(truth, indent=1))
    assert sorted((t["call_id"], t["turn"]) for t in truth) == sorted(
        (c["call_id"], i) for c in calls for i in (0, 1))
    transcripts = [" ".join(asr.normalise(t.transcript or "")) for t in load_scenario(DEMO).turns]
    for t in truth:
        assert t["asr_text"] == transcripts[t["turn"]]
        assert t["reply_text"] == DEMO_REPLIES[t["asr_text"]]
        assert t["latency_ms"] is not None and "brain_error" not in t
        assert all(t[k] is not None and t[k] >= 0 for k in ("asr_ms", "rasa_ms", "tts_ms"))
    # the sender is the agent's session header (one per call), not the SIP Call-ID
    senders = {t["call_id"]: t["sender"] for t in truth}
    assert len(set(senders.values())) == 2 and all(s != cid for cid, s in senders.items())
    assert sorted(m["sender"] for m in fake_rasa.received) == sorted(t["sender"] for t in truth)
    assert sorted(m["message"] for m in fake_rasa.received) == sorted(transcripts * 2)
    assert fake_rasa.tokens == ["s3cret"] * 4  # the front hands the token to its workers
    # the gateway's truth agrees with the agent's measurement, as the scripted bot's does: within its tick
    # phase, or later by the jitter-buffer frames a busy box adds; voiceload's own side is held to the wire
    errors = latency_errors(calls, truth)
    print(f"voiceload - gateway truth (ms): {[round(e, 1) for e in errors]}")
    assert len(errors) == 4 and all(e >= -20 - max(c["rtp"]["rx_delay_ms_max"] for c in calls) for e in errors)
    assert_latencies_match_the_wire(capture, summary, calls)
