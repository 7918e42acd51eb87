"""The plan of a run: which jobs run in which order, and the job instances a `strategy.matrix`
makes. Problems raise WorkflowError, which fails the run."""

from __future__ import annotations

import itertools
import json
from collections.abc import Mapping
from typing import Any

from app.workflows.exceptions import WorkflowError
from app.workflows.expressions import kind, loose_equal, to_string
from app.workflows.jobs import Job

MAX_COMBINATIONS = 256  # GitHub's limit per workflow run


def job_order(jobs: Mapping[str, Job]) -> list[str]:
    """Job ids so that every job comes after the jobs it needs (file order among equals)."""
    order: list[str] = []
    placed: set[str] = set()
    remaining = list(jobs)
    while remaining:
        ready = [j for j in remaining if all(n in placed for n in jobs[j].needs)]
        if not ready:
            raise WorkflowError("jobs needs form a cycle: " + " → ".join(_cycle(jobs, remaining)))
        for job_id in ready:
            order.append(job_id)
            placed.add(job_id)
        remaining = [j for j in remaining if j not in placed]
    return order


def _cycle(jobs: Mapping[str, Job], candidates: list[str]) -> list[str]:
    # Walk `needs` from any stuck job until a job repeats: that loop is the cycle to report.
    path: list[str] = []
    current = candidates[0]
    while current not in path:
        path.append(current)
        current = next(n for n in jobs[current].needs if n in candidates)
    return [*path[path.index(current) :], current]


def _matches(combination: Mapping[str, Any], pattern: Mapping[str, Any]) -> bool:
    return all(key in combination and _same(combination[key], value) for key, value in pattern.items())


def _same(a: Any, b: Any) -> bool:
    if kind(a) in ("array", "object") or kind(b) in ("array", "object"):
        return json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)
    return loose_equal(a, b) if kind(a) == kind(b) else False


def expand_matrix(matrix: Any, where: str) -> list[dict[str, Any]]:
    """The combinations of a matrix, GitHub's way: the product of the list-valued keys, minus
    each `exclude` that matches, then each `include` merged into every combination whose
    original values it does not contradict, or added as a combination of its own."""
    if matrix is None:
        return [{}]
    if not isinstance(matrix, Mapping):
        raise WorkflowError(f"{where} must be a map, got {to_string(matrix)!r}")
    include = matrix.get("include", [])
    exclude = matrix.get("exclude", [])
    for key, value in (("include", include), ("exclude", exclude)):
        if not isinstance(value, list) or not all(isinstance(v, Mapping) for v in value):
            raise WorkflowError(f"{where}.{key} must be a list of maps")
    axes = {str(k): v for k, v in matrix.items() if k not in ("include", "exclude")}
    for key, values in axes.items():
        if not isinstance(values, list):
            raise WorkflowError(f"{where}.{key} must be a list of values")
        if not values:
            raise WorkflowError(f"{where}.{key} is an empty list, so the matrix has no combinations")
    size = 1
    for values in axes.values():
        size *= len(values)
        if size > MAX_COMBINATIONS:
            raise WorkflowError(f"{where} makes more than {MAX_COMBINATIONS} combinations")
    combos = (
        [dict(zip(axes, values, strict=True)) for values in itertools.product(*axes.values())] if axes else []
    )
    combos = [c for c in combos if not any(_matches(c, e) for e in exclude)]
    originals = [dict(c) for c in combos]
    added: list[dict[str, Any]] = []
    for entry in include:
        extra = {str(k): v for k, v in entry.items()}
        matched = False
        # Includes merge only into the original combinations, never into ones an include added;
        # they may overwrite keys added by earlier includes, never a value the matrix gave.
        for combo, original in zip(combos, originals, strict=True):
            if all(_same(original[k], v) for k, v in extra.items() if k in original):
                combo.update(extra)
                matched = True
        if not matched:
            added.append(dict(extra))
    combos += added
    if len(combos) > MAX_COMBINATIONS:
        raise WorkflowError(f"{where} makes more than {MAX_COMBINATIONS} combinations")
    if not combos:
        raise WorkflowError(f"{where}: every combination is excluded, so the job has nothing to run")
    return combos


def instance_name(job_name: str, combination: Mapping[str, Any]) -> str:
    """`build (3.11, linux)`: the job name and the values of its matrix combination."""
    if not combination:
        return job_name
    values = [
        to_string(v) if kind(v) not in ("array", "object") else json.dumps(v, separators=(",", ":"))
        for v in combination.values()
    ]
    return f"{job_name} ({', '.join(values)})"
