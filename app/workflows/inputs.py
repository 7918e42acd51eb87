"""workflow_dispatch inputs: their declarations, a trigger's `inputs` checked and completed as
GitHub would, and the `inputs` context a run sees.

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
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from app.workflows.exceptions import InvalidWorkflow
from app.workflows.expressions import to_number
from app.xrpc.errors import InvalidRequest

if TYPE_CHECKING:
    from app.workflows.workflow import Workflow

INPUT_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]*$")
MAX_INPUT_NAME = 100
INPUT_TYPES = ("boolean", "choice", "environment", "number", "string")
_NUMBER_RE = re.compile(r"^[-+]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][-+]?[0-9]+)?\Z")


def _scalar_text(value: Any) -> str | None:
    """A YAML scalar as the string GitHub hands to the run; None for maps and lists."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float | str):
        return str(value)
    return None


@dataclass(frozen=True)
class DispatchInput:
    """One declared input, its declaration checked."""

    name: str
    type: str  # one of INPUT_TYPES
    required: bool  # required and without a default
    default: str | None = None
    options: tuple[str, ...] = ()  # a choice's values

    def problem(self, value: str) -> str | None:
        """Why `value` is not acceptable for this input, or None."""
        if self.type == "boolean" and value not in ("true", "false"):
            return f"must be true or false for a boolean input, not {value!r}"
        if self.type == "number" and not _NUMBER_RE.match(value):
            return f"must be a number, not {value!r}"
        if self.type == "choice" and value not in self.options:
            return f"must be one of {', '.join(self.options)}, not {value!r}"
        return None

    def resolve(self, given: Mapping[str, str], path: str) -> str:
        """The value this input runs with, given the request's inputs; 400 naming it."""
        if self.name in given:
            value = given[self.name]
            problem = self.problem(value)
            if problem:
                raise InvalidRequest(f"inputs.{self.name} {problem} (declared by {path})")
            return value
        if self.required:
            raise InvalidRequest(f"inputs.{self.name} is required by {path} and has no default")
        if self.default is not None:
            return self.default
        return "false" if self.type == "boolean" else ""


def parse_inputs(path: str, inputs: Mapping[Any, Any]) -> dict[str, DispatchInput]:
    """The checked declarations of `on.workflow_dispatch.inputs`."""
    return {declared.name: declared for declared in (_declared(path, n, s) for n, s in inputs.items())}


def _declared(path: str, name: Any, spec: Any) -> DispatchInput:
    where = f"on.workflow_dispatch.inputs.{name}"
    if not isinstance(name, str) or not INPUT_NAME_RE.fullmatch(name) or len(name) > MAX_INPUT_NAME:
        raise InvalidWorkflow(path, f"{where}: an input name must match {INPUT_NAME_RE.pattern}")
    spec = {} if spec is None else spec
    if not isinstance(spec, dict):
        raise InvalidWorkflow(path, f"{where} must be a map")
    kind = spec.get("type", "string")
    if kind not in INPUT_TYPES:
        raise InvalidWorkflow(path, f"{where}.type must be one of {', '.join(INPUT_TYPES)}")
    required = spec.get("required", False)
    if not isinstance(required, bool):
        raise InvalidWorkflow(path, f"{where}.required must be true or false")
    options: tuple[str, ...] = ()
    if kind == "choice":
        given = spec.get("options")
        texts = [_scalar_text(o) for o in given] if isinstance(given, list) else []
        if not texts or any(t is None for t in texts):
            raise InvalidWorkflow(path, f"{where}.options must be a non-empty list of values")
        options = tuple(t for t in texts if t is not None)
    declared = DispatchInput(name=name, type=kind, required=required, options=options)
    if spec.get("default") is None:
        return declared
    default = _scalar_text(spec["default"])
    if default is None:
        raise InvalidWorkflow(path, f"{where}.default must be a single value")
    problem = declared.problem(default)
    if problem:
        raise InvalidWorkflow(path, f"{where}.default {problem}")
    return DispatchInput(name=name, type=kind, required=False, default=default, options=options)


def resolve_inputs(*, workflows: Sequence[Workflow], inputs: Mapping[str, str]) -> list[dict[str, str]]:
    """The inputs each workflow runs with (same order as `workflows`), or 400 naming the input."""
    declaring = [w for w in workflows if w.inputs is not None]
    if declaring:
        known = {name for workflow in declaring for name in workflow.inputs or {}}
        for name in inputs:
            if name not in known:
                files = ", ".join(w.path for w in declaring)
                raise InvalidRequest(
                    f"inputs.{name} is not declared by any workflow_dispatch input ({files})"
                )
    resolved = []
    for workflow in workflows:
        if workflow.inputs is None:
            resolved.append(dict(inputs))
        else:
            resolved.append({d.name: d.resolve(inputs, workflow.path) for d in workflow.inputs.values()})
    return resolved


def inputs_context(declared: Mapping[str, DispatchInput] | None, given: Mapping[str, str]) -> dict[str, Any]:
    """The `inputs` context: strings, except declared boolean and number inputs, which GitHub types."""
    inputs: dict[str, Any] = {}
    for name, declaration in (declared or {}).items():
        if declaration.default is not None:
            inputs[name] = declaration.default
    inputs.update(given)
    for name, declaration in (declared or {}).items():
        value = inputs.get(name)
        if isinstance(value, str) and declaration.type == "boolean":
            inputs[name] = value.strip().lower() == "true"
        elif isinstance(value, str) and declaration.type == "number" and value.strip():
            inputs[name] = to_number(value)
    return inputs
