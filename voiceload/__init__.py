"""voiceload: SIP/voice load generator for voice-fronted bots."""

__version__ = "0.1.0"
