from voiceload.cli import app

app()
