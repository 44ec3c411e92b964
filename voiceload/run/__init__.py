"""The `run` process: the coordinator, the capacity search's driver and the live view.

It spawns agents as processes and never imports them: no pjsua2 and no media engine load here.
Imports `voiceload.core`, `voiceload.audio`, `voiceload.results`, `voiceload.report`,
`voiceload.rasa` and `voiceload.sip.lite`.
"""
