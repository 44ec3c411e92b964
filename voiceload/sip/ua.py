"""The one adapter around pjsua2: endpoint lifecycle, calls, players and tapes, pumped from one thread.

Media comes in two kinds. The reference bot uses pjmedia (players and a tape recorder on the
conference bridge). A call agent gives its stack a `media.MediaEngine`: pjsua2 then does only
the SIP; each call's offer carries the engine's RTP port and the engine plays, listens and tapes
(docs/density.md).

Rules it enforces, learnt the hard way (ARCHITECTURE.md §3):
- one Endpoint per process, pumped by the caller (`threadCnt = 0` + `libHandleEvents`), so every
  SIP callback runs on the pump thread and the callbacks only record facts and queue events;
- pjsua2 objects (calls, players, recorders) are never freed inside a callback: finished ones
  are parked and released by `collect()` on the next pump turn;
- `shutdown()` hangs up, pumps, releases, and only then destroys the library;
- the per-process call limit is read from the library (`pjsua_call_get_max_count`), never assumed;
- a call slot is free only when pjsua says so (`slots_in_use`), not when a call looks ended: a local
  hangup reports DISCONNECTED at once but holds the slot until the BYE/CANCEL is answered;
- pjsua2 stays in here: callers get `SipError` for its `Error`, `CallEvent`s and `SipCall.ended`
  for its call states; the pjsua C functions it does not wrap are declared in `_pjsua_c`.
"""

from __future__ import annotations

import contextlib
import enum
import functools
import gc
import importlib.metadata
import json
import logging
import os
import random
import sys
import time
import weakref
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

import pjsua2 as pj

from voiceload.core.mediaprofile import CODECS, MediaProfile, codec
from voiceload.core.sipprofile import SipProfile, parse_sip_uri
from voiceload.media.engine import CODEC_IDS, ChannelMedia, FarEnd, MediaEngine, RtpChannel, far_end
from voiceload.protocol import RtpStats
from voiceload.sip import _pjsua_c
from voiceload.sip.message import SipMessage
from voiceload.sip.sdp import SdpError, channel_media, make_offer, read_answer

log = logging.getLogger(__name__)

CLOCK_RATE = 8000  # the bridge runs at G.711's rate: no resampling anywhere on the path
FRAME_MS = 20
TAPE_CLOSE_TIMEOUT_S = 1.0
RTP_PORT_MIN, RTP_PORT_MAX = 10_000, 60_000
PORTS_PER_CALL = 3  # conference ports: the call's stream, its tape recorder, its current player
PJ_ETOOMANY = 70010  # pj_status_t of "no free call slot"
REGISTER_EXPIRES_S = 300
# A call's own digest credentials, "user:password", among its headers: our pjproject patch
# (scripts/pjsua2/40-per-call-credentials.patch) puts them in the call's dialog and never sends it
CALL_AUTH_HEADER = "X-Voiceload-Auth"
SESSION_MIN_SE_S = 90  # RFC 4028's floor, and pjsip's
SESSION_EXPIRES_S = 1800  # what we ask for; a far end may lower it (not below Min-SE)
SLOT_RETRY_S = 0.02  # how soon a caller refused with SlotsBusy should try again (a BYE round trip or so)
SRTP_CRYPTO = "AES_CM_128_HMAC_SHA1_80"  # the one SDES suite offered and accepted: what every gateway has
# --srtp -> pjsua's SRTP use. Secure signalling (SIP over TLS) is never required: gateways offer SDES
# over plain UDP as often as over TLS, and pjsua's default (1) would refuse those calls.
SRTP_USE = {"off": pj.PJMEDIA_SRTP_DISABLED, "optional": pj.PJMEDIA_SRTP_OPTIONAL,
            "required": pj.PJMEDIA_SRTP_MANDATORY}


class SipError(Exception):
    """What pjsua2 refused, in its words: callers of this adapter never see pjsua2's own `Error`."""


class SlotsBusy(SipError):
    """Every pjsua call slot is held, some maybe by calls still hanging up: nothing was placed, try again."""


class CallEvent(enum.Enum):
    """What a call's callbacks queued on `SipStack.events`, for the pump loop to act on."""

    INCOMING = "incoming"  # a new incoming call: answer it
    STATE = "state"  # its signalling moved on (`times`, `status_code`, `ended`)
    MEDIA = "media"  # its audio stream is up


P = ParamSpec("P")
R = TypeVar("R")


def _sip_errors(func: Callable[P, R]) -> Callable[P, R]:
    """`func` raising `SipError` where pjsua2 raises its `Error`."""

    @functools.wraps(func)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return func(*args, **kwargs)
        except pj.Error as exc:
            raise SipError(exc.info().strip()) from None

    return wrapper


@contextlib.contextmanager
def _quiet_stdout() -> Iterator[None]:
    """pjlib prints its start-up lines to stdout before any log level applies: keep stdout clean
    (the bot's READY/LOAD protocol and users' pipes read it)."""
    sys.stdout.flush()
    saved = os.dup(1)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 1)
        yield
    finally:
        os.dup2(saved, 1)
        os.close(saved)
        os.close(devnull)


@functools.cache
def _lib() -> _pjsua_c.Pjsua:
    return _pjsua_c.Pjsua(pj._pjsua2.__file__)


@dataclass
class CallTimes:
    """Monotonic timestamps (s) of a call's signalling milestones, taken on the pump thread."""

    invite: float | None = None
    ringing: float | None = None
    answered: float | None = None  # 200 OK received (UAC) / sent (UAS)
    confirmed: float | None = None
    disconnected: float | None = None


@dataclass(frozen=True)
class FinalResponse:
    """How an outgoing call's INVITE ended: its final status, and whether the far end sent it.

    `remote` False means our own stack made the status up: a transport error (pjsip's 503 with the
    socket's error, e.g. a refused TCP connection or a failed TLS handshake), a transaction timeout
    (408), or our own CANCEL.
    """

    code: int | None
    reason: str
    remote: bool
    retry_after_s: int | None = None  # the final response's Retry-After (e.g. a 503's), when it had one


# pjmedia_stream_dtmf_event_flags (pjmedia/stream.h), which the SWIG module does not export
DTMF_IS_UPDATE, DTMF_IS_END = 1, 2
PJMEDIA_DTMF_MS = 200  # pjmedia's RFC 4733 digit length (PJMEDIA_DTMF_DURATION, 1600 samples at 8 kHz)
DTMF_INFO, DTMF_RFC4733 = "info", "rfc4733"  # core.mediaprofile.DTMF_METHODS


@dataclass
class HeardDigit:
    """A DTMF digit the far end sent, as pjsua reported it (SIP INFO; RFC 4733 on pjmedia's own stream)."""

    digit: str
    at: float  # monotonic s: the INFO's arrival, or the digit's first RTP event packet
    duration_ms: float  # as the sender stated it (INFO's Duration=, the event's final duration)
    method: str  # DTMF_INFO | DTMF_RFC4733
    ended: float | None = None  # monotonic s the digit ended; None: its end is not heard yet (RFC 4733)


