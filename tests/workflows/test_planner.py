"""The plan of a run: job order, matrix expansion and the names of matrix instances."""

from __future__ import annotations

import textwrap
from typing import Any

import pytest

from app.workflows.exceptions import WorkflowError
from app.workflows.planner import expand_matrix, instance_name, job_order
from app.workflows.workflow import Workflow, parse_workflow


def workflow(source: str) -> Workflow:
    return parse_workflow(".github/workflows/ci.yml", textwrap.dedent(source))


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
