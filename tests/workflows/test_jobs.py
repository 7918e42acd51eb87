"""The jobs of a workflow: steps, strategy, runner labels, container and services, typed and
checked, with errors naming the offending key."""

from __future__ import annotations

import textwrap
from collections.abc import Mapping

import pytest

from app.workflows.exceptions import WorkflowError
from app.workflows.jobs import Container, Credentials, Job, RunsOn, Strategy
from app.workflows.uses import DockerImage, LocalAction, RepositoryAction
from app.workflows.workflow import Workflow, parse_workflow


def workflow(source: str) -> Workflow:
    return parse_workflow(".github/workflows/ci.yml", textwrap.dedent(source))


def jobs(source: str) -> Mapping[str, Job]:
    """The jobs of a workflow, which are read (and checked) when first asked for."""
    return workflow(source).jobs


@pytest.mark.parametrize(
    ("job", "message"),
    [
        (
            "build: {steps: [{name: nothing}]}",
            r"jobs.build.steps\[0\] must have exactly one of 'run' or 'uses'",
        ),
        ("build: {steps: [{run: a, uses: b}]}", "exactly one of 'run' or 'uses'"),
        ("build: {steps: []}", "jobs.build.steps must be a non-empty list"),
        ("build: {needs: ghost, steps: [{run: a}]}", "needs names 'ghost', which is not a job"),
        ("build: {steps: [{id: x, run: a}, {id: x, run: b}]}", "the id 'x' is used by two steps"),
        ("build: {steps: [{id: 1bad, run: a}]}", "must start with a letter"),
        ("build: {env: {A: [1]}, steps: [{run: a}]}", "jobs.build.env.A must be a string"),
        ("build: {strategy: {matrix: [1]}, steps: [{run: a}]}", "strategy.matrix must be a map"),
        ("build: {steps: [{run: a, with: 3}]}", r"jobs.build.steps\[0\].with must be a map"),
    ],
)
def test_rejects_workflow_shapes_that_cannot_run_naming_the_key(job: str, message: str) -> None:
    with pytest.raises(WorkflowError, match=message):
        jobs("on: push\njobs:\n  " + job + "\n")


def test_keeps_on_as_a_key_and_types_dispatch_inputs() -> None:
    wf = workflow(
        """
        name: CI
        on:
          workflow_dispatch:
            inputs:
              debug: {type: boolean, default: false}
              level: {type: number}
        permissions: read-all
        jobs:
          a: {runs-on: ubuntu-latest, steps: [{run: echo, env: {N: 1, B: true, E: null}}]}
        """
    )
    assert wf.definition.name == "CI"
    assert wf.inputs is not None
    assert {k: (v.type, v.default) for k, v in wf.inputs.items()} == {
        "debug": ("boolean", "false"),
        "level": ("number", None),
    }
    assert wf.jobs["a"].steps[0].env == {"N": "1", "B": "true", "E": ""}
    assert "on" not in wf.definition.ignored and "permissions" not in wf.definition.ignored


def test_types_runner_labels_strategy_container_and_services() -> None:
    wf = workflow(
        """
        on: push
        jobs:
          a:
            runs-on: [self-hosted, "${{ matrix.os }}"]
            strategy: {matrix: {os: [x, y]}, fail-fast: false, max-parallel: 2}
            container:
              image: node:20
              credentials: {username: u, password: "${{ secrets.P }}"}
              env: {NODE_ENV: test, N: 1}
              ports: [8080, "9000:90"]
              volumes: [/data]
              options: --cpus 1
            services:
              redis: redis:7
              db:
                image: postgres:16
                env: {POSTGRES_PASSWORD: x}
                ports: [5432]
                options: --health-cmd pg_isready
            steps: [{run: echo}]
          b:
            runs-on: {group: big, labels: ubuntu-latest}
            container: alpine:3
            steps: [{run: echo}]
        """
    )
    a, b = wf.jobs["a"], wf.jobs["b"]
    assert a.runs_on == RunsOn(labels=("self-hosted", "${{ matrix.os }}"))
    assert a.strategy == Strategy(matrix={"os": ["x", "y"]}, fail_fast=False, max_parallel=2)
    assert a.container == Container(
        image="node:20",
        credentials=Credentials(username="u", password="${{ secrets.P }}"),
        env={"NODE_ENV": "test", "N": "1"},
        ports=("8080", "9000:90"),
        volumes=("/data",),
        options="--cpus 1",
    )
    assert a.services == {
        "redis": Container(image="redis:7"),
        "db": Container(
            image="postgres:16",
            env={"POSTGRES_PASSWORD": "x"},
            ports=("5432",),
            options="--health-cmd pg_isready",
        ),
    }
    assert b.runs_on == RunsOn(labels=("ubuntu-latest",), group="big")
    assert b.container == Container(image="alpine:3")
    assert b.services == {}


def test_types_the_uses_of_steps_and_of_jobs() -> None:
    wf = workflow(
        """
        on: push
        jobs:
          a:
            steps:
              - uses: actions/checkout@v4
              - uses: ./tools/lint
              - uses: docker://alpine:3
          b:
            uses: octo/flows/.github/workflows/ci.yml@main
        """
    )
    assert [step.uses for step in wf.jobs["a"].steps] == [
        RepositoryAction("actions/checkout@v4", "actions", "checkout", "", "v4"),
        LocalAction("./tools/lint", "tools/lint"),
        DockerImage("docker://alpine:3", "alpine:3"),
    ]
    assert wf.jobs["b"].uses == RepositoryAction(
        "octo/flows/.github/workflows/ci.yml@main", "octo", "flows", ".github/workflows/ci.yml", "main"
    )


@pytest.mark.parametrize(
    ("job", "message"),
    [
        ("{steps: [{uses: actions/checkout}]}", r"jobs.a.steps\[0\].uses: no @ref"),
        ("{uses: docker://alpine}", "jobs.a.uses: a job calls a reusable workflow, not an image"),
        ("{container: {env: {A: 1}}, steps: [{run: a}]}", "jobs.a.container.image must name an image"),
        ("{services: {db: {image: x, ports: 5432}}, steps: [{run: a}]}", "services.db.ports must be a list"),
        ("{services: [redis], steps: [{run: a}]}", "jobs.a.services must be a map"),
        ("{runs-on: [[x]], steps: [{run: a}]}", r"jobs.a.runs-on\[0\] must be a string"),
        ("{strategy: {fail-fast: [1]}, steps: [{run: a}]}", "strategy.fail-fast must be a string, number"),
        ("{steps: [{run: a, with: {x: [1]}}]}", r"steps\[0\].with.x must be a string, number"),
    ],
)
def test_rejects_job_settings_that_cannot_work_naming_the_key(job: str, message: str) -> None:
    with pytest.raises(WorkflowError, match=message):
        jobs(f"on: push\njobs:\n  a: {job}\n")
