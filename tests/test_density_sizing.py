"""How calls are spread over agent processes (pure): the build's limit, the cap, the cores."""

from __future__ import annotations

import pytest

from voiceload.run.coordinator import AGENT_CALLS_MAX, agents_needed


@pytest.mark.parametrize(("concurrency", "per_agent", "cores", "agents"), [
    (8, 4, 2, 2),  # the PyPI wheel: 4 calls per process
    (1000, 4, 2, 250),
    (1, AGENT_CALLS_MAX, 2, 1),  # dense build: one agent while it is small...
    (100, AGENT_CALLS_MAX, 2, 1),
    (200, AGENT_CALLS_MAX, 2, 2),  # ...one per core once each holds 100 calls...
    (300, AGENT_CALLS_MAX, 2, 2),
    (1000, AGENT_CALLS_MAX, 2, 2),  # ...and never more than the cap per agent
    (1500, AGENT_CALLS_MAX, 2, 3),
    (1000, AGENT_CALLS_MAX, 16, 10),
])
def test_agents_needed(concurrency: int, per_agent: int, cores: int, agents: int) -> None:
    assert agents_needed(concurrency, per_agent, cores) == agents
    assert agents * per_agent >= concurrency
