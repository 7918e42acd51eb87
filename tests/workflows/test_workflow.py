"""A workflow file parsed into its model: what refuses the trigger, and what waits for the run."""

from __future__ import annotations

import pytest

from app.workflows.exceptions import InvalidWorkflow, WorkflowError
from app.workflows.filters import EventFilter, Pattern
from app.workflows.triggers import Triggers
from app.workflows.workflow import parse_workflow

PATH = ".github/workflows/ci.yml"
JOBS = "jobs:\n  build:\n    runs-on: ubuntu-latest\n    steps:\n      - run: echo hi\n"


def test_the_key_on_stays_a_string_not_the_boolean_true():
    workflow = parse_workflow(PATH, "on: push\n" + JOBS)

    assert "on" in workflow.document
    assert not any(key is True for key in workflow.document)
    assert workflow.on == Triggers(events=("push",), push=EventFilter())


@pytest.mark.parametrize(
    ("on", "triggers"),
    [
        ("push", Triggers(events=("push",), push=EventFilter())),
        (
            "[push, pull_request]",
            Triggers(events=("push", "pull_request"), push=EventFilter(), pull_request=EventFilter()),
        ),
        (
            "\n  push:\n    branches: [main]\n  workflow_dispatch:",
            Triggers(events=("push", "workflow_dispatch"), push=EventFilter(branches=(Pattern("main"),))),
        ),
    ],
    ids=["string", "list", "map"],
)
def test_on_comes_as_a_string_a_list_or_a_map(on: str, triggers: Triggers):
    assert parse_workflow(PATH, f"on: {on}\n" + JOBS).on == triggers


def test_other_events_are_kept_by_name():
    workflow = parse_workflow(PATH, "on:\n  schedule:\n    - cron: '0 0 * * *'\n  issues:\n" + JOBS)

    assert workflow.on == Triggers(events=("schedule", "issues"))


@pytest.mark.parametrize(
    ("source", "fragment"),
    [
        ("", "the file is empty"),
        ("- on\n- jobs\n", "the top level must be a map"),
        (JOBS, "`on` is missing"),
        ("on: push\n", "`jobs` must be a map"),
        ("on: push\njobs: {}\n", "`jobs` must be a map with at least one job"),
        ("on: 5\n" + JOBS, "`on` must be an event name"),
        ("on: [push, 3]\n" + JOBS, "`on` as a list must list event names"),
        ("on:\n  workflow_dispatch: yes-please\n" + JOBS, "on.workflow_dispatch must be a map"),
        ("on:\n  workflow_dispatch:\n    inputs: [a]\n" + JOBS, "inputs must be a map"),
        ("on: push\njobs:\n  build: run\n", "job 'build' must be a map"),
        ("on:\n  push: [main]\n" + JOBS, "on.push must be a map or empty"),
        ("on:\n  push:\n    branches: {a: b}\n" + JOBS, "on.push.branches must be a pattern or a list"),
        (
            "on:\n  push:\n    branches: [a]\n    branches-ignore: [b]\n" + JOBS,
            "on.push: branches and branches-ignore cannot both be given",
        ),
        (
            "on:\n  pull_request:\n    paths: [a]\n    paths-ignore: [b]\n" + JOBS,
            "on.pull_request: paths and paths-ignore cannot both be given",
        ),
        ("on:\n  push:\n    tags: ['v[1-']\n" + JOBS, r"on.push.tags: 'v\[1-' is not a pattern"),
    ],
)
def test_refuses_a_document_that_is_not_a_workflow(source: str, fragment: str):
    with pytest.raises(InvalidWorkflow, match=fragment) as caught:
        parse_workflow(PATH, source)

    assert PATH in caught.value.message


def test_a_job_that_cannot_run_does_not_refuse_the_file_but_fails_when_read():
    workflow = parse_workflow(PATH, "on: push\njobs:\n  build:\n    steps: []\n")

    assert workflow.on.events == ("push",)
    with pytest.raises(WorkflowError, match="jobs.build.steps must be a non-empty list"):
        dict(workflow.jobs)


def test_the_same_file_is_parsed_once_and_its_jobs_read_once():
    source = "on: push\n" + JOBS + "# once\n"

    first = parse_workflow(PATH, source)

    assert parse_workflow(PATH, source) is first
    assert first.jobs is parse_workflow(PATH, source).jobs


def test_names_a_workflow_after_its_path_unless_it_has_a_name():
    assert parse_workflow(PATH, "on: push\n" + JOBS).definition.name == PATH
    assert parse_workflow(PATH, "name: CI\non: push\n" + JOBS).definition.name == "CI"
    assert parse_workflow(PATH, "on: push\n" + JOBS).stem == "ci"
