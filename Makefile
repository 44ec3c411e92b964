# The two entry points of the README. Both install what is missing first (idempotent).
.PHONY: demo test lint setup setup-test rasa-example pjsua2

setup:
	@bash scripts/setup.sh

setup-test:
	@bash scripts/setup.sh --test

# voiceload's dense pjsua2 (1024 calls per process; docs/density.md): built once, cached in ~/.cache/voiceload
pjsua2: setup
	@VOICELOAD_PJSUA2=dense bash scripts/setup.sh
	.venv/bin/voiceload doctor

demo: setup
	.venv/bin/voiceload demo --out runs/demo

test: setup-test
	.venv/bin/ruff check voiceload tests bench
	.venv/bin/mypy
	.venv/bin/pytest -q -ra

lint: setup-test
	.venv/bin/ruff check voiceload tests bench
	.venv/bin/mypy

# The Rasa example (docs/rasa.md): Rasa in a cached Python 3.10 venv, the voice gateway, voice and text runs.
rasa-example: setup
	.venv/bin/python examples/rasa-moodbot/run.py
