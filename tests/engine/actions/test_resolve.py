"""Fetching actions over real git smart HTTP: refs resolved once per run, the cache by (url, commit),
offline mode, eviction, concurrency, interruption, and what users are told when it goes wrong."""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Callable
from pathlib import Path

import pytest

from app.engine.actions import (
    ActionCache,
    ActionUnavailable,
    CompositeRuns,
    InvalidDefinition,
    MissingDefinition,
    RunResolver,
)
from app.workflows.uses import RepositoryAction, parse_uses
from tests.engine.actions.conftest import NODE_ACTION
from tests.support.counting import CountingListener
from tests.support.gitserver import GitServer
from tests.support.knot import git
from tests.support.servers import free_port

WAIT_SECONDS = 30.0  # a safety net against hangs, not a timing assertion


def uses(text: str) -> RepositoryAction:
    parsed = parse_uses(text, "jobs.test.steps[0].uses")
    assert isinstance(parsed, RepositoryAction)
    return parsed


def action(name: str) -> str:
    return f"name: {name}\nruns:\n  using: node20\n  main: index.js\n"


async def until(condition: Callable[[], bool]) -> None:
    async with asyncio.timeout(WAIT_SECONDS):
        while not condition():
            await asyncio.sleep(0.01)


def processes_mentioning(text: str) -> list[str]:
    """Command lines of this machine's processes that contain `text`."""
    found = []
    for proc in Path("/proc").iterdir():
        try:
            command = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if text in command:
            found.append(command)
    return found


def entries(cache: ActionCache) -> list[str]:
    return sorted(path.name for path in cache.store.entries.iterdir())


# -- which commit ---------------------------------------------------------------------------------


async def test_fetches_an_action_by_tag(git_server: GitServer, cache: ActionCache) -> None:
    repo = git_server.create_repo("acme", "hello")
    first = repo.commit({"action.yml": NODE_ACTION, "dist/index.js": "console.log('hi')\n"})
    repo.tag("v1")
    repo.commit({"action.yml": action("later")})
    async with cache.resolver() as resolver:
        fetched = await resolver.fetch(uses("acme/hello@v1"))
    assert (fetched.commit, fetched.url) == (first, f"{git_server.url}/acme/hello")
    assert fetched.definition.name == "Hello"
    assert (fetched.directory / "dist" / "index.js").read_text() == "console.log('hi')\n"
    assert fetched.action_directory == fetched.directory
    assert not (fetched.directory / ".git").exists()


async def test_an_annotated_tag_gives_the_commit_it_tags(git_server: GitServer, cache: ActionCache) -> None:
    repo = git_server.create_repo("acme", "hello")
    first = repo.commit({"action.yml": NODE_ACTION})
    repo.tag("v1", annotated=True)
    async with cache.resolver() as resolver:
        assert (await resolver.fetch(uses("acme/hello@v1"))).commit == first


async def test_fetches_an_action_by_branch(git_server: GitServer, cache: ActionCache) -> None:
    repo = git_server.create_repo("acme", "hello")
    repo.commit({"action.yml": action("main")})
    release = repo.commit({"action.yml": action("release")})
    repo.branch("release/v2")
    repo.commit({"action.yml": action("newer")})
    async with cache.resolver() as resolver:
        fetched = await resolver.fetch(uses("acme/hello@release/v2"))
    assert (fetched.commit, fetched.definition.name) == (release, "release")


async def test_a_tag_wins_over_a_branch_of_the_same_name(git_server: GitServer, cache: ActionCache) -> None:
    repo = git_server.create_repo("acme", "hello")
    tagged = repo.commit({"action.yml": action("tag")})
    repo.tag("v1")
    repo.commit({"action.yml": action("branch")})
    repo.branch("v1")
    async with cache.resolver() as resolver:
        assert (await resolver.fetch(uses("acme/hello@v1"))).commit == tagged


async def test_fetches_an_action_by_full_commit_id(git_server: GitServer, cache: ActionCache) -> None:
    repo = git_server.create_repo("acme", "hello")
    old = repo.commit({"action.yml": action("old")})
    repo.commit({"action.yml": action("new")})
    async with cache.resolver() as resolver:
        fetched = await resolver.fetch(uses(f"acme/hello@{old}"))
    assert (fetched.commit, fetched.definition.name) == (old, "old")
    assert git_server.commands("ls-refs") == []  # a commit id needs no resolving


