"""Would this spindle run these workflows? One line per file, then a tally of the reasons.

    .venv/bin/python bench/survey_workflows.py DIR [--verbose]

Reads every `*.yml` / `*.yaml` under DIR as a workflow file and answers with the spindle's own code
(the workflow model of app/workflows/, the engine's rules of app/engine/runner.py), without running
anything. A file runs here when it parses, some event of its `on:` is one this spindle starts runs
for (push, pull_request, workflow_dispatch), and at least one of its jobs would run on Linux with
every step supported. Otherwise the line gives the first reason, in this order:

    invalid            the file does not parse (the message the trigger would give)
    no event           only events this spindle never starts (schedule, release, ...)
    reusable workflow  a job calls a reusable workflow (`jobs.<id>.uses`)
    other OS only      every job asks for a Windows or macOS runner
    artifacts          a step uses actions/upload-artifact or download-artifact, which need
                       GitHub's artifact service (ACTIONS_RUNTIME_TOKEN): there is none here

Every kind of action runs (JavaScript, composite, Docker, `docker://`), so `uses:` is otherwise
no reason. A file that reads `secrets.*` (other than GITHUB_TOKEN) runs once the repo's owner has
set them (sh.tangled.repo.addSecret); the tally counts those files apart.

Jobs and matrix legs for Windows or macOS are counted as not run (they do not fail a run here).
A runs-on given by an expression (`${{ matrix.os }}`) counts as Linux when any value of the
matrix is Linux.
"""

from __future__ import annotations

import argparse
import collections
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from app.engine.runner import other_os_runner  # noqa: E402
from app.workflows.exceptions import InvalidWorkflow, WorkflowError  # noqa: E402
from app.workflows.workflow import parse_workflow  # noqa: E402

RUN_EVENTS = {"push", "pull_request", "workflow_dispatch"}
ARTIFACT_ACTIONS = re.compile(r"^actions/(upload|download)-artifact@", re.IGNORECASE)
SECRET_RE = re.compile(r"secrets\.(?!GITHUB_TOKEN\b)([A-Za-z_][A-Za-z0-9_]*)")


def _labels(job: object, matrix_values: list[str]) -> list[list[str]]:
    """The label sets a job may run on: one per matrix leg when runs-on is an expression."""
    runs_on = getattr(job, "runs_on", None)
    labels = list(runs_on.labels) if runs_on is not None else []
    if any("${{" in label for label in labels) and matrix_values:
        return [[value] for value in matrix_values]
    return [labels]


def _matrix_strings(job: object) -> list[str]:
    strategy = getattr(job, "strategy", None)
    matrix = getattr(strategy, "matrix", None)
    values: list[str] = []
    if isinstance(matrix, dict):
        for key, value in matrix.items():
            if key in ("include", "exclude"):
                continue
            if isinstance(value, list):
                values += [str(v) for v in value if isinstance(v, str)]
        for entry in matrix.get("include", []) or []:
            if isinstance(entry, dict):
                values += [str(v) for v in entry.values() if isinstance(v, str)]
    return values


def verdict(path: Path) -> tuple[str, str]:
    """("runs", "") or (category, reason)."""
    source = path.read_text(encoding="utf-8", errors="replace")
    try:
        workflow = parse_workflow(f".github/workflows/{path.name}", source)
        jobs = workflow.jobs
    except (InvalidWorkflow, WorkflowError) as exc:
        return "invalid", str(getattr(exc, "problem", exc))
    events = set(workflow.on.events)
    if not events & RUN_EVENTS:
        return "no event", f"on: {', '.join(sorted(events)) or '(none)'}"
    linux_jobs = []
    for job in jobs.values():
        if job.uses is not None:
            return "reusable workflow", f"job {job.id} calls {job.uses}"
        legs = _labels(job, _matrix_strings(job))
        if any(other_os_runner(list(labels)) is None for labels in legs):
            linux_jobs.append(job)
    if not linux_jobs:
        return "other OS only", "every job asks for a Windows or macOS runner"
    for job in linux_jobs:
        for step in job.steps:
            uses = str(step.uses or "")
            if ARTIFACT_ACTIONS.match(uses):
                return "artifacts", f"{uses} (job {job.id})"
    return "runs", ""


def secrets_read(path: Path) -> list[str]:
    """The `secrets.*` a file reads, other than GITHUB_TOKEN."""
    source = path.read_text(encoding="utf-8", errors="replace")
    return sorted(set(SECRET_RE.findall(source)))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("directory", type=Path)
    parser.add_argument("--verbose", action="store_true", help="print every file, not only the tally")
    args = parser.parse_args()
    files = sorted(p for p in args.directory.rglob("*") if p.suffix in (".yml", ".yaml") and p.is_file())
    tally: collections.Counter[str] = collections.Counter()
    with_secrets = 0
    for path in files:
        category, reason = verdict(path)
        tally[category] += 1
        secrets = secrets_read(path) if category == "runs" else []
        with_secrets += bool(secrets)
        if args.verbose or category != "runs":
            line = "RUNS" if category == "runs" else f"NO   {category}: {reason}"
            if secrets:
                line += f" (with secrets: {', '.join(secrets[:5])})"
            print(f"{path.relative_to(args.directory)}: {line}")
    total = len(files)
    share = 100 * tally["runs"] / max(total, 1)
    print(f"\n{total} workflow files: {tally['runs']} would run here ({share:.0f}%)")
    print(f"  of which {with_secrets} read secrets, which the repo's owner sets first")
    for category, count in tally.most_common():
        if category != "runs":
            print(f"  {count:4d}  {category}")


if __name__ == "__main__":
    main()
