"""action.yml read into a typed ActionDefinition, as GitHub's runner reads it.

    name, description, author        text (name defaults to the reference)
    inputs.<id>                      description, required, default, deprecationMessage
    outputs.<id>                     description, value (required for a composite action)
    runs.using  node12|node16|node20|node24   main, pre, post, pre-if, post-if   → NodeRuns
                composite                     steps (raw mappings: the runner reads them)   → CompositeRuns
                docker                        image, entrypoint, args, env, pre-/post-entrypoint,
                                              pre-if, post-if                                 → DockerRuns

Values that may hold `${{ }}` expressions stay as written, as text; other keys GitHub knows
(branding, ...) are ignored. `load_definition` finds the file in a directory on the host without
following a link out of it; `parse_definition` reads text (an action of the job's workspace is read
in the container and handed here). Every problem raises an ActionError naming the action.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from app.engine.actions.exceptions import InvalidDefinition, MissingDefinition
from app.workflows.exceptions import InvalidWorkflow
from app.workflows.expressions import to_string
from app.workflows.loader import MAX_SOURCE_BYTES, load_yaml

FILENAMES = ("action.yml", "action.yaml")
NODE_VERSIONS = ("node12", "node16", "node20", "node24")
USING = (*NODE_VERSIONS, "composite", "docker")
MAX_STEPS = 1000

NodeVersion = Literal["node12", "node16", "node20", "node24"]


@dataclass(frozen=True)
class ActionInput:
    description: str | None = None
    required: bool = False
    default: str | None = None  # as written; may hold `${{ }}` expressions
    deprecation_message: str | None = None


@dataclass(frozen=True)
class ActionOutput:
    description: str | None = None
    value: str | None = None  # a composite action's: an expression over its steps' outputs


@dataclass(frozen=True)
class NodeRuns:
    using: NodeVersion
    main: str  # a path in the action's directory, run with the job image's `node`
    pre: str | None = None
    post: str | None = None
    pre_if: str | None = None  # None: GitHub's default, always()
    post_if: str | None = None


@dataclass(frozen=True)
class CompositeRuns:
    steps: tuple[Mapping[str, Any], ...]  # as written; the runner reads them as a job's steps
    using: Literal["composite"] = "composite"


@dataclass(frozen=True)
class DockerRuns:
    image: str  # "Dockerfile" (or another path in the action's directory) to build, or docker://image
    entrypoint: str | None = None
    args: tuple[str, ...] = ()
    env: Mapping[str, str] = field(default_factory=dict)
    pre_entrypoint: str | None = None
    post_entrypoint: str | None = None
    pre_if: str | None = None
    post_if: str | None = None
    using: Literal["docker"] = "docker"


Runs = NodeRuns | CompositeRuns | DockerRuns


@dataclass(frozen=True)
class ActionDefinition:
    name: str
    runs: Runs
    inputs: Mapping[str, ActionInput] = field(default_factory=dict)
    outputs: Mapping[str, ActionOutput] = field(default_factory=dict)
    description: str | None = None
    author: str | None = None
    file: str = "action.yml"  # where it was read, relative to the repository (for messages)

    @property
    def using(self) -> str:
        return self.runs.using


def load_definition(directory: Path, path: str = "", *, action: str) -> ActionDefinition:
    """The definition of the action at `path` in `directory` (a repository's files on the host).

    Blocking (reads files): call it with asyncio.to_thread. A file or directory that is a link is
    followed only while it stays inside `directory`. Like GitHub's runner, a directory with a
    Dockerfile and no action.yml is a docker action that builds it.
    """
    root = Path(os.path.realpath(directory))
    prefix = f"{path.strip('/')}/" if path.strip("/") else ""
    for filename in (*FILENAMES, "Dockerfile"):
        relative = prefix + filename
        found = _regular_file_inside(root, relative, action=action)
        if found is None:
            continue
        if filename == "Dockerfile":
            return ActionDefinition(name=action, runs=DockerRuns(image="Dockerfile"), file=relative)
        with open(found, "rb") as file:
            data = file.read(MAX_SOURCE_BYTES + 1)
        try:
            source = data.decode("utf-8-sig")
        except UnicodeDecodeError:
            raise InvalidDefinition(action, f"{relative} is not UTF-8 text") from None
        return parse_definition(source, action=action, file=relative)
    where = f"at {path.strip('/')}" if prefix else "at the root of its repository"
    raise MissingDefinition(action, f"there is no action.yml or action.yaml {where}")


def _regular_file_inside(root: Path, relative: str, *, action: str) -> Path | None:
    """`root/relative` if it is a regular file once links are resolved, None if it does not exist."""
    candidate = root / relative
    if not os.path.lexists(candidate):
        return None
    resolved = Path(os.path.realpath(candidate))
    if not resolved.is_relative_to(root):
        raise InvalidDefinition(action, f"{relative} is a link that leads out of the action's repository")
    try:
        mode = os.stat(resolved).st_mode
    except OSError:
        return None  # a dangling link
    if stat.S_ISDIR(mode):
        return None
    if not stat.S_ISREG(mode):
        raise InvalidDefinition(action, f"{relative} is not a regular file")
    return resolved


def parse_definition(source: str, *, action: str, file: str = "action.yml") -> ActionDefinition:
    """action.yml's text (found at `file`) as an ActionDefinition; InvalidDefinition says what is wrong."""
    try:
        document = load_yaml(source, path=file)
    except InvalidWorkflow as exc:
        raise InvalidDefinition(action, f"{file}: {exc.problem}") from None
    return _Reader(action, file).definition(document)


class _Reader:
    """Reads one document; its errors name the action, the file and the key."""

    def __init__(self, action: str, file: str) -> None:
        self.action = action
        self.file = file

    def fail(self, where: str, problem: str) -> InvalidDefinition:
        return InvalidDefinition(self.action, f"{self.file}: {where}: {problem}")

    def definition(self, document: Any) -> ActionDefinition:
        if not isinstance(document, Mapping):
            raise InvalidDefinition(self.action, f"{self.file} is not a mapping (name, inputs, runs ...)")
        if "runs" not in document:
            raise self.fail("runs", "missing: an action says how it runs (runs.using)")
        runs = self.runs(document["runs"])
        return ActionDefinition(
            name=self.text(document.get("name"), "name") or self.action,
            description=self.text(document.get("description"), "description"),
            author=self.text(document.get("author"), "author"),
            inputs=self.inputs(document.get("inputs")),
            outputs=self.outputs(document.get("outputs"), composite=isinstance(runs, CompositeRuns)),
            runs=runs,
            file=self.file,
        )

    def text(self, value: Any, where: str) -> str | None:
        if value is None:
            return None
        if isinstance(value, Mapping | list):
            raise self.fail(where, "expected text, not a mapping or a list")
        return to_string(value)

    def mapping(self, value: Any, where: str) -> Mapping[Any, Any]:
        if value is None:
            return {}
        if not isinstance(value, Mapping):
            raise self.fail(where, "expected a mapping")
        return value

    def inputs(self, value: Any) -> dict[str, ActionInput]:
        inputs = {}
        for name, spec in self.mapping(value, "inputs").items():
            where = f"inputs.{name}"
            spec = self.mapping(spec, where)
            required = spec.get("required", False)
            if isinstance(required, str):
                required = required.strip().lower() == "true"
            elif not isinstance(required, bool):
                raise self.fail(f"{where}.required", "expected true or false")
            inputs[str(name)] = ActionInput(
                description=self.text(spec.get("description"), f"{where}.description"),
                required=required,
                default=self.text(spec.get("default"), f"{where}.default"),
                deprecation_message=self.text(spec.get("deprecationMessage"), f"{where}.deprecationMessage"),
            )
        return inputs

    def outputs(self, value: Any, *, composite: bool) -> dict[str, ActionOutput]:
        outputs = {}
        for name, spec in self.mapping(value, "outputs").items():
            where = f"outputs.{name}"
            spec = self.mapping(spec, where)
            output = ActionOutput(
                description=self.text(spec.get("description"), f"{where}.description"),
                value=self.text(spec.get("value"), f"{where}.value"),
            )
            if composite and output.value is None:
                raise self.fail(f"{where}.value", "missing: a composite action's output says its value")
            outputs[str(name)] = output
        return outputs

    def runs(self, value: Any) -> Runs:
        runs = self.mapping(value, "runs")
        using = self.text(runs.get("using"), "runs.using")
        if not using:
            raise self.fail("runs.using", f"missing: expected one of {', '.join(USING)}")
        using = using.strip().lower()  # GitHub's runner compares it ignoring case
        if using not in USING:
            raise self.fail("runs.using", f"{using!r} is not supported: expected one of {', '.join(USING)}")
        if using == "composite":
            return CompositeRuns(steps=self.steps(runs.get("steps")))
        if using == "docker":
            image = self.required_text(runs, "image", "runs.image")
            return DockerRuns(
                image=image,
                entrypoint=self.text(runs.get("entrypoint"), "runs.entrypoint"),
                args=self.args(runs.get("args")),
                env=self.env(runs.get("env")),
                pre_entrypoint=self.text(runs.get("pre-entrypoint"), "runs.pre-entrypoint"),
                post_entrypoint=self.text(runs.get("post-entrypoint"), "runs.post-entrypoint"),
                pre_if=self.text(runs.get("pre-if"), "runs.pre-if"),
                post_if=self.text(runs.get("post-if"), "runs.post-if"),
            )
        return NodeRuns(
            using=using,  # type: ignore[arg-type]  # one of NODE_VERSIONS, checked above
            main=self.required_text(runs, "main", "runs.main"),
            pre=self.text(runs.get("pre"), "runs.pre"),
            post=self.text(runs.get("post"), "runs.post"),
            pre_if=self.text(runs.get("pre-if"), "runs.pre-if"),
            post_if=self.text(runs.get("post-if"), "runs.post-if"),
        )

    def required_text(self, runs: Mapping[Any, Any], key: str, where: str) -> str:
        value = self.text(runs.get(key), where)
        if not value:
            raise self.fail(where, f"missing: a {runs.get('using')} action names its {key}")
        return value

    def steps(self, value: Any) -> tuple[Mapping[str, Any], ...]:
        if not isinstance(value, list):
            raise self.fail("runs.steps", "missing or not a list: a composite action lists its steps")
        if len(value) > MAX_STEPS:
            raise self.fail("runs.steps", f"more than {MAX_STEPS} steps")
        for index, step in enumerate(value):
            if not isinstance(step, Mapping):
                raise self.fail(f"runs.steps[{index}]", "expected a mapping (run: or uses:, ...)")
        return tuple(value)

    def env(self, value: Any) -> dict[str, str]:
        env = self.mapping(value, "runs.env")
        return {str(name): self.text(v, f"runs.env.{name}") or "" for name, v in env.items()}

    def args(self, value: Any) -> tuple[str, ...]:
        if value is None:
            return ()
        if not isinstance(value, list):
            raise self.fail("runs.args", "expected a list")
        return tuple(self.text(arg, f"runs.args[{i}]") or "" for i, arg in enumerate(value))
