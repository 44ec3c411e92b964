"""The message bus: MQTT topics of a run and one reconnecting client. The only module that imports aiomqtt.

Topics live under `voiceload/v1/<run_id>/<kind>/<agent_id>`; messages are `voiceload.protocol`
dataclasses as JSON. Results travel at QoS 1, so delivery is at-least-once: a reconnect can
replay a message, and receivers deduplicate (the collector by `call_id`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import socket
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from types import TracebackType
from urllib.parse import urlsplit

import aiomqtt
from paho.mqtt.reasoncodes import ReasonCode

from voiceload.errors import UserError
from voiceload.protocol import Message

log = logging.getLogger(__name__)

DEFAULT_PORT = 1883
TOPIC_ROOT = "voiceload/v1"
KIND_CALLS = "calls"
KIND_HEARTBEAT = "heartbeat"
KIND_CONTROL = "control"
KIND_STATE = "state"
KIND_STARTED = "started"  # agent -> collector: a call was placed (so a lost agent's calls are known)
KIND_ACK = "ack"  # collector -> agent: these records are safely written; drop them from the spool
KINDS = (KIND_CALLS, KIND_HEARTBEAT, KIND_CONTROL, KIND_STATE, KIND_STARTED, KIND_ACK)

BACKOFF_BASE_S = 0.1
BACKOFF_CAP_S = 5.0


class BusError(Exception):
    """The broker stayed unreachable longer than an operation may wait; the message was not delivered."""


# --- broker address -------------------------------------------------------------------------------


@dataclass(frozen=True)
class BrokerAddress:
    host: str
    port: int

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"mqtt://{host}:{self.port}"


def parse_broker_url(url: str) -> BrokerAddress:
    """`mqtt://HOST[:PORT]` -> BrokerAddress; anything else is the user's to fix, so a UserError."""

    def bad(why: str) -> UserError:
        return UserError(f"--broker {url!r}: {why}; expected mqtt://HOST:PORT")

    parts = urlsplit(url.strip())
    if parts.scheme.lower() != "mqtt":
        return_why = f"scheme {parts.scheme!r} is not supported" if parts.scheme else "no scheme"
        raise bad(return_why)
    if parts.username is not None or parts.password is not None:
        raise bad("credentials in the URL are not supported")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise bad("unexpected path, query or fragment")
    if not parts.hostname:
        raise bad("no host")
    try:
        port = parts.port
    except ValueError:
        raise bad("bad port") from None
    if port == 0:
        raise bad("bad port")
    return BrokerAddress(parts.hostname, DEFAULT_PORT if port is None else port)


async def check_broker(addr: BrokerAddress, timeout_s: float = 3.0) -> None:
    """Connect once, so a wrong `--broker` fails before any call is placed, in one line and bounded time."""
    reason: str
    try:
        async with asyncio.timeout(timeout_s):
            # A plain TCP connect first: its errors read better than paho's, and it is cancellable.
            _reader, writer = await asyncio.open_connection(addr.host, addr.port)
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
            client = aiomqtt.Client(
                addr.host, addr.port, identifier=f"voiceload-check-{uuid.uuid4().hex[:8]}", timeout=timeout_s
            )
            async with client:
                return
    except TimeoutError:
        reason = f"no answer within {timeout_s:g} s"
    except ConnectionRefusedError:
        reason = "connection refused"
    except socket.gaierror as exc:
        reason = f"cannot resolve host {addr.host!r} ({exc.strerror})"
    except OSError as exc:
        reason = exc.strerror or str(exc)
    except aiomqtt.MqttError as exc:
        refused = _login_refused(addr, exc)
        if refused is not None:
            raise refused from None
        reason = f"MQTT handshake failed: {exc}"
    raise UserError(f"cannot reach MQTT broker at {addr.url}: {reason}")


# CONNACK return codes of MQTT 3.1.1 (4, 5) and reason codes of MQTT 5 (134, 135) that refuse the login
_LOGIN_REFUSED = {4: "Bad user name or password", 5: "Not authorized",
                  134: "Bad user name or password", 135: "Not authorized"}


