"""`--bind`/`--advertise` parsing, the per-agent transport limit, and the spread in summary.json (pure)."""

from __future__ import annotations

import io

import pytest
from rich.console import Console

from tests.test_summary import healthy, rec, run
from voiceload.core.addresses import PJSUA_TRANSPORTS_MAX, Addresses, parse_addresses, parse_bind
from voiceload.core.summary import SourceCounts, Summary, summarize
from voiceload.errors import UserError
from voiceload.protocol import CallRecord
from voiceload.report.text import render_summary
from voiceload.sip.lite import check_local_addresses


def test_lists_and_ranges_expand_in_order() -> None:
    assert parse_bind("127.0.0.2-127.0.0.4, 10.0.0.9") == ("127.0.0.2", "127.0.0.3", "127.0.0.4", "10.0.0.9")
    assert parse_bind("10.0.0.255-10.0.1.1") == ("10.0.0.255", "10.0.1.0", "10.0.1.1")  # across an octet
    assert parse_bind(None) == parse_bind(" ") == ()
    assert parse_bind("0.0.0.0") == ("0.0.0.0",)


@pytest.mark.parametrize(("text", "expected"), [
    ("127.0.0.2,", "an empty entry"),
    ("127.0.0.300", "'127.0.0.300' is not an IPv4 address"),
    ("gw.example.com", "is not an IPv4 address"),
    ("127.0.0.5-127.0.0.2", "runs backwards"),
    ("127.0.0.2-127.0.0.3-127.0.0.4", "is not an IPv4 address"),
    ("10.0.0.0-10.255.255.255", "holds 16777216 addresses"),  # refused before it is expanded
    ("127.0.0.2,127.0.0.1-127.0.0.3", "127.0.0.2 is listed twice"),
    ("0.0.0.0,127.0.0.2", "cannot be one of several"),
    ("224.0.0.1", "not a unicast address"),
])
def test_a_bad_bind_names_the_flag_and_the_problem(text: str, expected: str) -> None:
    with pytest.raises(UserError) as err:
        parse_bind(text)
    assert str(err.value).startswith(f"--bind {text!r}: ") and expected in str(err.value), err.value


def test_advertise_is_one_for_all_or_one_each() -> None:
    one = parse_addresses("127.0.0.2,127.0.0.3", "203.0.113.7")
    assert one.public("127.0.0.2") == one.public("127.0.0.3") == "203.0.113.7"
    each = parse_addresses("10.0.0.2,10.0.0.3", "203.0.113.2,203.0.113.3")
    assert (each.public("10.0.0.2"), each.public("10.0.0.3")) == ("203.0.113.2", "203.0.113.3")
    assert parse_addresses(None, "203.0.113.7").public("192.168.1.4") == "203.0.113.7"  # the routed default
    assert Addresses().public("127.0.0.1") is None
    for bad, why in (("gw.example.com", "not an IPv4 address"), ("0.0.0.0", "not an address the far end"),
                     ("203.0.113.2,203.0.113.3", "2 addresses for 1 --bind addresses")):
        with pytest.raises(UserError, match=why):
            parse_addresses("10.0.0.2", bad)


def test_an_agent_holds_eight_transports() -> None:
    eight = Addresses(tuple(f"127.0.0.{i}" for i in range(2, 2 + PJSUA_TRANSPORTS_MAX)))
    assert eight.per_agent_problem({"udp"}) is None
    problem = eight.per_agent_problem({"tcp"})  # udp is always there too: 16 transports
    assert problem is not None and "8 addresses x 2 SIP transports (udp, tcp) is 16" in problem
    assert "at most 4 addresses" in problem
    assert Addresses().per_agent_problem({"udp", "tcp", "tls"}) is None


def test_only_local_addresses_can_be_bound() -> None:
    check_local_addresses(["127.0.0.1", "127.0.0.7", "0.0.0.0"])  # all of 127/8 is on lo
    with pytest.raises(UserError, match=r"--bind 192\.0\.2\.1: not an address of this host"):
        check_local_addresses(["127.0.0.2", "192.0.2.1"])  # TEST-NET-1: never assigned to a host


def test_the_summary_counts_each_source_address_in_numeric_order() -> None:
    records = [rec(i) for i in range(5)] + [rec(5, "rejected", sip=486, turns=[], hangup=None)]
    for r, src in zip(records, ["127.0.0.10", "127.0.0.9", "127.0.0.10", "127.0.0.9", "127.0.0.9", "127.0.0.10"],
                      strict=True):
        r.source_address = src
    s = run(records)
    assert list(s["source_addresses"]) == ["127.0.0.9", "127.0.0.10"]
    assert s["source_addresses"] == {"127.0.0.9": {"calls": 3, "completed": 3, "rejected": 0},
                                     "127.0.0.10": {"calls": 3, "completed": 2, "rejected": 1}}
    assert Summary.from_dict(s).source_addresses["127.0.0.10"] == SourceCounts(3, 2, 1)
    assert run([rec(0)])["source_addresses"] == {}  # a record without one (agent_lost, older agents)


def test_the_record_carries_its_source_address_and_the_terminal_shows_the_spread() -> None:
    r = rec(1)
    r.source_address = "127.0.0.3"
    assert CallRecord.from_json(r.to_json()).source_address == "127.0.0.3"
    assert CallRecord.from_dict({k: v for k, v in r.to_dict().items() if k != "source_address"}).source_address \
        is None  # a record written before the field reads back
    b = rec(2, "rejected", sip=486, turns=[], hangup=None)
    b.source_address = "127.0.0.2"
    s = summarize([r, b], run_id="r", scenario_name="s", target="sip:x@127.0.0.1", concurrency=1, calls_planned=2,
                  started_at=0.0, ended_at=1.0, health=healthy())
    buf = io.StringIO()
    Console(file=buf, width=200, force_terminal=False, color_system=None).print(render_summary(s))
    assert "Source addresses: 127.0.0.2 1 calls (0 completed, 1 rejected), 127.0.0.3 1 calls (1 completed)" \
        in buf.getvalue()

