"""Reports from a hand-made run dir: turns.csv rows, junit.xml structure, report.html content; and a
real headless-Chromium rendering of report.html (marked `real`)."""

from __future__ import annotations

import csv
import json
import re
import shutil
import subprocess
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from voiceload.cli import app
from voiceload.core.emodel import call_quality
from voiceload.core.summary import GeneratorHealth, summarize
from voiceload.errors import UserError
from voiceload.protocol import CallRecord, GreetingResult, Heartbeat, RtpStats, TurnResult
from voiceload.report import write_reports
from voiceload.report.formats import fmt_ms, fmt_pct
from voiceload.report.table import TURNS_CSV_COLUMNS

T0 = 1_700_000_000.0


@dataclass(frozen=True)
class Slo:
    expr: str
    metric: str
    op: str
    threshold: float
    value: float | None
    passed: bool


def record(n: int, *, outcome: str = "completed", lat1: float = 700.0, ok1: bool = True,
           reason1: str | None = None, call_id: str | None = None, reason: str | None = None) -> CallRecord:
    return CallRecord(
        run_id="r1", agent_id=f"a{n % 2}", call_id=call_id or f"c{n}", seq=n, outcome=outcome, sip_code=200,
        reason=reason, started_at=T0 + n * 0.5, setup_ms=20.0, duration_ms=6000.0, hangup_by="caller",
        greeting=GreetingResult(bot_onset_ms=300.0, bot_end_ms=1500.0, ok=True, prompt_score=0.98),
        turns=[
            TurnResult(index=0, utterance_start_ms=2000.0, utterance_end_ms=3000.0, bot_onset_ms=3400.0 + n,
                       bot_end_ms=4000.0, latency_ms=400.0 + n, ok=True, prompt_score=0.97),
            TurnResult(index=1, utterance_start_ms=4500.0, utterance_end_ms=5000.0,
                       bot_onset_ms=5000.0 + lat1, latency_ms=lat1, ok=ok1,
                       reason=reason1),
        ],
    )


def records() -> list[CallRecord]:
    return [
        record(0),
        record(1, lat1=650.0),
        record(2, outcome="failed", lat1=3412.0, ok1=False, reason1="bot took 3412 ms (max 3000)",
               call_id="c2<script>alert(1)</script>&", reason="turn 1: <b>late</b>"),
        CallRecord(run_id="r1", agent_id="a1", call_id="c3", seq=3, outcome="rejected", sip_code=486,
                   reason="486 Busy Here", started_at=T0 + 2.0, ringing_ms=15.0),
    ]


def make_run(tmp_path: Path, recs: list[CallRecord] | None = None, *, with_summary: bool = True,
             health: GeneratorHealth | None = None, extra_invalid: tuple[str, ...] = ()) -> tuple[Path, dict[str, Any]]:
    recs = records() if recs is None else recs
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "calls.jsonl").write_text("".join(json.dumps(r.to_dict()) + "\n" for r in recs))
    if health is None:
        health = GeneratorHealth()
        for a in ("a0", "a1"):
            health.observe(Heartbeat(run_id="r1", agent_id=a, at=T0, active_calls=1, placed=1, finished=0,
                                     cpu_percent=20.0, pump_lag_ms_max=3.0, max_calls=4))
    summary = summarize(recs, run_id="r1", scenario_name="happy", target="sip:bot@127.0.0.1:5080",
                        concurrency=4, calls_planned=len(recs), started_at=T0, ended_at=T0 + 9.0, health=health,
                        extra_invalid_reasons=extra_invalid).to_dict()
    if with_summary:
        (run_dir / "summary.json").write_text(json.dumps(summary))
    return run_dir, summary


def test_writes_three_files(tmp_path: Path) -> None:
    run_dir, _ = make_run(tmp_path)
    paths = write_reports(run_dir)
    assert sorted(p.name for p in paths) == ["junit.xml", "report.html", "turns.csv"]
    assert all(p.parent == run_dir and p.stat().st_size > 0 for p in paths)
    assert not list(run_dir.glob(".*tmp"))


