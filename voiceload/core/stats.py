"""Latency percentiles from HDR histograms: constant memory, mergeable across agents, no sorting.

Values are recorded as integer microseconds (1 µs .. 1 h at 3 significant digits, i.e. within
0.1 %). A value outside that range is counted in `out_of_range` instead of being clamped, so a
negative or absurd latency (a measurement bug, or a bot that barged in) stays visible.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from hdrh.histogram import HdrHistogram

LOWEST_US = 1
HIGHEST_US = 3_600_000_000  # one hour
SIGNIFICANT_DIGITS = 3
PERCENTILES = {"p50": 50.0, "p90": 90.0, "p95": 95.0, "p99": 99.0}
STAT_KEYS = (*PERCENTILES, "max", "min", "mean", "count")
_OOR_SEP = "|"  # not in the base64 alphabet


class LatencyHistogram:
    """Record milliseconds, read percentiles in milliseconds."""

    def __init__(self) -> None:
        self._h = HdrHistogram(LOWEST_US, HIGHEST_US, SIGNIFICANT_DIGITS)
        self.out_of_range = 0

    def record(self, ms: float) -> None:
        if not math.isfinite(ms):
            self.out_of_range += 1
            return
        us = round(ms * 1000.0)
        if us < LOWEST_US or us > HIGHEST_US or not self._h.record_value(us):
            self.out_of_range += 1

    def value_at(self, percentile: float) -> float:
        """One percentile in ms (0-100); nan when empty."""
        if self.count == 0:
            return math.nan
        return _ms(self._h.get_value_at_percentile(percentile))

    @property
    def count(self) -> int:
        return int(self._h.get_total_count())

    def percentiles(self) -> dict[str, Any]:
        """{"p50","p90","p95","p99","max","min","mean"} in ms (None when empty) and "count"."""
        n = self.count
        if n == 0:
            return {**{k: None for k in STAT_KEYS if k != "count"}, "count": 0}
        at = self._h.get_percentile_to_value_dict(list(PERCENTILES.values()))
        out: dict[str, Any] = {name: _ms(at[p]) for name, p in PERCENTILES.items()}
        out["max"] = _ms(self._h.get_max_value())
        out["min"] = _ms(self._h.get_min_value())
        out["mean"] = _ms(self._mean_us())
        out["count"] = n
        return out

    def _mean_us(self) -> float:
        """Mean over bucket midpoints, visiting only the non-empty buckets (hdrh's own walks all 23 k)."""
        counts = np.ctypeslib.as_array(self._h.counts)
        total = 0.0
        for i in np.flatnonzero(counts):
            v = self._h.get_value_from_index(int(i))
            mid = (self._h.get_lowest_equivalent_value(v) + self._h.get_highest_equivalent_value(v)) / 2
            total += int(counts[i]) * mid
        return total / self.count

    def merge(self, other: LatencyHistogram) -> None:
        self._h.add(other._h)
        self.out_of_range += other.out_of_range

    def encode(self) -> str:
        """The standard HdrHistogram V2 base64 blob; `|N` appended when N values were out of range."""
        blob = self._h.encode()
        text = blob.decode() if isinstance(blob, bytes) else str(blob)
        return f"{text}{_OOR_SEP}{self.out_of_range}" if self.out_of_range else text

    @classmethod
    def decode(cls, s: str) -> LatencyHistogram:
        """Inverse of `encode`; ValueError for anything that is not one of ours."""
        blob, _, oor = s.partition(_OOR_SEP)
        hist = cls()
        try:
            hist._h.decode_and_add(blob)
            hist.out_of_range = int(oor) if oor else 0
        except Exception as exc:  # hdrh raises TypeError, zlib.error or its own exceptions
            raise ValueError(f"not an encoded latency histogram: {exc}") from exc
        return hist


def _ms(us: float) -> float:
    """µs -> ms, without digits beyond the histogram's precision (0.1 %) from 10 ms up."""
    ms = us / 1000.0
    return round(ms, 1 if ms >= 10 else 3)


class ValueHistogram:
    """Non-negative values of any unit (MOS, %, ms) at a fixed resolution, read as named statistics.

    A value is kept as an integer number of `1/scale` steps, exact up to 2048 steps and within 0.1 %
    above (rounded down to the bottom of its bucket), so MOS at `scale=100` (two decimals, at most 450
    steps) is exact. Zero is a value here (no loss is the common case), unlike in `LatencyHistogram`.
    The mean is exact (a running sum).
    """

    def __init__(self, *, scale: int, highest: float) -> None:
        self.scale = scale
        self._h = HdrHistogram(1, max(int(highest * scale), 2), SIGNIFICANT_DIGITS)
        self._sum = 0.0
        self.out_of_range = 0

    def record(self, value: float) -> None:
        if not math.isfinite(value) or value < 0:
            self.out_of_range += 1
            return
        if not self._h.record_value(round(value * self.scale)):
            self.out_of_range += 1
            return
        self._sum += value

    @property
    def count(self) -> int:
        return int(self._h.get_total_count())

    def value_at(self, percentile: float) -> float | None:
        """One percentile (0-100) in the values' unit; None when empty."""
        return None if self.count == 0 else self._floor(self._h.get_value_at_percentile(percentile))

    def _floor(self, steps: int) -> float:
        return self._h.get_lowest_equivalent_value(steps) / self.scale

    def stats(self, percentiles: dict[str, float], digits: int) -> dict[str, Any]:
        """{name: value at that percentile, ...,"min","max","mean"} rounded to `digits` (None when empty), "count"."""
        n = self.count
        out: dict[str, Any] = {}
        for name, p in percentiles.items():
            v = self.value_at(p)
            out[name] = None if v is None else round(v, digits)
        if n == 0:
            return {**out, "min": None, "max": None, "mean": None, "count": 0}
        out["min"] = round(self._floor(self._h.get_min_value()), digits)
        out["max"] = round(self._floor(self._h.get_max_value()), digits)
        out["mean"] = round(self._sum / n, digits)
        out["count"] = n
        return out

    def merge(self, other: ValueHistogram) -> None:
        if other.scale != self.scale:
            raise ValueError(f"cannot merge histograms of scale {other.scale} into {self.scale}")
        self._h.add(other._h)
        self._sum += other._sum
        self.out_of_range += other.out_of_range