def _login_refused(addr: BrokerAddress, exc: BaseException) -> UserError | None:
    """The broker answered but refused the login: say so, not "cannot reach" (the fix is the broker's ACL)."""
    if not isinstance(exc, aiomqtt.MqttCodeError):
        return None
    code = exc.rc.value if isinstance(exc.rc, ReasonCode) else exc.rc  # paho gives a ReasonCode or an int
    why = _LOGIN_REFUSED.get(code) if code is not None else None
    if why is None:
        return None
    return UserError(f"--broker {addr.url}: the broker refused the credentials ({why}); voiceload connects "
                     "anonymously, so the broker must allow anonymous clients")


# --- topics ---------------------------------------------------------------------------------------


def _segment(value: str, what: str, *, wildcard: bool) -> str:
    if wildcard and value == "+":
        return value
    if not value or any(c in value for c in "/+#\0"):
        raise UserError(f"{what} {value!r} is not usable in an MQTT topic (empty, or contains / + # or NUL)")
    return value


def _topic(run_id: str, kind: str, agent_id: str, *, wildcard: bool) -> str:
    run = _segment(run_id, "run id", wildcard=False)
    agent = _segment(agent_id, "agent id", wildcard=wildcard)
    return f"{TOPIC_ROOT}/{run}/{kind}/{agent}"


def topic_calls(run_id: str, agent_id: str = "+") -> str:
    """Agent -> collector: one CallRecord per finished call."""
    return _topic(run_id, KIND_CALLS, agent_id, wildcard=True)


def topic_heartbeat(run_id: str, agent_id: str = "+") -> str:
    """Agent -> coordinator/collector: periodic Heartbeat."""
    return _topic(run_id, KIND_HEARTBEAT, agent_id, wildcard=True)


def topic_control(run_id: str, agent_id: str) -> str:
    """Coordinator -> one agent: Assign."""
    return _topic(run_id, KIND_CONTROL, agent_id, wildcard=False)


def topic_agent_state(run_id: str, agent_id: str = "+") -> str:
    """Agent -> coordinator/collector: AgentState transitions."""
    return _topic(run_id, KIND_STATE, agent_id, wildcard=True)


def topic_started(run_id: str, agent_id: str = "+") -> str:
    """Call-started notices of one agent (or all: `+`)."""
    return _topic(run_id, KIND_STARTED, agent_id, wildcard=True)


def topic_ack(run_id: str, agent_id: str) -> str:
    """The collector's acknowledgements to one agent."""
    return _topic(run_id, KIND_ACK, agent_id, wildcard=False)


@dataclass(frozen=True)
class TopicParts:
    run_id: str
    kind: str
    agent_id: str


def parse_topic(topic: str) -> TopicParts:
    """Split one of our concrete topics; ValueError for anything else (a foreign or malformed topic)."""
    parts = topic.split("/")
    if len(parts) != 5 or "/".join(parts[:2]) != TOPIC_ROOT or parts[3] not in KINDS:
        raise ValueError(f"not a voiceload v1 topic: {topic!r}")
    if not parts[2] or not parts[4]:
        raise ValueError(f"empty run or agent id in topic {topic!r}")
    return TopicParts(run_id=parts[2], kind=parts[3], agent_id=parts[4])


def agent_id_from_topic(topic: str) -> str:
    return parse_topic(topic).agent_id


# --- the client -----------------------------------------------------------------------------------


def backoff_delay(attempt: int, *, base_s: float = BACKOFF_BASE_S, cap_s: float = BACKOFF_CAP_S,
                  rand: Callable[[], float] = random.random) -> float:
    """Exponential backoff, jittered within [d/2, d]: agents that lost the broker together return apart."""
    ceiling = min(cap_s, base_s * 2 ** min(attempt, 32))
    return ceiling / 2 + rand() * ceiling / 2


@dataclass(eq=False)
class _Session:
    """One connection: its client, and an event set when it is gone (to abandon operations waiting on it)."""

    client: aiomqtt.Client
    lost: asyncio.Event


