"""junit.xml: the run as test cases (validity, each SLO, the greeting, each turn) for CI dashboards."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from collections.abc import Sequence

from voiceload.core.summary import Summary
from voiceload.report.formats import iso_utc
from voiceload.report.rundir import GreetingCounts, SloResult

_XML_INVALID = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff]")


def _x(s: str) -> str:
    """Text safe for XML 1.0 (ElementTree escapes markup but not control characters)."""
    return _XML_INVALID.sub("?", s)


def junit_xml(summary: Summary, slos: Sequence[SloResult], *, greeting: GreetingCounts | None = None) -> str:
    """JUnit XML: one suite "voiceload"; cases "run valid", one per SLO, "greeting", one per turn."""
    cases: list[ET.Element] = []

    def case(classname: str, name: str, failure: str | None = None, detail: str = "", kind: str = "") -> None:
        tc = ET.Element("testcase", classname=classname, name=_x(name), time="0")
        if failure is not None:
            f = ET.SubElement(tc, "failure", message=_x(failure), type=kind)
            f.text = _x(detail or failure)
        cases.append(tc)

    reasons = [str(r) for r in summary.invalid_reasons]
    case("voiceload.run", "run valid",
         None if summary.valid else "run invalid: " + "; ".join(reasons or ["no reason given"]),
         "\n".join(reasons), "invalid")
    for slo in slos:
        fail = None
        if not slo.passed:
            measured = "not measured" if slo.value is None else f"{slo.value:g}"
            fail = f"{slo.metric} = {measured}, threshold {slo.op} {slo.threshold:g}"
        case("voiceload.slo", slo.expr, fail, kind="slo")
    if greeting is not None:
        n = greeting.ok + greeting.not_ok
        case("voiceload.turns", "greeting",
             _turn_failure("the greeting", greeting.not_ok, n, greeting.reasons) if greeting.not_ok else None,
             _reasons_text(greeting.reasons), "turn")
    for t in summary.turns:
        case("voiceload.turns", f"turn {t.index}",
             _turn_failure(f"turn {t.index}", t.not_ok, t.ok + t.not_ok, t.reasons) if t.not_ok else None,
             _reasons_text(t.reasons), "turn")

    failures = sum(1 for c in cases if c.find("failure") is not None)
    attrs = {"tests": str(len(cases)), "failures": str(failures), "errors": "0", "skipped": "0",
             "time": f"{float(summary.duration_s or 0):.3f}"}
    root = ET.Element("testsuites", {"name": "voiceload", **attrs})
    suite = ET.SubElement(root, "testsuite",
                          {"name": "voiceload", "timestamp": iso_utc(summary.started_at), **attrs})
    props = ET.SubElement(suite, "properties")
    for key in ("run_id", "scenario", "target", "concurrency", "completion_rate"):
        ET.SubElement(props, "property", name=key, value=_x(str(getattr(summary, key))))
    suite.extend(cases)
    ET.indent(root)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n"


def _turn_failure(what: str, not_ok: int, n: int, reasons: dict[str, int]) -> str:
    top = next(iter(reasons.items()), None)
    msg = f"{not_ok} of {n} calls not ok at {what}"
    return msg + (f"; top reason: {top[0]} ({top[1]})" if top else "")


def _reasons_text(reasons: dict[str, int]) -> str:
    return "\n".join(f"{n} x {why}" for why, n in reasons.items())
