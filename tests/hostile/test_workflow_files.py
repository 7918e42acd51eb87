"""Hostile workflow files served by a real git knot: bombs, tags, binaries and odd names → 400, no blowup.

Each case commits the files to a fresh repo on the test knot, registers it and triggers it with a
valid token. Pass: 400 naming the file and the problem, nothing recorded, and the process's peak
memory barely moves (a billion-laughs file that got expanded would take gigabytes).
"""

from __future__ import annotations

import resource
import secrets
from pathlib import Path

import pytest

from tests.hostile.conftest import Hostile, assert_xrpc_error
from tests.runs.conftest import CI_YML

pytestmark = pytest.mark.asyncio(loop_scope="module")

WF = ".github/workflows"
JOB = "jobs:\n  build:\n    runs-on: ubuntu-latest\n    steps:\n      - run: echo hi\n"


def billion_laughs(levels: int = 9, fanout: int = 10) -> str:
    lines = ['lol0: &lol0 "lol"']
    for level in range(1, levels):
        refs = ", ".join(f"*lol{level - 1}" for _ in range(fanout))
        lines.append(f"lol{level}: &lol{level} [{refs}]")
    return "on: push\n" + "\n".join(lines) + "\n" + JOB


def doubling(levels: int = 60) -> str:
    # Two aliases per level: well under any alias cap, yet 2**60 nodes once expanded.
    lines = ["d0: &d0 [x, x]"] + [f"d{i}: &d{i} [*d{i - 1}, *d{i - 1}]" for i in range(1, levels)]
    return "on: push\n" + "\n".join(lines) + "\n" + JOB


def many_items(count: int) -> str:
    return "on: push\nbig: [" + ",".join("0" * count) + "]\n" + JOB


CASES: list[tuple[str, dict[str, str | bytes], str]] = [
    (
        "billion-laughs",
        {f"{WF}/lol.yml": billion_laughs()},
        "more than 100000 nodes once aliases are expanded",
    ),
    ("many-aliases", {f"{WF}/lol12.yml": billion_laughs(levels=12)}, "more than 100 aliases"),
    ("doubling-aliases", {f"{WF}/dbl.yml": doubling(45)}, "once aliases are expanded"),
    ("alias-cycle", {f"{WF}/cyc.yml": "on: push\na: &a [*a]\n" + JOB}, "refused"),
    (
        "deep-flow-nesting",
        {f"{WF}/deep.yml": "on: push\nx: " + "[" * 5000 + "]" * 5000 + "\n" + JOB},
        "nested more than 64 levels",
    ),
    (
        "deep-block-nesting",
        {f"{WF}/block.yml": "on: push\n" + "".join(" " * i + f"k{i}:\n" for i in range(200)) + JOB},
        "refused",
    ),
    ("hundred-thousand-nodes", {f"{WF}/wide.yml": many_items(110_000)}, "more than 100000 nodes"),
    (
        "python-object-tag",
        {f"{WF}/rce.yml": 'on: push\nx: !!python/object/apply:os.system ["touch /tmp/pwned"]\n' + JOB},
        "is not supported",
    ),
    ("custom-tag", {f"{WF}/tag.yml": "on: push\nx: !Ref bucket\n" + JOB}, "is not supported"),
    ("binary-tag", {f"{WF}/bin.yml": "on: push\nx: !!binary aGVsbG8=\n" + JOB}, "is not supported"),
    ("duplicate-key", {f"{WF}/dup.yml": "on: push\non: pull_request\n" + JOB}, "appears twice"),
    ("many-documents", {f"{WF}/docs.yml": ("---\non: push\n" + JOB) * 50}, "invalid YAML"),
    (
        "huge-scalar",
        {f"{WF}/huge.yml": "on: push\nx: '" + "A" * (600 * 1024) + "'\n" + JOB},
        "larger than 512 KiB",
    ),
    (
        "all-files-over-4-mib",
        {f"{WF}/w{i}.yml": CI_YML + "#" + "x" * (470 * 1024) + "\n" for i in range(9)},
        "add up to more than 4096 KiB",
    ),
    (
        "png-named-yml",
        {f"{WF}/img.yml": b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(range(256))},
        "not UTF-8",
    ),
    ("nul-in-utf8", {f"{WF}/nul.yml": b"on: push\n\x00\n" + JOB.encode()}, "is binary"),
    (
        "invalid-utf8",
        {f"{WF}/latin.yml": "on: push\n# caf\xe9\n".encode("latin-1") + JOB.encode()},
        "not UTF-8",
    ),
    ("utf16-with-bom", {f"{WF}/u16.yml": ("on: push\n" + JOB).encode("utf-16")}, "not UTF-8"),
    ("newline-in-file-name", {f"{WF}/ci\n.yml": CI_YML}, "does not give a usable name"),
    ("escape-in-file-name", {f"{WF}/ci\x1b[31m.yml": CI_YML}, "does not give a usable name"),
    ("only-a-suffix", {f"{WF}/.yml": CI_YML}, "does not give a usable name"),
    ("not-a-map", {f"{WF}/list.yml": "- on: push\n- jobs: {}\n"}, "top level must be a map"),
    ("empty-file", {f"{WF}/empty.yml": ""}, "the file is empty"),
    ("jobs-missing", {f"{WF}/nojobs.yml": "on: push\n"}, "`jobs` must be a map"),
]


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


@pytest.fixture(scope="module")
def rss_at_start() -> float:
    return peak_rss_mib()


@pytest.mark.parametrize(("files", "fragment"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
async def test_a_hostile_workflow_file_is_refused_with_400_naming_it(
    hostile: Hostile, rss_at_start: float, files: dict[str, str | bytes], fragment: str
):
    name = "wf" + secrets.token_hex(4)
    git = hostile.knot.create_repo(hostile.alice.did, name)
    sha = git.commit(files)
    await hostile.spindle.register(knot=hostile.knot.host, did=hostile.alice.did, name=name)
    before = await hostile.snapshot()

    response = await hostile.spindle.trigger(hostile.repo.body(repoName=name, ref=sha), by=hostile.alice)

    body = assert_xrpc_error(response, 400, "InvalidRequest")
    assert fragment in body["message"], body
    assert body["message"].startswith(("workflow .github/workflows/", "the workflow files", "workflows ")), (
        body
    )
    assert (await hostile.snapshot())[:2] == before[:2], "nothing is recorded"
    assert not Path("/tmp/pwned").exists()


async def test_hostile_files_did_not_blow_up_memory(rss_at_start: float):
    # Runs after the cases above (file order): the service shares this process, so its peak
    # resident size would show any expansion; 300 MiB is far below what a bomb would take.
    assert peak_rss_mib() - rss_at_start < 300, (rss_at_start, peak_rss_mib())
