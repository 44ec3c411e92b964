"""Call slots, seen wrong in 40-call runs (PJ_ETOOMANY errors, a call record never sent):

- a locally hung-up call looks DISCONNECTED at once but holds its pjsua slot until the BYE is
  answered: the agent must not count it free, nor burn a call on makeCall's PJ_ETOOMANY;
- a call rejected before its CALLING event was dispatched has two queued events that both read
  DISCONNECTED: it must be closed, reported and pooled once, or two later calls share one SipCall.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
import time
from types import SimpleNamespace
from typing import Any

from tests.refbot import REPO
from voiceload.agent.caller import Agent
from voiceload.core.identity import IdentitySpec
from voiceload.sip.message import SipMessage
from voiceload.sip.ua import SLOT_RETRY_S, SipError, SlotsBusy


class ByeHoldingUas(threading.Thread):
    """A minimal SIP UAS on UDP: answers every INVITE with 200 + PCMU SDP, and answers BYEs only
    once `answer_byes` is set (a far end that is slow to confirm a hangup)."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.05)
        self.port = self.sock.getsockname()[1]
        self.rtp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)  # a sink for the caller's RTP
        self.rtp.bind(("127.0.0.1", 0))
        self.answer_byes = threading.Event()
        self.reject_invites = False  # answer INVITEs with 503, as a full bot front does
        self.held: list[tuple[SipMessage, Any]] = []
        self.byes_seen = 0
        self.stopped = threading.Event()

    def _reply(self, req: SipMessage, addr: Any, code: int, reason: str, body: bytes = b"") -> None:
        to = req.get("to") or ""
        if ";tag=" not in to:
            to += ";tag=uas" + (req.get("call-id") or "")[:8].replace("@", "")
        lines = [f"SIP/2.0 {code} {reason}", *(f"Via: {v}" for v in req.all("via")),
                 f"From: {req.get('from')}", f"To: {to}", f"Call-ID: {req.get('call-id')}",
                 f"CSeq: {req.get('cseq')}", f"Contact: <sip:uas@127.0.0.1:{self.port}>"]
        if body:
            lines.append("Content-Type: application/sdp")
        lines += [f"Content-Length: {len(body)}", "", ""]
        self.sock.sendto("\r\n".join(lines).encode() + body, addr)

    def run(self) -> None:
        rtp_port = self.rtp.getsockname()[1]
        sdp = (f"v=0\r\no=uas 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
               f"m=audio {rtp_port} RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\na=sendrecv\r\n").encode()
        while not self.stopped.is_set():
            if self.answer_byes.is_set():
                for req, addr in self.held:
                    self._reply(req, addr, 200, "OK")
                self.held.clear()
            try:
                data, addr = self.sock.recvfrom(65536)
            except TimeoutError:
                continue
            msg = SipMessage.parse(data)
            if msg is None or not msg.is_request:
                continue
            if msg.method == "INVITE" and self.reject_invites:
                self._reply(msg, addr, 503, "Service Unavailable")
            elif msg.method == "INVITE":
                self._reply(msg, addr, 200, "OK", sdp)
            elif msg.method == "BYE":
                self.byes_seen += 1
                if self.answer_byes.is_set():
                    self._reply(msg, addr, 200, "OK")
                else:
                    self.held.append((msg, addr))
            elif msg.method != "ACK":
                self._reply(msg, addr, 200, "OK")


def _pump_until(stack: Any, cond: Any, timeout_s: float) -> bool:
    """Pump until `cond` holds; the bound is a hang guard (loopback SIP takes ms, a busy box seconds)."""
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        stack.pump(0)
        stack.collect()
        if cond():
            return True
        time.sleep(0.005)  # lets the UAS thread run
    return False


def slot_lifecycle() -> None:
    """Runs in a child process (one pjsua2 endpoint per process, none in the test runner)."""
    from voiceload.sip.ua import SipStack

    uas = ByeHoldingUas()
    uas.start()
    uri = f"sip:uas@127.0.0.1:{uas.port}"
    stack = SipStack(max_calls=2)
    stack.start()
    try:
        n = stack.max_calls
        assert n == 2, n
        calls = [stack.make_call(uri) for _ in range(n)]
        assert _pump_until(stack, lambda: all(c.times.confirmed for c in calls), 15), "calls not confirmed"
        assert stack.slots_in_use() == n

        for c in calls:
            c.hangup_now()
        # pjsua reports DISCONNECTED at once ("immediate hangup")...
        assert all(c.ended for c in calls)
        assert _pump_until(stack, lambda: uas.byes_seen == n, 15), "BYEs not sent"
        for c in calls:
            stack.release(c)
        stack.collect()
        # ...so the calls are gone from our books, but their slots are not free yet
        assert len(stack.calls) == 0
        assert stack.slots_in_use() == n
        try:
            stack.make_call(uri)
            raise AssertionError("make_call succeeded with every slot held")
        except SlotsBusy:
            pass
        # the safety net: were the check above blind, makeCall's own PJ_ETOOMANY is SlotsBusy too
        real_count = stack.slots_in_use
        stack.slots_in_use = lambda: 0  # type: ignore[method-assign]
        try:
            stack.make_call(uri)
            raise AssertionError("makeCall succeeded with every slot held")
        except SlotsBusy:
            pass
        finally:
            stack.slots_in_use = real_count  # type: ignore[method-assign]
        assert len(stack.calls) == 0

        uas.answer_byes.set()  # the far end confirms the hangups: pjsua frees the slots
        assert _pump_until(stack, lambda: stack.slots_in_use() == 0, 15), "slots never freed"
        again = stack.make_call(uri)
        assert _pump_until(stack, lambda: again.times.confirmed is not None, 15), "new call not confirmed"
        try:  # what pjsua refuses comes as the adapter's own error, in pjsua's words
            stack.make_call("sip:bad uri")
            raise AssertionError("makeCall accepted a bad URI")
        except SipError as exc:
            assert not isinstance(exc, SlotsBusy) and "status=" in str(exc), exc
    finally:
        stack.shutdown()
        uas.stopped.set()
    print("SLOTS-OK")


