"""Measured constants that refer tape positions to the wire (see docs/accuracy.md for how).

Received audio reaches a tape after the jitter buffer and the wait for the next bridge tick;
that delay is subtracted from received-speech positions. Sent audio needs no correction: a
player's frame is sent by the same bridge tick that writes it to the tape.
"""

# mean delay from a packet's arrival on the socket to its samples on the tape (ms)
AGENT_RX_DELAY_MS = 30.0
BOT_RX_DELAY_MS = 30.0
