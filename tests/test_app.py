"""The service's own identity, health and XRPC error plumbing."""

from __future__ import annotations

from tests.conftest import OWNER_DID
from tests.support.app import running_app


async def test_serves_its_did_web_document_with_the_tangled_spindle_service(make_settings, sqlite_url):
    settings = make_settings(hostname="spindle.example.com:8443", dev=False, database_url=sqlite_url)
    async with running_app(settings) as (_, client):
        response = await client.get("/.well-known/did.json")
    assert response.status_code == 200
    doc = response.json()
    assert doc["id"] == "did:web:spindle.example.com%3A8443"
    assert doc["service"] == [
        {
            "id": "#tangled_spindle",
            "type": "TangledSpindle",
            "serviceEndpoint": "https://spindle.example.com:8443",
        }
    ]


async def test_answers_owner_for_tangled_verification(make_settings, sqlite_url):
    async with running_app(make_settings(database_url=sqlite_url)) as (_, client):
        response = await client.get("/xrpc/sh.tangled.owner")
    assert response.json() == {"owner": OWNER_DID}


async def test_healthz_checks_the_database(make_settings, sqlite_url):
    async with running_app(make_settings(database_url=sqlite_url)) as (_, client):
        response = await client.get("/healthz")
    assert response.json() == {"status": "ok"}


async def test_unknown_xrpc_method_is_method_not_implemented(make_settings, sqlite_url):
    async with running_app(make_settings(database_url=sqlite_url)) as (_, client):
        response = await client.get("/xrpc/com.example.nothing")
    assert response.status_code == 501
    assert response.json()["error"] == "MethodNotImplemented"
    assert "com.example.nothing" in response.json()["message"]


async def test_wrong_http_method_is_a_400_invalid_request(make_settings, sqlite_url):
    async with running_app(make_settings(database_url=sqlite_url)) as (_, client):
        response = await client.post("/xrpc/sh.tangled.owner", json={})
    assert response.status_code == 400
    assert response.json()["error"] == "InvalidRequest"
