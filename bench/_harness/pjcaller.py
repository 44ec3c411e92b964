"""A plain pjsua2 caller with pjmedia's own media (no RTP engine): for codec and SRTP checks against the bot.

The agents' C engine is the real caller; this one negotiates and plays through pjmedia, so it speaks
whatever the pjsua2 build has, and tapes both directions on its bridge like the bot does. One
endpoint per process: make one `PjCaller` per test process.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from voiceload.core.mediaprofile import MediaProfile
from voiceload.sip.ua import SipCall, SipStack


@dataclass
class Placed:
    """A call as it stood when `PjCaller.call` returned."""

    call: SipCall
    codec: str | None
    srtp: str | None  # the crypto suite, None for plain RTP
    status: int | None
    loud: bool  # the far end's audio reached our bridge (its greeting, decoded); needs a tape_dir


class PjCaller:
    def __init__(self, media: MediaProfile, tape_dir: Path | None = None) -> None:
        self.stack = SipStack(max_calls=4, user="pjcaller", media_profile=media)
        self.stack.tape_dir = tape_dir

    def __enter__(self) -> PjCaller:
        self.stack.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stack.shutdown()

    def pump_until(self, done: Callable[[], bool], timeout_s: float) -> bool:
        end = time.monotonic() + timeout_s
        while time.monotonic() < end:
            self.stack.pump(0)
            self.stack.events.clear()
            self.stack.collect()
            if done():
                return True
            time.sleep(0.005)
        return done()

    def call(self, uri: str, *, listen_s: float = 1.0, timeout_s: float = 10.0) -> Placed:
        """Place a call, wait for its media (or its end), listen `listen_s` for the far end's audio."""
        call = self.stack.make_call(uri)
        self.pump_until(lambda: call.ended or call.media is not None, timeout_s)
        loud = False
        if call.media is not None:
            end = time.monotonic() + listen_s
            while time.monotonic() < end and not call.ended:
                self.stack.pump(0)
                loud = loud or call.level() > 5
                time.sleep(0.01)
        return Placed(call, call.codec(), call.srtp_suite(), call.status_code, loud)

    def hangup(self, call: SipCall, timeout_s: float = 5.0) -> None:
        call.hangup_now()
        self.pump_until(lambda: self.stack.slots_in_use() == 0, timeout_s)
        closed: list[SipCall] = []
        self.stack.close(call, closed.append)
        self.pump_until(lambda: bool(closed), timeout_s)
        self.stack.release(call)
        self.stack.collect()
