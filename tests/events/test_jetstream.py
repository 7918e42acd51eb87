"""Self-service: Tangled's records on a (fake) Jetstream decide which repos are served, with no
`spindle repo add`; pushes from the (test) knot then run them."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
from sqlalchemy import func, select

from app.jetstream import consumer as jetstream_consumer
from app.jetstream.models import JetstreamCursor, SpindleMember
from app.repos import service as repos_service
from app.repos.models import Repo
from app.runs.models import Pipeline
from app.xrpc.errors import Forbidden
from tests.conftest import OWNER_DID
from tests.events.conftest import EventKnot, Spindle, eventually, minted
from tests.events.test_ref_update import FILTERED_WORKFLOWS
from tests.support.jetstream import FakeJetstream, FakePds, new_tid
from tests.support.keys import SigningKey
from tests.support.knot import GitRepo
from tests.support.knot_events import ref_update_event
from tests.support.plc import FakePlc
from tests.support.servers import ServerThread, free_port

MEMBER = "sh.tangled.spindle.member"
REPO = "sh.tangled.repo"
COLLABORATOR = "sh.tangled.repo.collaborator"
PULL = "sh.tangled.repo.pull"
MEMBER_DID = "did:plc:memberaaaaaaaaaaaaaaaaaa"
COLLAB_DID = "did:plc:collabaaaaaaaaaaaaaaaaaa"
STRANGER_DID = "did:plc:strangeraaaaaaaaaaaaaaaa"
CREATED = "2026-12-05T02:00:00.000Z"


@pytest.fixture(autouse=True)
def fast_jetstream_reconnects(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(jetstream_consumer, "BACKOFF_START", 0.05)
    monkeypatch.setattr(jetstream_consumer, "BACKOFF_MAX", 0.5)


@pytest.fixture
def jetstream() -> Iterator[FakeJetstream]:
    fake = FakeJetstream()
    with ServerThread(fake.app) as server:
        fake.url = f"ws://{server.host}/subscribe"  # type: ignore[attr-defined]
        yield fake
        fake.drop()


@pytest.fixture
def pds(plc: FakePlc) -> Iterator[FakePds]:
    """A PDS holding the owner's and the member's records, as their DID documents say."""
    fake = FakePds()
    with ServerThread(fake.app) as server:
        for did in (OWNER_DID, MEMBER_DID, STRANGER_DID):
            plc.register(SigningKey.generate(), did=did, pds=server.url)
        yield fake


class Launcher:
    """`async with launcher() as spindle`: the spindle following the fake Jetstream, on the same
    port and database each time (so a second one is a restart); `hostname` is known beforehand."""

    def __init__(self, make_spindle: Callable[..., Any], jetstream_url: str) -> None:
        self.make_spindle = make_spindle
        self.jetstream_url = jetstream_url
        self.hostname = f"127.0.0.1:{free_port()}"

    @asynccontextmanager
    async def __call__(self) -> AsyncIterator[Spindle]:
        async with self.make_spindle(jetstream_url=self.jetstream_url, hostname=self.hostname) as spindle:
            yield spindle


@pytest.fixture
def start(make_spindle: Callable[..., Any], jetstream: FakeJetstream, pds: FakePds) -> Launcher:
    return Launcher(make_spindle, jetstream.url)  # type: ignore[attr-defined]


def member_record(spindle: Spindle, subject: str = MEMBER_DID) -> dict[str, Any]:
    return {"subject": subject, "instance": spindle.settings.hostname, "createdAt": CREATED}


def repo_record(knot: str, spindle: str | None, name: str = "filters") -> dict[str, Any]:
    record = {"name": name, "knot": knot, "createdAt": CREATED}
    if spindle is not None:
        record["spindle"] = spindle
    return record


async def served(spindle: Spindle) -> list[Repo]:
    async with spindle.sessions() as session:
        return list(await session.scalars(select(Repo).order_by(Repo.id)))


async def applied(spindle: Spindle, time_us: int) -> None:
    """Wait until the spindle has handled the Jetstream event of `time_us` (and all before it)."""

    async def past() -> bool:
        seen = spindle.ctx.jetstream.link.time_us
        return seen is not None and seen >= time_us

    await eventually(past, what=f"Jetstream event {time_us} to be handled")


async def _stored_cursor(spindle: Spindle) -> int | None:
    async with spindle.sessions() as session:
        row = await session.get(JetstreamCursor, "jetstream")
        return row.time_us if row else None


async def serve_member_repo(spindle: Spindle, jetstream: FakeJetstream, knot: str) -> tuple[str, str]:
    """The member added and their repo picking this spindle: (member rkey, repo rkey)."""
    member_rkey, repo_rkey = new_tid(), new_tid()
    jetstream.commit(OWNER_DID, MEMBER, member_rkey, member_record(spindle))
    jetstream.commit(MEMBER_DID, REPO, repo_rkey, repo_record(knot, spindle.settings.hostname))

    async def found() -> list[Repo]:
        return await served(spindle)

    repos = await eventually(found, what="the member's repo to be served")
    assert [(r.knot, r.did, r.name, r.rkey, r.source) for r in repos] == [
        (knot, MEMBER_DID, "filters", repo_rkey, "jetstream")
    ]
    return member_rkey, repo_rkey


@pytest.fixture
def member_git(event_knot: EventKnot) -> tuple[EventKnot, GitRepo, str]:
    """The member's repo on the test knot, with workflows filtered by branch, tag and path."""
    git = event_knot.knot.create_repo(MEMBER_DID, "filters")
    return event_knot, git, git.commit(FILTERED_WORKFLOWS)