def test_turns_csv_one_row_per_turn(tmp_path: Path) -> None:
    run_dir, _ = make_run(tmp_path)
    write_reports(run_dir)
    with open(run_dir / "turns.csv", newline="") as f:
        reader = csv.DictReader(f)
        assert tuple(reader.fieldnames or ()) == TURNS_CSV_COLUMNS
        rows = list(reader)
    assert len(rows) == 6  # 3 answered calls x 2 turns; the rejected call has none
    first = rows[0]
    assert first["call_id"] == "c0" and first["agent_id"] == "a0" and first["seq"] == "0"
    assert first["outcome"] == "completed" and first["turn_index"] == "0"
    assert first["utterance_start_ms"] == "2000" and first["utterance_end_ms"] == "3000"
    assert first["bot_onset_ms"] == "3400" and first["bot_end_ms"] == "4000" and first["latency_ms"] == "400"
    assert first["ok"] == "true" and first["reason"] == "" and first["prompt_score"] == "0.97"
    late = next(r for r in rows if r["call_id"].startswith("c2") and r["turn_index"] == "1")
    assert late["call_id"] == "c2<script>alert(1)</script>&"  # CSV keeps the raw text
    assert late["ok"] == "false" and late["latency_ms"] == "3412"
    assert late["reason"] == "bot took 3412 ms (max 3000)"
    assert late["bot_end_ms"] == "" and late["prompt_score"] == ""


def cases(root: ET.Element) -> dict[str, ET.Element]:
    suite = root.find("testsuite")
    assert suite is not None
    return {c.attrib["name"]: c for c in suite.findall("testcase")}


def test_junit_structure_slos_and_turns(tmp_path: Path) -> None:
    run_dir, _ = make_run(tmp_path)
    slos = [Slo("completion_rate>=0.99", "completion_rate", ">=", 0.99, 0.5, False),
            Slo("p95_turn_latency_ms<=5000", "p95_turn_latency_ms", "<=", 5000.0, 3412.0, True),
            Slo("setup_p95_ms<=500", "setup_p95_ms", "<=", 500.0, None, False)]
    write_reports(run_dir, slo_results=slos)
    root = ET.parse(run_dir / "junit.xml").getroot()
    assert root.tag == "testsuites"
    suite = root.find("testsuite")
    assert suite is not None and suite.attrib["name"] == "voiceload"
    by_name = cases(root)
    assert list(by_name) == ["run valid", *(s.expr for s in slos), "greeting", "turn 0", "turn 1"]
    assert suite.attrib["tests"] == "7" and suite.attrib["failures"] == "3"
    assert root.attrib["failures"] == "3"

    assert by_name["run valid"].find("failure") is None
    assert by_name["p95_turn_latency_ms<=5000"].find("failure") is None
    failure = by_name["completion_rate>=0.99"].find("failure")
    assert failure is not None
    assert "0.5" in failure.attrib["message"] and ">= 0.99" in failure.attrib["message"]
    unmeasured = by_name["setup_p95_ms<=500"].find("failure")
    assert unmeasured is not None and "not measured" in unmeasured.attrib["message"]

    assert by_name["turn 0"].find("failure") is None and by_name["greeting"].find("failure") is None
    turn1 = by_name["turn 1"].find("failure")
    assert turn1 is not None
    assert turn1.attrib["message"] == "1 of 3 calls not ok at turn 1; top reason: bot took N ms (max N) (1)"
    assert {c.attrib["classname"] for c in by_name.values()} == {"voiceload.run", "voiceload.slo", "voiceload.turns"}
    props = {p.attrib["name"]: p.attrib["value"] for p in suite.iter("property")}
    assert props["run_id"] == "r1" and props["concurrency"] == "4"


