"""User-facing errors: anything the user can fix (bad scenario, recording, URL, flag).

The CLI turns a `UserError` into one line on stderr and exit code 2, before any call is placed.
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_SLO_FAILED = 1
EXIT_BAD_INPUT = 2
EXIT_INVALID_RUN = 3


class UserError(Exception):
    """A problem with the user's input; `str(err)` is the one-line message shown to them."""


class ScenarioError(UserError):
    """A scenario file is malformed; carries every problem found, each naming file, line and field."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("\n".join(problems))
