"""service_auth() through the real app: a route guarded by it gets the caller's DID, or a 401."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends

from app.auth.deps import service_auth
from tests.support.app import running_app
from tests.support.keys import SigningKey, mint

NSID = "com.example.spindle.whoami"
ActorDep = Annotated[str, Depends(service_auth(NSID))]


async def whoami(actor: ActorDep) -> dict[str, str]:
    return {"actor": actor}


async def test_a_route_guarded_by_service_auth_receives_the_verified_issuer(make_settings, sqlite_url, plc):
    settings = make_settings(database_url=sqlite_url)
    key = SigningKey.generate("ES256K")
    did = plc.register(key)
    async with running_app(settings) as (app, client):
        app.add_api_route(f"/xrpc/{NSID}", whoami, methods=["GET"])
        token = mint(key, iss=did, aud=f"{settings.did}#tangled_spindle", lxm=NSID)
        response = await client.get(f"/xrpc/{NSID}", headers={"Authorization": f"Bearer {token}"})
        replayed = await client.get(f"/xrpc/{NSID}", headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 200
    assert response.json() == {"actor": did}
    assert replayed.status_code == 401
    assert replayed.json()["error"] == "BadJwt"


async def test_a_route_guarded_by_service_auth_answers_401_with_www_authenticate(
    make_settings, sqlite_url, plc
):
    settings = make_settings(database_url=sqlite_url)
    key = SigningKey.generate("ES256")
    did = plc.register(key)
    async with running_app(settings) as (app, client):
        app.add_api_route(f"/xrpc/{NSID}", whoami, methods=["GET"])
        missing = await client.get(f"/xrpc/{NSID}")
        wrong_method = await client.get(
            f"/xrpc/{NSID}",
            headers={
                "Authorization": "Bearer " + mint(key, iss=did, aud=settings.did, lxm="com.example.other")
            },
        )
    assert missing.status_code == 401
    assert missing.headers["www-authenticate"] == "Bearer"
    assert missing.json()["error"] == "AuthenticationRequired"
    assert wrong_method.status_code == 401
    assert wrong_method.headers["www-authenticate"] == "Bearer"
    assert wrong_method.json() == {
        "error": "BadJwtLexiconMethod",
        "message": f"the JWT lxm 'com.example.other' is not {NSID}",
    }


async def test_the_trigger_route_answers_401_before_looking_at_the_body(make_settings, sqlite_url):
    async with running_app(make_settings(database_url=sqlite_url)) as (_, client):
        response = await client.post(
            "/xrpc/com.publicdomainrelay.temp.tangled.spindle.trigger",
            content=b"{not json",
            headers={"Content-Type": "application/json", "Authorization": "Bearer a.b.c"},
        )
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == "Bearer"
    assert response.json()["error"] == "BadJwt"
