"""Source and advertised addresses against the reference bot, judged from a loopback capture.

Every 127.0.0.0/8 address is local on Linux's lo, so `--bind 127.0.0.2-127.0.0.4` needs no
privileges: the test makes its own "hosts". The capture, not voiceload's records, says where each
call's SIP and RTP came from and what its INVITE told the far end.
"""

from __future__ import annotations

import re
import socket
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.kamailio import KAMAILIO, PASSWORD, USER, kamailio
from tests.refbot import DEMO, REPO, RefBot, assert_completed, checked_summary, loopback_capture, start_bot, voiceload
from voiceload.tools import referee

pytestmark = pytest.mark.real

QUICK = REPO / "scenarios" / "quick.yaml"
_URI_HOST = re.compile(r"sips?:(?:[^@>;]+@)?([0-9.]+)")


@dataclass
class WireCall:
    """One call as the capture shows it: its INVITE, the bot's answer and who sent RTP where."""

    invite_src: str = ""
    via_host: str = ""
    contact_host: str = ""
    offer: tuple[str, int] | None = None  # our SDP's c= and m= port
    answer: tuple[str, int] | None = None  # the bot's
    rtp_to_bot_from: Counter[tuple[str, int]] = field(default_factory=Counter)
    rtp_to_us: Counter[str] = field(default_factory=Counter)  # the bot's packets to our offer's port, per address


def wire_calls(pcap: Path) -> dict[str, WireCall]:
    datagrams = list(referee.read_pcap(pcap.read_bytes()))
    calls: dict[str, WireCall] = {}
    for d in datagrams:
        msg = referee.parse_sip(d.payload)
        if msg is None or msg.cseq_method != "INVITE":
            continue
        wc = calls.setdefault(msg.call_id, WireCall())
        if msg.method == "INVITE" and wc.offer is None and msg.media is not None:
            wc.invite_src, wc.offer = d.src[0], msg.media
            wc.via_host = (msg.get("via") or "").split()[1].split(";")[0].rsplit(":", 1)[0]
            found = _URI_HOST.search(msg.get("contact") or "")
            wc.contact_host = found.group(1) if found else ""
        elif msg.status == 200 and msg.media is not None:
            wc.answer = msg.media
    for d in datagrams:
        if referee.parse_sip(d.payload) is not None:
            continue
        for wc in calls.values():
            if wc.answer is not None and d.dst == wc.answer:
                wc.rtp_to_bot_from[d.src] += 1
            elif wc.offer is not None and d.src == wc.answer and d.dst[1] == wc.offer[1]:
                wc.rtp_to_us[d.dst[0]] += 1
    return calls


@pytest.fixture
def bot(tmp_path: Path) -> Iterator[RefBot]:
    b = start_bot(tmp_path, think_ms="300", max_calls=8)
    try:
        yield b
    finally:
        b.stop()


def test_calls_spread_evenly_over_a_range_of_source_addresses(bot: RefBot, tmp_path: Path) -> None:
    """`--bind 127.0.0.2-127.0.0.4`: six calls, two from each address, SIP and RTP both from it."""
    out = tmp_path / "run"
    addresses = ["127.0.0.2", "127.0.0.3", "127.0.0.4"]
    with loopback_capture(tmp_path / "lo.pcap") as capture:
        res = voiceload("run", str(DEMO), "--target", bot.target, "-c", "6", "-n", "6", "--out", str(out),
                        "--bind", "127.0.0.2-127.0.0.4", out=out)
    summary = checked_summary(res)
    calls = res.calls()
    assert len(calls) == 6
    assert_completed(summary, calls)
    assert Counter(c["source_address"] for c in calls) == {a: 2 for a in addresses}
    assert summary["source_addresses"] == {a: {"calls": 2, "completed": 2, "rejected": 0} for a in addresses}
    assert "Source addresses: 127.0.0.2 2 calls (2 completed)" in res.stdout.replace("\n", " ")
    if capture.why_not:
        pytest.skip(f"{capture.why_not}: where the packets came from is not checked")
    wire = wire_calls(capture.pcap)
    for call in calls:
        wc = wire[call["call_id"]]
        src = call["source_address"]
        assert (wc.invite_src, wc.via_host, wc.contact_host) == (src, src, src), (call["call_id"], wc)
        assert wc.offer is not None and wc.offer[0] == src
        # the caller's RTP left from the very socket its offer named, and the bot's RTP reached it
        assert set(wc.rtp_to_bot_from) == {wc.offer}, (call["call_id"], wc.rtp_to_bot_from)
        assert wc.rtp_to_bot_from[wc.offer] > 100 and set(wc.rtp_to_us) == {src}, wc
        assert wc.rtp_to_us[src] > 100, wc


