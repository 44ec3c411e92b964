"""The bus: URL parsing and topics (pure), then a real roundtrip, reconnects and persistent sessions."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import pytest

from voiceload.errors import UserError
from voiceload.protocol import CallRecord, TurnResult
from voiceload.results import bus
from voiceload.results.broker import free_port
from voiceload.results.bus import BrokerAddress, Bus, BusError, check_broker, parse_broker_url

T = TypeVar("T")
TEST_TIMEOUT_S = 30.0


def run(coro_fn: Callable[[], Awaitable[T]], timeout_s: float = TEST_TIMEOUT_S) -> T:
    """Every async test is bounded in time."""
    async def bounded() -> T:
        return await asyncio.wait_for(coro_fn(), timeout_s)
    return asyncio.run(bounded())


def record(n: int, run_id: str = "r1", agent: str = "a1") -> CallRecord:
    return CallRecord(run_id=run_id, agent_id=agent, call_id=f"call-{n}", seq=n, outcome="completed",
                      sip_code=200, setup_ms=10.0, turns=[TurnResult(index=0, latency_ms=420.0, ok=True)])


async def next_message(b: Bus, timeout_s: float = 5.0) -> tuple[str, bytes]:
    async def first() -> tuple[str, bytes]:
        async for item in b.messages():
            return item
        raise AssertionError("bus closed")
    return await asyncio.wait_for(first(), timeout_s)


async def until(cond: Callable[[], bool], timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.02)


# --- pure -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("url, host, port", [
    ("mqtt://127.0.0.1:1883", "127.0.0.1", 1883),
    ("mqtt://broker.example", "broker.example", 1883),
    ("MQTT://Broker:2000/", "broker", 2000),
    ("mqtt://[::1]:1884", "::1", 1884),
])
def test_parse_broker_url(url: str, host: str, port: int) -> None:
    addr = parse_broker_url(url)
    assert addr == BrokerAddress(host, port)
    assert parse_broker_url(addr.url) == addr


@pytest.mark.parametrize("url, why", [
    ("tcp://127.0.0.1:1883", "scheme 'tcp'"),
    ("127.0.0.1:1883", "scheme"),
    ("mqtt://", "no host"),
    ("mqtt://:1883", "no host"),
    ("mqtt://host:notaport", "bad port"),
    ("mqtt://host:70000", "bad port"),
    ("mqtt://host:0", "bad port"),
    ("mqtt://user:pw@host:1883", "credentials"),
    ("mqtt://host:1883/topic", "path"),
])
def test_parse_broker_url_errors_name_the_input(url: str, why: str) -> None:
    with pytest.raises(UserError) as err:
        parse_broker_url(url)
    msg = str(err.value)
    assert msg.startswith(f"--broker {url!r}: ")
    assert why in msg
    assert msg.endswith("expected mqtt://HOST:PORT")


def test_topics() -> None:
    assert bus.topic_calls("r1") == "voiceload/v1/r1/calls/+"
    assert bus.topic_calls("r1", "a7") == "voiceload/v1/r1/calls/a7"
    assert bus.topic_heartbeat("r1") == "voiceload/v1/r1/heartbeat/+"
    assert bus.topic_control("r1", "a7") == "voiceload/v1/r1/control/a7"
    assert bus.topic_agent_state("r1", "a7") == "voiceload/v1/r1/state/a7"
    assert bus.agent_id_from_topic("voiceload/v1/r1/calls/a7") == "a7"
    assert bus.parse_topic("voiceload/v1/r1/heartbeat/a7") == bus.TopicParts("r1", "heartbeat", "a7")
    for foreign in ("other/v1/r1/calls/a7", "voiceload/v1/r1/nope/a7", "voiceload/v1/r1/calls", ""):
        with pytest.raises(ValueError):
            bus.parse_topic(foreign)
    for bad in ("", "a/b", "a+", "#"):
        with pytest.raises(UserError):
            bus.topic_control("r1", bad)
        with pytest.raises(UserError):
            bus.topic_calls(bad)
    with pytest.raises(UserError):
        bus.topic_control("r1", "+")  # control goes to one agent, never a wildcard


def test_backoff_grows_with_jitter_and_is_capped() -> None:
    assert bus.backoff_delay(0, rand=lambda: 0.0) == pytest.approx(bus.BACKOFF_BASE_S / 2)
    assert bus.backoff_delay(0, rand=lambda: 1.0) == pytest.approx(bus.BACKOFF_BASE_S)
    assert bus.backoff_delay(3, rand=lambda: 1.0) == pytest.approx(bus.BACKOFF_BASE_S * 8)
    assert bus.backoff_delay(1000, rand=lambda: 1.0) == pytest.approx(bus.BACKOFF_CAP_S)
    assert bus.backoff_delay(1000, rand=lambda: 0.0) == pytest.approx(bus.BACKOFF_CAP_S / 2)


# --- against real brokers -------------------------------------------------------------------------


@pytest.mark.real
def test_call_record_roundtrip(any_broker: BrokerAddress) -> None:
    async def main() -> None:
        await check_broker(any_broker)
        async with Bus(any_broker, client_id="t-sub") as sub, Bus(any_broker, client_id="t-pub") as pub:
            await sub.subscribe(bus.topic_calls("r1"))
            sent = record(1)
            await pub.publish(bus.topic_calls("r1", "a1"), sent)
            topic, payload = await next_message(sub)
            assert topic == "voiceload/v1/r1/calls/a1"
            assert bus.agent_id_from_topic(topic) == "a1"
            assert CallRecord.from_json(payload) == sent
    run(main)


@pytest.mark.real
def test_check_broker_on_a_closed_port_is_a_user_error_in_time() -> None:
    port = free_port()
    addr = BrokerAddress("127.0.0.1", port)
    t0 = time.monotonic()
    want = rf"cannot reach MQTT broker at mqtt://127\.0\.0\.1:{port}: connection refused"
    with pytest.raises(UserError, match=want):
        run(lambda: check_broker(addr, timeout_s=20.0))
    assert time.monotonic() - t0 < 10.0  # refused at once, not after the timeout (a busy box adds seconds)
    with pytest.raises(UserError, match="cannot reach MQTT broker"):
        run(lambda: Bus(addr, client_id="t-none", connect_timeout_s=1.0).__aenter__())


@pytest.mark.real
def test_a_broker_refusing_the_login_says_so(locked_mosquitto: Any) -> None:
    """Not "cannot reach": the broker answered, and its ACL is what the user has to change."""
    addr = locked_mosquitto.address
    want = rf"--broker mqtt://127\.0\.0\.1:{addr.port}: the broker refused the credentials \(Not authorized\)"
    with pytest.raises(UserError, match=want):
        run(lambda: check_broker(addr, timeout_s=2.0))
    with pytest.raises(UserError, match=want):
        run(lambda: Bus(addr, client_id="t-anon", connect_timeout_s=1.0).__aenter__())


def test_every_login_refusal_code_reads_as_refused_credentials() -> None:
    """MQTT 3.1.1's CONNACK 4 and 5, MQTT 5's 134 and 135; other refusals stay handshake failures."""
    from aiomqtt.exceptions import MqttConnectError, MqttError
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.reasoncodes import ReasonCode

    addr = BrokerAddress("127.0.0.1", 1883)
    bad_login, not_authorized = "Bad user name or password", "Not authorized"
    refusals = [(4, bad_login), (5, not_authorized), (ReasonCode(PacketTypes.CONNACK, identifier=134), bad_login),
                (ReasonCode(PacketTypes.CONNACK, identifier=135), not_authorized)]
    for rc, why in refusals:
        assert str(bus._login_refused(addr, MqttConnectError(rc))) == (
            f"--broker mqtt://127.0.0.1:1883: the broker refused the credentials ({why}); "
            "voiceload connects anonymously, so the broker must allow anonymous clients")
    assert bus._login_refused(addr, MqttConnectError(3)) is None  # server unavailable
    assert bus._login_refused(addr, MqttError("[Errno 111] Connection refused")) is None


@pytest.mark.real
def test_check_broker_on_a_silent_listener_times_out() -> None:
    """A port that accepts TCP but never speaks MQTT must not hang the CLI."""
    with socket.socket() as srv:
        srv.bind(("127.0.0.1", 0))
        srv.listen()
        addr = BrokerAddress("127.0.0.1", srv.getsockname()[1])
        t0 = time.monotonic()
        with pytest.raises(UserError, match="no answer within 1 s"):
            run(lambda: check_broker(addr, timeout_s=1.0))
        assert time.monotonic() - t0 < 10.0  # bounded: the timeout plus what a busy box adds


@pytest.mark.real
def test_bus_survives_a_broker_restart(mosquitto: Any) -> None:
    """Publishing waits out the outage; both sides reconnect, resubscribe, and don't spin the CPU."""
    addr = mosquitto.address

    async def main() -> None:
        async with Bus(addr, client_id="r-sub") as sub, Bus(addr, client_id="r-pub") as pub:
            await sub.subscribe(bus.topic_calls("r1"))
            mosquitto.stop()
            await until(lambda: not pub.connected and not sub.connected)
            with pytest.raises(BusError, match=r"unreachable for 0\.3 s"):
                await pub.publish(bus.topic_calls("r1", "a1"), record(0), timeout_s=0.3)

            async def restart_later() -> None:
                await asyncio.sleep(0.5)
                await asyncio.to_thread(mosquitto.start)
            restarter = asyncio.create_task(restart_later())
            await pub.publish(bus.topic_calls("r1", "a1"), record(1), timeout_s=15.0)  # waits, then delivers
            await restarter
            await until(lambda: sub.connected and sub.reconnects == 1)
            await pub.publish(bus.topic_calls("r1", "a1"), record(2))
            seen: set[str] = set()
            while "call-2" not in seen:
                _topic, payload = await next_message(sub)
                seen.add(CallRecord.from_json(payload).call_id)
            assert pub.reconnects == 1

            cpu0, wall0 = time.process_time(), time.monotonic()
            await asyncio.sleep(1.0)
            cpu_share = (time.process_time() - cpu0) / (time.monotonic() - wall0)
            assert cpu_share < 0.3, f"event loop busy after reconnect: {cpu_share:.0%} of a core"
    run(main)


@pytest.mark.real
def test_persistent_session_gets_messages_queued_while_away(any_broker: BrokerAddress) -> None:
    async def main() -> None:
        topic = bus.topic_calls("r1")
        async with Bus(any_broker, client_id="persist-sub", clean_session=False) as sub:
            await sub.subscribe(topic)
        async with Bus(any_broker, client_id="persist-pub") as pub:
            for n in range(3):
                await pub.publish(bus.topic_calls("r1", "a1"), record(n))
        async with Bus(any_broker, client_id="persist-sub", clean_session=False) as sub:
            await sub.subscribe(topic)
            got: set[str] = set()
            while len(got) < 3:
                _topic, payload = await next_message(sub)
                got.add(CallRecord.from_json(payload).call_id)
            assert got == {"call-0", "call-1", "call-2"}
    run(main)


@pytest.mark.real
def test_embedded_broker_stops_and_frees_its_port() -> None:
    from voiceload.results.broker import EmbeddedBroker

    broker = EmbeddedBroker()
    addr = broker.start()
    pid = broker.pid
    assert pid is not None
    broker.stop()
    broker.stop()  # idempotent
    with pytest.raises(UserError, match="connection refused"):
        run(lambda: check_broker(addr, timeout_s=2.0))
