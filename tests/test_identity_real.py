"""Per-call identity over real SIP: what a SIPp UAS received, and a Rasa tracker found under the gateway's sender.

1. `voiceload run` with From/display-name/To-user/header templates and an identities CSV calls a SIPp
   UAS; SIPp's own message log (-trace_msg) is the witness: each INVITE's From user, display name,
   request URI/To user and extra headers equal what the templates and the call's CSV row give.
2. Calls through our voice gateway (`voiceload bot --brain rasa`) in front of a fake Rasa, the gateway
   naming the conversation after the From user, then after the Call-ID; the run's tracker check asks
   the fake for the same sender, so it finds the conversation the gateway had (and the calls pass).
3. Bad identity input through the CLI: one line naming the file or field, exit 2, before any call.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

from tests import fakerasa
from tests.refbot import DEMO, REPO, assert_completed, checked_summary, start_bot, voiceload
from tests.test_sipp_interop import Sipp, offsets, sipp_uas, write_scenario  # noqa: F401 (fixtures)
from voiceload.core.scenario import load_scenario
from voiceload.sip.message import SipMessage, name_addr

pytestmark = pytest.mark.real

CALLS = 4  # the SIPp fixture answers 4 calls (and the OPTIONS probe)
ROWS = [("+15550001", "Ann Lee", "100"), ("+15550002", 'Bob "B" Ray', "200"), ("+15550003", "Cy", "300")]


def invites(message_log: Path) -> list[SipMessage]:
    """The INVITEs SIPp received (its -trace_msg file: a dashed line, a 'received' line, the message)."""
    out = []
    for chunk in re.split(r"^-{20,}.*$", message_log.read_text(errors="replace"), flags=re.MULTILINE):
        if "message received" not in chunk:
            continue
        start = re.search(r"^INVITE \S+ SIP/2\.0", chunk, flags=re.MULTILINE)
        if start is None:
            continue
        msg = SipMessage.parse(chunk[start.start():].replace("\n", "\r\n"))
        if msg is not None and msg.cseq_method == "INVITE" and not msg.all("Authorization"):
            out.append(msg)
    return out


def test_each_invite_carries_its_templates_and_its_csv_row(tmp_path: Path, sipp_uas: Sipp) -> None:  # noqa: F811
    ids = tmp_path / "identities.csv"
    ids.write_text("caller,name,callee\n" + "".join(f'{c},"{n.replace(chr(34), 2 * chr(34))}",{t}\n'
                                                    for c, n, t in ROWS))
    scenario = write_scenario(tmp_path / "identity.yaml")
    # the scenario's sip: section gives a From (the --from flag replaces it) and a header (kept)
    scenario.write_text(scenario.read_text() + "sip:\n  from: 'scenario-{seq}'\n  headers:\n"
                        "    X-Tenant: 't-{run}'\n")
    out = tmp_path / "run"
    # two agents of one call each: the agents share the rows (a0: rows 0, 2; a1: rows 1, 3 = 0 again)
    res = voiceload("run", str(scenario), "--target", sipp_uas.target, "-c", "2", "-n", str(CALLS),
                    "--calls-per-agent", "1", "--out", str(out),
                    "--from", "{csv.caller}", "--display-name", "{csv.name} #{seq}", "--to-user", "{csv.callee}",
                    "--header", "X-Account: acct-{csv.callee}-{agent}", "--header", "X-Digits: {digits:6}",
                    "--identities", str(ids), timeout=120, out=out)
    assert (out / "summary.json").exists(), res.stderr[-3000:] + sipp_uas.errors()
    summary = checked_summary(res)
    calls = res.calls()
    assert len(calls) == CALLS
    assert all(c["sip_code"] == 200 for c in calls), [(c["outcome"], c["reason"]) for c in calls]
    assert_completed(summary, calls)

    got = invites(sipp_uas.workdir / "sipp_messages.log")
    assert len(got) == CALLS, [m.start_line for m in got]
    seen_rows = []
    for msg in got:
        session = msg.get("X-Voiceload-Session")
        assert session is not None
        run_id, agent, seq_s = session.rsplit("-", 2)
        seq = int(seq_s)
        row = ((seq - 1) * 2 + int(agent[1:])) % len(ROWS)  # agent K of 2 takes rows K, K + 2, ...
        seen_rows.append(row)
        caller, name, callee = ROWS[row]
        print(f"{session}: row {row}: {msg.start_line} | From: {msg.get('From')} | To: {msg.get('To')} | "
              f"X-Account: {msg.get('X-Account')} | X-Digits: {msg.get('X-Digits')} | X-Tenant: {msg.get('X-Tenant')}")
        assert len(msg.all("From")) == 1  # the call's From replaces the account's, it is not a second one
        display, _uri, user = name_addr(msg.get("From"))
        assert (display, user) == (f"{name} #{seq}", caller)
        assert msg.uri is not None and name_addr(msg.uri)[2] == callee  # the request URI's user
        assert name_addr(msg.get("To"))[2] == callee
        assert msg.get("X-Account") == f"acct-{callee}-{agent}"
        digits = msg.get("X-Digits") or ""
        assert len(digits) == 6 and digits.isdigit()
        assert msg.get("X-Tenant") == f"t-{run_id}"
        # the request went to SIPp's address: only the user part changed
        assert msg.uri.endswith(sipp_uas.target.partition("@")[2])
    assert sorted(seen_rows) == [0, 0, 1, 2]  # in order, shared, wrapping after the third row
    # SIPp saw a distinct From tag and Call-ID per call, and the records are the same calls
    assert sorted(m.call_id for m in got) == sorted(c["call_id"] for c in calls)


# --- the gateway names the Rasa conversation: From user or Call-ID --------------------------------------

INTENTS = ["order_drink", "give_name"]
ACTIONS = ["utter_ask_name", "utter_goodbye"]


def _scenario_with_intents(tmp_path: Path, extra: str = "") -> Path:
    """demo.yaml with `intent:`/`action:` on its turns (so the run checks trackers), recordings by absolute path."""
    text = DEMO.read_text().replace("../recordings/", str(REPO / "recordings") + "/")
    text = text.replace("caller-01-order.wav   # transcript: caller-01-order.txt beside it\n",
                        f"caller-01-order.wav\n    intent: {INTENTS[0]}\n    action: {ACTIONS[0]}\n", 1)
    text = text.replace("caller-02-name.wav\n", f"caller-02-name.wav\n    intent: {INTENTS[1]}\n"
                        f"    action: {ACTIONS[1]}\n", 1)
    path = tmp_path / "demo-intents.yaml"
    path.write_text(text + extra)
    assert [t.intent for t in load_scenario(path).turns] == INTENTS
    return path


needs_tts = pytest.mark.skipif(shutil.which("espeak-ng") is None or shutil.which("sox") is None,
                               reason="espeak-ng and sox not installed")


@pytest.mark.timeout(300)
@needs_tts
@pytest.mark.parametrize("sender", ["from-user", "call-id"])
def test_the_tracker_check_finds_the_conversation_the_gateway_named(tmp_path: Path, sender: str) -> None:
    # Rasa's replies are the demo's next prompts: synthesised, they are those prompts, so the turns pass
    replies = [(REPO / "recordings" / "demo" / f).read_text().strip() for f in ("bot-01-name.txt", "bot-02-bye.txt")]
    # the sender mode comes from the scenario for one case and from the flag for the other
    in_scenario = sender == "from-user"
    scenario = _scenario_with_intents(tmp_path, "sip:\n  from: 'caller-{session}'\n  sender: from-user\n"
                                      if in_scenario else "")
    with fakerasa.serve(fakerasa.Script(replies=replies, intents=INTENTS, actions=ACTIONS)) as fake:
        bot = start_bot(tmp_path, scenario=scenario, max_calls=4,
                        extra=["--brain", "rasa", "--rasa-url", fake.url, "--rasa-sender", sender])
        try:
            out = tmp_path / "run"
            flags = [] if in_scenario else ["--rasa-sender", sender]
            res = voiceload("run", str(scenario), "--target", bot.target, "-c", "2", "-n", "2", "--out", str(out),
                            "--rasa-url", fake.url, *flags, out=out, timeout=120)
        finally:
            bot.stop()
        summary = checked_summary(res)
        calls = res.calls()
        assert len(calls) == 2
        assert_completed(summary, calls)
        truth = bot.truth_lines()
        gateway_senders = {t["call_id"]: t["sender"] for t in truth}
        print(f"gateway senders: {gateway_senders}; tracker requests: {fake.tracker_requests}; "
              f"messages: {sorted(fake.messages)}")
        if sender == "call-id":
            assert all(s == cid for cid, s in gateway_senders.items())
        else:  # the From user the agent sent: caller-<session id>, one per call
            assert sorted(gateway_senders.values()) == sorted(f"caller-{summary['run_id']}-a0-{c['seq']}"
                                                              for c in calls)
        # the gateway talked to Rasa under those senders, and the tracker check asked for exactly them:
        # an unknown sender would get the fake's made-up tracker, so this equality is the real check
        assert set(fake.messages) == set(gateway_senders.values())
        assert sorted(fake.tracker_requests) == sorted(gateway_senders.values())
        if all(c["outcome"] == "completed" for c in calls):
            assert all(c["reason"] is None for c in calls)


# --- bad input -----------------------------------------------------------------------------------------

def _one_line(stderr: str) -> str:
    lines = [x for x in stderr.splitlines() if x.strip()]
    assert "Traceback" not in stderr and len(lines) == 1, stderr
    return lines[0]


def test_bad_identity_input_is_one_line_and_exit_2_before_any_call(tmp_path: Path) -> None:
    good = tmp_path / "ids.csv"
    good.write_text("caller\n1\n")
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    target = "sip:bot@127.0.0.1:9"  # nothing listens: a run that got past validation would fail its probe
    cases = [
        (["--from", "{sequence}"], "--from: '{sequence}': unknown field {sequence}"),
        (["--header", "X-A {seq}"], "--header: 'X-A {seq}': expected 'Name: value'"),
        (["--header", "From: x"], "--header: From is written by the SIP stack"),
        (["--from", "{csv.caller}"], "From: '{csv.caller}' reads {csv.caller} but no identities file"),
        (["--from", "{csv.callr}", "--identities", str(good)], f"{good}: no column 'callr', read by From"),
        (["--from", "{csv.caller}", "--identities", str(empty)], f"{empty}: empty"),
        (["--from", "{csv.caller}", "--identities", str(tmp_path / "nope.csv")],
         f"identities file {tmp_path / 'nope.csv'}: cannot read it"),
        (["--rasa-sender", "from-user"], "sender: from-user needs a From user per call"),
        (["--rasa-sender", "nobody"], "--rasa-sender 'nobody': must be one of session, from-user, call-id"),
    ]
    for args, message in cases:
        res = voiceload("run", str(DEMO), "--target", target, "--out", str(tmp_path / "out"), *args, timeout=60)
        assert res.code == 2, (args, res.stderr)
        line = _one_line(res.stderr)
        assert message in line, (args, line)
        assert "OPTIONS" not in line  # refused before the probe
    res = voiceload("capacity", str(DEMO), "--target", target, "--to-user", "{digits:0}", timeout=60)
    assert res.code == 2 and "--to-user: '{digits:0}'" in _one_line(res.stderr)
    bot = voiceload("bot", "--scenario", str(DEMO), "--listen", "127.0.0.1:0", "--rasa-sender", "nobody", timeout=60)
    assert bot.code == 2 and "--rasa-sender 'nobody'" in _one_line(bot.stderr)
