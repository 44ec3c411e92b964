"""The results pipeline's moving parts: the MQTT bus (`bus`, the only importer of aiomqtt), the embedded
broker, the agents' on-disk spool and the collector that writes calls.jsonl and summary.json.

Imports `voiceload.errors`, `voiceload.protocol` and `voiceload.core`; never the agents or the bot.
"""