async def test_fetches_an_action_in_a_subdirectory(git_server: GitServer, cache: ActionCache) -> None:
    repo = git_server.create_repo("acme", "tools")
    repo.commit(
        {
            "README.md": "tools\n",
            "lint/action.yml": "name: Lint\nruns:\n  using: composite\n  steps:\n    - run: lint\n",
            "format/action.yaml": action("Format"),
        }
    )
    repo.tag("v1")
    async with cache.resolver() as resolver:
        lint = await resolver.fetch(uses("acme/tools/lint@v1"))
        formatter = await resolver.fetch(uses("acme/tools/format@v1"))
    assert lint.definition.name == "Lint"
    assert isinstance(lint.definition.runs, CompositeRuns)
    assert lint.action_directory == lint.directory / "lint"
    assert (lint.directory / "README.md").is_file()
    assert (formatter.definition.name, formatter.definition.file) == ("Format", "format/action.yaml")
    assert len(git_server.commands("fetch")) == 1  # one repository at one commit: fetched once


async def test_a_tag_resolves_once_per_run_even_if_it_moves(
    git_server: GitServer, cache: ActionCache
) -> None:
    repo = git_server.create_repo("acme", "hello")
    first = repo.commit({"action.yml": action("first")})
    repo.tag("v1")
    run = cache.resolver()
    assert (await run.fetch(uses("acme/hello@v1"))).commit == first
    second = repo.commit({"action.yml": action("second")})
    repo.tag("v1")  # moved while the run goes on
    again = await run.fetch(uses("acme/hello@v1"))
    assert (again.commit, again.definition.name) == (first, "first")
    assert len(git_server.commands("ls-refs")) == 1
    async with cache.resolver() as next_run:
        moved = await next_run.fetch(uses("acme/hello@v1"))
    assert (moved.commit, moved.definition.name) == (second, "second")
    run.close()


async def test_concurrent_steps_of_a_run_resolve_a_tag_once(
    git_server: GitServer, cache: ActionCache
) -> None:
    repo = git_server.create_repo("acme", "hello")
    repo.commit({"action.yml": NODE_ACTION})
    repo.tag("v1")
    async with cache.resolver() as resolver:
        fetched = await asyncio.gather(*(resolver.fetch(uses("acme/hello@v1")) for _ in range(5)))
    assert len({f.commit for f in fetched}) == 1
    assert len(git_server.commands("ls-refs")) == 1
    assert len(git_server.commands("fetch")) == 1


# -- the cache ------------------------------------------------------------------------------------


async def test_a_cached_commit_is_served_without_contacting_the_server(
    git_server: GitServer, make_cache: Callable[..., ActionCache]
) -> None:
    repo = git_server.create_repo("acme", "hello")
    commit = repo.commit({"action.yml": NODE_ACTION})
    repo.tag("v1")
    async with make_cache().resolver() as resolver:
        await resolver.fetch(uses(f"acme/hello@{commit}"))
    git_server.clear_requests()
    restarted = make_cache()  # another process on the same data dir
    async with restarted.resolver() as resolver:
        fetched = await resolver.fetch(uses(f"acme/hello@{commit}"))
    assert fetched.definition.name == "Hello"
    assert git_server.requests == []
    async with restarted.resolver() as resolver:
        assert (await resolver.fetch(uses("acme/hello@v1"))).commit == commit
    assert {r.command for r in git_server.requests} == {None, "ls-refs"}  # resolved, not fetched


async def test_concurrent_fetches_of_one_commit_fetch_it_once(
    git_server: GitServer, cache: ActionCache
) -> None:
    repo = git_server.create_repo("acme", "hello")
    commit = repo.commit({"action.yml": NODE_ACTION})
    git_server.hold("fetch")
    runs = [cache.resolver() for _ in range(5)]
    tasks = [asyncio.create_task(run.fetch(uses(f"acme/hello@{commit}"))) for run in runs]
    await until(lambda: git_server.held == 1)
    await asyncio.sleep(0.2)  # the other four are waiting on the first, not fetching
    git_server.release()
    fetched = await asyncio.gather(*tasks)
    assert len({f.directory for f in fetched}) == 1
    assert len(git_server.commands("fetch")) == 1
    for run in runs:
        run.close()


