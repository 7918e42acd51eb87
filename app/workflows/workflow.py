"""A workflow file and its parsed model: `parse_workflow(path, source)` → Workflow.

    Workflow
      path, source, document        the file and its YAML (loader.py: YAML 1.2, bounded)
      on: Triggers                  events, push / pull_request filters, dispatch inputs
                                    (triggers.py, filters.py, inputs.py)
      name, env, defaults, jobs     what it runs (jobs.py): Job → Step, Strategy, RunsOn,
                                    Container; `uses:` references (uses.py)

When problems are found follows what they stop. Whatever decides whether and with what the
workflow starts (the document's shape, `on:`) is checked by parse_workflow, and a problem there
refuses the trigger (InvalidWorkflow, 400). What the workflow runs is read the first time it is
asked for, and a problem there fails the run instead (WorkflowError): the trigger's path never
pays for reading jobs. Parsed workflows are cached by (path, source), so the engine reading a
file the trigger accepted in the same process finds it parsed.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass
from functools import cached_property, lru_cache
from typing import Any

from app.workflows.exceptions import InvalidWorkflow
from app.workflows.inputs import DispatchInput
from app.workflows.jobs import Definition, Job, parse_definition
from app.workflows.loader import load_yaml
from app.workflows.triggers import Triggers, event_map, parse_triggers

WORKFLOWS_DIR = ".github/workflows"
WORKFLOW_SUFFIXES = (".yml", ".yaml")
PARSE_CACHE_SIZE = 512


def is_workflow_filename(name: str) -> bool:
    return name.endswith(WORKFLOW_SUFFIXES) and "/" not in name


def workflow_stem(filename: str) -> str:
    """`ci.yml` → `ci`: the name a workflow run goes by in URLs and events."""
    for suffix in WORKFLOW_SUFFIXES:
        if filename.endswith(suffix):
            return filename[: -len(suffix)]
    return filename


@dataclass(frozen=True)
class WorkflowFile:
    """One `.github/workflows/*.yml|yaml` file at a commit."""

    path: str
    source: str

    @property
    def filename(self) -> str:
        return self.path.rsplit("/", 1)[-1]

    @property
    def stem(self) -> str:
        return workflow_stem(self.filename)


@dataclass(frozen=True, eq=False)
class Workflow(WorkflowFile):
    """A parsed workflow file. Shared through the parse cache: never mutate one."""

    document: Mapping[str, Any]
    on: Triggers

    @property
    def inputs(self) -> Mapping[str, DispatchInput] | None:
        """The declared workflow_dispatch inputs, or None when the workflow declares none."""
        return self.on.inputs

    def matches_push(self, *, ref: str, changed_paths: Collection[str] | None = None) -> bool:
        """Whether a push of `ref` with these changed files starts the workflow (filters.py)."""
        return self.on.matches_push(ref=ref, changed_paths=changed_paths)

    def matches_pull_request(self, *, base_ref: str, changed_paths: Collection[str] | None = None) -> bool:
        """Whether a pull request into `base_ref` with these changes starts the workflow."""
        return self.on.matches_pull_request(base_ref=base_ref, changed_paths=changed_paths)

    @cached_property
    def definition(self) -> Definition:
        """Name, env, defaults and jobs, read on first use; raises WorkflowError."""
        return parse_definition(self.document, default_name=self.path)

    @property
    def jobs(self) -> Mapping[str, Job]:
        """The jobs (of `definition`), read on first use; raises WorkflowError."""
        return self.definition.jobs


@lru_cache(maxsize=PARSE_CACHE_SIZE)
def parse_workflow(path: str, source: str) -> Workflow:
    """Parse one workflow file and check what decides whether it starts; 400 naming the file."""
    document = load_yaml(source, path=path)
    if document is None:
        raise InvalidWorkflow(path, "the file is empty")
    if not isinstance(document, dict):
        raise InvalidWorkflow(path, "the top level must be a map with `on` and `jobs`")
    if "on" not in document:
        raise InvalidWorkflow(path, "`on` is missing: say which events trigger the workflow")
    events = event_map(path, document["on"])
    jobs = document.get("jobs")
    if not isinstance(jobs, dict) or not jobs:
        raise InvalidWorkflow(path, "`jobs` must be a map with at least one job")
    for job_id, job in jobs.items():
        if not isinstance(job_id, str):
            raise InvalidWorkflow(path, f"job ids must be strings, not {job_id!r}")
        if not isinstance(job, dict):
            raise InvalidWorkflow(path, f"job {job_id!r} must be a map")
    return Workflow(path=path, source=source, document=document, on=parse_triggers(path, events))