def test_junit_invalid_run(tmp_path: Path) -> None:
    run_dir, _ = make_run(tmp_path, extra_invalid=("agent a0: CPU 97 % of a core (limit 85 %)", "2 calls missing"))
    write_reports(run_dir)
    failure = cases(ET.parse(run_dir / "junit.xml").getroot())["run valid"].find("failure")
    assert failure is not None
    assert "CPU 97 %" in failure.attrib["message"] and "2 calls missing" in failure.attrib["message"]
    assert failure.text is not None and "2 calls missing" in failure.text


def test_html_headline_escaping_and_offline(tmp_path: Path) -> None:
    run_dir, summary = make_run(tmp_path)
    slos = [Slo("completion_rate>=0.99", "completion_rate", ">=", 0.99, 0.5, False)]
    write_reports(run_dir, slo_results=slos)
    page = (run_dir / "report.html").read_text()
    p95 = summary["turn_latency_ms"]["p95"]
    assert f"{fmt_ms(p95)} ms" in page and f"{p95:.1f}" in page
    assert fmt_pct(summary["completion_rate"]) == "50.0 %" and "50.0 %" in page
    assert "FAIL: 1 of 1 SLOs not met" in page
    # record text is escaped
    assert "<script>alert" not in page and "<b>late" not in page
    assert "c2&lt;script&gt;alert(1)&lt;/script&gt;&amp;" in page
    # self-contained: no scripts, no external resources, plots inline
    assert "<script" not in page.lower() and "<link" not in page.lower()
    assert not re.search(r"(src|href)=['\"]?(https?:)?//", page)
    assert "@import" not in page and "url(" not in page
    assert page.count("src='data:image/png;base64,") == 5
    for title in ("Slowest 10 calls", "Turns", "turn 1", "Why calls did not complete"):
        assert title in page
    # SIP endings keep their codes; measured reasons group with their numbers as N
    assert "<td class='text'>rejected 486 Busy Here</td><td>1</td>" in page
    assert "failed: turn N: &lt;b&gt;late&lt;/b&gt;" in page


def test_without_summary_recomputes_and_says_so(tmp_path: Path) -> None:
    run_dir, summary = make_run(tmp_path, with_summary=False)
    write_reports(run_dir)
    assert not (run_dir / "summary.json").exists()
    page = (run_dir / "report.html").read_text()
    assert "no summary.json: recomputed from calls.jsonl" in page
    assert fmt_ms(summary["turn_latency_ms"]["p95"]) in page
    assert "INVALID" in page  # health unknown: the recomputed summary cannot vouch for the generator


def test_empty_calls_file_still_reports(tmp_path: Path) -> None:
    run_dir, _ = make_run(tmp_path, [])
    paths = write_reports(run_dir)
    assert len(paths) == 3
    assert "No calls were placed" in (run_dir / "report.html").read_text()
    assert (run_dir / "turns.csv").read_text().strip() == ",".join(TURNS_CSV_COLUMNS)


def test_not_a_run_dir(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="not a directory"):
        write_reports(tmp_path / "nope")
    with pytest.raises(UserError, match=r"no calls\.jsonl"):
        write_reports(tmp_path)


def test_cli_report(tmp_path: Path) -> None:
    run_dir, _ = make_run(tmp_path)
    result = CliRunner().invoke(app, ["report", str(run_dir)])
    assert result.exit_code == 0, result.output
    assert "report.html" in result.output and (run_dir / "junit.xml").exists()
    empty = tmp_path / "empty"
    empty.mkdir()
    result = CliRunner().invoke(app, ["report", str(empty)])
    assert result.exit_code == 2
    assert "no calls.jsonl" in result.output


CHROMIUM = shutil.which("chromium")