async def test_an_interrupted_fetch_leaves_nothing_behind(git_server: GitServer, cache: ActionCache) -> None:
    repo = git_server.create_repo("acme", "hello")
    commit = repo.commit({"action.yml": NODE_ACTION})
    git_server.hold("fetch")
    async with cache.resolver() as resolver:
        task = asyncio.create_task(resolver.fetch(uses(f"acme/hello@{commit}")))
        await until(lambda: git_server.held == 1)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert entries(cache) == []
    assert processes_mentioning(f"{git_server.url}/acme/hello") == []  # git and its remote-http helper
    assert list(cache.store.tmp.iterdir()) == []
    git_server.release()
    async with cache.resolver() as resolver:
        assert (await resolver.fetch(uses(f"acme/hello@{commit}"))).definition.name == "Hello"


async def test_offline_mode_serves_only_the_cache(
    git_server: GitServer, make_cache: Callable[..., ActionCache]
) -> None:
    repo = git_server.create_repo("acme", "hello")
    first = repo.commit({"action.yml": action("first")})
    repo.tag("v1")
    second = repo.commit({"action.yml": action("second")})
    repo.tag("v2")
    async with make_cache().resolver() as resolver:
        await resolver.fetch(uses("acme/hello@v1"))
    repo.tag("v1", second)  # moved on the server: offline, v1 stays what it was when fetched
    git_server.clear_requests()
    offline = make_cache(actions_offline=True)
    async with offline.resolver() as resolver:
        by_tag = await resolver.fetch(uses("acme/hello@v1"))
        by_commit = await resolver.fetch(uses(f"acme/hello@{first}"))
        with pytest.raises(ActionUnavailable) as uncached_tag:
            await resolver.fetch(uses("acme/hello@v2"))
        with pytest.raises(ActionUnavailable) as uncached_commit:
            await resolver.fetch(uses(f"acme/hello@{second}"))
    assert (by_tag.commit, by_tag.definition.name) == (first, "first")
    assert by_commit.commit == first
    assert str(uncached_tag.value) == (
        f"action acme/hello@v2: v2 of {git_server.url}/acme/hello was never fetched here, "
        "and SPINDLE_ACTIONS_OFFLINE forbids asking the server"
    )
    assert str(uncached_commit.value) == (
        f"action acme/hello@{second}: commit {second} of {git_server.url}/acme/hello is not in the "
        "cache, and SPINDLE_ACTIONS_OFFLINE forbids fetching it"
    )
    assert git_server.requests == []


async def test_evicts_the_least_recently_used_actions_past_the_cap(
    git_server: GitServer, make_cache: Callable[..., ActionCache]
) -> None:
    cache = make_cache(actions_cache_mb=1)
    commits = {}
    for name in ("a", "b", "c"):
        repo = git_server.create_repo("acme", name)
        commits[name] = repo.commit({"action.yml": action(name), "blob.bin": b"x" * 400_000})
        repo.tag("v1")
    for name in ("a", "b", "a"):  # a is used after b: b is the least recently used
        async with cache.resolver() as resolver:
            await resolver.fetch(uses(f"acme/{name}@v1"))
    assert len(entries(cache)) == 2
    async with cache.resolver() as resolver:
        await resolver.fetch(uses("acme/c@v1"))  # 1.2 MB in all: b goes
    kept = entries(cache)
    assert {name.split("-")[1] for name in kept} == {commits["a"], commits["c"]}
    refs = json.loads(cache.store.refs_file.read_text())
    assert f"{git_server.url}/acme/b" not in refs  # what offline mode could no longer serve
    git_server.clear_requests()
    async with cache.resolver() as resolver:
        await resolver.fetch(uses("acme/b@v1"))
    assert len(git_server.commands("fetch")) == 1


