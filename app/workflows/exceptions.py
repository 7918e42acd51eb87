"""Errors of workflow files, by when they are found.

InvalidWorkflow (400 InvalidRequest)   the file cannot be triggered: bad YAML, limits, the
                                       document's shape, `on:` and its dispatch inputs
WorkflowError                          a job cannot run: found when the run reads its jobs, and
                                       the run fails naming the offending key
"""

from __future__ import annotations

from app.xrpc.errors import InvalidRequest


class WorkflowError(ValueError):
    """Raised while reading jobs or planning them; the message names the offending key."""

    @property
    def problem(self) -> str:
        return str(self)


class InvalidWorkflow(InvalidRequest):
    """Raised while parsing a file the trigger must refuse; the message names the file."""

    def __init__(self, path: str, problem: str) -> None:
        super().__init__(f"workflow {path}: {problem}")
        self.path = path
        self.problem = problem