@pytest.mark.real
@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (scripts/setup.sh --test installs it)")
def test_report_renders_in_headless_chromium(tmp_path: Path) -> None:
    from PIL import Image, ImageStat

    run_dir, summary = make_run(tmp_path)
    write_reports(run_dir)
    url = (run_dir / "report.html").resolve().as_uri()
    base = [str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
            "--disable-component-update", "--no-first-run", "--disable-sync"]
    shot = tmp_path / "shot.png"
    subprocess.run([*base, f"--user-data-dir={tmp_path / 'profile1'}", f"--screenshot={shot}",
                    "--window-size=1280,2400", url], check=True, capture_output=True, timeout=120)
    dom = subprocess.run([*base, f"--user-data-dir={tmp_path / 'profile2'}", "--dump-dom", url],
                         check=True, capture_output=True, text=True, timeout=120).stdout

    with Image.open(shot) as img:
        assert img.size == (1280, 2400)
        gray = img.convert("L")
        assert ImageStat.Stat(gray).stddev[0] > 10  # not a blank page
        # the plots rendered: many distinct colours, not just text on white
        assert len(img.convert("RGB").getcolors(maxcolors=1 << 20) or []) > 200

    text = re.sub(r"<[^>]+>", " ", dom)
    p95 = summary["turn_latency_ms"]["p95"]
    assert f"{fmt_ms(p95)} ms" in text
    assert fmt_pct(summary["completion_rate"]) in text


def test_slo_results_stored_in_summary_are_used(tmp_path: Path) -> None:
    run_dir, summary = make_run(tmp_path, with_summary=False)
    summary["slo"] = [
        {"expr": "p95_turn_latency_ms<=1000", "metric": "p95_turn_latency_ms", "op": "<=", "threshold": 1000.0,
         "value": 3412.0, "passed": False},
        {"expr": "broken"},  # malformed: skipped
    ]
    (run_dir / "summary.json").write_text(json.dumps(summary))
    write_reports(run_dir)
    by_name = cases(ET.parse(run_dir / "junit.xml").getroot())
    failure = by_name["p95_turn_latency_ms<=1000"].find("failure")
    assert failure is not None and "3412" in failure.attrib["message"]
    assert "broken" not in by_name
    assert "FAIL: 1 of 1 SLOs not met" in (run_dir / "report.html").read_text()
    # explicit results win over the stored ones
    write_reports(run_dir, slo_results=[])
    assert "p95_turn_latency_ms<=1000" not in cases(ET.parse(run_dir / "junit.xml").getroot())


def test_html_call_quality_section(tmp_path: Path) -> None:
    recs = records()
    for n, rec in enumerate(recs[:3]):
        rec.rtp = RtpStats(rx_packets=1000, rx_lost=(0, 20, 120)[n], rx_jitter_ms_mean=0.5, codec="PCMA",
                           rtt_ms_mean=30.0 if n == 0 else None)
        rec.quality = call_quality(rec.rtp)
    run_dir, summary = make_run(tmp_path, recs)
    write_reports(run_dir)
    page = (run_dir / "report.html").read_text()
    assert page.count("src='data:image/png;base64,") == 6  # the MOS histogram too
    assert "<h2>Call quality</h2>" in page and "Call quality (E-model MOS)" in page
    assert "PCMA: 3" in page and "3 rated, 0 received no audio" in page
    worst = summary["media"]["worst_calls"]
    assert [w["call_id"] for w in worst] == ["c2<script>alert(1)</script>&", "c1", "c0"]
    table = page[page.index("Lowest MOS (3 calls)"):]
    assert table.index("c2&lt;script&gt;") < table.index("<code>c1</code>") < table.index("<code>c0</code>")
    assert f"<td>{worst[0]['mos']:.2f}</td>" in table


def test_html_without_media_has_no_quality_section(tmp_path: Path) -> None:
    run_dir, summary = make_run(tmp_path)
    write_reports(run_dir)
    assert "media" not in summary and "Call quality" not in (run_dir / "report.html").read_text()
