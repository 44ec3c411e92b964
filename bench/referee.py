#!/usr/bin/env python3
"""Check voiceload's and the reference bot's turn latencies against a packet capture of the run.

    tcpdump -i lo -s 0 -w cap.pcap udp        # while the run is going
    bench/referee.py cap.pcap --calls runs/x/calls.jsonl --truth bot_truth.jsonl
    bench/referee.py cap.pcap --calls runs/x/calls.jsonl --codecs opus   # only the capture's Opus calls

Each call's codec comes from its SDP answer (PCMU, PCMA, G.722 and Opus are decoded; SRTP is
decrypted with the SDP's SDES keys); with calls of several codecs, the agreement is given per codec.

The wire is the referee: it does not depend on either side's tapes, jitter buffers or clocks.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

# runnable from a checkout without `pip install -e .`
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench._harness.runs import read_jsonl
from bench._harness.table import fmt
from voiceload.tools.referee import CODECS, CallWire, WireTurn, analyse_pcap, compare, summary, wire_turns

Key = tuple[str, int]


def load_calls(path: Path) -> dict[Key, dict[str, Any]]:
    """calls.jsonl turns keyed by (call id, turn index)."""
    out: dict[Key, dict[str, Any]] = {}
    for rec in read_jsonl(path):
        for t in rec.get("turns") or []:
            out[(rec["call_id"], int(t["index"]))] = t
    return out


def load_truth(path: Path) -> dict[Key, dict[str, Any]]:
    """The reference bot's truth lines keyed by (call id, turn index)."""
    return {(rec["call_id"], int(rec["turn"])): rec for rec in read_jsonl(path)}


def latencies(turns: dict[Key, dict[str, Any]]) -> dict[Key, float]:
    return {k: float(t["latency_ms"]) for k, t in turns.items() if t.get("latency_ms") is not None}


def offsets(
    wire: dict[Key, WireTurn], side: dict[Key, dict[str, Any]], end_field: str, onset_field: str
) -> dict[str, list[float]]:
    """Per-turn (side − wire) for caller end and bot onset, plus onset with the call's end offset removed.

    Each side counts from its own "answer" instant, a few ms off the wire's; the median end offset of
    a call estimates that shift, so what is left of the onset offset is the receive-path delay.
    """
    end: dict[Key, float] = {}
    onset: dict[Key, float] = {}
    for k, w in wire.items():
        t = side.get(k)
        if t is None:
            continue
        if t.get(end_field) is not None:
            end[k] = float(t[end_field]) - w.caller_end_ms
        if t.get(onset_field) is not None:
            onset[k] = float(t[onset_field]) - w.bot_onset_ms
    per_call: dict[str, list[float]] = {}
    for (cid, _), v in end.items():
        per_call.setdefault(cid, []).append(v)
    call_shift = {cid: float(np.median(v)) for cid, v in per_call.items()}
    relative = [v - call_shift[k[0]] for k, v in onset.items() if k[0] in call_shift]
    return {"end": list(end.values()), "onset": list(onset.values()), "onset_rel": relative}


def _row(label: str, s: dict[str, float | int | None]) -> str:
    share = [
        fmt(None if s[k] is None else 100 * float(s[k] or 0.0), ".0f")
        for k in ("within_20ms", "within_40ms")
    ]
    return (
        f"  {label:<22}{s['count']:>5} {fmt(s['mean_ms'], '+8.1f')} {fmt(s['p50_abs_ms'], '8.1f')}"
        f" {fmt(s['p95_abs_ms'], '8.1f')} {fmt(s['max_abs_ms'], '8.1f')} {share[0]:>6}% {share[1]:>5}%"
    )


def _mean_p50(v: list[float]) -> str:
    if not v:
        return "        -"
    return f"{np.mean(v):+7.1f}/{np.median(v):+.1f}"


def media_label(call: CallWire) -> str:
    """'opus', 'PCMU+SRTP', ...: how the per-codec table groups a call."""
    return f"{call.codec or '?'}{'+SRTP' if call.srtp else ''}"


def parse_codecs(value: str) -> set[str]:
    """--codecs as voiceload run takes it (PCMU,PCMA,G722,opus; any case) -> the referee's names."""
    names = {CODECS.get(v.strip().lower()) for v in value.split(",") if v.strip()}
    if None in names or not names:
        raise argparse.ArgumentTypeError(f"one or more of {', '.join(CODECS.values())}")
    return {n for n in names if n}


def per_codec(
    calls: dict[str, CallWire], per_call: dict[str, list[WireTurn]], sides: dict[str, dict[Key, float]]
) -> dict[str, dict[str, Any]]:
    """For each codec (+SRTP) on the wire: its calls, the undecoded ones, its turns, each side's agreement."""
    out: dict[str, dict[str, Any]] = {}
    for label in sorted({media_label(c) for c in calls.values()}):
        ids = [cid for cid, c in calls.items() if media_label(c) == label]
        group = {cid: per_call[cid] for cid in ids}
        row: dict[str, Any] = {
            "calls": len(ids), "undecoded": sum(calls[cid].undecoded is not None for cid in ids),
            "wire_turns": sum(len(t) for t in group.values()),
        }
        for name, measured in sides.items():
            row[name] = summary(compare(group, measured))
        out[label] = row
    return out


