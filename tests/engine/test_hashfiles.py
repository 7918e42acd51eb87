"""hashFiles() in steps, against digests computed here the way GitHub's runner computes them."""

from __future__ import annotations

import hashlib

from app.runs.models import Status
from tests.engine.conftest import Harness

A, B, LOCK, LOCK2 = b"alpha\n", b"beta\n", b"lock v1\n", b"lock v2\n"


def github_hash(*contents: bytes) -> str:
    """The SHA-256 of the files' SHA-256 digests, concatenated in the order found."""
    total = hashlib.sha256()
    for content in contents:
        total.update(hashlib.sha256(content).digest())
    return total.hexdigest()


async def test_hash_files_matches_githubs_algorithm_for_files_globs_and_exclusions(harness: Harness) -> None:
    run = await harness.run(
        """
        on: workflow_dispatch
        jobs:
          a:
            steps:
              - run: |
                  mkdir -p sub deep/er
                  printf 'alpha\\n' > a.txt
                  printf 'beta\\n' > sub/b.txt
                  printf 'lock v1\\n' > deep/er/x.lock
                  printf 'ignored\\n' > deep/skip.lock
              - run: |
                  echo "two=${{ hashFiles('a.txt', 'sub/b.txt') }}"
                  echo "glob=${{ hashFiles('**/*.lock', '!deep/skip.lock') }}"
                  echo "none=${{ hashFiles('nothing/**') }}"
              - run: printf 'lock v2\\n' > deep/er/x.lock
              - run: echo "changed=${{ hashFiles('deep/er/x.lock') }}"
        """
    )
    assert run.status is Status.SUCCESS, run.error
    output = await harness.output(run.id)
    assert f"two={github_hash(A, B)}" in output
    assert f"glob={github_hash(LOCK)}" in output
    assert "none=" in output
    # Evaluated when the step runs: the files as the earlier steps left them.
    assert f"changed={github_hash(LOCK2)}" in output


async def test_hash_files_outside_a_step_is_an_error_naming_it(harness: Harness) -> None:
    run = await harness.run(
        """
        on: workflow_dispatch
        jobs:
          a:
            if: hashFiles('x') != ''
            steps:
              - run: echo never
        """
    )
    assert run.status is Status.FAILED
    assert "hashFiles() is only available in steps" in (run.error or "")
