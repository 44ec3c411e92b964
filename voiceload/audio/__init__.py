"""Audio as numbers: WAV files, G.711, speech detection, tape analysis, the measured delays, synthesis.

Shared by both sides of a call (the caller agents and the reference bot) and by the referee.
Imports only `voiceload.errors` and `voiceload.protocol`; numpy and soundfile, no SIP, no network.
"""
