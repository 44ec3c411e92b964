"""Pure logic: the scenario model, load shapes, SLOs, the capacity search, turn-taking state machines,
statistics and the run summary.

No I/O library is imported here (no pjsua2, MQTT, HTTP or subprocesses), so every piece is testable
alone. Imports `voiceload.errors`, `voiceload.protocol` and `voiceload.audio`.
"""