def _codec_cell(s: dict[str, float | int | None]) -> str:
    if not s["count"]:
        return "n=0"
    return f"n={s['count']} p95|e| {float(s['p95_abs_ms'] or 0):.1f} ≤20ms {100 * float(s['within_20ms'] or 0):.0f}%"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("capture", type=Path, help="classic pcap (tcpdump -w), IPv4/UDP SIP + RTP/SRTP")
    ap.add_argument("--calls", type=Path, help="RUN_DIR/calls.jsonl written by voiceload")
    ap.add_argument("--truth", type=Path, help="the reference bot's per-turn truth (JSON lines)")
    ap.add_argument("--json", type=Path, help="write summaries and wire turns here")
    ap.add_argument("--turns", action="store_true", help="also print every wire turn")
    ap.add_argument("--codecs", type=parse_codecs, help="only the calls that spoke these (e.g. opus or PCMA,G722)")
    args = ap.parse_args(argv)

    calls = analyse_pcap(args.capture.read_bytes())
    if args.codecs:
        calls = {cid: c for cid, c in calls.items() if c.codec in args.codecs}
    per_call = {cid: wire_turns(c) for cid, c in calls.items()}
    wire = {(cid, t.index): t for cid, ts in per_call.items() for t in ts}
    answered = sum(c.answer_time is not None for c in calls.values())
    lat = [t.latency_ms for t in wire.values()]
    p50 = f", latency p50 {np.median(lat):.0f} ms" if lat else ""
    print(f"{args.capture}: {len(calls)} calls, {answered} answered, {len(wire)} wire turns{p50}")

    reasons: dict[str, int] = {}
    for c in calls.values():
        if c.undecoded:
            reasons[c.undecoded] = reasons.get(c.undecoded, 0) + 1
    for why, n in sorted(reasons.items()):
        print(f"  {n} calls: {why}")

    if args.turns:
        for (cid, i), t in sorted(wire.items()):
            print(
                f"  {cid} #{i}: end {t.caller_end_ms:9.1f}  onset {t.bot_onset_ms:9.1f}"
                f"  latency {t.latency_ms:7.1f}"
            )

    agent = load_calls(args.calls) if args.calls else {}
    truth = load_truth(args.truth) if args.truth else {}
    report: dict[str, Any] = {"calls": len(calls), "answered": answered, "wire_turns": len(wire)}
    summaries: dict[str, dict[str, float | int | None]] = {}
    if agent:
        summaries["voiceload-wire"] = summary(compare(per_call, latencies(agent)))
    if truth:
        summaries["truth-wire"] = summary(compare(per_call, latencies(truth)))
    if agent and truth:
        a, b = latencies(agent), latencies(truth)
        summaries["voiceload-truth"] = summary([a[k] - b[k] for k in a if k in b])
    if summaries:
        print("\nlatency error, ms (measured − reference)")
        print(
            f"  {'':<22}{'n':>5} {'mean':>8} {'p50|e|':>8} {'p95|e|':>8} {'max|e|':>8}"
            f" {'≤20ms':>7} {'≤40ms':>6}"
        )
        for name, s in summaries.items():
            print(_row(name.replace("-", " − "), s))
    report["latency_error"] = summaries
    measured_sides = {k: v for k, v in (("voiceload-wire", latencies(agent)), ("truth-wire", latencies(truth))) if v}
    codecs = per_codec(calls, per_call, measured_sides)
    if len(codecs) > 1 or reasons:
        print("\nper codec on the wire (|e| = measured − wire)")
        print(f"  {'':<12}{'calls':>6}{'undecoded':>10}{'turns':>6}  "
              + "".join(f"{name.replace('-', ' − '):>28}" for name in measured_sides))
        for label, row in codecs.items():
            cols = "".join(f"{_codec_cell(row[n]):>28}" for n in measured_sides)
            print(f"  {label:<12}{row['calls']:>6}{row['undecoded']:>10}{row['wire_turns']:>6}  {cols}")
    report["per_codec"] = codecs

    sides: dict[str, dict[str, list[float]]] = {}
    if agent:
        sides["voiceload"] = offsets(wire, agent, "utterance_end_ms", "bot_onset_ms")
    if truth:
        sides["truth"] = offsets(wire, truth, "caller_end_ms", "response_start_ms")
    if sides:
        print("\nside − wire, ms from answer (mean/p50); 'onset−shift' removes each call's median end offset")
        print(f"  {'':<12}{'caller end':>16}{'bot onset':>16}{'onset−shift':>16}")
        for name, o in sides.items():
            cols = "".join(f"{_mean_p50(o[k]):>16}" for k in ("end", "onset", "onset_rel"))
            print(f"  {name:<12}{cols}")
        report["offsets"] = {
            name: {k: summary(v) for k, v in o.items()} for name, o in sides.items()
        }
    missing = [k for k in {**agent, **truth} if k[0] not in calls]
    if missing:
        print(f"\n{len({k[0] for k in missing})} measured calls are not in the capture")

    if args.json:
        report["wire"] = {
            cid: {"answer_time": c.answer_time, "codec": c.codec, "srtp": c.srtp, "undecoded": c.undecoded,
                  "turns": [vars(t) for t in per_call[cid]]}
            for cid, c in calls.items()
        }
        args.json.write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