@dataclass(frozen=True)
class SentDigit:
    """A DTMF digit this side sent as SIP INFO, with the time its INFO left."""

    digit: str
    at: float  # monotonic s
    duration_ms: int


class SipCall(pj.Call):
    """A call whose callbacks only record facts and queue an event for the pump loop."""

    def __init__(self, stack: SipStack, account: _Account, call_id: int = pj.PJSUA_INVALID_ID) -> None:
        super().__init__(account, call_id)
        self.stack = stack
        self.kind = account.kind  # the object only ever serves calls of this account
        self.account_key = account.key  # pooled objects are kept per account
        self.local_host = account.host  # the source address of its SIP and RTP
        stack.every_call.add(self)
        self.reset()

    def reset(self) -> None:
        """Fresh per-call state: SipCall objects are reused, never destroyed mid-run (see SipStack)."""
        self.times = CallTimes()
        self.sip_call_id = ""
        self.status_code: int | None = None
        self.status_text = ""
        self.final: FinalResponse | None = None  # set once: at answer, or when the call ends unanswered
        self._state = pj.PJSIP_INV_STATE_NULL
        self.media: pj.AudioMedia | None = None
        self.rtp: RtpStats | None = None
        self.remote_hangup = False
        self.local_hangup = False
        self.tape: Tape | None = None
        self.players: list[pj.AudioMediaPlayer] = []
        self.channel: RtpChannel | None = None  # the engine's RTP channel, when the stack has an engine
        self.holds: list[list[float]] = []  # [start, end] monotonic s of each hold by the far end; end inf: on hold
        self.far_held = False  # the latest negotiation left the far end holding the call (or early media sendonly)
        self.media_moves = 0  # times the engine's channel followed the far end to another RTP address
        self.srtp_key: bytes | None = None  # the SRTP key our offer carried (None: plain RTP offered)
        self.offer_sdp = ""  # our SDP offer as sent
        self.media_error: str | None = None  # the negotiated media is beyond the engine: the call ends with this
        self.invite = ""  # an incoming call's INVITE as received (for its headers)
        # digits the far end sent that pjsua saw (onDtmfEvent: SIP INFO, and RFC 4733 when pjmedia
        # carries the call's audio); appended on pjmedia's media thread for RFC 4733
        self.dtmf_heard: list[HeardDigit] = []
        self.dtmf_sent: list[SentDigit] = []  # our SIP INFO digits, as they went out
        self._info_due: deque[tuple[float, str, int]] = deque()  # (monotonic s, digit, duration ms) to send
        self.app: Any = None  # the role's per-call state
        # close() and release() act once per call: several state events of one call can wait in
        # `events` and all see DISCONNECTED (a call rejected before its CALLING event was handled)
        self.closed = False
        self.released = False

    # --- callbacks: record, queue, return ---------------------------------------------------
    def onCallState(self, prm: pj.OnCallStateParam) -> None:
        now = time.monotonic()
        ci = self.getInfo()
        self._state = ci.state
        self.sip_call_id = ci.callIdString or self.sip_call_id
        if ci.lastStatusCode:
            self.status_code = int(ci.lastStatusCode)
            self.status_text = ci.lastReason
        if self.final is None:
            if ci.state in (pj.PJSIP_INV_STATE_CONNECTING, pj.PJSIP_INV_STATE_CONFIRMED):
                self.final = FinalResponse(self.status_code or 200, self.status_text or "OK", remote=True)
            elif ci.state == pj.PJSIP_INV_STATE_DISCONNECTED:
                self.final = self._final_of(prm.e)
        if ci.state == pj.PJSIP_INV_STATE_EARLY and self.times.ringing is None:
            self.times.ringing = now
        elif ci.state == pj.PJSIP_INV_STATE_CONNECTING and self.times.answered is None:
            self.times.answered = now
        elif ci.state == pj.PJSIP_INV_STATE_CONFIRMED:
            self.times.confirmed = now
            if self.times.answered is None:
                self.times.answered = now
            self._hold_edge(self.times.answered)  # answered on hold: held from the answer on
        elif ci.state == pj.PJSIP_INV_STATE_DISCONNECTED:
            self.times.disconnected = now
            if not self.local_hangup:
                self.remote_hangup = True
        self.stack.events.append((self, CallEvent.STATE))

    def _final_of(self, e: pj.SipEvent) -> FinalResponse:
        """The unanswered call's end as the event that ended it tells: a response received (with its
        Retry-After), or a status of our own stack (a timer, a transport error, our hangup)."""
        local = FinalResponse(self.status_code, self.status_text, remote=False)
        try:
            if e.type != pj.PJSIP_EVENT_TSX_STATE or e.body.tsxState.type != pj.PJSIP_EVENT_RX_MSG:
                return local
            msg = SipMessage.parse(str(e.body.tsxState.src.rdata.wholeMsg))
        except (pj.Error, AttributeError, TypeError):
            return local
        if msg is None or msg.is_request or msg.status is None or msg.cseq_method != "INVITE":
            return local
        return FinalResponse(msg.status, msg.reason or self.status_text, remote=True, retry_after_s=msg.retry_after_s)

    def onCallSdpCreated(self, prm: pj.OnCallSdpCreatedParam) -> None:
        # the far end is to send its RTP to the engine's socket, not to pjsua's idle stream; the
        # engine does SRTP, so the key in the offer is the engine's (sip/sdp.py)
        if self.channel is not None:
            # the first SDP is our offer; a later one (an answer to a re-INVITE, say) keeps the call's key
            later = self.channel.started is not None
            srtp = "off" if later and self.srtp_key is None else self.stack.media_profile.srtp
            offer = make_offer(prm.sdp.wholeSdp, self.channel.port, self.channel.rtcp_port, srtp,
                               key=self.srtp_key if later else None)
            self.srtp_key = offer.srtp_key
            self.offer_sdp = prm.sdp.wholeSdp = offer.sdp

    def onCallMediaState(self, prm: pj.OnCallMediaStateParam) -> None:
        ci = self.getInfo()
        if self.channel is not None:
            self._follow_media(ci)
            return
        for i, mi in enumerate(ci.media):
            if mi.type == pj.PJMEDIA_TYPE_AUDIO and mi.status == pj.PJSUA_CALL_MEDIA_ACTIVE:
                self.media = self.getAudioMedia(i)
                if self.tape is None and self.stack.tape_dir is not None:
                    # start the tape right here, not on a later pump turn: nothing the far end
                    # sends may precede it (creating and connecting ports in callbacks is safe)
                    self.start_tape(self.stack.next_tape_path())
                self.stack.events.append((self, CallEvent.MEDIA))
                return

    def _follow_media(self, ci: pj.CallInfo) -> None:
        """Start or move the engine's channel as this negotiation left the call's audio.

        pjsua calls this at each negotiation: a 183 with SDP (early media), the 200 OK (whose SDP
        may differ from the 183's, RFC 6337 3.1.1), every re-INVITE or UPDATE with SDP (a session
        refresh, a move, a hold). The first starts the channel and its tape; each later one may move
        it (`RtpChannel.follow`) or hold it. pjsua's negotiated direction is the source, as pjmedia
        read the SDP: the far end's `a=sendonly` leaves us decoding only, `a=inactive` and
        `c=0.0.0.0` leave no stream at all (docs/density.md).
        """
        assert self.channel is not None
        for i, mi in enumerate(ci.media):
            if mi.type != pj.PJMEDIA_TYPE_AUDIO or mi.status not in (pj.PJSUA_CALL_MEDIA_ACTIVE,
                                                                     pj.PJSUA_CALL_MEDIA_REMOTE_HOLD):
                continue
            try:  # no stream (and no stream info) while the audio is inactive
                remote: str | None = str(self.getStreamInfo(i).remoteRtpAddress)
            except pj.Error:
                remote = None
            far = far_end(we_send=bool(mi.dir & pj.PJMEDIA_DIR_ENCODING), remote=remote)
            now = time.monotonic()
            if self.channel.started is None:
                if far.remote is None:  # nowhere to send yet (early media inactive): wait for the next offer
                    return
                media = self._negotiated_media(ci.id, i)
                if media is None:  # beyond the engine: media_error says why, the agent ends the call
                    self.stack.events.append((self, CallEvent.MEDIA))
                    return
                path = self.stack.next_tape_path() if self.stack.tape_dir is not None else None
                started = self.channel.start(far.remote, path, ssrc=ci.id * 7919 + self.stack.ssrc_base,
                                             media=media)
                if path is not None:
                    self.tape = Tape(path, started)
                if far.held:
                    self.channel.follow(far)
            else:
                try:
                    if self.channel.follow(far):
                        self.media_moves += 1
                        log.debug("call %s: far end's media moved to %s", self.sip_call_id, far.remote)
                except OSError as exc:  # the socket could not keep its port: the call's audio is gone
                    log.warning("call %s: could not follow the far end's media: %s", self.sip_call_id, exc)
            self._note_hold(far, now)
            # pjsua may have re-created its own stream for this negotiation, back on the bridge
            self._silence_pjsua_stream(ci.id)
            self.stack.events.append((self, CallEvent.MEDIA))
            return

    def _negotiated_media(self, call_id: int, index: int) -> ChannelMedia | None:
        """What the engine must send and expect, as pjsua negotiated the codec and the far end's SDP
        says the rest (SRTP key, RTCP mux, telephone-event); None (and media_error) if it cannot."""
        try:
            si = self.getStreamInfo(index)
            name = str(si.codecName)
            if name.lower() not in CODECS or codec(name).name not in CODEC_IDS:
                self.media_error = f"the far end chose codec {name}, which the engine does not speak"
                return None
            chosen = codec(name)
            remote = _lib().call_remote_sdp(call_id)
            if remote is not None:
                answer = read_answer(remote, codec_rate=chosen.rtp_rate, srtp=self.stack.media_profile.srtp)
            else:  # a build that cannot show it (not voiceload's): plain RTP, telephone-event as we offered it
                answer = read_answer(self.offer_sdp, codec_rate=chosen.rtp_rate, srtp="off")
            rtcp = str(si.remoteRtcpAddress) or None
            return channel_media(chosen.name, int(si.txPt), answer, self.srtp_key, rtcp,
                                 stereo=self.stack.stereo_tapes)
        except SdpError as exc:
            self.media_error = str(exc)
        except pj.Error as exc:
            self.media_error = f"no stream info for the negotiated media: {exc.info()}"
        return None

    def _note_hold(self, far: FarEnd, now: float) -> None:
        """Holds count from the answer on: before it, a one-way stream is early media (a 183 with
        `a=sendonly` is a common ringback). The 200 OK's own negotiation is reported after its
        CONNECTING state, so the answer's direction is taken at CONFIRMED (the ACK)."""
        self.far_held = far.held
        if self.times.confirmed is not None:
            self._hold_edge(now)

    def _hold_edge(self, now: float) -> None:
        if self.far_held and not self.held:
            self.holds.append([now, float("inf")])
        elif not self.far_held and self.held:
            self.holds[-1][1] = now

    @property
    def held(self) -> bool:
        """The far end holds the call now (it re-negotiated sendonly, inactive or c=0.0.0.0)."""
        return bool(self.holds) and self.holds[-1][1] == float("inf")

    @staticmethod
    def _silence_pjsua_stream(call_id: int) -> None:
        """Take pjsua's own stream of the call off the bridge: it must send nothing.

        Left on, the bridge feeds it silence every 20 ms and it sends that from pjsua's socket: the
        far end then gets two streams, and its symmetric-RTP latching (pjmedia's, for one) may send
        its audio to pjsua's socket instead of the engine's (seen: the first second of every
        greeting lost). pjsua removes the slot again when the call ends, which finds it empty
        (PJ_EINVAL, ignored); no other port can take the slot meanwhile, since an agent's bridge
        holds no players or recorders.
        """
        slot = _lib().call_get_conf_port(call_id)
        if slot >= 0:
            _lib().conf_remove_port(slot)

    def onDtmfEvent(self, prm: pj.OnDtmfEventParam) -> None:
        """A digit from the far end: SIP INFO (one event, on the pump thread) or RFC 4733 (pjmedia's
        stream: a start, updates and an end, on its media thread). Records only."""
        now = time.monotonic()
        digit = str(prm.digit).upper()
        duration = float(prm.duration) if 0 <= int(prm.duration) < 0xFFFF else 0.0  # unknown: -1 or 0xFFFF
        if prm.method == pj.PJSUA_DTMF_METHOD_SIP_INFO:
            self.dtmf_heard.append(HeardDigit(digit, now, duration, DTMF_INFO, ended=now + duration / 1000))
            return
        last = self.dtmf_heard[-1] if self.dtmf_heard else None
        if not prm.flags & DTMF_IS_UPDATE or last is None or last.ended is not None or last.digit != digit:
            last = HeardDigit(digit, now, duration, DTMF_RFC4733)
            self.dtmf_heard.append(last)
        last.duration_ms = duration
        if prm.flags & DTMF_IS_END:
            last.ended = now

    def onCallRedirected(self, prm: pj.OnCallRedirectedParam) -> int:
        # follow 3xx: the reference bot spreads calls over worker processes this way
        return int(pj.PJSIP_REDIRECT_ACCEPT)

    def onStreamPreCreate(self, prm: pj.OnStreamPreCreateParam) -> None:
        # with an engine, pjsua's own stream must send nothing: it would send an RTCP SDES at its
        # start and an SDES + BYE at its end from its own port (seen: plain RTCP into an SRTP call)
        if self.channel is not None:
            prm.streamInfo.rtcpSdesByeDisabled = True

    def onStreamDestroyed(self, prm: pj.OnStreamDestroyedParam) -> None:
        # the last moment the stream's RTP counters exist (with an engine, pjsua's stream carried none)
        if self.channel is None:
            self.rtp = self.read_rtp_stats() or self.rtp

    # --- operations, called from the pump loop ----------------------------------------------
    @property
    def ended(self) -> bool:
        """pjsua reports the call disconnected: it carries nothing more (its slot may still be held)."""
        return bool(self._state == pj.PJSIP_INV_STATE_DISCONNECTED)

    def read_rtp_stats(self) -> RtpStats | None:
        try:
            st = self.getStreamStat(0)
        except pj.Error:
            return None
        rx, tx, jb = st.rtcp.rxStat, st.rtcp.txStat, st.jbuf
        return RtpStats(
            rx_packets=int(rx.pkt),
            rx_lost=int(rx.loss),
            rx_discarded=int(rx.discard),
            rx_jitter_ms_mean=round(rx.jitterUsec.mean / 1000, 2),
            rx_jitter_ms_max=round(rx.jitterUsec.max / 1000, 2),
            tx_packets=int(tx.pkt),
            jbuf_delay_ms_mean=int(jb.avgDelayMsec),
            jbuf_empty=int(jb.empty),
            jbuf_discard=int(jb.discard),
        )

    def codec(self) -> str | None:
        """The codec pjmedia's stream of this call negotiated (a `core.mediaprofile.CODECS` name, e.g.
        "G722"); None without a stream, or for a codec not among ours."""
        try:
            info = self.getStreamInfo(0)
        except pj.Error:
            return None
        # by name alone: the stream's clock is the codec's internal one (Opus decodes at our 8 kHz)
        name = str(info.codecName).lower()
        return next((c.name for c in CODECS.values() if c.pjsua_id.split("/")[0].lower() == name), None)

    def srtp_suite(self) -> str | None:
        """The SRTP crypto suite this call's media is protected with; None for plain RTP.

        pjsua2 has no accessor for it: pjsua's call dump states it ("SRTP status: Active Crypto-suite: ...").
        """
        try:
            dump = str(self.dump(True, ""))
        except pj.Error:
            return None
        for line in dump.splitlines():
            _, _, suite = line.partition("SRTP status: Active Crypto-suite:")
            if suite.strip():
                return suite.strip()
        return None

    def level(self) -> int:
        """Level (0..100) of the audio the remote sends us, last bridge frame (cheap C call)."""
        if self.media is None:
            return 0
        try:
            return int(self.media.getTxLevel())  # pjsua2 names it from the bridge's side
        except pj.Error:
            return 0

    def last_loud_ms(self) -> float | None:
        """When the remote was last loud (monotonic ms), from the media engine; None before that or without one."""
        t = self.channel.last_loud() if self.channel is not None and self.channel.started is not None else None
        return None if t is None else t * 1000

    def send_dtmf(self, digits: str, duration_ms: int, gap_ms: int, *, method: str) -> tuple[float, float]:
        """Dial `digits` now; (start of the first digit, end of the last), monotonic s, as planned.

        RFC 4733: through the media engine's channel (`RtpChannel.send_dtmf`), which times every
        event packet itself; without an engine (the reference bot), pjmedia's stream sends them, each
        digit PJMEDIA_DTMF_MS long whatever `duration_ms` says. SIP INFO: one INFO per digit
        (`application/dtmf-relay`, `Duration=duration_ms`), the first now and each next one
        `duration_ms + gap_ms` later from the pump (`SipStack.pump`); `dtmf_sent` has the real times.
        """
        now = time.monotonic()
        n = len(digits)
        if method == DTMF_INFO:
            step = (duration_ms + gap_ms) / 1000
            self._info_due.extend((now + k * step, d, duration_ms) for k, d in enumerate(digits))
            self.stack.dialling.add(self)
            self.send_due_digits(now)
            return now, now + (n - 1) * step + duration_ms / 1000
        if self.channel is not None:
            try:  # no telephone-event negotiated: that call's DTMF step fails, with the reason
                return self.channel.send_dtmf(digits, duration_ms, gap_ms)
            except ValueError as exc:
                raise SipError(f"RFC 4733 DTMF: {exc} (--dtmf info sends SIP INFO instead)") from None
        self._dial_pjmedia(digits)
        return now, now + n * PJMEDIA_DTMF_MS / 1000

    @_sip_errors
    def _dial_pjmedia(self, digits: str) -> None:
        self.dialDtmf(digits)

    def send_due_digits(self, now: float) -> None:
        """Send the SIP INFO digits whose time has come (pump loop). A refused INFO ends the digits."""
        due = self._info_due
        while due and due[0][0] <= now and not self.ended:
            _, digit, duration_ms = due.popleft()
            prm = pj.CallSendDtmfParam()
            prm.method = pj.PJSUA_DTMF_METHOD_SIP_INFO
            prm.digits = digit
            prm.duration = duration_ms
            sent = time.monotonic()
            try:
                self.sendDtmf(prm)
            except pj.Error as exc:
                log.warning("call %s: SIP INFO for DTMF %s failed: %s", self.sip_call_id, digit, exc.info().strip())
                due.clear()
                break
            self.dtmf_sent.append(SentDigit(digit, sent, duration_ms))
        if not due or self.ended:
            due.clear()
            self.stack.dialling.discard(self)

    def header(self, name: str) -> str | None:
        """The value of header `name` on an incoming call's INVITE (first occurrence), None if absent."""
        msg = SipMessage.parse(self.invite)
        return None if msg is None else msg.get(name)

    def hangup_now(self, code: int = 200) -> None:
        if self.ended or self.local_hangup:
            return
        self.local_hangup = True
        prm = pj.CallOpParam()
        prm.statusCode = code
        try:
            self.hangup(prm)
        except pj.Error as exc:
            log.debug("hangup failed: %s", exc.info())

    @_sip_errors
    def start_tape(self, path: Path) -> None:
        """Record everything the call carries (remote audio + our players) on the bridge clock."""
        assert self.media is not None
        self.tape = Tape.on_bridge(path)
        self.media.startTransmit(self.tape.recorder)
        self.tape.started = time.monotonic()

    @_sip_errors
    def play(self, path: Path) -> float:
        """Play a recording into the call (and onto the tape); returns the monotonic start time."""
        if self.channel is not None:
            return self.channel.play(path)
        assert self.media is not None
        # one player per call at a time: the previous one has played out (turns don't overlap),
        # and every live player holds a conference port
        self.players.clear()
        player = pj.AudioMediaPlayer()
        player.createPlayer(str(path), pj.PJMEDIA_FILE_NO_LOOP)
        if self.tape is not None:
            player.startTransmit(self.tape.recorder)
        player.startTransmit(self.media)
        self.players.append(player)
        return time.monotonic()

    def close_media(self) -> None:
        """Release players and the tape recorder (flushes the WAV). Pump-loop only, never a callback."""
        if self.channel is not None:  # the engine completes the tape at once
            stats = self.channel.close()
            if self.channel.started is not None:
                self.rtp = stats
            # the RFC 4733 digits the engine received (RtpChannel.dtmf_received, filled by close)
            self.dtmf_heard.extend(HeardDigit(d.digit, d.at, d.duration_ms, DTMF_RFC4733,
                                              ended=d.at + d.duration_ms / 1000)
                                   for d in self.channel.dtmf_received)
            self.channel = None
        self.players.clear()
        if self.tape is not None:
            self.tape.recorder = None  # destroys the recorder; pjmedia then writes the WAV header


