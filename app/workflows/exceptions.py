"""Errors of workflow files: each names the file and is answered as 400 InvalidRequest."""

from __future__ import annotations

from app.xrpc.errors import InvalidRequest


class InvalidWorkflow(InvalidRequest):
    """A workflow file that does not parse or does not have the shape GitHub Actions requires."""

    def __init__(self, path: str, problem: str) -> None:
        super().__init__(f"workflow {path}: {problem}")
        self.path = path
        self.problem = problem
