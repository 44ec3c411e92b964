"""turns.csv: one row per turn of every call, for spreadsheets and scripts."""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable

from voiceload.protocol import CallRecord

TURNS_CSV_COLUMNS = (
    "call_id", "agent_id", "seq", "outcome", "turn_index", "utterance_start_ms", "utterance_end_ms",
    "bot_onset_ms", "bot_end_ms", "latency_ms", "ok", "reason", "prompt_score",
)


def turns_csv(records: Iterable[CallRecord]) -> str:
    """One row per turn of every call (the greeting is not a turn); empty cells for unknown values."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(TURNS_CSV_COLUMNS)
    for rec in records:
        for t in rec.turns:
            w.writerow([rec.call_id, rec.agent_id, rec.seq, rec.outcome, t.index, _cell(t.utterance_start_ms),
                        _cell(t.utterance_end_ms), _cell(t.bot_onset_ms), _cell(t.bot_end_ms), _cell(t.latency_ms),
                        "true" if t.ok else "false", t.reason or "", _cell(t.prompt_score)])
    return buf.getvalue()


def _cell(v: float | None) -> str:
    return "" if v is None else f"{v:g}"
