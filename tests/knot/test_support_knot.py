"""The test knot itself speaks Tangled's wire format and serves real git clones."""

from __future__ import annotations

import subprocess
from pathlib import Path

import httpx

from tests.support.knot import BLOB, TREE, TestKnot, git


async def test_tree_lists_one_level_with_go_git_modes(knot: TestKnot):
    repo = knot.create_repo("did:plc:alice", "hello")
    repo.write("run.sh", "#!/bin/sh\n", executable=True)
    sha = repo.commit({".github/workflows/ci.yml": "on: push\n", ".github/workflows/sub/x.yml": "x: 1\n"})
    async with httpx.AsyncClient(base_url=knot.url) as client:
        root = await client.get(f"/xrpc/{TREE}", params={"repo": "did:plc:alice", "ref": sha})
        sub = await client.get(
            f"/xrpc/{TREE}", params={"repo": "did:plc:alice", "ref": sha, "path": ".github/workflows"}
        )
    assert {f["name"]: f["mode"] for f in root.json()["files"]} == {".github": "0040000", "run.sh": "0100755"}
    assert sub.json()["files"] == [
        {"name": "ci.yml", "mode": "0100644", "size": 9},
        {"name": "sub", "mode": "0040000", "size": 0},
    ]
    assert sub.json()["ref"] == sha


async def test_blob_is_utf8_for_text_and_base64_for_binary(knot: TestKnot):
    repo = knot.create_repo("did:plc:alice", "hello")
    sha = repo.commit({"a.txt": "héllo\n", "b.bin": b"\x00\xff"})
    async with httpx.AsyncClient(base_url=knot.url) as client:
        text = await client.get(
            f"/xrpc/{BLOB}", params={"repo": "did:plc:alice", "ref": sha, "path": "a.txt"}
        )
        binary = await client.get(
            f"/xrpc/{BLOB}", params={"repo": "did:plc:alice/hello", "ref": sha, "path": "b.bin"}
        )
    assert text.json()["content"] == "héllo\n"
    assert text.json()["encoding"] == "utf-8"
    assert binary.json()["content"] == "AP8="
    assert binary.json()["encoding"] == "base64"
    assert binary.json()["isBinary"] is True


async def test_errors_carry_tangled_names(knot: TestKnot):
    repo = knot.create_repo("did:plc:alice", "hello")
    sha = repo.commit({"a.txt": "x"})
    async with httpx.AsyncClient(base_url=knot.url) as client:
        no_ref = await client.get(f"/xrpc/{TREE}", params={"repo": "did:plc:alice", "ref": "0" * 40})
        no_path = await client.get(
            f"/xrpc/{TREE}", params={"repo": "did:plc:alice", "ref": sha, "path": "nope"}
        )
        no_file = await client.get(
            f"/xrpc/{BLOB}", params={"repo": "did:plc:alice", "ref": sha, "path": "nope"}
        )
        no_repo = await client.get(
            f"/xrpc/{BLOB}", params={"repo": "did:plc:bob", "ref": sha, "path": "a.txt"}
        )
    assert (no_ref.status_code, no_ref.json()["error"]) == (404, "RefNotFound")
    assert (no_path.status_code, no_path.json()["error"]) == (404, "PathNotFound")
    assert (no_file.status_code, no_file.json()["error"]) == (404, "FileNotFound")
    assert (no_repo.status_code, no_repo.json()["error"]) == (400, "RepoNotFound")


async def test_older_knot_refuses_a_bare_did_but_serves_did_slash_name(old_knot: TestKnot):
    repo = old_knot.create_repo("did:plc:alice", "hello")
    sha = repo.commit({"a.txt": "x"})
    async with httpx.AsyncClient(base_url=old_knot.url) as client:
        bare = await client.get(f"/xrpc/{TREE}", params={"repo": "did:plc:alice", "ref": sha})
        named = await client.get(f"/xrpc/{TREE}", params={"repo": "did:plc:alice/hello", "ref": sha})
    assert (bare.status_code, bare.json()["error"]) == (400, "InvalidRequest")
    assert named.status_code == 200
    assert [r.query["repo"] for r in old_knot.xrpc_requests(TREE)] == ["did:plc:alice", "did:plc:alice/hello"]


async def test_knobs_slow_break_and_garble_answers(knot: TestKnot):
    repo = knot.create_repo("did:plc:alice", "hello")
    sha = repo.commit({"a.txt": "x"})
    params = {"repo": "did:plc:alice", "ref": sha, "path": "a.txt"}
    async with httpx.AsyncClient(base_url=knot.url) as client:
        knot.fail(503, error="Unavailable", nsid=BLOB)
        failed = await client.get(f"/xrpc/{BLOB}", params=params)
        tree_still_fine = await client.get(f"/xrpc/{TREE}", params={"repo": "did:plc:alice", "ref": sha})
        knot.reset()
        knot.answer_garbage()
        garbage = await client.get(f"/xrpc/{BLOB}", params=params)
        knot.reset()
        knot.hang()
        try:
            await client.get(f"/xrpc/{BLOB}", params=params, timeout=0.3)
            hung = False
        except httpx.ReadTimeout:
            hung = True
        knot.reset()
        healthy = await client.get(f"/xrpc/{BLOB}", params=params)
    assert failed.status_code == 503 and failed.json()["error"] == "Unavailable"
    assert tree_still_fine.status_code == 200
    assert garbage.status_code == 200 and garbage.text.startswith("<html>")
    assert hung
    assert healthy.json()["content"] == "x"


def test_git_clone_over_smart_http_checks_out_the_commit(knot: TestKnot, tmp_path: Path):
    repo = knot.create_repo("did:web:example.com%3A8080", "app")
    sha = repo.commit({"main.py": "print('hi')\n"})
    target = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", knot.clone_url(repo), str(target)], check=True, capture_output=True)
    assert git("rev-parse", "HEAD", cwd=target).strip() == sha
    assert (target / "main.py").read_text() == "print('hi')\n"


def test_sha256_repositories_give_64_hex_commit_ids(tmp_path: Path):
    with TestKnot(tmp_path / "k") as knot:
        repo = knot.create_repo("did:plc:alice", "modern", object_format="sha256")
        sha = repo.commit({"a": "b"})
        response = httpx.get(
            f"{knot.url}/xrpc/{BLOB}", params={"repo": "did:plc:alice", "ref": sha, "path": "a"}
        )
    assert len(sha) == 64
    assert response.json()["content"] == "b"