def test_the_advertised_address_is_in_via_contact_and_sdp_and_media_reaches_us(bot: RefBot, tmp_path: Path) -> None:
    """`--bind 0.0.0.0 --advertise 127.0.0.5`: the far end is told 127.0.0.5, which reaches our sockets bound
    to every address the way a 1:1 NAT's public address reaches a generator behind it.

    Unlike behind a real NAT, our packets leave from 127.0.0.1 (the route to the bot), not from the
    advertised address, so the bot's symmetric RTP moves there after its first packets (pjmedia latches
    onto where the RTP comes from): the test sees its first packets go to 127.0.0.5 and reach us
    (the greeting starts there), then the rest of the call. Behind a NAT both are the public address."""
    out = tmp_path / "run"
    with loopback_capture(tmp_path / "lo.pcap") as capture:
        res = voiceload("run", str(DEMO), "--target", bot.target, "-c", "2", "-n", "2", "--out", str(out),
                        "--bind", "0.0.0.0", "--advertise", "127.0.0.5", out=out)
    summary = checked_summary(res)
    calls = res.calls()
    assert len(calls) == 2
    assert_completed(summary, calls)
    if capture.why_not:
        pytest.skip(f"{capture.why_not}: the advertised address is not checked")
    wire = wire_calls(capture.pcap)
    for call in calls:
        wc = wire[call["call_id"]]
        assert wc.invite_src == "127.0.0.1", wc  # where the packets really came from
        assert (wc.via_host, wc.contact_host) == ("127.0.0.5", "127.0.0.5"), wc
        assert wc.offer is not None and wc.offer[0] == "127.0.0.5", wc
        # the bot's audio went first to the advertised address (and on to the address it latched onto)
        assert wc.rtp_to_us["127.0.0.5"] >= 1 and set(wc.rtp_to_us) <= {"127.0.0.5", "127.0.0.1"}, wc
        assert sum(wc.rtp_to_us.values()) > 100, wc
        # and what came to 127.0.0.5 was heard: a socket on 0.0.0.0 that connect()ed to the bot would have
        # taken 127.0.0.1 as its own address and dropped those (seen: 7 of 9 lost before the engine left it alone)
        assert call["rtp"]["rx_lost"] == 0 and call["greeting"]["ok"], call
        assert call["source_address"] == "127.0.0.1"  # the record names where the packets came from


def test_every_address_without_advertise_announces_the_routed_one(bot: RefBot, tmp_path: Path) -> None:
    """`--bind 0.0.0.0` alone: pjsua would announce the host's default address (here eth0's, which the
    bot's replies then went to: no ACK reached it, and not one greeting was heard), so the agent
    announces the address that routes to the target, which its packets come from."""
    out = tmp_path / "run"
    with loopback_capture(tmp_path / "lo.pcap") as capture:
        res = voiceload("run", str(DEMO), "--target", bot.target, "-c", "1", "-n", "1", "--out", str(out),
                        "--bind", "0.0.0.0", out=out)
    summary = checked_summary(res)
    (call,) = res.calls()
    assert_completed(summary, [call])
    assert call["source_address"] == "127.0.0.1"
    if capture.why_not:
        pytest.skip(f"{capture.why_not}: the announced address is not checked")
    wc = wire_calls(capture.pcap)[call["call_id"]]
    assert (wc.invite_src, wc.via_host, wc.contact_host) == ("127.0.0.1",) * 3, wc
    assert wc.offer is not None and wc.offer[0] == "127.0.0.1" and set(wc.rtp_to_us) == {"127.0.0.1"}, wc


