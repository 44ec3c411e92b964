"""Measured constants that refer tape positions to the wire (see docs/accuracy.md for how).

The agent's tapes come from its RTP engine (voiceload/media.py), which puts every received
packet on the tape at its kernel arrival time and every sent frame at its send time: nothing lies
between the wire and the tape, so the agent's constant is 0.

The reference bot tapes on pjmedia's conference bridge: received audio reaches its tape after the
jitter buffer and the wait for the next bridge tick; that delay is subtracted from
received-speech positions. Sent audio needs no correction: a player's frame is sent by the same
bridge tick that writes it to the tape.

Measured against a loopback packet capture (bench/referee.py) with the pjsua2 2.15 wheel,
20 ms frames, PCMU: a pjmedia tape (the bot's) received speech 15-16 ms (mean) after the packet
reached the socket. The part that varies is the phase between the sender's
and the receiver's 20 ms bridge ticks (0..20 ms, fixed per pair of processes), so a single
side is exact to about +/-10 ms, while agent-minus-bot differences cancel the phase.
"""

# mean delay from a packet's arrival on the socket to its samples on the tape (ms)
AGENT_RX_DELAY_MS = 0.0
BOT_RX_DELAY_MS = 15.0  # PCMU
# Per codec, PCMU's constant plus what bench/codec_delay.py measured over PCMU's (2-core box, 8 calls
# each, pjmedia caller -> bot, both ends' tapes; 2026-12-04): PCMA +0.6 ms (none), G.722 +16.9 ms
# (sd 0: its 16 kHz stream on the 8 kHz bridge), Opus +18.7 ms (sd 0: pjmedia's Opus decoder holds one
# frame for FEC, plus the codec's lookahead). That method measures one direction's whole path (send +
# receive) as the mean of both; how much of G.722's sits on pjmedia's send side, which an agent's
# engine does not have, is not separated yet (a capture decoding G.722/Opus would split it).
BOT_RX_DELAY_MS_BY_CODEC: dict[str, float] = {"PCMU": BOT_RX_DELAY_MS, "PCMA": BOT_RX_DELAY_MS,
                                              "G722": BOT_RX_DELAY_MS + 17.0, "opus": BOT_RX_DELAY_MS + 19.0}


def bot_rx_delay_ms(codec: str | None) -> float:
    """The bot's receive delay for a call of `codec` (a core.mediaprofile name); PCMU's when unknown."""
    return BOT_RX_DELAY_MS_BY_CODEC.get(codec or "PCMU", BOT_RX_DELAY_MS)
