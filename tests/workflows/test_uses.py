"""`uses:` references read as GitHub reads them, and the errors that name a malformed one."""

from __future__ import annotations

import pytest

from app.workflows.exceptions import WorkflowError
from app.workflows.uses import DockerImage, LocalAction, RepositoryAction, Uses, parse_uses

WHERE = "jobs.a.steps[0].uses"


@pytest.mark.parametrize(
    ("text", "reference"),
    [
        ("actions/checkout@v4", RepositoryAction("actions/checkout@v4", "actions", "checkout", "", "v4")),
        (
            "octo/tools/lint/js@0123abc",
            RepositoryAction("octo/tools/lint/js@0123abc", "octo", "tools", "lint/js", "0123abc"),
        ),
        (
            "octo/tools@release/v2",
            RepositoryAction("octo/tools@release/v2", "octo", "tools", "", "release/v2"),
        ),
        (
            "https://tangled.sh/alice/act/sub@v1",
            RepositoryAction(
                "https://tangled.sh/alice/act/sub@v1", "alice", "act", "sub", "v1", "https://tangled.sh"
            ),
        ),
        (
            "https://localhost:3000/o/r@main",
            RepositoryAction(
                "https://localhost:3000/o/r@main", "o", "r", "", "main", "https://localhost:3000"
            ),
        ),
        ("./", LocalAction("./", "")),
        ("./.github/actions/build", LocalAction("./.github/actions/build", ".github/actions/build")),
        ("./tools//x/./", LocalAction("./tools//x/./", "tools/x")),
        ("docker://alpine:3.20", DockerImage("docker://alpine:3.20", "alpine:3.20")),
        (
            "docker://ghcr.io/o/i@sha256:abc",
            DockerImage("docker://ghcr.io/o/i@sha256:abc", "ghcr.io/o/i@sha256:abc"),
        ),
    ],
)
def test_reads_each_form_of_reference(text: str, reference: Uses) -> None:
    parsed = parse_uses(text, WHERE)

    assert parsed == reference
    assert str(parsed) == text


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("", "nothing is named"),
        ("actions/checkout", "no @ref"),
        ("actions/checkout@", "no @ref"),
        ("actions/checkout@v1@v2", "more than one @"),
        ("checkout@v4", "no owner/repo before @"),
        ("actions//checkout@v4", "no owner/repo before @"),
        ("../outside/action@v1", "no owner/repo before @"),
        ("./../outside", "a path that leaves the workspace"),
        ("./a/../../b", "a path that leaves the workspace"),
        ("docker://", "no image"),
        ("actions/checkout@v4 ", "white space"),
        ("http://example.com/o/r@v1", r"http:// \(use https://\)"),
        ("https://exa mple.com/o/r@v1", "white space"),
        ("https://bad_host!/o/r@v1", "the host 'bad_host!'"),
        ("https://example.com/o@v1", "no owner/repo before @"),
    ],
)
def test_a_malformed_reference_is_an_error_naming_the_key_the_text_and_the_forms(
    text: str, problem: str
) -> None:
    with pytest.raises(WorkflowError, match=problem) as caught:
        parse_uses(text, WHERE)

    message = str(caught.value)
    assert message.startswith(f"{WHERE}: ")
    assert repr(text) in message
    assert message.endswith(
        "expected owner/repo[/path]@ref, https://host/owner/repo[/path]@ref, ./path or docker://image"
    )


def test_a_job_calls_a_reusable_workflow_never_an_image() -> None:
    assert parse_uses("./.github/workflows/x.yml", "jobs.a.uses", job=True) == LocalAction(
        "./.github/workflows/x.yml", ".github/workflows/x.yml"
    )
    with pytest.raises(WorkflowError, match="jobs.a.uses: a job calls a reusable workflow, not an image"):
        parse_uses("docker://alpine", "jobs.a.uses", job=True)
