"""A fake Rasa server for tests: the REST webhook, the tracker endpoint and the root, on 127.0.0.1.

It answers each sender's k-th message with the k-th scripted reply, and keeps a tracker per sender
with the scripted intents and actions. `wrong_intent(sender)` picks the conversations whose turn
`wrong_turn` is reported with another intent. A tracker asked for a sender that never wrote (a SIP
call through a gateway the test does not have) is built from the script as if every turn was said.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web


@dataclass
class Script:
    replies: list[str]  # the bot's reply to each turn
    intents: list[str]  # what each turn is classified as
    actions: list[str]  # the action that answers each turn
    wrong_intent: Callable[[str], bool] = lambda sender: False
    wrong_turn: int = 1
    wrong_as: str = "wrong_intent"
    tracker_status: int = 200
    token: str | None = None  # `/status` refuses any other token (the only endpoint that checks it here)


@dataclass
class FakeRasa:
    script: Script
    url: str = ""
    messages: dict[str, list[str]] = field(default_factory=dict)
    tracker_requests: list[str] = field(default_factory=list)

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/", self.root)
        app.router.add_get("/status", self.status)
        app.router.add_post("/webhooks/rest/webhook", self.webhook)
        app.router.add_get("/conversations/{sender}/tracker", self.tracker)
        return app

    async def root(self, request: web.Request) -> web.Response:
        return web.Response(text="Hello from Rasa: 3.6.21")

    async def status(self, request: web.Request) -> web.Response:
        if self.script.token is not None and request.query.get("token") != self.script.token:
            return web.Response(status=401, text="not authenticated")
        return web.json_response({"model_file": "fake.tar.gz", "num_active_training_jobs": 0})

    async def webhook(self, request: web.Request) -> web.Response:
        body = await request.json()
        sender, text = body["sender"], body["message"]
        said = self.messages.setdefault(sender, [])
        said.append(text)
        k = len(said) - 1
        reply = self.script.replies[k] if k < len(self.script.replies) else "Sorry, I did not understand."
        return web.json_response([{"recipient_id": sender, "text": reply}])

    def intent(self, sender: str, k: int) -> str:
        if k == self.script.wrong_turn and self.script.wrong_intent(sender):
            return self.script.wrong_as
        return self.script.intents[k] if k < len(self.script.intents) else "nlu_fallback"

    async def tracker(self, request: web.Request) -> web.Response:
        sender = request.match_info["sender"]
        self.tracker_requests.append(sender)
        if self.script.tracker_status != 200:
            return web.Response(status=self.script.tracker_status, text="tracker store down")
        said = self.messages.get(sender) or [f"turn {k}" for k in range(len(self.script.intents))]
        events: list[dict[str, Any]] = [{"event": "action", "name": "action_session_start"},
                                        {"event": "session_started"}, {"event": "action", "name": "action_listen"}]
        for k, text in enumerate(said):
            events.append({"event": "user", "text": text, "parse_data": {"intent": {"name": self.intent(sender, k)}}})
            if k < len(self.script.actions):
                events.append({"event": "action", "name": self.script.actions[k]})
            events.append({"event": "action", "name": "action_listen"})
        return web.json_response({"sender_id": sender, "events": events})


@contextmanager
def serve(script: Script) -> Iterator[FakeRasa]:
    """The fake on a free port of 127.0.0.1, served from its own thread and event loop."""
    fake = FakeRasa(script)
    loop = asyncio.new_event_loop()
    runner = web.AppRunner(fake.app(), access_log=None)
    ready = threading.Event()

    async def start() -> None:
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        host, port = runner.addresses[0][:2]
        fake.url = f"http://{host}:{port}"
        ready.set()

    def main() -> None:
        loop.run_until_complete(start())
        loop.run_forever()
        loop.run_until_complete(runner.cleanup())
        loop.close()

    thread = threading.Thread(target=main, daemon=True)
    thread.start()
    assert ready.wait(10), "fake Rasa did not start"
    try:
        yield fake
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
