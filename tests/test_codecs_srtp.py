"""Codec priorities and SRTP use from the media profile (sip/ua.py), what the pjsua2 build can do
(`probe_build`, `Pjsua2Build.media_problem`), and real negotiations between a pjsua2 caller and the bot."""

from __future__ import annotations

from pathlib import Path

import pytest

from voiceload.core.mediaprofile import CODECS, MediaProfile
from voiceload.errors import UserError
from voiceload.sip.lite import Pjsua2Build, pjsua2_build

IDS = ["speex/16000/1", "PCMU/8000/1", "PCMA/8000/1", "G722/16000/1", "opus/48000/2", "L16/8000/1"]


def test_the_listed_codecs_get_priorities_in_order_and_every_other_none() -> None:
    from voiceload.sip.ua import codec_priorities

    assert codec_priorities(IDS, ("PCMA", "opus", "PCMU")) == {
        "speex/16000/1": 0, "PCMU/8000/1": 253, "PCMA/8000/1": 255, "G722/16000/1": 0, "opus/48000/2": 254,
        "L16/8000/1": 0}
    assert codec_priorities(IDS, ("G722",))["G722/16000/1"] == 255


def test_a_codec_the_build_lacks_is_an_error_naming_it() -> None:
    from voiceload.sip.ua import SipError, build_codecs, codec_priorities

    assert build_codecs(IDS) == ("PCMU", "PCMA", "G722", "opus")
    assert build_codecs(["PCMU/8000/1", "G722/16000/1"]) == ("PCMU", "G722")
    with pytest.raises(SipError, match=r"codec opus: this pjsua2 build does not have it \(it has PCMU, G722\)"):
        codec_priorities(["PCMU/8000/1", "G722/16000/1"], ("PCMU", "opus"))


@pytest.mark.parametrize(("mode", "use"), [("off", "PJMEDIA_SRTP_DISABLED"), ("optional", "PJMEDIA_SRTP_OPTIONAL"),
                                           ("required", "PJMEDIA_SRTP_MANDATORY")])
def test_srtp_modes_map_to_pjsua_use_without_secure_signalling(mode: str, use: str) -> None:
    import pjsua2 as pj

    from voiceload.sip.ua import SRTP_CRYPTO, srtp_config

    cfg = pj.AccountMediaConfig()
    srtp_config(cfg, mode)
    assert cfg.srtpUse == getattr(pj, use)
    assert cfg.srtpSecureSignaling == 0  # SDES over plain UDP is what gateways do: no TLS demanded
    if mode == "off":
        assert len(cfg.srtpOpt.cryptos) == 0
    else:
        assert [c.name for c in cfg.srtpOpt.cryptos] == [SRTP_CRYPTO]
        assert list(cfg.srtpOpt.keyings) == [pj.PJMEDIA_SRTP_KEYING_SDES]


def test_the_build_names_what_it_cannot_do() -> None:
    pypi = Pjsua2Build(max_calls=4, tls=True, per_call_from=False, codecs=("PCMU", "PCMA", "G722"), srtp=False)
    assert pypi.media_problem(MediaProfile(codecs=("PCMA", "G722"))) is None
    problem = pypi.media_problem(MediaProfile(codecs=("opus", "PCMU")), "media.codecs")
    assert problem is not None and problem.startswith("media.codecs: codec opus: this pjsua2 build does not have it")
    problem = pypi.media_problem(MediaProfile(srtp="optional"))
    assert problem is not None and problem.startswith("--srtp optional: this pjsua2 build has no SRTP")
    full = Pjsua2Build(4, True, True, tuple(c.name for c in CODECS.values()), True)
    assert full.media_problem(MediaProfile(codecs=("opus",), srtp="required")) is None