async def test_a_members_repo_that_picks_this_spindle_is_served_and_a_push_runs_its_matching_workflows(
    start: Launcher, jetstream: FakeJetstream, member_git: tuple[EventKnot, GitRepo, str]
):
    event_knot, git, sha = member_git
    knot = event_knot.host
    async with start() as spindle:
        await serve_member_repo(spindle, jetstream, knot)
        await spindle.connected(knot)  # its knot is followed with no operator step

        rkey = event_knot.stream.emit(ref_update_event(git, sha), nsid="sh.tangled.git.refUpdate")

        pipeline = await spindle.recorded(knot, rkey)
        assert sorted(run.name for run in pipeline.workflow_runs) == ["docs", "main_only"]
        assert (pipeline.repo_did, pipeline.repo_name) == (MEMBER_DID, "filters")
        # Jetstream was asked for Tangled's collections only.
        assert set(jetstream.connections[0].collections) == {MEMBER, REPO, COLLABORATOR, PULL}


async def test_a_repo_of_someone_who_is_not_a_member_is_ignored(
    start: Launcher, jetstream: FakeJetstream, event_knot: EventKnot
):
    async with start() as spindle:
        last = jetstream.commit(
            STRANGER_DID, REPO, new_tid(), repo_record(event_knot.host, spindle.settings.hostname)
        )
        await applied(spindle, last)
        assert await served(spindle) == []


async def test_a_member_record_for_another_spindle_or_not_by_the_owner_adds_no_member(
    start: Launcher, jetstream: FakeJetstream, event_knot: EventKnot
):
    async with start() as spindle:
        jetstream.commit(
            OWNER_DID, MEMBER, new_tid(), {**member_record(spindle), "instance": "other.example"}
        )
        jetstream.commit(STRANGER_DID, MEMBER, new_tid(), member_record(spindle))
        last = jetstream.commit(
            MEMBER_DID, REPO, new_tid(), repo_record(event_knot.host, spindle.settings.hostname)
        )
        await applied(spindle, last)
        assert await served(spindle) == []


async def test_removing_the_member_stops_serving_their_repos(
    start: Launcher, jetstream: FakeJetstream, member_git: tuple[EventKnot, GitRepo, str]
):
    event_knot, git, sha = member_git
    async with start() as spindle:
        member_rkey, _ = await serve_member_repo(spindle, jetstream, event_knot.host)

        last = jetstream.delete(OWNER_DID, MEMBER, member_rkey)

        await applied(spindle, last)
        assert await served(spindle) == []
        rkey = event_knot.stream.emit(ref_update_event(git, sha), nsid="sh.tangled.git.refUpdate")

        async def gone() -> bool:
            # Its knot is no longer followed (no other repo there), or the push was ignored.
            link = spindle.link(event_knot.host)
            return link is None or not link.connected or await spindle.cursor(event_knot.host) == minted(rkey)

        await eventually(gone, what="the knot to stop counting for the removed member")
        assert await spindle.pipelines() == []


@pytest.mark.parametrize("how", ["another spindle", "no spindle", "record deleted"])
async def test_a_repo_that_stops_picking_this_spindle_is_no_longer_served(
    start: Launcher, jetstream: FakeJetstream, event_knot: EventKnot, how: str
):
    async with start() as spindle:
        _, repo_rkey = await serve_member_repo(spindle, jetstream, event_knot.host)

        if how == "record deleted":
            last = jetstream.delete(MEMBER_DID, REPO, repo_rkey)
        else:
            spindle_name = "other.example" if how == "another spindle" else None
            record = repo_record(event_knot.host, spindle_name)
            last = jetstream.commit(MEMBER_DID, REPO, repo_rkey, record, operation="update")

        await applied(spindle, last)
        assert await served(spindle) == []


