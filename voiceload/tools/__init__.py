"""Tools beside a run: the packet-capture referee. Imports `voiceload.audio` and `voiceload.sip.message`."""
