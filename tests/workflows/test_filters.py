"""GitHub's event filters: patterns as the filter cheat sheet defines them, and which pushes and
pull requests start a workflow (the examples are GitHub's own, from "Workflow syntax")."""

from __future__ import annotations

import time

import pytest

from app.workflows.exceptions import InvalidWorkflow
from app.workflows.filters import Pattern, included
from app.workflows.workflow import Workflow, parse_workflow

JOBS = "jobs:\n  build:\n    runs-on: ubuntu-latest\n    steps:\n      - run: echo hi\n"


def workflow(on: str) -> Workflow:
    return parse_workflow(".github/workflows/ci.yml", f"on:\n{on}\n{JOBS}")


# (patterns, name, included): the cheat sheet's examples, then the corners of the syntax.
PATTERNS: list[tuple[list[str], str, bool]] = [
    (["feature/*"], "feature/my-branch", True),
    (["feature/*"], "feature/beta-a/my-branch", False),
    (["feature/**"], "feature/beta-a/my-branch", True),
    (["feature/**"], "feature/mona/the/octocat", True),
    (["main", "releases/mona-the-octocat"], "releases/mona-the-octocat", True),
    (["main", "releases/mona-the-octocat"], "releases/other", False),
    (["*"], "main", True),
    (["*"], "releases/x", False),
    (["**"], "all/the/branches", True),
    (["*-alpha"], "v2.0-alpha", True),
    (["*feature"], "feature", True),
    (["*feature"], "ver-10-feature", True),
    (["v2*"], "v2", True),
    (["v2*"], "v2.9", True),
    (["v2*"], "v3", False),
    (["v[12].[0-9]+.[0-9]+"], "v1.10.1", True),
    (["v[12].[0-9]+.[0-9]+"], "v2.0.0", True),
    (["v[12].[0-9]+.[0-9]+"], "v3.0.0", False),
    (["v[12].[0-9]+.[0-9]+"], "v1.x.0", False),
    (["v[12].[0-9]+.[0-9]+"], "v1-1.0", False),  # `.` is a dot, not any character
    (["*"], "README.md", True),
    (["*"], "docs/README.md", False),
    (["*.jsx?"], "page.js", True),
    (["*.jsx?"], "page.jsx", True),
    (["*.jsx?"], "page.jsxx", False),
    (["*.js"], "js/index.js", False),
    (["**.js"], "src/js/app.js", True),
    (["docs/*"], "docs/README.md", True),
    (["docs/*"], "docs/mona/octocat.txt", False),
    (["docs/**"], "docs/mona/octocat.txt", True),
    (["docs/**/*.md"], "docs/README.md", True),
    (["docs/**/*.md"], "docs/a/markdown/file.md", True),
    (["docs/**/*.md"], "docs/a/markdown/file.txt", False),
    (["**/docs/**"], "docs/hello.md", True),
    (["**/docs/**"], "space/docs/plan/space.doc", True),
    (["**/docs/**"], "mydocs/hello.md", False),
    (["**/README.md"], "README.md", True),
    (["**/README.md"], "js/README.md", True),
    (["**/*src/**"], "a/src/app.js", True),
    (["**/*src/**"], "my-src/code/js/app.js", True),
    (["**/*-post.md"], "my-post.md", True),
    (["**/*-post.md"], "path/their-post.md", True),
    (["**/migrate-*.sql"], "db/sept/migrate-v1.sql", True),
    # Order: a later negative pattern excludes, a later positive one includes again.
    (["*.md", "!README.md"], "hello.md", True),
    (["*.md", "!README.md"], "README.md", False),
    (["*.md", "!README.md"], "docs/hello.md", False),
    (["*.md", "!README.md", "README*"], "README.md", True),
    (["*.md", "!README.md", "README*"], "README.doc", True),
    (["!README.md"], "hello.md", False),  # only negative patterns: nothing is included
    # The syntax's corners.
    (["+x"], "+x", True),  # a `+` or `?` with nothing before it is itself
    (["a*?"], "ab?", True),  # ... and so after a `*`
    (["a*?"], "ab", False),
    (["ab+c"], "abbbc", True),
    (["ab+c"], "ac", False),
    (["[CB]at"], "Bat", True),
    (["[CB]at"], "bat", False),  # case counts
    (["[1-2]00"], "200", True),
    (["[1-2]00"], "300", False),
    (["[a-c]+-x"], "abcab-x", True),
    ([r"\!file"], "!file", True),
    ([r"a\*b"], "a*b", True),
    ([r"a\*b"], "axb", False),
    ([r"escape\\backslash"], "escape\\backslash", True),
    ([".yml"], "fyml", False),
    (["Main"], "main", False),
]


