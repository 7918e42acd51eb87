"""Backfill reads records from the account's PDS: found through its DID document, paged, and only
at public addresses outside dev mode."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from app.identity.pds import PdsError, PdsRecordReader
from tests.support.jetstream import FakePds
from tests.support.keys import SigningKey
from tests.support.servers import ServerThread

REPO = "sh.tangled.repo"


@pytest.fixture
def pds() -> Iterator[tuple[FakePds, str]]:
    fake = FakePds()
    with ServerThread(fake.app) as server:
        yield fake, server.url


async def test_pages_through_every_record_of_a_collection(plc, make_resolver, pds):
    fake, url = pds
    did = plc.register(SigningKey.generate(), pds=url)
    for i in range(250):
        fake.put(did, REPO, f"3lb{i:06d}", {"name": f"r{i}"})
    fake.put(did, "sh.tangled.repo.collaborator", "3lbother", {"subject": did})

    async with httpx.AsyncClient() as http:
        reader = PdsRecordReader(http=http, resolver=make_resolver(), dev=True)
        records = [r async for r in reader.list_records(did, REPO)]

    assert [r.value["name"] for r in records] == [f"r{i}" for i in range(250)]
    assert records[0].uri == f"at://{did}/{REPO}/3lb000000"
    assert len(fake.requests) == 3  # pages of 100


async def test_refuses_a_pds_at_a_private_address_outside_dev_mode(plc, make_resolver, pds):
    fake, url = pds
    did = plc.register(SigningKey.generate(), pds=url.replace("http://", "https://"))

    async with httpx.AsyncClient() as http:
        reader = PdsRecordReader(http=http, resolver=make_resolver(), dev=False)
        with pytest.raises(PdsError, match="not a public address"):
            [r async for r in reader.list_records(did, REPO)]
    assert fake.requests == []


async def test_refuses_a_plain_http_pds_outside_dev_mode(plc, make_resolver, pds):
    fake, url = pds
    did = plc.register(SigningKey.generate(), pds=url)

    async with httpx.AsyncClient() as http:
        reader = PdsRecordReader(http=http, resolver=make_resolver(), dev=False)
        with pytest.raises(PdsError, match="not an https URL"):
            [r async for r in reader.list_records(did, REPO)]
    assert fake.requests == []


async def test_a_pds_answering_garbage_is_an_error_naming_the_method(plc, make_resolver):
    async def garbage(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, text="<html>nope")

    did = plc.register(SigningKey.generate(), pds="http://pds.test")
    async with httpx.AsyncClient(transport=httpx.MockTransport(garbage)) as http:
        reader = PdsRecordReader(http=http, resolver=make_resolver(), dev=True)
        with pytest.raises(PdsError, match="listRecords answered with something that is not JSON"):
            [r async for r in reader.list_records(did, REPO)]
