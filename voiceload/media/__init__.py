"""The agents' RTP engine: C (`_rtpengine`: one clock thread per process, no Python per frame) and its
only adapter (`engine`). The C is engine.c + engine.h (pure, no Python.h) and module.c (the CPython
binding). Imports `voiceload.errors`, `voiceload.protocol` (RtpStats) and `voiceload.audio`.
"""
