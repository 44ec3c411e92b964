"""The SIP profile's parsing (pure): URIs and transports, credentials, the scenario's `sip:` section."""

from __future__ import annotations

from pathlib import Path

import pytest

from voiceload.core.sipprofile import (
    Credentials,
    ProfileError,
    SipProfile,
    SipUri,
    TlsSettings,
    parse_sip_uri,
    profile_from_scenario,
)
from voiceload.errors import UserError


@pytest.mark.parametrize(("uri", "expected"), [
    ("sip:bot@127.0.0.1:5080", SipUri("bot", "127.0.0.1", 5080, "udp")),
    ("sip:127.0.0.1", SipUri("", "127.0.0.1", 5060, "udp")),
    ("sip:bot@gw.example.com;transport=TCP", SipUri("bot", "gw.example.com", 5060, "tcp")),
    ("sip:bot@gw.example.com;transport=tls", SipUri("bot", "gw.example.com", 5061, "tls")),
    ("sips:bot@gw.example.com", SipUri("bot", "gw.example.com", 5061, "tls", secure=True)),
    ("sips:bot@gw.example.com:6061;transport=tls", SipUri("bot", "gw.example.com", 6061, "tls", secure=True)),
])
def test_uris_and_their_transports(uri: str, expected: SipUri) -> None:
    assert parse_sip_uri(uri) == expected
    assert parse_sip_uri(str(expected)) == expected  # it prints as it parses


@pytest.mark.parametrize(("uri", "problem"), [
    ("bot@127.0.0.1", "expected a SIP URI"),
    ("tel:+4930123", "expected a SIP URI"),
    ("sip:bot@127.0.0.1;transport=sctp", "transport 'sctp' is not one of udp, tcp, tls"),
    ("sips:bot@127.0.0.1;transport=tcp", "a sips: URI goes over TLS, not tcp"),
    ("sip:bot@127.0.0.1:port", "port 'port' is not a number"),
    ("sip:bot@127.0.0.1:70000", "port 70000 out of range"),
    ("sip:bot@", "no host"),
    ("sip:bot@[::1]:5060", "IPv6"),
])
def test_bad_uris_name_the_flag_and_the_problem(uri: str, problem: str) -> None:
    with pytest.raises(UserError, match="--proxy") as err:
        parse_sip_uri(uri, "--proxy")
    assert problem in str(err.value)


def test_credentials_keep_colons_in_the_password_and_never_show_it() -> None:
    creds = Credentials.parse("alice:pa:ss")
    assert (creds.user, creds.password, creds.realm) == ("alice", "pa:ss", "*")
    assert "pa:ss" not in repr(creds) and "pa:ss" not in repr(SipProfile(auth=creds))
    for bad in ("alice", ":secret", ""):
        with pytest.raises(UserError, match="expected USER:PASSWORD"):
            Credentials.parse(bad)


def test_profile_survives_its_trip_to_the_agents() -> None:
    profile = SipProfile(auth=Credentials("alice", "pw", "example.com"), proxy="sip:sbc.example.com;transport=tcp",
                         tls=TlsSettings(ca_file="/ca.pem", verify_server=False), register=True)
    assert SipProfile.from_json(profile.to_json()) == profile
    assert SipProfile.from_json(SipProfile().to_json()) == SipProfile()


def test_command_line_replaces_scenario_values_it_sets() -> None:
    base = SipProfile(auth=Credentials("alice", "pw"), proxy="sip:p1.example.com")
    merged = base.merged(auth=None, proxy="sip:p2.example.com", register=None)
    assert merged.auth == base.auth and merged.proxy == "sip:p2.example.com" and not merged.register


def test_transports_follow_the_first_hop() -> None:
    targets = ["sip:a@127.0.0.1", "sip:b@127.0.0.1;transport=tcp"]
    assert SipProfile().transports(targets) == {"udp", "tcp"}
    assert SipProfile(proxy="sips:sbc.example.com").transports(targets) == {"tls"}


def test_tls_files_are_checked_only_for_tls(tmp_path: Path) -> None:
    missing = SipProfile(tls=TlsSettings(ca_file=str(tmp_path / "nope.pem")))
    missing.checked(["sip:bot@127.0.0.1"])  # no TLS target: not looked at
    with pytest.raises(UserError, match=r"--tls-ca .*nope\.pem: no such file"):
        missing.checked(["sips:bot@127.0.0.1"])


def test_scenario_section(tmp_path: Path) -> None:
    section = {"auth": {"user": "alice", "password": "pw"}, "proxy": "sip:sbc.example.com;transport=tcp",
               "tls": {"ca": "certs/ca.pem", "verify": False}, "register": True}
    profile = profile_from_scenario(section, tmp_path)
    assert profile.auth == Credentials("alice", "pw")
    assert profile.tls == TlsSettings(ca_file=str(tmp_path / "certs/ca.pem"), verify_server=False)
    assert profile.proxy == "sip:sbc.example.com;transport=tcp" and profile.register
    assert profile_from_scenario(None, tmp_path) == SipProfile()


@pytest.mark.parametrize(("section", "fld", "problem"), [
    ("udp", "sip", "must be a mapping"),
    ({"authentication": {}}, "sip.authentication", "unknown key"),
    ({"auth": {"user": "alice"}}, "sip.auth", "user, password"),
    ({"auth": {"user": "alice", "password": 1234}}, "sip.auth", "user, password"),
    ({"proxy": "sbc.example.com"}, "sip.proxy", "expected a SIP URI"),
    ({"tls": {"ca": "x.pem", "cafile": "y"}}, "sip.tls", "ca, cert, key"),
    ({"register": "yes"}, "sip.register", "true or false"),
])
def test_scenario_section_errors_name_the_field(section: object, fld: str, problem: str, tmp_path: Path) -> None:
    with pytest.raises(ProfileError) as err:
        profile_from_scenario(section, tmp_path)
    assert err.value.fld == fld and problem in err.value.message


def test_a_tls_target_needs_a_pjsua2_with_tls(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The run process asks the installed pjsua2 (in a child) whether it has TLS, before any call."""
    from tests.refbot import DEMO
    from voiceload.run import coordinator
    from voiceload.sip.lite import Pjsua2Build

    monkeypatch.setattr(coordinator, "pjsua2_build",
                        lambda: Pjsua2Build(max_calls=4, tls=False, per_call_from=False))
    settings = coordinator.RunSettings(scenario_path=DEMO, target="sips:bot@127.0.0.1", concurrency=1, calls=1,
                                       out_dir=tmp_path / "out")
    with pytest.raises(UserError, match="TLS, but this pjsua2 build has no TLS"):
        coordinator.validate(settings)
    settings.target = "sip:bot@127.0.0.1;transport=tcp"
    coordinator.validate(settings)  # TCP needs nothing more
    assert settings.sip == SipProfile()
    settings.identity = {"from_user": "+1555{digits:7}"}
    with pytest.raises(UserError, match="a per-call From needs voiceload's own pjsua2 build"):
        coordinator.validate(settings)
