"""SIP: the pjsua2 adapter (`ua`, the only importer of pjsua2), the one SIP message parser (`message`)
and the SIP that needs no pjsua2 (`lite`: OPTIONS probe, 302 front, URIs, the call-limit probe).

`message` and `lite` never load pjsua2, so the `run` process and the referee can use them.
Imports `voiceload.errors`, `voiceload.protocol`, `voiceload.media`.
"""