async def test_never_evicts_what_a_run_still_holds(
    git_server: GitServer, make_cache: Callable[..., ActionCache]
) -> None:
    cache = make_cache(actions_cache_mb=1)
    commits = {}
    for name in ("a", "b", "c"):
        repo = git_server.create_repo("acme", name)
        commits[name] = repo.commit({"action.yml": action(name), "blob.bin": b"x" * 400_000})
        repo.tag("v1")
    running = cache.resolver()
    held = [await running.fetch(uses(f"acme/{name}@v1")) for name in ("a", "b")]
    async with cache.resolver() as other:
        await other.fetch(uses("acme/c@v1"))
    assert len(entries(cache)) == 3  # 1.2 MB, over the cap, but a and b are in use
    assert all((f.directory / "blob.bin").is_file() for f in held)
    running.close()
    repo = git_server.create_repo("acme", "d")
    commits["d"] = repo.commit({"action.yml": action("d")})
    async with cache.resolver() as other:
        await other.fetch(uses("acme/d@main"))
    # a, the least recently used, goes now that nothing holds it; that is enough
    assert {name.split("-")[1] for name in entries(cache)} == {commits[n] for n in "bcd"}


# -- what users are told --------------------------------------------------------------------------


async def fetch_error(resolver: RunResolver, text: str) -> str:
    with pytest.raises(ActionUnavailable) as caught:
        await resolver.fetch(uses(text))
    return str(caught.value)


async def test_says_when_the_repository_or_ref_does_not_exist(
    git_server: GitServer, cache: ActionCache
) -> None:
    repo = git_server.create_repo("acme", "hello")
    repo.commit({"action.yml": NODE_ACTION})
    url = f"{git_server.url}/acme"
    async with cache.resolver() as resolver:
        assert await fetch_error(resolver, "acme/nothing@v1") == (
            f"action acme/nothing@v1: cannot be fetched from {url}/nothing: the repository does not exist "
            f"(or is not public) (fatal: repository '{url}/nothing/' not found)"
        )
        assert await fetch_error(resolver, "acme/hello@v9") == (
            f"action acme/hello@v9: {url}/hello has no tag or branch v9"
        )
        assert await fetch_error(resolver, "acme/hello@abc1234") == (
            f"action acme/hello@abc1234: {url}/hello has no tag or branch abc1234 "
            "(a commit is named by its full id, as on GitHub)"
        )
        missing = "f" * 40
        assert await fetch_error(resolver, f"acme/hello@{missing}") == (
            f"action acme/hello@{missing}: cannot be fetched from {url}/hello: "
            f"the server has no commit {missing}"
        )
    assert entries(cache) == []


async def test_refuses_a_ref_git_would_read_as_an_option(git_server: GitServer, cache: ActionCache) -> None:
    async with cache.resolver() as resolver:
        message = await fetch_error(resolver, "acme/hello@--upload-pack=touch")
    assert message == (
        "action acme/hello@--upload-pack=touch: '--upload-pack=touch' is not a tag, branch or full commit id"
    )
    assert git_server.requests == []


async def test_says_when_the_host_is_unreachable(make_cache: Callable[..., ActionCache]) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    async with make_cache(actions_url=url).resolver() as resolver:
        message = await fetch_error(resolver, "acme/hello@v1")
    assert message.startswith(
        f"action acme/hello@v1: cannot be fetched from {url}/acme/hello: the host is unreachable ("
    )


async def test_says_when_action_yml_is_missing_malformed_or_unsupported(
    git_server: GitServer, cache: ActionCache
) -> None:
    repo = git_server.create_repo("acme", "hello")
    repo.commit(
        {
            "README.md": "no action here\n",
            "old/action.yml": "runs:\n  using: node10\n  main: a.js\n",
            "broken/action.yml": "runs: [\n",
        }
    )
    repo.tag("v1")
    async with cache.resolver() as resolver:
        with pytest.raises(MissingDefinition) as missing:
            await resolver.fetch(uses("acme/hello@v1"))
        with pytest.raises(MissingDefinition) as missing_path:
            await resolver.fetch(uses("acme/hello/nowhere@v1"))
        with pytest.raises(InvalidDefinition) as unsupported:
            await resolver.fetch(uses("acme/hello/old@v1"))
        with pytest.raises(InvalidDefinition) as malformed:
            await resolver.fetch(uses("acme/hello/broken@v1"))
    assert str(missing.value) == (
        "action acme/hello@v1: there is no action.yml or action.yaml at the root of its repository"
    )
    assert (
        str(missing_path.value)
        == "action acme/hello/nowhere@v1: there is no action.yml or action.yaml at nowhere"
    )
    assert str(unsupported.value) == (
        "action acme/hello/old@v1: old/action.yml: runs.using: 'node10' is not supported: "
        "expected one of node12, node16, node20, node24, composite, docker"
    )
    assert str(malformed.value).startswith(
        "action acme/hello/broken@v1: broken/action.yml: invalid YAML at line 2"
    )


