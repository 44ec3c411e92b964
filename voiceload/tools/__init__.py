"""Tools beside a run: the packet-capture referee.

Imports `voiceload.audio`, `voiceload.sip.message` and the engine's decoders (`voiceload.media.engine`).
"""
