"""The agent's outbox on disk: every call record stays here until the collector acknowledges it.

A broker's QoS 1 ack only says the broker has the message; a broker that dies a moment later
loses it. So an agent keeps each record (one small file per record, written atomically) until
the *collector* says it wrote it to calls.jsonl, and re-sends what stays unacknowledged. The
collector deduplicates by Call-ID, so re-sending is always safe. Bounded: when full, the agent
stops placing calls until acks make room (backpressure, never silent loss).
"""

from __future__ import annotations

import contextlib
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

DEFAULT_MAX_ITEMS = 20_000
RESEND_AFTER_S = 5.0


@dataclass
class Spool:
    directory: Path
    max_items: int = DEFAULT_MAX_ITEMS
    _sent_at: dict[int, float] = field(default_factory=dict)  # seq -> last send (monotonic)

    def __post_init__(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        for stale in self.directory.glob("*.tmp"):
            stale.unlink(missing_ok=True)
        self._items: set[int] = {int(p.stem) for p in self.directory.glob("*.json") if p.stem.isdigit()}

    def __len__(self) -> int:
        return len(self._items)

    @property
    def full(self) -> bool:
        return len(self._items) >= self.max_items

    def put(self, seq: int, payload: bytes) -> None:
        """Persist one record before anything tries to send it."""
        tmp = self.directory / f"{seq}.tmp"
        with open(tmp, "wb") as f:
            f.write(payload)
        os.replace(tmp, self.directory / f"{seq}.json")
        self._items.add(seq)

    def due(self, now: float | None = None, resend_after_s: float = RESEND_AFTER_S) -> list[tuple[int, bytes]]:
        """Records never sent, or sent `resend_after_s` ago without an ack, oldest first."""
        now = time.monotonic() if now is None else now
        out = []
        for seq in sorted(self._items):
            last = self._sent_at.get(seq)
            if last is None or now - last >= resend_after_s:
                try:
                    out.append((seq, (self.directory / f"{seq}.json").read_bytes()))
                except FileNotFoundError:
                    self._items.discard(seq)
        return out

    def sent(self, seq: int, now: float | None = None) -> None:
        self._sent_at[seq] = time.monotonic() if now is None else now

    def ack(self, seqs: list[int]) -> int:
        """Forget acknowledged records; returns how many were still held."""
        dropped = 0
        for seq in seqs:
            if seq in self._items:
                self._items.discard(seq)
                self._sent_at.pop(seq, None)
                (self.directory / f"{seq}.json").unlink(missing_ok=True)
                dropped += 1
        return dropped

    def remove_dir_if_empty(self) -> None:
        if not self._items:
            with contextlib.suppress(OSError):
                self.directory.rmdir()
