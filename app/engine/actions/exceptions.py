"""Why an action a step `uses` cannot run; every message names the action and is meant for the run's log.

ActionError
 ├── ActionUnavailable     its files cannot be had: the host is unreachable or refused, the
 │                         repository or ref does not exist, offline and not in the cache
 ├── MissingDefinition     no action.yml / action.yaml at the path
 └── InvalidDefinition     action.yml is not YAML, or not an action (its shape, `runs.using`)
"""

from __future__ import annotations


class ActionError(Exception):
    """An action cannot be used; `action` is the reference as written (`owner/repo@v4`)."""

    def __init__(self, action: str, problem: str) -> None:
        super().__init__(f"action {action}: {problem}")
        self.action = action
        self.problem = problem


class ActionUnavailable(ActionError):
    """Raised while resolving or fetching: git could not give us the action's commit."""


class MissingDefinition(ActionError):
    """Raised after fetching: the action's directory has no action.yml or action.yaml."""


class InvalidDefinition(ActionError):
    """Raised while reading action.yml: malformed YAML, a wrong shape or an unsupported `runs.using`."""
