"""A git server holding action repositories, and settings that fetch actions from it."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from app.config import Settings
from app.engine.actions import ActionCache
from app.identity.resolver import HostResolver, system_resolve_host
from tests.support.gitserver import GitServer

NODE_ACTION = """\
name: Hello
description: says hello
inputs:
  who:
    description: whom to greet
    default: world
outputs:
  greeting:
    description: what was said
runs:
  using: node20
  main: dist/index.js
"""


@pytest.fixture
def git_server(tmp_path: Path) -> Iterator[GitServer]:
    with GitServer(tmp_path / "git") as server:
        yield server


@pytest.fixture
def make_cache(tmp_path: Path, git_server: GitServer) -> Callable[..., ActionCache]:
    """An ActionCache fetching `owner/repo@ref` from the test server, its cache in tmp_path/data;
    other keywords override settings."""

    def build(*, resolve_host: HostResolver = system_resolve_host, **overrides: Any) -> ActionCache:
        values: dict[str, Any] = {"data_dir": tmp_path / "data", "actions_url": git_server.url}
        values.update(overrides)
        return ActionCache(Settings(**values), resolve_host=resolve_host)

    return build


@pytest.fixture
def cache(make_cache: Callable[..., ActionCache]) -> ActionCache:
    return make_cache()
