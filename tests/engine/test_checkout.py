"""actions/checkout clones the repo at the run's exact commit from the knot's git endpoint."""

from __future__ import annotations

from app.runs.models import Status
from tests.engine.conftest import Harness
from tests.support.knot import TestKnot

REPO_DID = "did:plc:alice0000000000000000000"

CHECKOUT = """
on: workflow_dispatch
jobs:
  build:
    steps:
      - uses: actions/checkout@v4
      - run: |
          echo "file=$(cat version.txt)"
          echo "head=$(git rev-parse HEAD)"
          test -z "$(git status --porcelain)" && echo clean
          ./run.sh
      - uses: actions/checkout@v4
        with:
          path: nested/copy
          fetch-depth: 0
      - run: echo "nested=$(cat nested/copy/version.txt)"
"""


async def test_checkout_clones_the_exact_commit_even_when_the_branch_has_moved_on(
    harness: Harness, knot: TestKnot
) -> None:
    repo = knot.create_repo(REPO_DID, "hello")
    repo.write("run.sh", "#!/bin/sh\necho script-ran\n", executable=True)
    first = repo.commit({"version.txt": "one\n"})
    repo.commit({"version.txt": "two\n"})
    run = await harness.run(CHECKOUT, sha=first, knot=knot.host, repo_did=REPO_DID, repo_name="hello")
    assert run.status is Status.SUCCESS, run.error
    output = await harness.output(run.id)
    assert "file=one" in output and f"head={first}" in output and "clean" in output
    assert "script-ran" in output and "nested=one" in output
    assert any(line.startswith("HEAD is now at") for line in output)
    assert [r.path for r in knot.requests if r.nsid is None][0] == f"/{REPO_DID}/hello/info/refs"
    commands = [line.step_command for line in await harness.lines(run.id) if line.step_status == "start"]
    assert commands[0] == "uses: actions/checkout@v4"


async def test_checkout_of_a_commit_the_knot_does_not_have_fails_the_step(
    harness: Harness, knot: TestKnot
) -> None:
    repo = knot.create_repo(REPO_DID, "hello")
    repo.commit({"a.txt": "a\n"})
    missing = "0123456789abcdef0123456789abcdef01234567"
    run = await harness.run(CHECKOUT, sha=missing, knot=knot.host, repo_did=REPO_DID, repo_name="hello")
    assert run.status is Status.FAILED
    assert (run.error or "").startswith("step 'Run actions/checkout@v4' of job 'build' failed with exit code")
    assert not [line for line in await harness.output(run.id) if line.startswith("file=")]


async def test_checkout_refuses_another_repository_and_a_path_outside_the_workspace(harness: Harness) -> None:
    other = await harness.run(
        """
        on: workflow_dispatch
        jobs:
          a:
            steps:
              - uses: actions/checkout@v4
                with: {repository: someone/else}
        """
    )
    assert other.status is Status.FAILED
    assert "with.repository 'someone/else': only the run's own repository" in (other.error or "")
    escape = await harness.run(
        """
        on: workflow_dispatch
        jobs:
          a:
            steps:
              - uses: actions/checkout@v4
                with: {path: ../../escape}
        """
    )
    assert escape.status is Status.FAILED
    assert "with.path '../../escape' must stay inside the workspace" in (escape.error or "")


async def test_nothing_an_earlier_step_plants_runs_during_a_checkout(
    harness: Harness, knot: TestKnot
) -> None:
    repo = knot.create_repo(REPO_DID, "hello")
    sha = repo.commit({"version.txt": "one\n"})
    run = await harness.run(
        """
        on: workflow_dispatch
        jobs:
          build:
            steps:
              - uses: actions/checkout@v4
              - name: Plant
                run: |
                  marker="$RUNNER_TEMP/pwned"
                  evil="#!/bin/sh
                  echo \\"\\$0\\" >> $marker"
                  mkdir -p .git/hooks "$HOME/bin" "$HOME/hooks"
                  for hook in .git/hooks/post-checkout "$HOME/hooks/post-checkout"; do
                    printf '%s\\n' "$evil" > "$hook"; chmod +x "$hook"
                  done
                  printf '%s\\nexec /usr/bin/git "$@"\\n' "$evil" > "$HOME/bin/git"; chmod +x "$HOME/bin/git"
                  echo "$HOME/bin" >> "$GITHUB_PATH"
                  printf '[core]\\n\\thooksPath = %s\\n' "$HOME/hooks" > "$HOME/.gitconfig"
                  git config core.hooksPath "$HOME/hooks"
                  echo "GIT_CONFIG_PARAMETERS='core.hooksPath=$HOME/hooks'" >> "$GITHUB_ENV"
              - uses: actions/checkout@v4
              - run: |
                  git rev-parse HEAD  # the planted git does run for the workflow's own steps
                  cat "$RUNNER_TEMP/pwned"
                  echo "version=$(cat version.txt)"
        """,
        sha=sha,
        knot=knot.host,
        repo_did=REPO_DID,
        repo_name="hello",
    )
    assert run.status is Status.SUCCESS, run.error
    output = await harness.output(run.id)
    planted = [line for line in output if line.endswith("/bin/git")]
    assert len(planted) == 1 and sha in output
    assert not [line for line in output if "hooks/post-checkout" in line]
    assert "version=one" in output