def test_a_run_the_build_cannot_make_is_refused_before_any_call(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.refbot import DEMO
    from voiceload.run import coordinator

    monkeypatch.setattr(coordinator, "pjsua2_build",
                        lambda: Pjsua2Build(4, True, False, codecs=("PCMU", "PCMA"), srtp=False))
    settings = coordinator.RunSettings(scenario_path=DEMO, target="sip:bot@127.0.0.1", concurrency=1, calls=1,
                                       out_dir=tmp_path / "out")
    settings.media = {"codecs": ("G722", "PCMU")}
    with pytest.raises(UserError, match="codec G722: this pjsua2 build does not have it"):
        coordinator.validate(settings)
    settings.media = {"codecs": ("PCMA",), "srtp": "required"}
    with pytest.raises(UserError, match="--srtp required: this pjsua2 build has no SRTP"):
        coordinator.validate(settings)
    settings.media = {"codecs": ("PCMA", "PCMU"), "srtp": "off"}
    coordinator.validate(settings)


def test_the_bot_defaults_to_what_the_build_has(monkeypatch: pytest.MonkeyPatch) -> None:
    from voiceload.core.callflow import ThinkTime
    from voiceload.sut import bot

    def settings(**kw: object) -> bot.BotSettings:
        return bot.BotSettings(host="127.0.0.1", port=0, scenario_path=Path("x"), think=ThinkTime.parse("400"),
                               **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(bot, "pjsua2_build", lambda: Pjsua2Build(4, True, False, ("PCMU", "PCMA", "G722"), False))
    s = settings()
    bot.resolve_media(s)
    assert s.codecs == ("PCMU", "PCMA", "G722") and s.srtp == "off"
    with pytest.raises(UserError, match="codec opus"):
        bot.resolve_media(settings(codecs=("opus",)))
    with pytest.raises(UserError, match="--srtp optional"):
        bot.resolve_media(settings(srtp="optional"))
    monkeypatch.setattr(bot, "pjsua2_build", lambda: Pjsua2Build(4, True, True, tuple(CODECS[c].name for c in CODECS),
                                                                  True))
    s = settings()
    bot.resolve_media(s)
    assert s.codecs == ("PCMU", "PCMA", "G722", "opus") and s.srtp == "optional"
    assert bot._worker_cmd(s, 5090)[-4:] == ["--codecs", "PCMU,PCMA,G722,opus", "--srtp", "optional"]


def test_the_bots_receive_delay_is_per_codec() -> None:
    from voiceload.audio.calibration import BOT_RX_DELAY_MS, BOT_RX_DELAY_MS_BY_CODEC, bot_rx_delay_ms

    assert bot_rx_delay_ms(None) == bot_rx_delay_ms("PCMU") == BOT_RX_DELAY_MS
    assert set(BOT_RX_DELAY_MS_BY_CODEC) <= {c.name for c in CODECS.values()}
    for name in ("PCMA", "G722", "opus"):
        assert 0 < bot_rx_delay_ms(name) < 60


# --- real: a pjsua2 caller (pjmedia) and the reference bot on 127.0.0.1 ------------------------------

def _full_build() -> bool:
    build = pjsua2_build()
    return build.srtp and len(build.codecs) == len(CODECS)


needs_full_build = pytest.mark.skipif("not _full_build()", reason="needs voiceload's pjsua2 build (make pjsua2)")


def _caller_process(uri: str, media: dict[str, object], out: Path) -> None:
    """One pjsua2 endpoint per process: each negotiation runs in a child, and reports as JSON."""
    import json

    from bench._harness.pjcaller import PjCaller

    with PjCaller(MediaProfile.from_dict(media), tape_dir=out.parent) as caller:  # a tape: the bridge reads the call
        placed = caller.call(uri, listen_s=1.5)
        result = {"codec": placed.codec, "srtp": placed.srtp, "status": placed.status, "loud": placed.loud,
                  "answered": placed.call.times.confirmed is not None}
        if not placed.call.ended:
            caller.hangup(placed.call)
    out.write_text(json.dumps(result))


def _negotiate(tmp_path: Path, uri: str, codecs: tuple[str, ...], srtp: str) -> dict[str, object]:
    import json
    import multiprocessing

    out = tmp_path / f"{'-'.join(codecs)}-{srtp}.json"
    proc = multiprocessing.get_context("spawn").Process(
        target=_caller_process, args=(uri, {"codecs": list(codecs), "srtp": srtp}, out))
    proc.start()
    proc.join(30)
    if proc.is_alive():
        proc.kill()
        proc.join(5)
        raise AssertionError(f"the caller for {codecs} {srtp} did not finish")
    result: dict[str, object] = json.loads(out.read_text())
    return result


@pytest.mark.real
@needs_full_build
def test_each_codec_and_srtp_negotiate_with_the_bot_and_carry_audio(tmp_path: Path) -> None:
    """The bot accepts all four (PCMU first) and SRTP when offered; each caller offer gets its codec,
    SRTP as asked, and the bot's greeting reaches the caller decoded (and decrypted)."""
    from tests.refbot import start_bot

    bot = start_bot(tmp_path, max_calls=4)
    try:
        for codec in ("PCMU", "PCMA", "G722", "opus"):
            for srtp in ("off", "optional", "required"):
                got = _negotiate(tmp_path, bot.target, (codec,), srtp)
                want_srtp = None if srtp == "off" else "AES_CM_128_HMAC_SHA1_80"
                assert (got["codec"], got["srtp"], got["loud"]) == (codec, want_srtp, True), (codec, srtp, got)
        # an offer of several: the bot takes the caller's first choice it accepts
        got = _negotiate(tmp_path, bot.target, ("G722", "PCMU"), "off")
        assert got["codec"] == "G722", got
    finally:
        bot.stop()
    codecs_in_truth = {line.get("codec") for line in bot.truth_lines()}
    assert codecs_in_truth <= {None, "PCMU", "PCMA", "G722", "opus"}


@pytest.mark.real
@needs_full_build
def test_the_bot_refuses_what_it_does_not_accept(tmp_path: Path) -> None:
    from tests.refbot import start_bot

    bot = start_bot(tmp_path, max_calls=4, extra=["--codecs", "PCMA", "--srtp", "required"])
    try:
        got = _negotiate(tmp_path, bot.target, ("PCMU",), "required")  # no common codec
        assert got["answered"] is False and got["status"] == 488, got
        got = _negotiate(tmp_path, bot.target, ("PCMA",), "off")  # plain RTP to a bot that requires SRTP
        assert got["answered"] is False and got["status"] == 488, got
        # pjmedia's mandatory SRTP takes RTP/SAVP offers only: RTP/AVP with a=crypto is refused too
        got = _negotiate(tmp_path, bot.target, ("PCMA",), "optional")
        assert got["answered"] is False and got["status"] == 488, got
        got = _negotiate(tmp_path, bot.target, ("PCMU", "PCMA"), "required")
        assert (got["codec"], got["srtp"], got["loud"]) == ("PCMA", "AES_CM_128_HMAC_SHA1_80", True), got
    finally:
        bot.stop()
    (tmp_path / "off").mkdir()
    off = start_bot(tmp_path / "off", max_calls=4, extra=["--srtp", "off"])
    try:
        got = _negotiate(tmp_path, off.target, ("PCMU",), "optional")  # offered, declined: plain RTP
        assert (got["codec"], got["srtp"], got["loud"]) == ("PCMU", None, True), got
        got = _negotiate(tmp_path, off.target, ("PCMU",), "required")  # RTP/SAVP to a bot without SRTP
        assert got["answered"] is False, got
    finally:
        off.stop()