async def test_a_collaborator_record_lets_its_subject_trigger_and_its_deletion_takes_that_back(
    start: Launcher, jetstream: FakeJetstream, event_knot: EventKnot
):
    async with start() as spindle:
        _, repo_rkey = await serve_member_repo(spindle, jetstream, event_knot.host)
        uri = f"at://{MEMBER_DID}/{REPO}/{repo_rkey}"
        collab_rkey = new_tid()

        jetstream.commit(
            MEMBER_DID, COLLABORATOR, collab_rkey, {"subject": COLLAB_DID, "repo": uri, "createdAt": CREATED}
        )
        # Someone else's record granting rights on the member's repo counts for nothing.
        last = jetstream.commit(
            STRANGER_DID,
            COLLABORATOR,
            new_tid(),
            {"subject": STRANGER_DID, "repo": uri, "createdAt": CREATED},
        )
        await applied(spindle, last)
        assert await _may_trigger(spindle, event_knot.host, COLLAB_DID)
        assert not await _may_trigger(spindle, event_knot.host, STRANGER_DID)

        last = jetstream.delete(MEMBER_DID, COLLABORATOR, collab_rkey)
        await applied(spindle, last)
        assert not await _may_trigger(spindle, event_knot.host, COLLAB_DID)
        assert await _may_trigger(spindle, event_knot.host, MEMBER_DID)


async def _may_trigger(spindle: Spindle, knot: str, actor: str) -> bool:
    async with spindle.sessions() as session:
        try:
            await repos_service.authorize(
                session=session,
                spindle_owner=OWNER_DID,
                actor=actor,
                knot=knot,
                did=MEMBER_DID,
                name="filters",
            )
        except Forbidden:
            return False
    return True


def pull_record(uri: str, *, source: dict[str, Any] | None, target_branch: str = "main") -> dict[str, Any]:
    record: dict[str, Any] = {
        "title": "a change",
        "target": {"repo": uri, "branch": target_branch},
        "rounds": [],
        "createdAt": CREATED,
    }
    if source is not None:
        record["source"] = source
    return record


async def test_a_collaborators_pull_request_runs_the_workflows_whose_pull_request_filters_match(
    start: Launcher, jetstream: FakeJetstream, member_git: tuple[EventKnot, GitRepo, str]
):
    event_knot, git, _ = member_git
    feature = git.commit({"feature.txt": "work\n"}, message="feature work")
    git.branch("feature", feature)
    async with start() as spindle:
        _, repo_rkey = await serve_member_repo(spindle, jetstream, event_knot.host)
        uri = f"at://{MEMBER_DID}/{REPO}/{repo_rkey}"
        jetstream.commit(
            MEMBER_DID, COLLABORATOR, new_tid(), {"subject": COLLAB_DID, "repo": uri, "createdAt": CREATED}
        )
        pull_rkey = new_tid()

        first = jetstream.commit(COLLAB_DID, PULL, pull_rkey, pull_record(uri, source={"branch": "feature"}))
        await applied(spindle, first)
        # Dropped, Jetstream replays from before the cursor: the same event again starts nothing more.
        link = spindle.ctx.jetstream.link
        events_before = link.events
        jetstream.drop()

        async def replayed() -> bool:
            return link.connects >= 2 and link.events > events_before and (link.time_us or 0) >= first

        await eventually(replayed, what="the pull event to be replayed")

        async def recorded() -> list[Pipeline]:
            return await spindle.pipelines()

        [pipeline] = await eventually(recorded, what="the pull request's pipeline")
        assert [run.name for run in pipeline.workflow_runs] == ["pr_main"]
        assert (pipeline.trigger_kind, pipeline.sha, pipeline.repo_did) == (
            "pull_request",
            feature,
            MEMBER_DID,
        )
        assert pipeline.trigger["pullRequest"] == {
            "sourceBranch": "feature",
            "targetBranch": "main",
            "sourceSha": feature,
            "action": "opened",
            "pull": f"at://{COLLAB_DID}/{PULL}/{pull_rkey}",
        }
        assert "sourceRepo" not in pipeline.trigger  # the code comes from the repo itself
        status = await spindle.finished(event_knot.host, pipeline.rkey, "pr_main")
        assert status["status"] == "success"
        assert len(await spindle.pipelines()) == 1


async def test_pull_requests_without_rights_from_forks_or_without_a_branch_run_nothing(
    start: Launcher, jetstream: FakeJetstream, member_git: tuple[EventKnot, GitRepo, str]
):
    event_knot, git, _ = member_git
    git.branch("feature")
    async with start() as spindle:
        _, repo_rkey = await serve_member_repo(spindle, jetstream, event_knot.host)
        uri = f"at://{MEMBER_DID}/{REPO}/{repo_rkey}"

        jetstream.commit(STRANGER_DID, PULL, new_tid(), pull_record(uri, source={"branch": "feature"}))
        fork = {"branch": "feature", "repo": "did:plc:forkaaaaaaaaaaaaaaaaaaaa"}
        jetstream.commit(MEMBER_DID, PULL, new_tid(), pull_record(uri, source=fork))
        last = jetstream.commit(MEMBER_DID, PULL, new_tid(), pull_record(uri, source=None))

        await applied(spindle, last)
        assert await spindle.pipelines() == []