def _consume(future: asyncio.Future[None]) -> None:
    if not future.cancelled():
        future.exception()


class Bus:
    """One logical MQTT connection that survives broker restarts.

    A supervisor task owns the connection: it forwards incoming messages to `messages()`, and on
    loss reconnects with jittered backoff and subscribes again. Each connection gets a fresh
    aiomqtt client: a reused one keeps stale state across reconnects (measured: its socket writer
    stays registered and the event loop spins at 100 % CPU). `publish` and `subscribe` wait for a
    connection (up to `op_timeout_s`) instead of dropping, and an operation cut off by a lost
    connection is redone on the next one. With `clean_session=False` and a stable `client_id`, the
    broker queues QoS 1 messages for this client while it is away.
    """

    def __init__(
        self,
        addr: BrokerAddress,
        *,
        client_id: str,
        clean_session: bool = True,
        op_timeout_s: float = 30.0,
        connect_timeout_s: float = 5.0,
        keepalive_s: int = 15,
    ) -> None:
        self.addr = addr
        self.client_id = client_id
        self.clean_session = clean_session
        self.op_timeout_s = op_timeout_s
        self.connect_timeout_s = connect_timeout_s
        self.keepalive_s = keepalive_s
        self.reconnects = 0
        self._subs: dict[str, int] = {}
        self._inbox: asyncio.Queue[tuple[str, bytes] | None] = asyncio.Queue()
        self._connected = asyncio.Event()
        self._session: _Session | None = None
        self._task: asyncio.Task[None] | None = None
        self._connecting: asyncio.Future[aiomqtt.Client] | None = None

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    async def __aenter__(self) -> Bus:
        first: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._task = asyncio.create_task(self._supervise(first), name=f"bus-{self.client_id}")
        try:
            await asyncio.wait_for(asyncio.shield(first), 2 * self.connect_timeout_s + 1.0)
        except (TimeoutError, aiomqtt.MqttError, OSError) as exc:
            await self._stop()
            refused = _login_refused(self.addr, exc)
            if refused is not None:
                raise refused from None
            timed_out = isinstance(exc, TimeoutError) or str(exc) == "Operation timed out"
            why = f"no answer within {self.connect_timeout_s:g} s" if timed_out else exc
            raise UserError(f"cannot reach MQTT broker at {self.addr.url}: {why}") from None
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self._stop()
        self._inbox.put_nowait(None)

    async def _stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, aiomqtt.MqttError):
                await self._task
            self._task = None
        conn = self._connecting
        if conn is not None and not conn.done():
            # Cancelled mid-connect: let the attempt finish, then leave cleanly if it got through.
            await asyncio.wait({conn}, timeout=2 * self.connect_timeout_s + 1.0)
            if conn.done() and conn.exception() is None:
                with contextlib.suppress(aiomqtt.MqttError):
                    await conn.result().__aexit__(None, None, None)
        self._connected.clear()

    async def _supervise(self, first: asyncio.Future[None]) -> None:
        """Connect, resubscribe, pump messages into the inbox; on loss back off and do it again."""
        failures = 0
        while True:
            client = aiomqtt.Client(
                self.addr.host,
                self.addr.port,
                identifier=self.client_id,
                clean_session=self.clean_session,
                timeout=self.connect_timeout_s,
                keepalive=self.keepalive_s,
            )
            # aiomqtt sets an unexpected disconnect's exception on this future even when nobody
            # awaits it (a broker gone while we leave): read it, or asyncio logs it at exit
            client._disconnected.add_done_callback(_consume)
            session = _Session(client, asyncio.Event())
            try:
                # Shielded: cancelling aiomqtt's connect midway leaves its executor thread and socket behind.
                self._connecting = asyncio.ensure_future(client.__aenter__())
                await asyncio.shield(self._connecting)
                try:
                    for topic, qos in list(self._subs.items()):
                        await client.subscribe(topic, qos)
                    self._session = session
                    self._connected.set()
                    if first.done():
                        self.reconnects += 1
                        log.info("MQTT broker %s: reconnected", self.addr.url)
                    else:
                        first.set_result(None)
                    failures = 0
                    async for m in client.messages:
                        payload = m.payload if isinstance(m.payload, bytes | bytearray) else b""
                        self._inbox.put_nowait((m.topic.value, bytes(payload)))
                finally:
                    self._connected.clear()
                    session.lost.set()
                    with contextlib.suppress(aiomqtt.MqttError):
                        await client.__aexit__(None, None, None)
            except (aiomqtt.MqttError, OSError) as exc:
                if not first.done():
                    first.set_exception(exc)
                    return
                if failures == 0:
                    log.warning("MQTT broker %s: connection lost (%s); reconnecting", self.addr.url, exc)
            await asyncio.sleep(backoff_delay(failures))
            failures += 1

    async def _when_connected(self, what: str, op: Callable[[aiomqtt.Client, float], Awaitable[object]],
                              timeout_s: float | None) -> None:
        """Run `op(client, remaining_s)` on a live connection; if the connection dies first, redo it."""
        loop = asyncio.get_running_loop()
        budget = self.op_timeout_s if timeout_s is None else timeout_s
        deadline = loop.time() + budget
        last: BaseException | None = None
        while (remaining := deadline - loop.time()) > 0:
            try:
                await asyncio.wait_for(self._connected.wait(), remaining)
            except TimeoutError:
                break
            session = self._session
            assert session is not None
            attempt = asyncio.ensure_future(op(session.client, max(deadline - loop.time(), 0.001)))
            lost = asyncio.ensure_future(session.lost.wait())
            await asyncio.wait({attempt, lost}, return_when=asyncio.FIRST_COMPLETED)
            lost.cancel()
            if not attempt.done():
                attempt.cancel()  # the connection died under it: try again on the next one
                with contextlib.suppress(asyncio.CancelledError, aiomqtt.MqttError):
                    await attempt
                continue
            last = attempt.exception()
            if last is None:
                return
            if not isinstance(last, aiomqtt.MqttError):
                raise last
            await asyncio.sleep(min(0.05, max(deadline - loop.time(), 0)))
        detail = f" (last error: {last})" if last else ""
        raise BusError(f"{what}: MQTT broker {self.addr.url} unreachable for {budget:g} s{detail}")

    async def publish(self, topic: str, msg: Message, qos: int = 1, retain: bool = False,
                      timeout_s: float | None = None) -> None:
        """Publish and, for QoS 1, wait for the broker's ack; BusError if that takes over the timeout."""
        await self.publish_raw(topic, msg.to_json(), qos=qos, retain=retain, timeout_s=timeout_s)

    async def publish_raw(self, topic: str, payload: bytes, qos: int = 1, retain: bool = False,
                          timeout_s: float | None = None) -> None:
        """`publish` for an already serialised message (e.g. one read back from a spool)."""
        self._require_open()

        async def op(client: aiomqtt.Client, remaining: float) -> None:
            await client.publish(topic, payload, qos=qos, retain=retain, timeout=remaining)

        await self._when_connected(f"publish to {topic}", op, timeout_s)

    async def subscribe(self, topic_filter: str, qos: int = 1, timeout_s: float | None = None) -> None:
        """Subscribe now and again after every reconnect."""
        self._require_open()
        self._subs[topic_filter] = qos

        async def op(client: aiomqtt.Client, remaining: float) -> None:
            await client.subscribe(topic_filter, qos, timeout=remaining)

        await self._when_connected(f"subscribe to {topic_filter}", op, timeout_s)

    async def messages(self) -> AsyncIterator[tuple[str, bytes]]:
        """(topic, payload) of every message received, across reconnects; ends when the Bus closes.

        One consumer per Bus: two readers would split the messages between them.
        """
        while True:
            item = await self._inbox.get()
            if item is None:
                self._inbox.put_nowait(None)  # let any other reader end too
                return
            yield item

    def _require_open(self) -> None:
        if self._task is None:
            raise RuntimeError("Bus is not open: use `async with Bus(...)`")
