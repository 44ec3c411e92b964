"""A caller whose audio is pjmedia's own stream (no media engine): it dials RFC 4733 digits as pjmedia
sends them, and prints what it heard back as JSON. For the bot's RFC 4733 side while agents' engines
cannot send events. `python -m tests.dtmf_caller TARGET DIGITS` (bounded: 20 s)."""

from __future__ import annotations

import json
import sys
import time
from dataclasses import asdict

from voiceload.sip.ua import DTMF_RFC4733, SipStack

TIMEOUT_S = 20.0


def main(target: str, digits: str) -> None:
    stack = SipStack(host="127.0.0.1", max_calls=4, user="dtmf-caller")
    stack.start()
    call = stack.make_call(target)
    sent_at = None
    end = time.monotonic() + TIMEOUT_S
    while time.monotonic() < end and not call.ended:
        stack.pump(10)
        stack.events.clear()
        if sent_at is None and call.media is not None and call.times.confirmed is not None:
            time.sleep(0.3)  # past the answer, so the bot is listening
            sent_at = call.send_dtmf(digits, 100, 60, method=DTMF_RFC4733)[0]
    time.sleep(0.5)  # a late end event of the bot's last digit
    print(json.dumps({"sent": sent_at is not None, "ended": call.ended,
                      "heard": [asdict(d) for d in call.dtmf_heard]}), flush=True)
    stack.shutdown()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