async def test_records_that_existed_before_the_first_start_are_read_from_the_pdses(
    start: Launcher, jetstream: FakeJetstream, pds: FakePds, event_knot: EventKnot
):
    hostname, repo_rkey = start.hostname, new_tid()
    pds.put(OWNER_DID, MEMBER, new_tid(), {"subject": MEMBER_DID, "instance": hostname, "createdAt": CREATED})
    pds.put(MEMBER_DID, REPO, repo_rkey, repo_record(event_knot.host, hostname))
    pds.put(MEMBER_DID, REPO, new_tid(), repo_record(event_knot.host, "other.example", name="elsewhere"))
    uri = f"at://{MEMBER_DID}/{REPO}/{repo_rkey}"
    pds.put(MEMBER_DID, COLLABORATOR, new_tid(), {"subject": COLLAB_DID, "repo": uri, "createdAt": CREATED})

    async with start() as spindle:

        async def found() -> list[Repo]:
            repos = await served(spindle)
            return repos if repos and repos[0].collaborators else []

        repos = await eventually(found, what="the backfilled repo with its collaborator")
        assert [(r.name, r.rkey, r.source, r.collaborators) for r in repos] == [
            ("filters", repo_rkey, "jetstream", [COLLAB_DID])
        ]
        await spindle.connected(event_knot.host)


async def test_a_backfill_that_could_not_read_a_pds_is_done_again_at_the_next_start(
    start: Launcher, jetstream: FakeJetstream, pds: FakePds, plc: FakePlc, event_knot: EventKnot
):
    hostname, repo_rkey = start.hostname, new_tid()
    pds.put(OWNER_DID, MEMBER, new_tid(), {"subject": MEMBER_DID, "instance": hostname, "createdAt": CREATED})
    pds.put(MEMBER_DID, REPO, repo_rkey, repo_record(event_knot.host, hostname))
    member_document = plc.documents.pop(MEMBER_DID)  # the member's identity cannot be resolved

    async with start() as spindle:

        async def given_up() -> bool:
            return spindle.ctx.jetstream.link.backfills == 1 and not spindle.ctx.jetstream._backfills

        await eventually(given_up, what="the backfill to give up on the member")
        assert await served(spindle) == []

    plc.documents[MEMBER_DID] = member_document
    async with start() as spindle:

        async def found() -> list[Repo]:
            return await served(spindle)

        [repo] = await eventually(found, what="the member's repo, backfilled at the second start")
        assert repo.rkey == repo_rkey


async def test_a_restart_resumes_jetstream_from_its_cursor_without_missing_or_repeating(
    start: Launcher, jetstream: FakeJetstream, pds: FakePds, event_knot: EventKnot
):
    async with start() as spindle:
        _, repo_rkey = await serve_member_repo(spindle, jetstream, event_knot.host)
        seen = await _stored_cursor(spindle)
    backfill_requests = len(pds.requests)
    uri = f"at://{MEMBER_DID}/{REPO}/{repo_rkey}"
    while_down = jetstream.commit(
        MEMBER_DID, COLLABORATOR, new_tid(), {"subject": COLLAB_DID, "repo": uri, "createdAt": CREATED}
    )

    async with start() as spindle:
        await applied(spindle, while_down)
        resumed = jetstream.connections[-1]
        assert seen is not None and resumed.cursor is not None and resumed.cursor <= seen
        assert await _may_trigger(spindle, event_knot.host, COLLAB_DID)
        async with spindle.sessions() as session:
            assert await session.scalar(select(func.count()).select_from(SpindleMember)) == 1
            assert await session.scalar(select(func.count()).select_from(Repo)) == 1
    assert len(pds.requests) == backfill_requests  # a restart reads no PDS again


async def test_a_dead_jetstream_does_not_keep_the_api_from_serving(make_spindle: Callable[..., Any]):
    async with make_spindle(jetstream_url=f"ws://127.0.0.1:{free_port()}/subscribe") as spindle:
        assert (await spindle.client.get("/healthz")).status_code == 200

        async def failing() -> str | None:
            return spindle.ctx.jetstream.link.last_error

        await eventually(failing, what="the Jetstream connection to fail")
        assert not spindle.ctx.jetstream.link.connected
        assert (await spindle.client.get("/xrpc/sh.tangled.owner")).json() == {"owner": OWNER_DID}
