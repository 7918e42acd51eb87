"""The workflow model, job order, matrix expansion, env-file parsing and shell command lines."""

from __future__ import annotations

import textwrap
from typing import Any

import pytest

from app.engine.planner import expand_matrix, instance_name, job_order
from app.engine.runner import StepError, parse_file_command, shell_command
from app.engine.workflow import WorkflowError, parse_workflow


def workflow(source: str) -> Any:
    return parse_workflow(textwrap.dedent(source), path=".github/workflows/ci.yml", default_name="ci")


MATRICES: list[tuple[dict[str, Any], list[dict[str, Any]]]] = [
    ({"os": ["linux"]}, [{"os": "linux"}]),
    (
        {"py": ["3.11", "3.12"], "os": ["linux", "mac"]},
        [
            {"py": "3.11", "os": "linux"},
            {"py": "3.11", "os": "mac"},
            {"py": "3.12", "os": "linux"},
            {"py": "3.12", "os": "mac"},
        ],
    ),
    # exclude matches on the keys it names
    (
        {"py": ["3.11", "3.12"], "os": ["linux", "mac"], "exclude": [{"os": "mac", "py": "3.11"}]},
        [{"py": "3.11", "os": "linux"}, {"py": "3.12", "os": "linux"}, {"py": "3.12", "os": "mac"}],
    ),
    (
        {"py": ["3.11", "3.12"], "os": ["linux", "mac"], "exclude": [{"os": "mac"}]},
        [{"py": "3.11", "os": "linux"}, {"py": "3.12", "os": "linux"}],
    ),
    # include adds keys to every combination it does not contradict ...
    (
        {"py": ["3.11", "3.12"], "include": [{"experimental": True}]},
        [{"py": "3.11", "experimental": True}, {"py": "3.12", "experimental": True}],
    ),
    # ... only to the matching ones when it names an original key ...
    (
        {"py": ["3.11", "3.12"], "include": [{"py": "3.12", "extra": "x"}]},
        [{"py": "3.11"}, {"py": "3.12", "extra": "x"}],
    ),
    # ... and is a combination of its own when it contradicts all of them
    (
        {"py": ["3.11"], "include": [{"py": "3.13", "os": "linux"}]},
        [{"py": "3.11"}, {"py": "3.13", "os": "linux"}],
    ),
    # GitHub's documented example: includes overwrite what earlier includes added, never an
    # original value, and merge only into original combinations
    (
        {
            "fruit": ["apple", "pear"],
            "animal": ["cat", "dog"],
            "include": [
                {"color": "green"},
                {"color": "pink", "animal": "cat"},
                {"fruit": "apple", "shape": "circle"},
                {"fruit": "banana"},
                {"fruit": "banana", "animal": "cat"},
            ],
        },
        [
            {"fruit": "apple", "animal": "cat", "color": "pink", "shape": "circle"},
            {"fruit": "apple", "animal": "dog", "color": "green", "shape": "circle"},
            {"fruit": "pear", "animal": "cat", "color": "pink"},
            {"fruit": "pear", "animal": "dog", "color": "green"},
            {"fruit": "banana"},
            {"fruit": "banana", "animal": "cat"},
        ],
    ),  # fmt: skip
    # only include: each entry is a combination
    ({"include": [{"a": 1}, {"a": 2, "b": 3}]}, [{"a": 1}, {"a": 2, "b": 3}]),
]


@pytest.mark.parametrize(("matrix", "expected"), MATRICES)
def test_expands_matrix_like_github(matrix: dict[str, Any], expected: list[dict[str, Any]]) -> None:
    assert expand_matrix(matrix, "matrix") == expected


@pytest.mark.parametrize(
    ("matrix", "message"),
    [
        ({"os": "linux"}, "matrix.os must be a list"),
        ({"os": []}, "matrix.os is an empty list"),
        ({"os": ["a"], "exclude": [{"os": "a"}]}, "every combination is excluded"),
        ({"include": "nope"}, "matrix.include must be a list of maps"),
        ({"a": list(range(20)), "b": list(range(20))}, "more than 256 combinations"),
    ],
)
def test_rejects_matrix_that_cannot_run(matrix: dict[str, Any], message: str) -> None:
    with pytest.raises(WorkflowError, match=message):
        expand_matrix(matrix, "matrix")


