"""Pieces of the run-starting flows that need no service: which GitHub file a Tangled name means."""

from __future__ import annotations

import pytest

from app.runs.flows import tangled_stem


@pytest.mark.parametrize(
    ("name", "stem"),
    [
        ("ci.yml", "ci"),
        ("ci.yaml", "ci"),
        ("ci", "ci"),
        (".tangled/workflows/build.yml", "build"),
        ("release.v2.yml", "release.v2"),
        ("", None),
        (".yml", None),
        ("..", None),
        ("dir/", None),
        ("bad\nname.yml", None),
        ("back\\slash", None),
        ("x" * 256, None),
    ],
)
def test_a_tangled_workflow_name_gives_the_stem_of_its_github_file(name: str, stem: str | None):
    assert tangled_stem(name) == stem