@dataclass
class Tape:
    """A call's tape: written by the media engine, or by a pjmedia recorder on the bridge (`on_bridge`)."""

    path: Path
    started: float = 0.0  # monotonic time of sample 0
    recorder: Any = field(default=None)

    @classmethod
    def on_bridge(cls, path: Path) -> Tape:
        recorder = pj.AudioMediaRecorder()
        recorder.createRecorder(str(path))
        return cls(path, recorder=recorder)

    def finalized(self) -> bool:
        """True once the WAV header states the file's real length (pjmedia writes it on destroy)."""
        try:
            with open(self.path, "rb") as f:
                head = f.read(8)
            size = self.path.stat().st_size
        except OSError:
            return True  # nothing to wait for
        return len(head) == 8 and int.from_bytes(head[4:8], "little") == size - 8

    def index_at(self, t: float) -> int:
        """The tape sample written at monotonic time `t` (the bridge writes CLOCK_RATE samples a second)."""
        return max(0, round((t - self.started) * CLOCK_RATE))



@dataclass(frozen=True)
class RegState:
    """A REGISTER transaction's outcome as the account saw it."""

    code: int
    reason: str
    expires_s: int

    @property
    def ok(self) -> bool:
        return self.code // 100 == 2


AccountKey = tuple[str, str]  # (source address, transport kind): an account is bound to that one transport


