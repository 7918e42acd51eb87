"""workflow_dispatch inputs: a trigger's `inputs` checked and completed as GitHub would.

The rule across the workflows of one trigger (every workflow file runs, whatever its `on`):
- a workflow that declares `on.workflow_dispatch.inputs` gets exactly its declared inputs: values
  checked by type (`boolean` is "true"/"false", `number` numeric, `choice` one of `options`,
  `string`/`environment` anything), missing ones filled from `default` (else "false" for a
  boolean and "" otherwise), and a `required` input without a default must be given;
- a workflow that declares none gets the request's inputs as they are;
- a request input that no declaring workflow knows is refused (when at least one declares inputs).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

from app.workflows.exceptions import InvalidWorkflow
from app.workflows.parser import Workflow
from app.xrpc.errors import InvalidRequest

INPUT_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]*$")
INPUT_TYPES = ("boolean", "choice", "environment", "number", "string")
_NUMBER_RE = re.compile(r"^[-+]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][-+]?[0-9]+)?\Z")


def _scalar_text(value: Any) -> str | None:
    """A YAML scalar as the string GitHub hands to the run; None for maps and lists."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float | str):
        return str(value)
    return None


class _Declared:
    """One declared input, its declaration checked once."""

    def __init__(self, workflow: Workflow, name: Any, spec: Any) -> None:
        where = f"on.workflow_dispatch.inputs.{name}"
        if not isinstance(name, str) or not INPUT_NAME_RE.fullmatch(name) or len(name) > 100:
            raise InvalidWorkflow(workflow.path, f"{where}: an input name must match {INPUT_NAME_RE.pattern}")
        spec = {} if spec is None else spec
        if not isinstance(spec, dict):
            raise InvalidWorkflow(workflow.path, f"{where} must be a map")
        self.name = name
        self.type = spec.get("type", "string")
        if self.type not in INPUT_TYPES:
            raise InvalidWorkflow(workflow.path, f"{where}.type must be one of {', '.join(INPUT_TYPES)}")
        required = spec.get("required", False)
        if not isinstance(required, bool):
            raise InvalidWorkflow(workflow.path, f"{where}.required must be true or false")
        self.options: list[str] = []
        if self.type == "choice":
            options = spec.get("options")
            texts = [_scalar_text(o) for o in options] if isinstance(options, list) else []
            if not texts or any(t is None for t in texts):
                raise InvalidWorkflow(workflow.path, f"{where}.options must be a non-empty list of values")
            self.options = [t for t in texts if t is not None]
        self.default: str | None = None
        if spec.get("default") is not None:
            default = _scalar_text(spec["default"])
            if default is None:
                raise InvalidWorkflow(workflow.path, f"{where}.default must be a single value")
            problem = self.problem(default)
            if problem:
                raise InvalidWorkflow(workflow.path, f"{where}.default {problem}")
            self.default = default
        self.required = required and self.default is None

    def problem(self, value: str) -> str | None:
        """Why `value` is not acceptable for this input, or None."""
        if self.type == "boolean" and value not in ("true", "false"):
            return f"must be true or false for a boolean input, not {value!r}"
        if self.type == "number" and not _NUMBER_RE.match(value):
            return f"must be a number, not {value!r}"
        if self.type == "choice" and value not in self.options:
            return f"must be one of {', '.join(self.options)}, not {value!r}"
        return None

    def resolve(self, given: Mapping[str, str], workflow: Workflow) -> str:
        if self.name in given:
            value = given[self.name]
            problem = self.problem(value)
            if problem:
                raise InvalidRequest(f"inputs.{self.name} {problem} (declared by {workflow.path})")
            return value
        if self.required:
            raise InvalidRequest(f"inputs.{self.name} is required by {workflow.path} and has no default")
        if self.default is not None:
            return self.default
        return "false" if self.type == "boolean" else ""


def declared_inputs(workflow: Workflow) -> list[_Declared] | None:
    """The checked declarations of a workflow, or None when it declares no dispatch inputs."""
    inputs = workflow.dispatch_inputs
    if inputs is None:
        return None
    return [_Declared(workflow, name, spec) for name, spec in inputs.items()]


def resolve_inputs(*, workflows: Sequence[Workflow], inputs: Mapping[str, str]) -> list[dict[str, str]]:
    """The inputs each workflow runs with (same order as `workflows`), or 400 naming the input."""
    declarations = [declared_inputs(workflow) for workflow in workflows]
    declaring = [d for d in declarations if d is not None]
    if declaring:
        known = {declared.name for decls in declaring for declared in decls}
        for name in inputs:
            if name not in known:
                files = ", ".join(
                    w.path for w, d in zip(workflows, declarations, strict=True) if d is not None
                )
                raise InvalidRequest(
                    f"inputs.{name} is not declared by any workflow_dispatch input ({files})"
                )
    resolved = []
    for workflow, decls in zip(workflows, declarations, strict=True):
        if decls is None:
            resolved.append(dict(inputs))
        else:
            resolved.append({declared.name: declared.resolve(inputs, workflow) for declared in decls})
    return resolved
