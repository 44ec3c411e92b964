"""LatencyHistogram: HDR percentiles in ms, counted out-of-range values, lossless encode/merge."""

from __future__ import annotations

import math

import pytest

from voiceload.core.stats import STAT_KEYS, LatencyHistogram

REL = 1e-3  # 3 significant digits


def filled(values: list[float]) -> LatencyHistogram:
    h = LatencyHistogram()
    for v in values:
        h.record(v)
    return h


def test_empty_histogram_reports_none_not_zero() -> None:
    p = LatencyHistogram().percentiles()
    assert set(p) == set(STAT_KEYS)
    assert p["count"] == 0
    assert all(p[k] is None for k in STAT_KEYS if k != "count")


def test_percentiles_of_a_uniform_spread() -> None:
    h = filled([float(ms) for ms in range(1, 1001)])  # 1..1000 ms
    p = h.percentiles()
    assert p["count"] == 1000 and h.count == 1000
    assert p["p50"] == pytest.approx(500, rel=REL)
    assert p["p90"] == pytest.approx(900, rel=REL)
    assert p["p95"] == pytest.approx(950, rel=REL)
    assert p["p99"] == pytest.approx(990, rel=REL)
    assert p["max"] == pytest.approx(1000, rel=REL)
    assert p["min"] == pytest.approx(1, rel=REL)
    assert p["mean"] == pytest.approx(500.5, rel=REL)


def test_sub_millisecond_values_keep_microsecond_resolution() -> None:
    p = filled([0.25]).percentiles()
    assert p["p50"] == pytest.approx(0.25, abs=0.001)


@pytest.mark.parametrize("bad", [-5.0, 0.0, 0.0004, 3_600_001.0, math.nan, math.inf, -math.inf])
def test_out_of_range_values_are_counted_not_clamped(bad: float) -> None:
    h = filled([100.0, bad])
    assert h.count == 1
    assert h.out_of_range == 1
    assert h.percentiles()["max"] == pytest.approx(100, rel=REL)


def test_one_hour_is_still_in_range() -> None:
    h = filled([3_600_000.0])
    assert (h.count, h.out_of_range) == (1, 0)


def test_encode_decode_roundtrip_keeps_counts_and_out_of_range() -> None:
    h = filled([12.0, 250.0, 251.0, 900.0, -1.0])
    back = LatencyHistogram.decode(h.encode())
    assert back.percentiles() == h.percentiles()
    assert back.out_of_range == 1
    assert "|" not in filled([1.0]).encode()  # a plain HdrHistogram blob when nothing was out of range


def test_merge_of_parts_equals_the_whole() -> None:
    values = [float(v) for v in range(5, 3000, 7)]
    a, b = filled([*values[::2], -1.0]), filled(values[1::2])
    a.merge(b)
    whole = filled(values)
    assert a.percentiles() == whole.percentiles()
    assert a.out_of_range == 1


def test_decode_rejects_garbage() -> None:
    with pytest.raises(ValueError, match="not an encoded latency histogram"):
        LatencyHistogram.decode("not-a-histogram")