class _Account(pj.Account):
    def __init__(self, stack: SipStack, key: AccountKey, *, registering: bool = False) -> None:
        super().__init__()
        self.stack = stack
        self.key = key
        self.host, self.kind = key  # the address and transport it is bound to
        self.registering = registering
        self.registration: RegState | None = None  # its last REGISTER's outcome

    def onRegState(self, prm: pj.OnRegStateParam) -> None:
        self.registration = RegState(int(prm.code), str(prm.reason), int(prm.expiration))

    def onIncomingCall(self, prm: pj.OnIncomingCallParam) -> None:
        call = self.stack.adopt(prm.callId)
        ci = call.getInfo()
        call.sip_call_id = ci.callIdString
        call.invite = str(prm.rdata.wholeMsg)
        call.times.invite = time.monotonic()
        self.stack.calls.add(call)
        self.stack.events.append((call, CallEvent.INCOMING))


class SipStack:
    """The process's single pjsua2 endpoint: a UDP transport (plus TCP/TLS when asked) and one account.

    The account carries the caller side's `SipProfile`: digest credentials for any challenge, an
    outbound proxy as its route set, and an optional registration. pjsua picks each request's
    transport from the target URI (`;transport=tcp`, `sips:`), so one account serves them all.

    Several source addresses (`hosts`, docs/gateways.md "Addresses"): each gets its own transports,
    and one account per transport, bound to it, with the account's pjsua media on the same address;
    `make_call(host=...)` picks one. `public` maps an address to what it advertises (NAT): Via,
    Contact and the SDP's `c=` carry that while the sockets stay bound locally.

    `media_profile` (default: the SIP profile's) says which codecs the calls offer or accept, in
    order, and their SRTP (`codec_priorities`, `srtp_config`); a codec this build lacks is a `SipError`.
    """

    def __init__(self, *, host: str = "127.0.0.1", port: int = 0, max_calls: int = 1024,
                 log_level: int | None = None, user: str = "voiceload", media: MediaEngine | None = None,
                 profile: SipProfile | None = None, transports: Iterable[str] = ("udp",),
                 domain: str | None = None, registrar: str | None = None,
                 hosts: Sequence[str] = (), public: Mapping[str, str] | None = None,
                 media_profile: MediaProfile | None = None) -> None:
        self.hosts = tuple(hosts) or (host,)
        self.host, self.port, self.max_calls_wanted = self.hosts[0], port, max_calls
        self.public = dict(public or {})
        self.log_level = log_level if log_level is not None else int(os.environ.get("VOICELOAD_PJSIP_LOG", "0"))
        self.user = user
        self.profile = profile or SipProfile()
        self.media_profile = media_profile or self.profile.media  # codecs in order, SRTP
        self.transports = {"udp", *transports}
        self.domain = domain  # the From's host with credentials (the gateway's domain), else our address
        self.registrar = registrar  # REGISTER here (profile.register), e.g. sip:gw.example.com;transport=tcp
        self.local_ports: dict[str, int] = {}  # the first address's, per transport kind
        self.host_ports: dict[str, dict[str, int]] = {}  # address -> kind -> local port
        self._transport_ids: dict[AccountKey, int] = {}
        self.accounts: dict[AccountKey, _Account] = {}  # one per transport; `account` is the first address's UDP one
        self._kinds: dict[str, str] = {}  # target URI -> the transport its requests leave on
        self.events: deque[tuple[SipCall, CallEvent]] = deque()
        self.calls: set[SipCall] = set()
        self._parked: list[SipCall] = []
        self._closing: list[tuple[float, SipCall, Callable[[SipCall], None]]] = []
        self.dialling: set[SipCall] = set()  # calls with SIP INFO digits still to send (SipCall.send_dtmf)
        # finished SipCall objects, reused for the next calls, per transport: a pjsua2 Call keeps its account
        self._pools: dict[AccountKey, list[SipCall]] = {}
        self.tape_dir: Path | None = None  # when set, every call is taped from its first media frame
        self.stereo_tapes = False  # engine tapes in two channels (caller left, far end right): kept tapes
        self.media = media  # outgoing calls' RTP goes through this engine instead of pjmedia
        self.ssrc_base = random.getrandbits(32)
        self.every_call: weakref.WeakSet[SipCall] = weakref.WeakSet()
        self._tapes = 0
        self.ep: pj.Endpoint | None = None
        self.account: _Account | None = None
        self.max_calls = 0
        self.from_user, self.from_host = user, host  # the account's From (set by start); a call may carry its own
        self.from_hosts: dict[str, str] = {}  # source address -> its accounts' From host (set by start)

    @property
    def registration(self) -> RegState | None:
        """The REGISTERs' outcome: None until every registering account (one per address) heard back,
        then the first refusal or, when none was refused, the first account's."""
        states = [a.registration for a in self.accounts.values() if a.registering]
        if not states or any(st is None for st in states):
            return None
        done = [st for st in states if st is not None]
        return next((st for st in done if not st.ok), done[0])

    @_sip_errors
    def start(self) -> None:
        threads_before = _thread_ids()
        ep = pj.Endpoint()
        with _quiet_stdout():
            ep.libCreate()
        cfg = pj.EpConfig()
        cfg.uaConfig.threadCnt = 0
        cfg.uaConfig.mainThreadOnly = False
        cfg.uaConfig.maxCalls = self.max_calls_wanted
        cfg.uaConfig.userAgent = "voiceload"
        cfg.logConfig.level = self.log_level
        cfg.logConfig.consoleLevel = self.log_level
        med = cfg.medConfig
        med.clockRate = CLOCK_RATE
        med.sndClockRate = CLOCK_RATE
        med.audioFramePtime = FRAME_MS
        med.ptime = FRAME_MS
        med.noVad = True  # silence is sent as audio: no DTX gaps that would look like jitter
        med.ecTailLen = 0
        med.maxMediaPorts = PORTS_PER_CALL * self.max_calls_wanted + 8  # call + tape + player
        with _quiet_stdout():
            ep.libInit(cfg)
        self.max_calls = _lib().call_get_max_count()
        for host in self.hosts:
            for kind in sorted(self.transports, key=("udp", "tcp", "tls").index):
                self._transport_ids[(host, kind)], port = self._create_transport(ep, kind, host)
                self.host_ports.setdefault(host, {})[kind] = port
        self.local_ports = dict(self.host_ports[self.host])
        self.port = self.local_ports["udp"]
        ep.audDevManager().setNullDev()
        ep.libStart()
        _favour_media_threads(_thread_ids() - threads_before)
        # the media profile's codecs, in its order; every other codec off (pjsua adds telephone-event itself)
        ids = [str(c.codecId) for c in ep.codecEnum2()]
        for codec_id, priority in codec_priorities(ids, self.media_profile.codecs).items():
            ep.codecSetPriority(codec_id, priority)
        # one account per transport, bound to it: pjsip sends over TLS only through a TLS listener
        # it is told to use, and a bound account makes every transport behave the same way
        # (several source addresses: each address's transports get their own accounts, and each address
        # registers when asked to, so a registrar sees every address the calls come from)
        reg_kind = self._route_kind(self.registrar) if self.profile.register and self.registrar else None
        for key, tid in self._transport_ids.items():
            account = _Account(self, key, registering=key[1] == reg_kind)
            account.create(self._account_config(key, tid, registering=key[1] == reg_kind))
            self.accounts[key] = account
        self.account = self.accounts[(self.host, "udp")]
        self.ep = ep

    def _account_config(self, key: AccountKey, transport_id: int, *, registering: bool) -> pj.AccountConfig:
        """The account of one address's transport: our identity, credentials, route set, registration, RTP."""
        host = key[0]
        shown, port = self.public.get(host) or host, self.host_ports[host]["udp"]  # what the far end sees of us
        acfg = pj.AccountConfig()
        acfg.sipConfig.transportId = transport_id
        auth = self.profile.auth
        if auth is not None:  # gateways match the From user against the credentials' user
            from_user, from_host = auth.user, self.domain or f"{shown}:{port}"
            acfg.sipConfig.authCreds.append(pj.AuthCredInfo("digest", auth.realm, auth.user, 0, auth.password))
        else:
            from_user, from_host = self.user, f"{shown}:{port}"
        self.from_hosts[host] = from_host  # a per-call From (identity) names its call's address
        if host == self.host:
            self.from_user, self.from_host = from_user, from_host
        acfg.idUri = f"sip:{from_user}@{from_host}"
        proxy = self.profile.proxy
        if proxy is not None:  # loose routing: the request URI stays the target's
            acfg.sipConfig.proxies.append(proxy if ";lr" in proxy else f"{proxy};lr")
        if registering and self.registrar is not None:
            acfg.regConfig.registrarUri = self.registrar
            acfg.regConfig.registerOnAdd = True
            acfg.regConfig.timeoutSec = REGISTER_EXPIRES_S  # pjsua refreshes it before it lapses
            acfg.regConfig.retryIntervalSec = 0  # a failed REGISTER is reported, not retried in a loop
        # Session timers (RFC 4028), answered whenever the far end asks: `Supported: timer` on our
        # INVITE, a Session-Expires it sets is honoured, and whichever side it names refreshes
        # (pjsip sends our re-INVITE/UPDATE refreshes; a far end's refresh is answered like any
        # re-INVITE or UPDATE, the media following it). Said here, not left to the defaults: a
        # gateway that requires timers (`Require: timer`) rejects a UAC that does not support them.
        acfg.callConfig.timerUse = pj.PJSUA_SIP_TIMER_OPTIONAL
        acfg.callConfig.timerMinSESec = SESSION_MIN_SE_S
        acfg.callConfig.timerSessExpiresSec = SESSION_EXPIRES_S
        # pjmedia's SRTP for pjmedia's calls (the bot); with an engine, the engine's key goes in the offer
        # (onCallSdpCreated) and pjsua's own, idle stream stays plain
        srtp_config(acfg.mediaConfig, "off" if self.media is not None else self.media_profile.srtp)
        acfg.mediaConfig.transportConfig.boundAddress = host
        if host in self.public:
            acfg.mediaConfig.transportConfig.publicAddress = self.public[host]  # the SDP's c=
            # the user said what the far end must use: pjsua must not swap in what a registrar saw
            acfg.natConfig.contactRewriteUse = 0
            acfg.natConfig.viaRewriteUse = 0
        # pjsua starts every process's RTP ports at 4000 and steps up on EADDRINUSE: many processes
        # starting at once race for the same ports (seen: makeCall failing). A random even base
        # per process keeps them apart; pjsua steps past ports in use, but only 100 times.
        # With a media engine, pjsua's own sockets carry nothing: port 0 lets the kernel pick each
        # one. Stepping from a base failed there (4 of 1000 makeCalls, EADDRINUSE): a 500-call
        # agent's pjsua and engine sockets fill blocks far longer than 100 steps.
        acfg.mediaConfig.transportConfig.port = 0 if self.media is not None \
            else random.randrange(RTP_PORT_MIN, RTP_PORT_MAX, 2)
        return acfg

    def _route_kind(self, uri: str) -> str:
        """The transport a request to `uri` leaves on: the outbound proxy's, else the URI's own."""
        scheme, _, rest = uri.partition(":")
        key = f"{scheme}:{rest.rpartition('@')[2]}"  # not the user: a per-call To user must not grow the cache
        kind = self._kinds.get(key)
        if kind is None:
            kind = parse_sip_uri(self.profile.proxy or uri, "--proxy" if self.profile.proxy else "--target").transport
            self._kinds[key] = kind
        return kind

    def _create_transport(self, ep: pj.Endpoint, kind: str, host: str) -> tuple[int, int]:
        """One listening transport of `kind` on `host`; its id and local port."""
        tcfg = pj.TransportConfig()
        tcfg.boundAddress = host
        if host in self.public:  # Via and Contact name the advertised address
            tcfg.publicAddress = self.public[host]
        tcfg.port = self.port if kind == "udp" else 0
        if kind == "tls":
            tls = self.profile.tls
            tcfg.tlsConfig.CaListFile = tls.ca_file or ""
            tcfg.tlsConfig.certFile = tls.cert_file or ""
            tcfg.tlsConfig.privKeyFile = tls.key_file or ""
            tcfg.tlsConfig.verifyServer = tls.verify_server
            tcfg.tlsConfig.proto = pj.PJ_SSL_SOCK_PROTO_TLS1_2 | pj.PJ_SSL_SOCK_PROTO_TLS1_3  # 1.2 or later
        types = {"udp": pj.PJSIP_TRANSPORT_UDP, "tcp": pj.PJSIP_TRANSPORT_TCP, "tls": pj.PJSIP_TRANSPORT_TLS}
        tid = ep.transportCreate(types[kind], tcfg)
        return int(tid), int(str(ep.transportGetInfo(tid).localName).rsplit(":", 1)[1])

    def slots_in_use(self) -> int:
        """Call slots pjsua holds: live calls, and calls that already look DISCONNECTED to us.

        A local hangup makes pjsua report DISCONNECTED at once (pjproject's "immediate hangup",
        #2600) while the slot stays taken until the BYE or CANCEL transaction ends: one round trip
        to the far end, 32 s if it never answers. `calls` drops a call on `release()`, which can be
        earlier than that, so `len(calls)` alone undercounts what `makeCall` will find.
        """
        return _lib().call_get_count()

    @property
    def closing(self) -> int:
        """Calls that ended and wait for their tape to be complete on disk."""
        return len(self._closing)

    def next_tape_path(self) -> Path:
        assert self.tape_dir is not None
        self._tapes += 1
        return self.tape_dir / f"{self._tapes}.wav"

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    @_sip_errors
    def pump(self, timeout_ms: int = 0) -> None:
        assert self.ep is not None
        self.ep.libHandleEvents(timeout_ms)
        if self.dialling:
            now = time.monotonic()
            for call in list(self.dialling):
                call.send_due_digits(now)

    @_sip_errors
    def make_call(self, uri: str, headers: dict[str, str] | None = None, host: str | None = None) -> SipCall:
        """Place a call from `host` (one of `hosts`; None: the first); `SlotsBusy` (nothing placed, nothing
        to report) while pjsua has no free slot.

        A `From` among `headers` is the call's From instead of the account's (our pjproject patch
        scripts/pjsua2/30-per-call-from.patch: pjsua has no per-call From); the request URI's user is
        the To user. `OSError` when the media engine has no socket for it, `SipError` when pjsua refuses it.
        """
        if headers and CALL_AUTH_HEADER in headers and not _voiceload_build():
            raise SipError("per-call credentials need voiceload's own pjsua2 build (make pjsua2): "
                           "this one would send them as a header")
        kind = self._route_kind(uri)
        account = self.accounts.get((host or self.host, kind))
        if account is None:
            raise SipError(f"{uri}: no {kind.upper()} transport on {host or self.host} in this agent")
        if self.slots_in_use() >= self.max_calls:
            raise SlotsBusy(f"all {self.max_calls} pjsua call slots held ({len(self.calls)} calls live)")
        pool = self._pools.setdefault(account.key, [])
        call = pool.pop() if pool else SipCall(self, account)
        call.reset()
        if self.media is not None:
            try:
                call.channel = self.media.open(account.host)
            except OSError:  # no socket to be had (out of file descriptors or ports): nothing placed
                pool.append(call)
                raise
        prm = pj.CallOpParam(True)
        for name, value in (headers or {}).items():
            hdr = pj.SipHeader()
            hdr.hName, hdr.hValue = name, value
            prm.txOption.headers.append(hdr)
        call.times.invite = time.monotonic()
        self.calls.add(call)
        try:
            call.makeCall(uri, prm)
        except pj.Error as exc:
            self.calls.discard(call)
            call.close_media()
            pool.append(call)
            if exc.status == PJ_ETOOMANY:  # a slot taken behind our back: the same as the check above
                raise SlotsBusy(exc.info().strip()) from None
            raise
        call.sip_call_id = call.getInfo().callIdString
        return call

    @_sip_errors
    def answer(self, call: SipCall, code: int = 200) -> None:
        prm = pj.CallOpParam()
        prm.statusCode = code
        call.answer(prm)

    def close(self, call: SipCall, then: Callable[[SipCall], None]) -> None:
        """Close a finished call's media, then run `then(call)` once its tape is complete on disk.

        Since pjproject 2.14 the bridge removes ports on its own clock thread, so a recorder's
        WAV header is written a tick or two after the recorder is dropped; `collect()` waits
        for it (bounded) instead of reading a half-written tape. A second close of the same call is
        ignored: running `then` twice would report the call twice and pool its object twice.
        """
        if call.closed:
            return
        call.closed = True
        call.close_media()
        self._closing.append((time.monotonic() + TAPE_CLOSE_TIMEOUT_S, call, then))

    def adopt(self, call_id: int) -> SipCall:
        """The SipCall for a new incoming call on pjsua slot `call_id`: a pooled one when possible.

        A pooled object gets the slot through pjsua's user data plus `Call.lookup`, which is how
        pjsua2 itself re-binds a Call object to a slot.
        """
        assert self.account is not None
        pool = self._pools.setdefault(self.account.key, [])
        if not pool:
            return SipCall(self, self.account, call_id)
        call = pool.pop()
        call.reset()
        _lib().call_set_user_data(call_id, int(call.this))
        bound = pj.Call.lookup(call_id)
        if bound is None or bound.getId() != call_id:
            raise RuntimeError(f"could not bind a pooled call object to pjsua slot {call_id}")
        return call

    def release(self, call: SipCall) -> None:
        """Forget a finished call; its object returns to the pool on the next `collect()`.

        pjsua2's `~Call()` clears the user data of, and hangs up, whatever call holds its *old*
        slot id, and pjsua reuses slots as soon as a call ends: destroying a finished Call
        mid-run can kill a live one. So finished objects are recycled, and only destroyed in
        `shutdown()` once no call is active.
        """
        if call.released:  # pooled twice, one object would serve two live calls
            return
        call.released = True
        self.calls.discard(call)
        self.dialling.discard(call)
        self._parked.append(call)

    def collect(self) -> None:
        """Hand over closed calls and free parked pjsua2 objects: pump loop only, never a callback."""
        if self._closing:
            now = time.monotonic()
            waiting = []
            for deadline, call, then in self._closing:
                if call.tape is None or call.tape.finalized() or now > deadline:
                    then(call)
                else:
                    waiting.append((deadline, call, then))
            self._closing = waiting
        while self._parked:
            call = self._parked.pop()
            call.close_media()
            call.media = None
            call.app = None
            call.tape = None
            self._pools.setdefault(call.account_key, []).append(call)

    @_sip_errors
    def unregister(self, timeout_s: float = 2.0) -> None:
        """Take every live registration back (REGISTER with Expires: 0), bounded; a no-op if none."""
        live = [a for a in self.accounts.values()
                if a.registration is not None and a.registration.ok and a.registration.expires_s]
        if not live:
            return
        with contextlib.suppress(pj.Error):
            for account in live:
                account.setRegistration(False)
            end = time.monotonic() + timeout_s
            while time.monotonic() < end and any(a.registration and a.registration.expires_s for a in live):
                assert self.ep is not None
                self.ep.libHandleEvents(20)

    def shutdown(self, drain_s: float = 1.0) -> None:
        if self.ep is None:
            return
        ep = self.ep
        with contextlib.suppress(pj.Error):
            ep.hangupAllCalls()
        end = time.monotonic() + drain_s
        while time.monotonic() < end and (self.slots_in_use() > 0 or any(not c.ended for c in self.calls)):
            ep.libHandleEvents(20)
        for _deadline, call, _then in self._closing:
            self.release(call)  # the role's measurement is skipped: the process is going away
        self._closing.clear()
        for call in list(self.calls):
            self.release(call)
        self.collect()
        self.unregister()
        self.events.clear()
        for pool in self._pools.values():
            pool.clear()  # destroyed while the library still lives and no call is active
        self.account = None
        self.accounts.clear()
        gc.collect()
        # Anything still referencing a call now (an exception's traceback, say) would run ~Call()
        # after libDestroy() and trip pjsua's asserts: the process is ending, let those leak.
        for survivor in list(self.every_call):
            survivor.thisown = False
        ep.libDestroy()
        self.ep = None


