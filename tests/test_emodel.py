"""The E-model (core/emodel.py) against published reference points of G.107, G.109 and G.113."""

from __future__ import annotations

import pytest

from voiceload.core.emodel import (
    call_quality,
    delay_impairment,
    effective_equipment_impairment,
    loss_percent,
    mos_from_r,
    one_way_delay_ms,
    r_factor,
)
from voiceload.protocol import RtpStats

G711_IE, G711_BPL = 0.0, 25.1  # G.113 Appendix I, G.711 with packet-loss concealment


@pytest.mark.parametrize(("r", "mos"), [
    # G.109's quality classes as G.107 Annex B maps them
    (90.0, 4.34), (80.0, 4.03), (70.0, 3.60), (60.0, 3.10), (50.0, 2.58),
    (93.2, 4.41),  # G.107's default connection
])
def test_mos_of_the_published_r_points(r: float, mos: float) -> None:
    assert mos_from_r(r) == pytest.approx(mos, abs=0.01)  # the tables print two decimals


def test_mos_is_clamped_to_1_and_4_5() -> None:
    assert mos_from_r(-10) == 1.0 and mos_from_r(0) == 1.0
    assert mos_from_r(3.0) == 1.0  # the cubic dips to 0.99 here
    assert mos_from_r(100) == 4.5 and mos_from_r(120) == 4.5
    rs = [i / 2 for i in range(0, 201)]
    mos = [mos_from_r(r) for r in rs]
    assert mos == sorted(mos) and all(1.0 <= m <= 4.5 for m in mos)


def test_g711_with_no_loss_and_little_delay_is_the_default_connection() -> None:
    r = r_factor(one_way_ms=40.0, loss_pct=0.0, ie=G711_IE, bpl=G711_BPL)
    assert r == pytest.approx(93.2)
    assert round(mos_from_r(r), 2) == 4.41


@pytest.mark.parametrize(("ta", "idd"), [
    (0.0, 0.0), (100.0, 0.0),  # no delay impairment up to 100 ms
    (200.0, 3.044),  # X = 1: 25 * (2^(1/6) - 3 * (1 + 3^-6)^(1/6) + 2)
    (400.0, 24.07),  # X = 2: 25 * (65^(1/6) - 3 * (1 + (2/3)^6)^(1/6) + 2)
])
def test_delay_impairment(ta: float, idd: float) -> None:
    assert delay_impairment(ta) == pytest.approx(idd, abs=0.01)


def test_delay_impairment_grows_with_delay() -> None:
    values = [delay_impairment(ms) for ms in range(100, 801, 25)]
    assert values == sorted(values) and values[-1] > 40


@pytest.mark.parametrize(("loss", "ie_eff"), [
    (0.0, 0.0), (1.0, 3.64), (2.0, 7.01), (5.0, 15.78), (100.0, 75.94),
])
def test_random_loss_on_g711_plc(loss: float, ie_eff: float) -> None:
    """Ie,eff = 95 Ppl / (Ppl + 25.1) for G.711 with PLC (Ie 0)."""
    assert effective_equipment_impairment(G711_IE, G711_BPL, loss) == pytest.approx(ie_eff, abs=0.01)


def test_bursty_loss_hurts_more_than_random_loss() -> None:
    random = effective_equipment_impairment(G711_IE, G711_BPL, 5.0)
    bursty = effective_equipment_impairment(G711_IE, G711_BPL, 5.0, burst_r=2.0)
    assert bursty == pytest.approx(95 * 5 / (2.5 + 25.1), abs=0.01) and bursty > random


def test_loss_and_delay_together() -> None:
    r = r_factor(one_way_ms=400.0, loss_pct=5.0, ie=G711_IE, bpl=G711_BPL)
    assert r == pytest.approx(93.2 - 24.07 - 15.78, abs=0.02)
    assert r_factor(one_way_ms=2000.0, loss_pct=100.0, ie=G711_IE, bpl=G711_BPL) == 0.0  # never negative


def test_the_delay_assumption() -> None:
    assert one_way_delay_ms(None, None) == 40.0  # loopback: one packet + the smallest jitter buffer
    assert one_way_delay_ms(None, 3.0) == 40.0  # 2 x 3 ms jitter is under one packet
    assert one_way_delay_ms(None, 15.0) == 50.0
    assert one_way_delay_ms(300.0, 15.0) == 200.0  # half the round trip + 20 + 30
    assert one_way_delay_ms(float("nan"), -1.0) == 40.0


def test_loss_percent() -> None:
    assert loss_percent(99, 1) == 1.0
    assert loss_percent(100, -2) == 0.0  # duplicates make RTP's cumulative loss negative
    assert loss_percent(0, 0) == 0.0


def test_call_quality_of_a_clean_loopback_call() -> None:
    q = call_quality(RtpStats(rx_packets=500, rx_lost=0, rx_jitter_ms_mean=0.3, codec="PCMA"))
    assert q is not None
    assert (q.r_factor, q.mos, q.loss_pct, q.delay_ms, q.codec) == (93.2, 4.41, 0.0, 40.0, "PCMA")


def test_call_quality_with_loss_rtt_and_jitter() -> None:
    q = call_quality(RtpStats(rx_packets=950, rx_lost=50, rx_jitter_ms_mean=40.0, rtt_ms_mean=360.0, codec="PCMU"))
    assert q is not None
    # one way 180 + 20 + 80 = 280 ms; 5 % random loss
    assert q.delay_ms == 280.0 and q.loss_pct == 5.0
    assert q.r_factor == pytest.approx(93.2 - delay_impairment(280.0) - 15.78, abs=0.01)
    assert q.mos == round(mos_from_r(q.r_factor), 2)


def test_call_quality_uses_the_codecs_figures() -> None:
    rtp = dict(rx_packets=980, rx_lost=20)
    g711 = call_quality(RtpStats(**rtp, codec="PCMU"))
    opus = call_quality(RtpStats(**rtp, codec="opus"))
    assert g711 is not None and opus is not None
    assert opus.r_factor > g711.r_factor  # Opus conceals loss better (Bpl 35 vs 25.1)
    assert opus.codec == "opus"


def test_call_quality_without_audio_or_with_an_unknown_codec() -> None:
    assert call_quality(RtpStats()) is None
    assert call_quality(RtpStats(rx_packets=0, rx_lost=0)) is None
    assert call_quality(RtpStats(rx_packets=10, codec="speex")) is None
    older = call_quality(RtpStats(rx_packets=10))  # records before codecs were named: PCMU
    assert older is not None and older.codec == "PCMU"