@pytest.mark.parametrize(("patterns", "name", "expected"), PATTERNS)
def test_patterns_match_whole_names_as_the_cheat_sheet_says(
    patterns: list[str], name: str, expected: bool
) -> None:
    assert included([Pattern(p) for p in patterns], name) is expected


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("", "an empty pattern"),
        ("!", "an empty pattern"),
        ("v[12", "a \\[ that no \\] closes"),
        ("v[]", r"empty brackets \[\]"),
        ("v[a-9]", "ranges can only include a-z, A-Z and 0-9"),
        ("v[z-a]", "ranges can only include"),
        ("a\\", "a \\\\ at the end"),
        ("x" * 1025, "longer than 1024 characters"),
    ],
)
def test_refuses_a_malformed_pattern_saying_why(text: str, problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        Pattern(text)


def test_a_malformed_pattern_refuses_the_workflow_file_naming_the_key() -> None:
    problem = r"on.push.branches: 'v\[12' is not a pattern: a \[ that no \] closes"
    with pytest.raises(InvalidWorkflow, match=problem) as caught:
        workflow("  push:\n    branches: ['v[12']")

    assert caught.value.path == ".github/workflows/ci.yml"


def test_a_pathological_pattern_costs_its_length_times_the_name_s_not_more() -> None:
    pattern = Pattern("**a" * 30 + "**b")
    name = "a" * 4000

    started = time.perf_counter()
    assert not pattern.matches(name)
    assert time.perf_counter() - started < 2.0


# -- push ----------------------------------------------------------------------------------------


def test_a_workflow_without_push_never_matches_a_push() -> None:
    wf = workflow("  pull_request:\n  workflow_dispatch:")

    assert not wf.matches_push(ref="refs/heads/main")


def test_a_bare_push_matches_every_branch_and_tag() -> None:
    wf = workflow("  push:")

    assert wf.matches_push(ref="refs/heads/main")
    assert wf.matches_push(ref="refs/heads/feature/x", changed_paths=["a.txt"])
    assert wf.matches_push(ref="refs/tags/v1.0")


@pytest.mark.parametrize("ref", ["main", "refs/notes/commits", "refs/pull/1/head", "HEAD"])
def test_a_ref_that_is_neither_a_branch_nor_a_tag_never_matches(ref: str) -> None:
    assert not workflow("  push:").matches_push(ref=ref)


def test_branches_match_branch_names_and_let_no_tag_through() -> None:
    wf = workflow("  push:\n    branches: [main, 'releases/**']")

    assert wf.matches_push(ref="refs/heads/main")
    assert wf.matches_push(ref="refs/heads/releases/v1/rc")
    assert not wf.matches_push(ref="refs/heads/feature")
    assert not wf.matches_push(ref="refs/tags/main")


def test_tags_match_tag_names_and_let_no_branch_through() -> None:
    wf = workflow("  push:\n    tags: ['v*']")

    assert wf.matches_push(ref="refs/tags/v1.2")
    assert not wf.matches_push(ref="refs/tags/release")
    assert not wf.matches_push(ref="refs/heads/v1.2")


def test_a_single_pattern_may_stand_without_a_list() -> None:
    wf = workflow("  push:\n    branches: main")

    assert wf.matches_push(ref="refs/heads/main")
    assert not wf.matches_push(ref="refs/heads/dev")


def test_branches_and_tags_each_decide_for_their_own_refs() -> None:
    wf = workflow("  push:\n    branches: [main]\n    tags: ['v*']")

    assert wf.matches_push(ref="refs/heads/main")
    assert wf.matches_push(ref="refs/tags/v2")
    assert not wf.matches_push(ref="refs/heads/v2")
    assert not wf.matches_push(ref="refs/tags/main")


def test_branches_ignore_lets_every_other_branch_through_but_no_tag() -> None:
    wf = workflow("  push:\n    branches-ignore: ['mona/octocat', 'releases/**-alpha']")

    assert wf.matches_push(ref="refs/heads/main")
    assert wf.matches_push(ref="refs/heads/releases/10")
    assert not wf.matches_push(ref="refs/heads/mona/octocat")
    assert not wf.matches_push(ref="refs/heads/releases/beta/3-alpha")
    assert not wf.matches_push(ref="refs/tags/v1")


def test_tags_ignore_lets_every_other_tag_through_but_no_branch() -> None:
    wf = workflow("  push:\n    tags-ignore: ['v1.*']")

    assert wf.matches_push(ref="refs/tags/v2.0")
    assert not wf.matches_push(ref="refs/tags/v1.9")
    assert not wf.matches_push(ref="refs/heads/main")


def test_a_later_negative_branch_pattern_excludes_and_a_later_positive_one_includes() -> None:
    wf = workflow("  push:\n    branches: ['releases/**', '!releases/**-alpha', 'releases/keep-alpha']")

    assert wf.matches_push(ref="refs/heads/releases/10")
    assert wf.matches_push(ref="refs/heads/releases/beta/mona")
    assert not wf.matches_push(ref="refs/heads/releases/10-alpha")
    assert not wf.matches_push(ref="refs/heads/releases/beta/3-alpha")
    assert wf.matches_push(ref="refs/heads/releases/keep-alpha")


def test_a_negative_ignore_pattern_takes_a_ref_back() -> None:
    wf = workflow("  push:\n    branches-ignore: ['dev/**', '!dev/keep']")

    assert not wf.matches_push(ref="refs/heads/dev/x")
    assert wf.matches_push(ref="refs/heads/dev/keep")


def test_paths_match_when_any_changed_file_is_included() -> None:
    wf = workflow("  push:\n    paths: ['**.js']")

    assert wf.matches_push(ref="refs/heads/main", changed_paths=["README.md", "src/app.js"])
    assert not wf.matches_push(ref="refs/heads/main", changed_paths=["README.md", "docs/x.md"])


def test_paths_with_a_negative_pattern_leave_out_what_it_names() -> None:
    wf = workflow("  push:\n    paths: ['sub-project/**', '!sub-project/docs/**']")

    assert wf.matches_push(ref="refs/heads/main", changed_paths=["sub-project/src/a.c"])
    assert not wf.matches_push(ref="refs/heads/main", changed_paths=["sub-project/docs/readme.md"])
    assert wf.matches_push(
        ref="refs/heads/main", changed_paths=["sub-project/docs/readme.md", "sub-project/Makefile"]
    )


def test_paths_ignore_skips_only_a_push_whose_every_file_is_ignored() -> None:
    wf = workflow("  push:\n    paths-ignore: ['docs/**']")

    assert not wf.matches_push(ref="refs/heads/main", changed_paths=["docs/a.md", "docs/b/c.md"])
    assert wf.matches_push(ref="refs/heads/main", changed_paths=["docs/a.md", "src/x.py"])


def test_unknown_changes_skip_the_paths_filters() -> None:
    assert workflow("  push:\n    paths: ['src/**']").matches_push(ref="refs/heads/main")
    assert workflow("  push:\n    paths-ignore: ['**']").matches_push(
        ref="refs/heads/main", changed_paths=None
    )


def test_a_push_that_changed_no_file_passes_neither_paths_filter() -> None:
    assert not workflow("  push:\n    paths: ['**']").matches_push(ref="refs/heads/main", changed_paths=[])
    assert not workflow("  push:\n    paths-ignore: ['docs/**']").matches_push(
        ref="refs/heads/main", changed_paths=[]
    )
    assert workflow("  push:").matches_push(ref="refs/heads/main", changed_paths=[])


def test_branches_and_paths_must_both_be_satisfied() -> None:
    wf = workflow("  push:\n    branches: [main]\n    paths: ['src/**']")

    assert wf.matches_push(ref="refs/heads/main", changed_paths=["src/a.py"])
    assert not wf.matches_push(ref="refs/heads/main", changed_paths=["docs/a.md"])
    assert not wf.matches_push(ref="refs/heads/dev", changed_paths=["src/a.py"])


def test_a_tag_push_is_not_held_back_by_paths_filters() -> None:
    wf = workflow("  push:\n    tags: ['v*']\n    paths: ['src/**']")

    assert wf.matches_push(ref="refs/tags/v1", changed_paths=["docs/a.md"])
    assert workflow("  push:\n    paths: ['src/**']").matches_push(ref="refs/tags/v1", changed_paths=[])


# -- pull_request --------------------------------------------------------------------------------


def test_a_workflow_without_pull_request_never_matches_one() -> None:
    assert not workflow("  push:").matches_pull_request(base_ref="main")


def test_pull_request_branches_match_the_base_branch_by_name_or_ref() -> None:
    wf = workflow("  pull_request:\n    branches: [main, 'releases/**']")

    assert wf.matches_pull_request(base_ref="main")
    assert wf.matches_pull_request(base_ref="refs/heads/releases/v2")
    assert not wf.matches_pull_request(base_ref="dev")


def test_pull_request_branches_ignore_and_paths() -> None:
    wf = workflow("  pull_request:\n    branches-ignore: ['wip/**']\n    paths-ignore: ['**.md']")

    assert wf.matches_pull_request(base_ref="main", changed_paths=["a.py"])
    assert not wf.matches_pull_request(base_ref="main", changed_paths=["README.md"])
    assert not wf.matches_pull_request(base_ref="wip/x", changed_paths=["a.py"])
    assert wf.matches_pull_request(base_ref="main")


def test_a_bare_pull_request_matches_every_base_and_push_filters_do_not_apply() -> None:
    wf = workflow("  push:\n    branches: [main]\n  pull_request:\n    types: [opened]")

    assert wf.matches_pull_request(base_ref="dev", changed_paths=["x"])
    assert not wf.matches_push(ref="refs/heads/dev")


def test_tag_keys_under_pull_request_are_ignored_since_pull_requests_have_no_tags() -> None:
    wf = workflow("  pull_request:\n    tags: ['v*']")

    assert wf.matches_pull_request(base_ref="main")
