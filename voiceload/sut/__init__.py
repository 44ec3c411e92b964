"""The system under test that ships with voiceload: the reference bot (`bot`, its worker pool model
`botmodel`) and its Rasa brain (`gateway`, `asr`, `tts`).

It never imports the caller side (`voiceload.agent`, `voiceload.run`); what both sides share lives in
`voiceload.protocol`, `voiceload.audio`, `voiceload.core` and `voiceload.sip`.
"""