def build_codecs(codec_ids: Iterable[str]) -> tuple[str, ...]:
    """The codecs of `core.mediaprofile.CODECS` among pjsua's codec ids, by their names, in CODECS' order."""
    ids = list(codec_ids)
    return tuple(c.name for c in CODECS.values() if any(i.startswith(c.pjsua_id) for i in ids))


def codec_priorities(codec_ids: Iterable[str], wanted: Sequence[str]) -> dict[str, int]:
    """pjsua's priority per codec id: the `wanted` codecs (names, preferred first) from 255 down, every
    other codec 0 (pjsua neither offers nor accepts a codec at 0).

    A wanted codec that none of `codec_ids` provides is a `SipError` naming it: an offer without it
    would be a different test from the one asked for.
    """
    ids = list(codec_ids)
    priorities = dict.fromkeys(ids, 0)
    for rank, name in enumerate(wanted):
        prefix = CODECS[name.lower()].pjsua_id
        matching = [i for i in ids if i.startswith(prefix)]
        if not matching:
            have = ", ".join(build_codecs(ids)) or "none of ours"
            raise SipError(f"codec {name}: this pjsua2 build does not have it (it has {have})")
        for codec_id in matching:
            priorities[codec_id] = 255 - rank
    return priorities


def srtp_config(media_config: Any, mode: str) -> None:
    """Set an account's `AccountMediaConfig` for `--srtp` `mode`: off, optional (RTP/AVP with a=crypto;
    a plain answer or offer is taken too) or required (RTP/SAVP; a far end without SRTP is refused),
    with SDES keying and `SRTP_CRYPTO` as the only suite."""
    media_config.srtpUse = SRTP_USE[mode]
    media_config.srtpSecureSignaling = 0
    if mode == "off":
        return
    crypto = pj.SrtpCrypto()
    crypto.name, crypto.key, crypto.flags = SRTP_CRYPTO, "", 0
    media_config.srtpOpt.cryptos.append(crypto)
    media_config.srtpOpt.keyings.append(pj.PJMEDIA_SRTP_KEYING_SDES)