def quick_rejections() -> None:
    """Child process: calls rejected before the agent ever saw them ringing, through Agent._dispatch."""
    from voiceload.sip.ua import SipStack

    uas = ByeHoldingUas()
    uas.reject_invites = True
    uas.start()
    uri = f"sip:uas@127.0.0.1:{uas.port}"
    stack = SipStack(max_calls=2)
    stack.start()
    closed: list[Any] = []

    def on_closed(call: Any) -> None:
        closed.append(call)
        stack.release(call)

    agent = Agent.__new__(Agent)  # only what _dispatch touches
    agent.stack = stack
    agent._closed = on_closed  # type: ignore[method-assign]
    try:
        for _ in range(3):
            closed.clear()
            call = stack.make_call(uri)
            call.app = SimpleNamespace(flow=SimpleNamespace(on_remote_hangup=lambda: None))
            # the CALLING event and the 503's DISCONNECTED are both queued before the next dispatch
            end = time.monotonic() + 15
            while not call.ended and time.monotonic() < end:
                stack.pump(0)
                time.sleep(0.002)
            assert call.status_code == 503, call.status_code
            assert len(stack.events) >= 2, list(stack.events)
            agent._dispatch(time.monotonic())
            stack.collect()
            assert closed == [call], f"closed {len(closed)} times"
            stack.collect()
            assert stack.slots_in_use() == 0
        # each pooled SipCall is handed out once: two live calls never share one object
        a, b = stack.make_call(uri), stack.make_call(uri)
        assert a is not b
    finally:
        stack.shutdown()
        uas.stopped.set()
    print("REJECT-OK")


def _child(func: str, marker: str) -> None:
    proc = subprocess.run(
        [sys.executable, "-c", f"from tests.test_agent_slots import {func}; {func}()"],
        cwd=REPO, capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode == 0 and marker in proc.stdout, proc.stdout + proc.stderr


def test_a_hung_up_call_holds_its_slot_until_the_bye_is_answered() -> None:
    _child("slot_lifecycle", "SLOTS-OK")


def test_a_quickly_rejected_call_is_closed_and_recycled_once() -> None:
    _child("quick_rejections", "REJECT-OK")


class _FakeStack:
    def __init__(self, exc: Exception) -> None:
        self.exc = exc
        self.attempts = 0

    def make_call(self, uri: str, headers: dict[str, str] | None = None, host: str | None = None) -> Any:
        self.attempts += 1
        raise self.exc


def _agent(stack: _FakeStack) -> tuple[Agent, list[Any]]:
    agent = Agent.__new__(Agent)  # just the state _place_call touches, no endpoint and no bus
    emitted: list[Any] = []
    agent.s = SimpleNamespace(run_id="r", agent_id="a0", target="sip:bot@127.0.0.1:5060")  # type: ignore[assignment]
    agent.stack = stack  # type: ignore[assignment]
    agent.targets, agent._first_target = [agent.s.target], 0
    agent.hosts, agent._first_host = ("127.0.0.1",), 0
    agent._source = {"127.0.0.1": "127.0.0.1"}
    agent.identity = IdentitySpec()  # no per-call identity: the stack's From, the target's user
    agent.placed = agent.finished = 0
    agent._next_start = time.monotonic() + 1.0  # what _start_calls set: one start token spent
    agent._emit = emitted.append  # type: ignore[method-assign]
    return agent, emitted


def test_no_free_slot_is_not_a_placed_call_and_is_retried_soon() -> None:
    agent, emitted = _agent(_FakeStack(SlotsBusy("all 4 pjsua call slots held")))
    agent._place_call()
    assert (agent.placed, agent.finished, emitted) == (0, 0, [])
    assert agent._next_start <= time.monotonic() + SLOT_RETRY_S


def test_other_make_call_errors_still_end_as_an_error_record() -> None:
    err = SipError("pjsua_call_make_call error: some other failure (status=171039)")
    agent, emitted = _agent(_FakeStack(err))
    agent._place_call()
    assert (agent.placed, agent.finished) == (1, 1)
    assert len(emitted) == 1 and emitted[0].outcome == "error" and emitted[0].seq == 1
    assert emitted[0].reason == "makeCall failed: pjsua_call_make_call error: some other failure (status=171039)"