def test_names_a_matrix_instance_after_its_values() -> None:
    assert instance_name("build", {"py": 3.11, "os": "linux"}) == "build (3.11, linux)"
    assert instance_name("build", {}) == "build"


def test_orders_jobs_after_the_jobs_they_need_keeping_file_order() -> None:
    wf = workflow(
        """
        on: push
        jobs:
          deploy: {needs: [test, lint], runs-on: x, steps: [{run: d}]}
          test: {needs: build, runs-on: x, steps: [{run: t}]}
          build: {runs-on: x, steps: [{run: b}]}
          lint: {runs-on: x, steps: [{run: l}]}
        """
    )
    assert job_order(wf.jobs) == ["build", "lint", "test", "deploy"]


def test_reports_a_needs_cycle_by_its_jobs() -> None:
    wf = workflow(
        """
        on: push
        jobs:
          a: {needs: c, steps: [{run: a}]}
          b: {needs: a, steps: [{run: b}]}
          c: {needs: b, steps: [{run: c}]}
        """
    )
    with pytest.raises(WorkflowError, match="cycle: a → c → b → a"):
        job_order(wf.jobs)


@pytest.mark.parametrize(
    ("jobs", "message"),
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
def test_rejects_workflow_shapes_that_cannot_run_naming_the_key(jobs: str, message: str) -> None:
    with pytest.raises(WorkflowError, match=message):
        workflow("on: push\njobs:\n  " + jobs + "\n")


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
    assert wf.name == "CI"
    assert {k: (v.type, v.default) for k, v in wf.inputs.items()} == {
        "debug": ("boolean", False),
        "level": ("number", None),
    }
    assert wf.jobs["a"].steps[0].env == {"N": "1", "B": "true", "E": ""}
    assert "on" not in wf.ignored and "permissions" not in wf.ignored


def test_parses_env_file_lines_and_heredocs() -> None:
    text = "A=1\nB=x=y\n\nMULTI<<EOF\nline 1\nline 2\nEOF\nEMPTY=\r\n"
    assert parse_file_command(text, "GITHUB_ENV") == {
        "A": "1",
        "B": "x=y",
        "MULTI": "line 1\nline 2",
        "EMPTY": "",
    }


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("X<<END\nnever closed\n", "no line 'END' closes the value of 'X'"),
        ("just words\n", "neither NAME=value"),
    ],
)
def test_rejects_malformed_env_file(text: str, message: str) -> None:
    with pytest.raises(StepError, match=message):
        parse_file_command(text, "GITHUB_OUTPUT")


@pytest.mark.parametrize(
    ("shell", "argv", "extension"),
    [
        (None, ["bash", "-e", "{0}"], ".sh"),
        ("bash", ["bash", "--noprofile", "--norc", "-eo", "pipefail", "{0}"], ".sh"),
        ("sh", ["sh", "-e", "{0}"], ".sh"),
        ("perl {0}", ["perl", "{0}"], ""),
    ],
)
def test_builds_shell_command_lines_as_github_does(
    shell: str | None, argv: list[str], extension: str
) -> None:
    assert shell_command(shell, path="/usr/bin:/bin") == (argv, extension)


def test_python_shell_falls_back_to_python3_when_there_is_no_python() -> None:
    argv, extension = shell_command("python", path="/nonexistent")
    assert argv == ["python3", "{0}"] and extension == ".py"


@pytest.mark.parametrize(("shell", "message"), [("cmd", "Windows-only"), ("fish", "not supported")])
def test_rejects_shells_that_cannot_run_here(shell: str, message: str) -> None:
    with pytest.raises(StepError, match=message):
        shell_command(shell, path="/usr/bin:/bin")