MEDIA_THREAD_NICE = -10


def _thread_ids() -> set[int]:
    try:
        return {int(t) for t in os.listdir("/proc/self/task")}
    except OSError:  # not Linux
        return set()


def _favour_media_threads(tids: set[int]) -> None:
    """Run pjmedia's threads (the bridge clock, the RTP receiver) at a higher priority than Python's.

    A clock tick or an RTP read that waits for a core behind Python work (a pump turn, a tape
    analysis, another process) adds a 20 ms frame to a jitter buffer for the rest of the call, and
    that frame is a 20 ms error in every later turn. pjlib asks for a higher priority itself, but on
    Linux its SCHED_OTHER request is a no-op. Needs CAP_SYS_NICE (root); without it, nothing changes.
    """
    for tid in tids:
        try:
            os.setpriority(os.PRIO_PROCESS, tid, MEDIA_THREAD_NICE)
        except OSError as exc:
            log.debug("media thread %d keeps its priority: %s", tid, exc)
            return


@functools.cache
def _voiceload_build() -> bool:
    """The installed pjsua2 is voiceload's own build, with its patches (scripts/pjsua2/*.patch)."""
    try:
        return "+voiceload" in importlib.metadata.version("pjsua2-python")
    except importlib.metadata.PackageNotFoundError:
        return False


