"""`voiceload agent`: checks the flags and starts the agent of the chosen channel."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

from voiceload.agent.base import AgentBase, AgentSettings
from voiceload.core.addresses import parse_addresses
from voiceload.core.scenario import load_scenario
from voiceload.core.sipprofile import AUTH_ENV, PROFILE_ENV, Credentials, SipProfile
from voiceload.errors import UserError
from voiceload.protocol import CHANNEL_REST, CHANNEL_SIP, CHANNELS
from voiceload.rasa import parse_rasa_url
from voiceload.results import bus


def sip_profile(scenario: Path) -> SipProfile:
    """The run's profile from the environment (a spawned agent), else the scenario's `sip:` section
    with VOICELOAD_AUTH over it (an agent started by hand on another host)."""
    text = os.environ.get(PROFILE_ENV)
    if text:
        return SipProfile.from_json(text)
    profile = load_scenario(scenario).sip
    auth = os.environ.get(AUTH_ENV)
    return profile.merged(auth=Credentials.parse(auth, AUTH_ENV) if auth else None)


def run(
    *, run_id: str, agent_id: str, scenario: Path, target: str | None, broker_url: str, tape_dir: Path | None = None,
    keep_tapes: bool = False, max_calls: int | None = None, rx_delay_ms: float | None = None,
    bind: str | None = None, advertise: str | None = None, channel: str = CHANNEL_SIP, rasa_url: str | None = None,
    rasa_token: str | None = None,
) -> None:
    """Entry point of `voiceload agent` (the coordinator spawns these, containers run them directly)."""
    if channel not in CHANNELS:
        raise UserError(f"--channel {channel!r}: must be one of {', '.join(CHANNELS)}")
    if rasa_url is not None:
        rasa_url = parse_rasa_url(rasa_url)
    if channel == CHANNEL_REST:
        if rasa_url is None:
            raise UserError("--channel rest needs --rasa-url")
        target = target or rasa_url
    elif target is None:
        raise UserError("--target is required with --channel sip")
    addresses = parse_addresses(bind, advertise)
    if channel == CHANNEL_SIP and addresses.bind:
        from voiceload.sip.lite import check_local_addresses

        check_local_addresses(addresses.bind)
    settings = AgentSettings(
        run_id=run_id, agent_id=agent_id, scenario_path=scenario, target=target,
        broker=bus.parse_broker_url(broker_url), keep_tapes=keep_tapes, max_calls=max_calls,
        bind=addresses.bind, advertise=addresses.advertise, channel=channel, rasa_url=rasa_url,
        rasa_token=rasa_token, sip=sip_profile(scenario),
    )
    if tape_dir is not None:
        settings.tape_dir = tape_dir
    if rx_delay_ms is not None:
        settings.rx_delay_ms = rx_delay_ms
    agent: AgentBase
    if channel == CHANNEL_REST:  # each channel's module loads only its own library: no pjsua2 for text
        from voiceload.agent.rest import RestAgent

        agent = RestAgent(settings)
    else:
        from voiceload.agent.caller import Agent

        agent = Agent(settings)
    asyncio.run(agent.run())