@pytest.fixture
def silent_target() -> Iterator[tuple[str, socket.socket]]:
    """A UDP socket as the target: anything the run sent (an OPTIONS, an INVITE) would land on it."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        s.setblocking(False)
        yield f"sip:bot@127.0.0.1:{s.getsockname()[1]}", s


@pytest.mark.parametrize(("flags", "expected"), [
    (["--bind", "192.0.2.7"], "--bind 192.0.2.7: not an address of this host"),
    (["--bind", "127.0.0.9-127.0.0.2"], "runs backwards"),
    (["--bind", "127.0.0.2-"], "'' is not an IPv4 address"),
    (["--bind", "127.0.0.1-127.0.0.40"], "holds 40 addresses"),
    (["--bind", "127.0.0.2,127.0.0.2"], "listed twice"),
    (["--advertise", "gw.example.com"], "--advertise 'gw.example.com': 'gw.example.com' is not an IPv4 address"),
    (["--bind", "127.0.0.2", "--advertise", "127.0.0.5,127.0.0.6"], "2 addresses for 1 --bind addresses"),
])
def test_bad_addresses_are_one_line_and_exit_2_before_any_packet(
        flags: list[str], expected: str, silent_target: tuple[str, socket.socket], tmp_path: Path) -> None:
    target, sock = silent_target
    res = voiceload("run", str(DEMO), "--target", target, "--out", str(tmp_path / "run"), *flags, timeout=60)
    lines = [x for x in res.stderr.splitlines() if x.strip()]
    assert res.code == 2 and len(lines) == 1 and "Traceback" not in res.stderr, res.stderr
    assert expected in lines[0] and lines[0].startswith("voiceload: error: --"), lines[0]
    with pytest.raises(BlockingIOError):
        sock.recv(65535)  # not even the OPTIONS probe went out
    assert not (tmp_path / "run").exists()


@pytest.mark.skipif(KAMAILIO is None, reason="kamailio not installed")
def test_two_source_addresses_over_tcp_register_and_call_through_an_authenticating_proxy(tmp_path: Path) -> None:
    """Kamailio demanding digest auth over TCP, `--bind 127.0.0.2,127.0.0.3 --register`: its own log says
    each address registered (its own Contact), placed half the calls over its own TCP connection, and
    unregistered at the end; the OPTIONS probe came from the first address, over TCP."""
    b = start_bot(tmp_path, scenario=QUICK, max_calls=8)
    try:
        with kamailio(tmp_path, b.target) as gw:
            out = tmp_path / "run"
            res = voiceload("run", str(QUICK), "--target", gw.uri("tcp"), "-c", "4", "-n", "4", "--out", str(out),
                            "--bind", "127.0.0.2,127.0.0.3", "--register", out=out,
                            env={"VOICELOAD_AUTH": f"{USER}:{PASSWORD}"})
            summary = checked_summary(res)
            rx, registers = gw.lines("rx"), gw.lines("register")
    finally:
        b.stop()
    calls = res.calls()
    assert_completed(summary, calls)
    assert Counter(c["source_address"] for c in calls) == {"127.0.0.2": 2, "127.0.0.3": 2}
    # Call-ID -> (source address, transport) of its INVITEs: the challenged one and the answered retry
    invites: dict[str, set[tuple[str, str]]] = {}
    for line in rx:
        m = re.match(r"vltest rx INVITE from ([0-9.]+):\d+ over (\w+) .* callid (\S+)", line)
        if m:
            invites.setdefault(m.group(3), set()).add((m.group(1), m.group(2)))
    assert invites == {c["call_id"]: {(c["source_address"], "tcp")} for c in calls}, invites
    probes = [ln for ln in rx if ln.startswith("vltest rx OPTIONS ") and " user probe " in ln]  # not the fixture's
    assert len(probes) == 1 and probes[0].startswith("vltest rx OPTIONS from 127.0.0.2:"), probes  # the first address
    assert " over tcp " in probes[0], probes
    contacts = [re.search(r"contact <?sip:[^@]+@([0-9.]+)", ln) for ln in registers]
    expires = [ln.split(" expires ")[1].split()[0] for ln in registers]
    assert sorted(zip(expires, [m.group(1) if m else "" for m in contacts], strict=True)) == [
        ("0", "127.0.0.2"), ("0", "127.0.0.3"), ("300", "127.0.0.2"), ("300", "127.0.0.3")], registers
