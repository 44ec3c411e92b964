"""Which local addresses a run's calls come from (`--bind`) and which it advertises (`--advertise`). Pure.

Gateways rate-limit per source IP: a generator on one address meets a `486` "flood" rejection
that says nothing about the bot behind the gateway. `--bind` lists several addresses (or ranges),
every agent binds a SIP transport, an account and its calls' RTP on each, and calls take them in
turn. `--advertise` is the address the far end must use to reach us (a generator behind NAT): it
goes into Via, Contact and the SDP `c=` line while the sockets stay bound to the local addresses.
Parsing only: whether an address is on this host is for `sip.lite.check_local_addresses`.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from voiceload.errors import UserError

# pjsua keeps its transports in a fixed array of 8 (pjsua_internal.h, `tpdata[8]`), and the PyPI
# wheel holds 8 accounts (PJSUA_MAX_ACC): an agent binds each address once per SIP transport kind.
PJSUA_TRANSPORTS_MAX = 8
ANY = "0.0.0.0"


@dataclass(frozen=True)
class Addresses:
    """The run's local addresses and, per address, what it advertises (None: itself)."""

    bind: tuple[str, ...] = ()  # empty: the address that routes to the target, as before
    advertise: tuple[str, ...] = ()  # empty, one for every bound address, or one per bound address

    def public(self, host: str) -> str | None:
        """What `host` (one of `bind`, or the routed default) tells the far end; None: its own address."""
        if not self.advertise:
            return None
        if len(self.advertise) == 1:
            return self.advertise[0]
        return self.advertise[self.bind.index(host)]

    def per_agent_problem(self, transports: set[str]) -> str | None:
        """Why one agent cannot hold these addresses with these SIP transports (None: it can)."""
        kinds = sorted({"udp", *transports}, key=("udp", "tcp", "tls").index)
        need = max(1, len(self.bind)) * len(kinds)
        if need <= PJSUA_TRANSPORTS_MAX:
            return None
        most = PJSUA_TRANSPORTS_MAX // len(kinds)
        return (f"--bind: {len(self.bind)} addresses x {len(kinds)} SIP transports ({', '.join(kinds)}) is "
                f"{need} transports; a pjsua2 agent holds {PJSUA_TRANSPORTS_MAX}, so at most {most} addresses")


def _ipv4(text: str, flag: str, whole: str) -> ipaddress.IPv4Address:
    try:
        return ipaddress.IPv4Address(text.strip())
    except ValueError:
        raise UserError(f"{flag} {whole!r}: {text.strip()!r} is not an IPv4 address") from None


def parse_bind(text: str | None) -> tuple[str, ...]:
    """`IP[,IP...]` where each item may be a range `FIRST-LAST` (both IPv4, e.g. 127.0.0.2-127.0.0.9)."""
    if text is None or not text.strip():
        return ()
    out: list[str] = []
    for item in text.split(","):
        if not item.strip():
            raise UserError(f"--bind {text!r}: an empty entry in the comma-separated list")
        first_s, dash, last_s = item.partition("-")
        first = _ipv4(first_s, "--bind", text)
        if not dash:
            out.append(str(first))
            continue
        last = _ipv4(last_s, "--bind", text)
        if last < first:
            raise UserError(f"--bind {text!r}: the range {item.strip()} runs backwards (FIRST-LAST, low to high)")
        count = int(last) - int(first) + 1
        if count > PJSUA_TRANSPORTS_MAX:
            raise UserError(f"--bind {text!r}: the range {item.strip()} holds {count} addresses; "
                            f"an agent binds at most {PJSUA_TRANSPORTS_MAX}")
        out += [str(ipaddress.IPv4Address(int(first) + i)) for i in range(count)]
    seen: set[str] = set()
    for addr in out:
        if addr in seen:
            raise UserError(f"--bind {text!r}: {addr} is listed twice")
        seen.add(addr)
    if ANY in out and len(out) > 1:
        raise UserError(f"--bind {text!r}: {ANY} (every local address) cannot be one of several source addresses")
    for addr in out:
        if ipaddress.IPv4Address(addr).is_multicast:
            raise UserError(f"--bind {text!r}: {addr} is not a unicast address")
    return tuple(out)


def parse_advertise(text: str | None, bind: tuple[str, ...]) -> tuple[str, ...]:
    """`IP`, or `IP,IP,...` paired one to one with `--bind`'s addresses (1:1 NAT of each)."""
    if text is None or not text.strip():
        return ()
    out = []
    for item in text.split(","):
        ip = _ipv4(item, "--advertise", text)
        if ip.is_unspecified or ip.is_multicast:
            raise UserError(f"--advertise {text!r}: {ip} is not an address the far end can send to")
        out.append(str(ip))
    if len(out) > 1 and len(out) != len(bind):
        raise UserError(f"--advertise {text!r}: {len(out)} addresses for {len(bind)} --bind addresses; "
                        "give one for all, or one per --bind address in the same order")
    return tuple(out)


def parse_addresses(bind: str | None, advertise: str | None) -> Addresses:
    """The two flags together (UserError naming the flag on bad input)."""
    hosts = parse_bind(bind)
    return Addresses(hosts, parse_advertise(advertise, hosts))
