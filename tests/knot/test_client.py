"""KnotClient against a real knot over HTTP: listing, fetching, fallback, cache, limits, failures."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from app.knot.client import KnotClient
from app.xrpc.errors import InvalidRequest, UpstreamFailure
from tests.support.knot import BLOB, TREE, TestKnot
from tests.support.servers import free_port

DID = "did:plc:alice"
CI = "on: push\njobs: {}\n"


@pytest.fixture
async def client() -> AsyncIterator[KnotClient]:
    client = KnotClient(dev=True, timeout=2.0)
    yield client
    await client.close()


async def test_fetches_workflow_files_sorted_by_name(client: KnotClient, knot: TestKnot):
    repo = knot.create_repo(DID, "app")
    sha = repo.commit({".github/workflows/z.yaml": "z\n", ".github/workflows/a.yml": "a\n"})

    files = await client.workflow_files(knot=knot.host, repo_did=DID, repo_name="app", sha=sha)

    assert [(f.path, f.stem, f.source) for f in files] == [
        (".github/workflows/a.yml", "a", "a\n"),
        (".github/workflows/z.yaml", "z", "z\n"),
    ]


async def test_fetches_the_blobs_concurrently(knot: TestKnot):
    # A client timeout no slow machine comes near: the knot holds each blob until all ten are asked.
    client = KnotClient(dev=True, timeout=120.0)
    repo = knot.create_repo(DID, "app")
    sha = repo.commit({f".github/workflows/w{i}.yml": CI for i in range(10)})
    gathering = knot.gather(10, nsid=BLOB)

    try:
        files = await client.workflow_files(knot=knot.host, repo_did=DID, repo_name="app", sha=sha)
    finally:
        await client.close()

    assert len(files) == 10
    assert not gathering.broken, "the blobs were not all requested at once"
    assert knot.peak_in_flight == 10


async def test_caches_by_commit_so_a_second_read_sends_nothing(client: KnotClient, knot: TestKnot):
    repo = knot.create_repo(DID, "app")
    sha = repo.commit({".github/workflows/ci.yml": CI})
    await client.workflow_files(knot=knot.host, repo_did=DID, repo_name="app", sha=sha)
    knot.clear_requests()

    files = await client.workflow_files(knot=knot.host, repo_did=DID, repo_name="app", sha=sha)

    assert files[0].source == CI
    assert knot.requests == []


async def test_the_cache_is_bounded_by_bytes(knot: TestKnot):
    client = KnotClient(dev=True, timeout=2.0, cache_max_bytes=4096)
    repo = knot.create_repo(DID, "app")
    for i in range(5):
        sha = repo.commit({".github/workflows/ci.yml": f"# {i}\n" + "x" * 1500})
        await client.workflow_files(knot=knot.host, repo_did=DID, repo_name="app", sha=sha)
    await client.close()

    assert client.cache.bytes <= 4096


async def test_falls_back_to_did_slash_name_once_per_knot(client: KnotClient, old_knot: TestKnot):
    repo = old_knot.create_repo(DID, "app")
    sha = repo.commit({".github/workflows/ci.yml": CI})
    other = old_knot.create_repo(DID, "other")
    other_sha = other.commit({".github/workflows/ci.yml": CI})

    await client.workflow_files(knot=old_knot.host, repo_did=DID, repo_name="app", sha=sha)
    await client.workflow_files(knot=old_knot.host, repo_did=DID, repo_name="other", sha=other_sha)

    assert [r.query["repo"] for r in old_knot.xrpc_requests(TREE)] == [DID, f"{DID}/app", f"{DID}/other"]
    assert client.repo_form(old_knot.host) == "did/name"


async def test_goes_back_to_the_did_when_a_knot_stops_taking_did_slash_name(
    client: KnotClient, old_knot: TestKnot
):
    repo = old_knot.create_repo(DID, "app")
    sha = repo.commit({".github/workflows/ci.yml": CI})
    await client.workflow_files(knot=old_knot.host, repo_did=DID, repo_name="app", sha=sha)
    old_knot.repo_param = "did"  # the knot was upgraded and dropped the old form
    second = repo.commit({".github/workflows/ci.yml": CI + "# 2\n"})

    files = await client.workflow_files(knot=old_knot.host, repo_did=DID, repo_name="app", sha=second)

    assert files[0].source.endswith("# 2\n")
    assert client.repo_form(old_knot.host) == "did"


async def test_a_repo_the_knot_does_not_have_is_invalid_request(client: KnotClient, knot: TestKnot):
    with pytest.raises(InvalidRequest, match="does not have the repo did:plc:nobody/app"):
        await client.workflow_files(knot=knot.host, repo_did="did:plc:nobody", repo_name="app", sha="a" * 40)


async def test_a_missing_commit_is_invalid_request(client: KnotClient, knot: TestKnot):
    knot.create_repo(DID, "app").commit({".github/workflows/ci.yml": CI})

    with pytest.raises(InvalidRequest, match="does not have commit"):
        await client.workflow_files(knot=knot.host, repo_did=DID, repo_name="app", sha="b" * 40)


async def test_no_workflow_directory_is_invalid_request(client: KnotClient, knot: TestKnot):
    sha = knot.create_repo(DID, "app").commit({"README": "x"})

    with pytest.raises(InvalidRequest, match="no workflow files"):
        await client.workflow_files(knot=knot.host, repo_did=DID, repo_name="app", sha=sha)


async def test_a_non_utf8_workflow_is_invalid_request(client: KnotClient, knot: TestKnot):
    sha = knot.create_repo(DID, "app").commit({".github/workflows/ci.yml": b"on: push\xff\n"})

    with pytest.raises(InvalidRequest, match="ci.yml is not UTF-8"):
        await client.workflow_files(knot=knot.host, repo_did=DID, repo_name="app", sha=sha)


async def test_a_size_the_tree_hides_is_still_caught_on_the_blob(client: KnotClient, knot: TestKnot):
    sha = knot.create_repo(DID, "app").commit({".github/workflows/ci.yml": CI})
    knot.answer_json({"content": "x" * (512 * 1024 + 1), "encoding": "utf-8"}, nsid=BLOB)

    with pytest.raises(InvalidRequest, match="larger than 512 KiB"):
        await client.workflow_files(knot=knot.host, repo_did=DID, repo_name="app", sha=sha)


async def test_an_oversized_answer_is_cut_off(client: KnotClient, knot: TestKnot):
    sha = knot.create_repo(DID, "app").commit({".github/workflows/ci.yml": CI})
    knot.answer_json({"content": "x" * (3 * 1024 * 1024)}, nsid=BLOB)

    with pytest.raises(UpstreamFailure, match="oversized"):
        await client.workflow_files(knot=knot.host, repo_did=DID, repo_name="app", sha=sha)


async def test_an_unreachable_knot_is_upstream_failure(client: KnotClient):
    with pytest.raises(UpstreamFailure, match="unreachable"):
        await client.workflow_files(
            knot=f"127.0.0.1:{free_port()}", repo_did=DID, repo_name="app", sha="a" * 40
        )


async def test_a_hanging_knot_times_out(knot: TestKnot):
    client = KnotClient(dev=True, timeout=0.3)
    sha = knot.create_repo(DID, "app").commit({".github/workflows/ci.yml": CI})
    knot.hang(nsid=TREE)

    with pytest.raises(UpstreamFailure, match="did not answer sh.tangled.repo.tree within 0.3 s"):
        await client.workflow_files(knot=knot.host, repo_did=DID, repo_name="app", sha=sha)
    await client.close()


async def test_failures_are_not_cached(client: KnotClient, knot: TestKnot):
    sha = knot.create_repo(DID, "app").commit({".github/workflows/ci.yml": CI})
    knot.fail(503)
    with pytest.raises(UpstreamFailure):
        await client.workflow_files(knot=knot.host, repo_did=DID, repo_name="app", sha=sha)
    knot.reset()

    files = await client.workflow_files(knot=knot.host, repo_did=DID, repo_name="app", sha=sha)

    assert files[0].source == CI


async def test_accepts_older_knots_file_modes(client: KnotClient, knot: TestKnot):
    sha = knot.create_repo(DID, "app").commit({".github/workflows/ci.yml": CI})
    knot.answer_json(
        {"ref": sha, "files": [{"name": "ci.yml", "mode": "-rw-r--r--", "size": 20, "is_file": True}]},
        nsid=TREE,
    )

    files = await client.workflow_files(knot=knot.host, repo_did=DID, repo_name="app", sha=sha)

    assert [f.stem for f in files] == ["ci"]


def test_knots_are_https_outside_dev_mode():
    client = KnotClient(dev=False, timeout=1)
    dev = KnotClient(dev=True, timeout=1)

    assert client.clone_url(knot="knot1.tangled.sh", repo_did=DID, repo_name="app") == (
        "https://knot1.tangled.sh/did:plc:alice/app"
    )
    assert dev.clone_url(knot="127.0.0.1:5555", repo_did=DID, repo_name="app") == (
        "http://127.0.0.1:5555/did:plc:alice/app"
    )
