"""The agents' RTP engine: C (`_rtpengine`: one clock thread per process, no Python per frame) and its
only adapter (`engine`). Imports `voiceload.errors` and `voiceload.audio`.
"""