@_sip_errors
def probe_build() -> dict[str, Any]:
    """What the installed pjsua2 build can do: its per-process call limit, whether it has TLS and SRTP,
    and which of our codecs it has.

    It creates and destroys an endpoint, so it runs in a child process (`python -m voiceload.sip.ua`).
    """
    ep = pj.Endpoint()
    with _quiet_stdout():
        ep.libCreate()
    cfg = pj.EpConfig()
    cfg.uaConfig.maxCalls = 1 << 16
    cfg.logConfig.level = 0
    cfg.logConfig.consoleLevel = 0
    cfg.uaConfig.threadCnt = 0
    with _quiet_stdout():
        ep.libInit(cfg)
    limit = _lib().call_get_max_count()
    try:
        tls = bool(ep.utilSslGetAvailableCiphers())
    except pj.Error:  # PJ_ENOTSUP: built without an SSL backend
        tls = False
    codecs = build_codecs(str(c.codecId) for c in ep.codecEnum2())
    try:  # built without SRTP, the list is empty
        srtp = SRTP_CRYPTO in list(ep.srtpCryptoEnum())
    except (pj.Error, AttributeError):
        srtp = False
    ep.libDestroy()
    return {"max_calls": limit, "tls": tls, "voiceload_build": _voiceload_build(), "codecs": list(codecs),
            "srtp": srtp}


if __name__ == "__main__":  # `python -m voiceload.sip.ua` prints the build's facts (used by sip.lite)
    print(json.dumps(probe_build()))