# -- the host ----------------------------------------------------------------------------------


async def test_a_symlink_out_of_the_repository_writes_nothing_outside_it(
    git_server: GitServer, cache: ActionCache, tmp_path: Path
) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    repo = git_server.create_repo("acme", "evil")
    repo.write("action.yml", NODE_ACTION)
    repo.symlink("link", str(outside))
    repo.commit()
    # A tree no git client makes: `evil` both a link out and a directory with a file under it.
    path = repo.path
    blob = git("hash-object", "-w", "--stdin", cwd=path, input=b"pwned\n").strip()
    target = git("hash-object", "-w", "--stdin", cwd=path, input=str(outside).encode()).strip()
    action_blob = git("hash-object", "-w", "--stdin", cwd=path, input=NODE_ACTION.encode()).strip()
    inner = git("mktree", cwd=path, input=f"100644 blob {blob}\tpwned\n".encode()).strip()
    tree = git(
        "mktree",
        cwd=path,
        input=(
            f"100644 blob {action_blob}\taction.yml\n120000 blob {target}\tevil\n040000 tree {inner}\tevil\n"
        ).encode(),
    ).strip()
    crafted = git("commit-tree", tree, "-p", repo.head, "-m", "crafted", cwd=path).strip()
    git("update-ref", "refs/heads/crafted", crafted, cwd=path)
    async with cache.resolver() as resolver:
        linked = await resolver.fetch(uses("acme/evil@main"))
        evil = await resolver.fetch(uses("acme/evil@crafted"))
    assert os.readlink(linked.directory / "link") == str(outside)  # kept as a link, for the container
    assert evil.definition.name == "Hello"
    assert list(outside.iterdir()) == []
    assert all(path.resolve().is_relative_to(cache.store.root.resolve()) for path in _walk(evil.directory))


def _walk(root: Path) -> list[Path]:
    return [Path(directory) / name for directory, dirs, files in os.walk(root) for name in (*dirs, *files)]


async def test_action_yml_linking_to_a_host_file_is_refused(
    git_server: GitServer, cache: ActionCache
) -> None:
    repo = git_server.create_repo("acme", "peek")
    repo.symlink("action.yml", "/etc/hostname")
    repo.commit()
    async with cache.resolver() as resolver:
        with pytest.raises(
            InvalidDefinition, match="action.yml is a link that leads out of the action's repository"
        ):
            await resolver.fetch(uses("acme/peek@main"))


async def test_a_host_named_in_the_workflow_must_be_public(make_cache: Callable[..., ActionCache]) -> None:
    with CountingListener() as listener:
        async with make_cache().resolver() as resolver:
            message = await fetch_error(resolver, f"https://{listener.host}/acme/hello@v1")
        assert listener.connections == 0
    reference = f"https://{listener.host}/acme/hello"
    assert message == (
        f"action {reference}@v1: cannot be fetched from {reference}: "
        "127.0.0.1 has the address 127.0.0.1, which is not public (actions are fetched only from public "
        "hosts outside SPINDLE_DEV)"
    )


async def test_in_dev_mode_git_connects_only_to_the_address_checked(
    make_cache: Callable[..., ActionCache],
) -> None:
    async def resolve(host: str, port: int) -> list[str]:
        assert host == "actions.invalid"
        return ["127.0.0.1"]

    with CountingListener() as listener:
        async with make_cache(dev=True, resolve_host=resolve).resolver() as resolver:
            message = await fetch_error(resolver, f"https://actions.invalid:{listener.port}/acme/hello@v1")
        assert listener.connections >= 1  # the name does not resolve: only the pinned address got us there
    assert "cannot be fetched from https://actions.invalid" in message
