"""Per-call identity, the pure parts: templates, the identities file, row order, the profile's round trip,
the scenario's `sip:` keys, From/To values, and how a gateway and the tracker name the Rasa sender."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import pytest

from tests.refbot import DEMO
from voiceload.core.identity import (
    CallFields,
    CallIdentity,
    IdentityError,
    IdentitySpec,
    Template,
    agent_number,
    parse_header,
    parse_identities,
    row_index,
    sender_of,
    with_user,
)
from voiceload.core.sipprofile import ProfileError, SipProfile, profile_from_scenario
from voiceload.errors import UserError
from voiceload.run import coordinator
from voiceload.sip.message import name_addr
from voiceload.sut.gateway import rasa_sender

CALL = CallFields(seq=7, agent="a2", session="run1-a2-7", run="run1")
ROWS = parse_identities("caller,name,callee\n+15550001,Ann,100\n+15550002,Bob,200\n+15550003,Cy,300\n", "ids.csv")


def expand(text: str, row: dict[str, str] | None = None, seed: int = 1) -> str:
    return Template.parse(text, "t").expand(CALL, row, random.Random(seed))


# --- templates ---------------------------------------------------------------------------------------

def test_a_template_expands_the_calls_fields_digits_and_csv_columns() -> None:
    assert expand("{run}/{agent}/{seq}/{session}") == "run1/a2/7/run1-a2-7"
    assert expand("+1555{csv.caller}x", {"caller": "42"}) == "+155542x"
    digits = expand("{digits:10}")
    assert len(digits) == 10 and digits.isdigit()
    assert expand("{digits:10}", seed=1) == digits and expand("{digits:10}", seed=2) != digits
    assert expand("{{literal}} {seq}") == "{literal} 7"
    assert expand("no fields") == "no fields"
    assert Template.parse("{csv.a}-{csv.b}-{seq}", "t").columns == ("a", "b")


@pytest.mark.parametrize(("text", "message"), [
    ("{sequence}", "unknown field {sequence}"),
    ("{digits}", "unknown field {digits}"),
    ("{digits:0}", "count of digits from 1 to 64"),
    ("{digits:x}", "count of digits"),
    ("{digits:65}", "count of digits"),
    ("{csv.}", "names no column"),
    ("abc{seq", "without its '}'"),
    ("abc}", "without its '{'"),
    ("a\r\nVia: x", "line break"),
])
def test_a_bad_template_names_where_it_is_and_the_field(text: str, message: str) -> None:
    with pytest.raises(IdentityError, match=r"^--from: ") as exc:
        Template.parse(text, "--from")
    assert message in str(exc.value)


def test_a_header_flag_is_name_colon_template_and_the_stacks_own_headers_are_refused() -> None:
    assert parse_header("X-Caller:  {csv.caller} ") == ("X-Caller", "{csv.caller}")
    assert parse_header("P-Asserted-Identity: <sip:{seq}@x>") == ("P-Asserted-Identity", "<sip:{seq}@x>")
    for bad, message in [("X-Caller", "expected 'Name: value'"), (": v", "expected 'Name: value'"),
                         ("X Y: v", "not a header name"), ("From: x", "use --from"), ("to: x", "use --to-user"),
                         ("Call-ID: x", "written by the SIP stack"), ("X-Voiceload-Session: x", "written by"),
                         ("X-A: {nope}", "unknown field {nope}")]:
        with pytest.raises(IdentityError, match="--header") as exc:
            parse_header(bad)
        assert message in str(exc.value), bad


# --- the identities file ---------------------------------------------------------------------------------

def test_an_identities_file_has_a_header_then_rows_used_in_order_and_wrapping() -> None:
    assert ROWS.columns == ("caller", "name", "callee")
    assert [ROWS.row(i)["caller"] for i in range(5)] == ["+15550001", "+15550002", "+15550003", "+15550001",
                                                        "+15550002"]
    semi = parse_identities("# SIPp-style, semicolons\n\ncaller;name\n 1 ; A \n2;\"B;b\"\n", "s.csv")
    assert semi.columns == ("caller", "name") and semi.rows == (("1", "A"), ("2", "B;b"))


@pytest.mark.parametrize(("text", "message"), [
    ("", "ids.csv: empty"),
    ("# only a comment\n\n", "ids.csv: empty"),
    ("caller,name\n", "ids.csv: a header line but no rows"),
    ("caller,,name\n1,2,3\n", "ids.csv line 1: a column without a name"),
    ("a,a\n1,2\n", "ids.csv line 1: column 'a' named twice"),
    ("a,b\n1,2\n1,2,3\n", "ids.csv line 3: 3 fields, the header has 2"),
])
def test_a_bad_identities_file_is_named_with_its_line(text: str, message: str) -> None:
    with pytest.raises(IdentityError) as exc:
        parse_identities(text, "ids.csv")
    assert str(exc.value).startswith(message)


def test_agents_share_the_rows_interleaved_and_one_agent_takes_them_in_order() -> None:
    assert [row_index(0, seq, 1) for seq in (1, 2, 3)] == [0, 1, 2]  # SIPp's order
    # two agents: a0 takes rows 0, 2, 4 ...; a1 takes 1, 3, 5 ...: no row twice before the file wraps
    taken = sorted(row_index(a, seq, 2) for a in (0, 1) for seq in (1, 2, 3))
    assert taken == [0, 1, 2, 3, 4, 5]
    assert (agent_number("a0"), agent_number("a12"), agent_number("by-hand")) == (0, 12, 0)


# --- the spec: merge, check, expand ----------------------------------------------------------------------

def spec(**kw: Any) -> IdentitySpec:
    return IdentitySpec(**kw).checked()


def test_a_call_gets_its_row_and_templates_expanded() -> None:
    s = spec(from_user="{csv.caller}", display_name="{csv.name} {seq}", to_user="{csv.callee}",
             headers=(("X-Run", "{run}"), ("X-Row", "{csv.name}")), identities="ids.csv", stride=1)
    got = s.expand(CallFields(2, "a0", "r-a0-2", "r"), ROWS, random.Random(0))
    assert got == CallIdentity("+15550002", "Bob 2", "200", (("X-Run", "r"), ("X-Row", "Bob")))
    assert got.from_header("agent-a0", "127.0.0.1:5060") == '"Bob 2" <sip:+15550002@127.0.0.1:5060>'
    assert not IdentitySpec().active and s.active


def test_rows_with_credentials_give_each_call_its_own_and_its_from_user() -> None:
    rows = parse_identities("auth_user,auth_password,name\nalice,pw-a,A\nbob,pw:b,B\n", "ids.csv")
    assert rows.has_credentials and not ROWS.has_credentials
    s = spec(identities="ids.csv")  # no template at all: the file alone makes the spec active
    assert s.active
    got = s.expand(CallFields(2, "a0", "r-a0-2", "r"), rows, random.Random(0))
    assert got.auth == ("bob", "pw:b") and got.from_user == "bob"
    assert "pw:b" not in repr(got)
    got = spec(identities="ids.csv", from_user="{csv.name}").expand(CallFields(1, "a0", "r-a0-1", "r"), rows,
                                                                     random.Random(0))
    assert got.auth == ("alice", "pw-a") and got.from_user == "A"  # a From template still wins


def test_the_command_line_replaces_the_scenarios_values_and_headers_by_name() -> None:
    scenario = IdentitySpec(from_user="s{seq}", display_name="Scenario", headers=(("X-A", "1"), ("X-B", "2")))
    merged = scenario.merged(from_user="c{seq}", headers=[("x-b", "3"), ("X-C", "4")], sender="call-id")
    assert (merged.from_user, merged.display_name, merged.sender) == ("c{seq}", "Scenario", "call-id")
    assert merged.headers == (("X-A", "1"), ("x-b", "3"), ("X-C", "4"))
    assert scenario.merged() == scenario


def test_a_spec_that_cannot_work_is_refused() -> None:
    with pytest.raises(IdentityError, match=r"reads \{csv.caller\} but no identities file"):
        spec(from_user="{csv.caller}")
    with pytest.raises(IdentityError, match="from-user needs a From user per call"):
        spec(sender="from-user")
    with pytest.raises(IdentityError, match="'nobody' is not one of session, from-user, call-id"):
        spec(sender="nobody")
    s = spec(from_user="{csv.caller}", headers=(("X-Acct", "{csv.account}"),), identities="ids.csv")
    with pytest.raises(IdentityError) as exc:
        s.check_rows(ROWS)
    assert str(exc.value) == ("ids.csv: no column 'account', read by header X-Acct '{csv.account}' "
                              "(columns: caller, name, callee)")


def test_from_values_and_request_uris() -> None:
    assert CallIdentity().from_header("u", "h") is None  # the account's From
    assert CallIdentity(display_name="Ann").from_header("agent-a0", "10.0.0.1:5060") == \
        '"Ann" <sip:agent-a0@10.0.0.1:5060>'
    assert CallIdentity(from_user="alice@gw.example.com").from_header("u", "h") == "<sip:alice@gw.example.com>"
    assert CallIdentity(from_user="sips:bob@gw").from_header("u", "h") == "<sips:bob@gw>"
    assert CallIdentity(from_user="a b", display_name='say "hi"').from_header("u", "h") == \
        '"say \\"hi\\"" <sip:a%20b@h>'
    assert CallIdentity(from_user="alice@gw").from_user_part == "alice"
    assert with_user("sip:bot@127.0.0.1:5080", "+4930123") == "sip:+4930123@127.0.0.1:5080"
    assert with_user("sip:bot@h", "a@b c") == "sip:a%40b%20c@h"
    assert with_user("sip:127.0.0.1:5080;transport=tcp", "100") == "sip:100@127.0.0.1:5080;transport=tcp"


# --- the profile and the scenario's sip: section ---------------------------------------------------------

def test_the_identity_survives_the_profiles_json_round_trip() -> None:
    p = SipProfile(identity=IdentitySpec(from_user="{seq}", display_name="D", to_user="{csv.c}",
                                         headers=(("X-A", "{run}"), ("X-B", "b")), identities="/x/ids.csv",
                                         sender="from-user", stride=3))
    assert SipProfile.from_json(p.to_json()) == p
    assert SipProfile.from_json(SipProfile().to_json()) == SipProfile()
    assert SipProfile.from_json('{"auth": null}').identity == IdentitySpec()  # a profile from before


def test_the_scenarios_sip_section_carries_the_identity(tmp_path: Path) -> None:
    p = profile_from_scenario({"from": "+1555{digits:7}", "display_name": "Load {seq}", "to_user": 100,
                               "headers": {"X-Tenant": "acme"}, "identities": "ids.csv", "sender": "call-id"},
                              tmp_path)
    assert p.identity == IdentitySpec(from_user="+1555{digits:7}", display_name="Load {seq}", to_user="100",
                                      headers=(("X-Tenant", "acme"),), identities=str(tmp_path / "ids.csv"),
                                      sender="call-id")


@pytest.mark.parametrize(("section", "fld", "message"), [
    ({"from": "{nope}"}, "sip.from", "unknown field {nope}"),
    ({"display_name": ["x"]}, "sip.display_name", "must be a string"),
    ({"to_user": "{digits:99}"}, "sip.to_user", "count of digits"),
    ({"headers": ["X-A: 1"]}, "sip.headers", "must be a mapping"),
    ({"headers": {"From": "x"}}, "sip.headers.From", "use --from"),
    ({"headers": {"X-A": "{csv.a}"}}, "sip.headers.X-A", "no identities file"),
    ({"sender": "nobody"}, "sip.sender", "must be one of session, from-user, call-id"),
    ({"sender": "from-user"}, "sip.sender", "from-user needs a From user"),
    ({"identities": 3}, "sip.identities", "must be the path of a CSV file"),
])
def test_a_bad_sip_identity_key_names_its_field(section: dict[str, Any], fld: str, message: str) -> None:
    with pytest.raises(ProfileError) as exc:
        profile_from_scenario(section, Path())
    assert exc.value.fld == fld and message in exc.value.message


def test_a_scenario_with_a_bad_template_is_refused_with_its_line(tmp_path: Path) -> None:
    from voiceload.core.scenario import load_scenario
    from voiceload.errors import ScenarioError

    text = DEMO.read_text().replace("../recordings/", str(DEMO.parent.parent / "recordings") + "/")
    bad = tmp_path / "s.yaml"
    bad.write_text(text + "sip:\n  from: '{sequence}'\n")
    with pytest.raises(ScenarioError) as exc:
        load_scenario(bad)
    assert any("sip.from" in p and "unknown field {sequence}" in p for p in exc.value.problems), exc.value.problems


# --- the coordinator's check of the identities file ------------------------------------------------------

def settings(tmp_path: Path, **identity: Any) -> coordinator.RunSettings:
    return coordinator.RunSettings(scenario_path=DEMO, target="sip:bot@127.0.0.1:5080", concurrency=1, calls=1,
                                   out_dir=tmp_path / "out", identity=identity)


def test_validate_reads_the_identities_file_before_any_call(tmp_path: Path) -> None:
    ids = tmp_path / "ids.csv"
    ids.write_text("caller,name\n1,A\n")
    s = settings(tmp_path, from_user="{csv.caller}", identities=str(ids))
    coordinator.validate(s)
    assert s.sip.identity.from_user == "{csv.caller}" and s.sip.identity.identities == str(ids)
    for path, content, message in [
        (ids, "caller\n1\n", f"{ids}: no column 'name', read by display name '{{csv.name}}' (columns: caller)"),
        (ids, "", f"{ids}: empty"),
        (tmp_path / "missing.csv", None, f"identities file {tmp_path / 'missing.csv'}: cannot read it: "
                                         "No such file or directory"),
        (tmp_path, None, f"identities file {tmp_path}: cannot read it: Is a directory"),
    ]:
        if content is not None:
            path.write_text(content)
        with pytest.raises(UserError) as exc:
            coordinator.validate(settings(tmp_path, from_user="{csv.caller}", display_name="{csv.name}",
                                          identities=str(path)))
        assert str(exc.value).startswith(message), str(exc.value)


# --- the Rasa sender, both sides ------------------------------------------------------------------------

INVITE = ('INVITE sip:bot@127.0.0.1:5080 SIP/2.0\r\nFrom: "Ann" <sip:%2B15550001@127.0.0.1:5062>;tag=1\r\n'
          "To: <sip:bot@127.0.0.1:5080>\r\nCall-ID: cid-1\r\nX-Voiceload-Session: r-a0-1\r\n\r\n")


def test_the_gateway_takes_the_sender_from_the_header_the_from_user_or_the_call_id() -> None:
    assert rasa_sender("session", INVITE, "cid-1") == "r-a0-1"
    assert rasa_sender("from-user", INVITE, "cid-1") == "+15550001"  # unescaped, as the agent sent it
    assert rasa_sender("call-id", INVITE, "cid-1") == "cid-1"
    bare = INVITE.replace("X-Voiceload-Session: r-a0-1\r\n", "").replace('"Ann" <sip:%2B15550001@', "<sip:")
    assert rasa_sender("session", bare, "cid-1") == "cid-1"
    assert rasa_sender("from-user", bare, "cid-1") == "cid-1"  # a From without a user


def test_the_tracker_asks_for_the_sender_the_gateway_uses() -> None:
    kw = {"session": "r-a0-1", "call_id": "cid-1", "from_user": "+15550001"}
    assert [sender_of(m, **kw) for m in ("session", "from-user", "call-id")] == ["r-a0-1", "+15550001", "cid-1"]
    assert sender_of("from-user", session="r-a0-1", call_id="c", from_user=None) == "r-a0-1"


def test_name_addr_reads_display_uri_and_user() -> None:
    assert name_addr('"A \\"B\\"" <sip:u%20x@h;user=phone>;tag=9') == ('A "B"', "sip:u%20x@h;user=phone", "u x")
    assert name_addr("Bob <sips:b@h>") == ("Bob", "sips:b@h", "b")
    assert name_addr("sip:c@h:5060;tag=1") == (None, "sip:c@h:5060", "c")
    assert name_addr("<sip:h>") == (None, "sip:h", None)
    assert name_addr(None) == (None, None, None)
