"""A call's listening quality from its RTP counters: the ITU-T G.107 E-model (pure, no I/O).

    R = (Ro - Is) - Id + A - Ie,eff          MOS = f(R)   (G.107 Annex B)

The E-model is a planning tool: it predicts what an average listener would think of a connection
with this codec, this loss and this delay, without listening. It is not a measurement of the audio
itself (that would be P.862/P.863 on the tape). Simplifications, all of them on purpose:

- **Ro - Is = 93.2**, G.107's default for every parameter it does not vary here (send/receive
  loudness, room and circuit noise, sidetone, quantisation): R is 93.2 for G.711 with no loss and
  little delay.
- **Id = Idd only.** The echo terms (talker echo Idte, listener echo Idle) are taken at their
  default-parameter values, i.e. perfect echo control; they are folded into the 93.2 and do not grow
  with delay. Only the pure-delay term Idd varies, and it is zero up to 100 ms one way.
- **One narrowband scale for every codec.** G.722 and Opus carry more than 3.4 kHz, but their
  R is on G.107's narrowband scale (up to ~93), not G.107.1's wideband one (up to 129): a G.722
  call with no loss scores like a G.711 one. Codec figures (Ie, Bpl) are G.113 Appendix I's, in
  `core/mediaprofile.py` (Opus has none there: docs/media.md gives the values used).
- **Random loss** (BurstR = 1) unless the caller knows better: the engine counts lost packets,
  not their pattern. Bursty loss (BurstR > 1) hurts more at the same rate.
- **The one-way delay is assumed, not measured** (`one_way_delay_ms`): half the RTCP round trip
  when the far end's reports gave one, else no network delay at all (loopback, or a far end that
  sends no RTCP), plus one 20 ms packet of packetisation, plus a jitter buffer of twice the mean
  RFC 3550 interarrival jitter but at least one packet (20 ms). The agents' engine has no jitter
  buffer; a real phone would, and the listener hears its delay.
- The advantage factor A is 0 (a conventional wired call).

The loss is ours as receiver (what the far end sent us and never arrived), so R and MOS describe
the audio the caller heard; the far end's view of ours is in the RTCP fields (`far_lost`).
"""

from __future__ import annotations

import math

from voiceload.core.mediaprofile import CODECS, DEFAULT_CODECS
from voiceload.protocol import CallQuality, RtpStats

RO_MINUS_IS = 93.2  # G.107 (06/2015) 7.7: the default R with every parameter at its default value
MOS_MIN, MOS_MAX = 1.0, 4.5
R_MIN, R_MAX = 0.0, 100.0
# Idd's knee and slope (G.107's mT and sT for the "average" delay sensitivity class)
DELAY_KNEE_MS = 100.0
DELAY_SENSITIVITY = 1.0
PACKET_MS = 20.0  # every codec the engine speaks sends one packet per 20 ms
JITTER_BUFFER_FACTOR = 2.0  # an adaptive buffer settles around twice the mean jitter
JITTER_BUFFER_MIN_MS = PACKET_MS  # and never holds less than one packet


def delay_impairment(one_way_ms: float) -> float:
    """G.107's Idd: the impairment of a one-way mouth-to-ear delay `one_way_ms` (Ta); 0 up to 100 ms.

    Idd = 25 * ((1 + X^6s)^(1/6s) - 3 * (1 + (X/3)^6s)^(1/6s) + 2),  X = log2(Ta / mT)
    """
    if one_way_ms <= DELAY_KNEE_MS:
        return 0.0
    x = math.log2(one_way_ms / DELAY_KNEE_MS)
    k = 6.0 * DELAY_SENSITIVITY
    return 25.0 * ((1.0 + x**k) ** (1.0 / k) - 3.0 * (1.0 + (x / 3.0) ** k) ** (1.0 / k) + 2.0)


def effective_equipment_impairment(ie: float, bpl: float, loss_pct: float, burst_r: float = 1.0) -> float:
    """G.107's Ie,eff: the codec's impairment `ie` raised by `loss_pct` % packet loss (0..100).

    Ie,eff = Ie + (95 - Ie) * Ppl / (Ppl / BurstR + Bpl)
    """
    ppl = min(max(loss_pct, 0.0), 100.0)
    if ppl == 0.0:
        return ie
    return ie + (95.0 - ie) * ppl / (ppl / burst_r + bpl)


def r_factor(*, one_way_ms: float, loss_pct: float, ie: float, bpl: float, burst_r: float = 1.0,
             advantage: float = 0.0) -> float:
    """The transmission rating R (0..100) of a call with this delay, loss and codec."""
    r = RO_MINUS_IS - delay_impairment(one_way_ms) - effective_equipment_impairment(ie, bpl, loss_pct, burst_r)
    return min(max(r + advantage, R_MIN), R_MAX)


def mos_from_r(r: float) -> float:
    """G.107 Annex B: the conversational MOS estimate for R, 1..4.5.

    MOS = 1 + 0.035 R + R (R - 60) (100 - R) 7e-6 for 0 < R < 100; the cubic dips just below 1 for
    R under ~6.5, which is clamped to 1.
    """
    if r <= 0.0:
        return MOS_MIN
    if r >= 100.0:
        return MOS_MAX
    mos = 1.0 + 0.035 * r + r * (r - 60.0) * (100.0 - r) * 7e-6
    return min(max(mos, MOS_MIN), MOS_MAX)


def one_way_delay_ms(rtt_ms: float | None, jitter_ms: float | None) -> float:
    """The mouth-to-ear delay assumed for a call (see the module's docstring): network + packet + jitter buffer."""
    network = rtt_ms / 2.0 if rtt_ms is not None and math.isfinite(rtt_ms) and rtt_ms > 0 else 0.0
    jitter = jitter_ms if jitter_ms is not None and math.isfinite(jitter_ms) and jitter_ms > 0 else 0.0
    return network + PACKET_MS + max(JITTER_BUFFER_FACTOR * jitter, JITTER_BUFFER_MIN_MS)


def loss_percent(received: int, lost: int) -> float:
    """Lost packets as a share of those expected (received + lost), in %; RTP's negative loss (duplicates) is 0."""
    lost = max(lost, 0)
    expected = received + lost
    return 100.0 * lost / expected if expected > 0 else 0.0


def call_quality(rtp: RtpStats, *, burst_r: float = 1.0) -> CallQuality | None:
    """The E-model's verdict on the audio a call received; None when there is nothing to judge.

    None: no packet was received (one-way or no audio: the record's rtp counters say so), or the codec
    is one this version has no E-model figures for. A record without a codec is PCMU (the engine spoke
    nothing else before records named it).
    """
    if not rtp.rx_packets:
        return None
    name = rtp.codec or DEFAULT_CODECS[0]
    c = CODECS.get(name.lower())
    if c is None:
        return None
    loss = loss_percent(rtp.rx_packets, rtp.rx_lost or 0)
    delay = one_way_delay_ms(rtp.rtt_ms_mean, rtp.rx_jitter_ms_mean)
    r = r_factor(one_way_ms=delay, loss_pct=loss, ie=c.ie, bpl=c.bpl, burst_r=burst_r)
    return CallQuality(r_factor=round(r, 2), mos=round(mos_from_r(r), 2), loss_pct=round(loss, 3),
                       delay_ms=round(delay, 1), codec=c.name)
