"""A call agent: one process, one pjsua2 endpoint (`caller`) or one HTTP session (`rest`), keeping its
share of calls in flight and publishing one record per placed call.

Imports `voiceload.core`, `voiceload.audio`, `voiceload.sip`, `voiceload.media`, `voiceload.results`
and `voiceload.rasa`; never `voiceload.run` or `voiceload.sut`. `main.run` is `voiceload agent`.
"""
