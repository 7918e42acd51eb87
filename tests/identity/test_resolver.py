"""DID resolution over real HTTP: the local PLC directory and did:web hosts on loopback."""

from __future__ import annotations

import asyncio
import ipaddress
import json

import httpx
import pytest

from app.identity.exceptions import (
    DidNotFound,
    DirectoryUnavailable,
    ForbiddenHost,
    InvalidDidDocument,
    ResolutionError,
    UnsupportedDid,
)
from app.identity.keys import ES256, ES256K, P256Key, Secp256k1Key
from tests.support.clock import ManualClock
from tests.support.didweb import DidWebHost
from tests.support.keys import SigningKey, did_document
from tests.support.servers import free_port
from tests.support.tls import self_signed, trusting


@pytest.fixture
def down(plc):
    """Take the shared PLC directory down for one test."""
    plc.down = True
    yield plc
    plc.down = False


# did:plc


async def test_resolves_a_did_plc_to_its_document_with_the_atproto_key_parsed(plc, make_resolver):
    key = SigningKey.generate("ES256K")
    did = plc.register(key)
    document = await make_resolver().resolve(did)
    assert document.did == did
    assert document.raw["id"] == did
    assert isinstance(document.key, Secp256k1Key)
    assert document.key.did_key == key.did_key
    assert document.key.verify(b"hello", key.sign(b"hello"))


async def test_a_second_lookup_is_served_from_the_cache(plc, make_resolver):
    did = plc.register(SigningKey.generate())
    resolver = make_resolver()
    first = await resolver.resolve(did)
    second = await resolver.resolve(did)
    assert second is first
    assert plc.requests[did] == 1


async def test_a_document_older_than_the_fresh_ttl_is_fetched_again(plc, make_resolver):
    clock = ManualClock()
    did = plc.register(SigningKey.generate())
    resolver = make_resolver(clock=clock, fresh_ttl=60)
    await resolver.resolve(did)
    clock.advance(59)
    await resolver.resolve(did)
    assert plc.requests[did] == 1
    clock.advance(2)
    await resolver.resolve(did)
    assert plc.requests[did] == 2


async def test_concurrent_lookups_of_one_did_share_one_fetch(plc, make_resolver):
    did = plc.register(SigningKey.generate())
    resolver = make_resolver()
    documents = await asyncio.gather(*(resolver.resolve(did) for _ in range(20)))
    assert all(document is documents[0] for document in documents)
    assert plc.requests[did] == 1


async def test_concurrent_lookups_of_an_unknown_did_share_one_failure(plc, make_resolver):
    did = "did:plc:" + "u" * 24
    resolver = make_resolver()
    results = await asyncio.gather(*(resolver.resolve(did) for _ in range(5)), return_exceptions=True)
    assert all(isinstance(result, DidNotFound) for result in results)
    assert plc.requests[did] == 1


async def test_forced_refresh_is_allowed_first_then_once_per_ten_seconds(plc, make_resolver):
    clock = ManualClock()
    did = plc.register(SigningKey.generate())
    resolver = make_resolver(clock=clock)
    await resolver.resolve(did)
    await resolver.resolve(did, force_refresh=True)
    assert plc.requests[did] == 2, "the first forced refresh always fetches"
    clock.advance(9)
    await resolver.resolve(did, force_refresh=True)
    assert plc.requests[did] == 2, "a second one within 10 s is served from the cache"
    clock.advance(1.5)
    await resolver.resolve(did, force_refresh=True)
    assert plc.requests[did] == 3


async def test_forced_refresh_picks_up_a_rotated_key(plc, make_resolver):
    did = plc.register(SigningKey.generate("ES256K"))
    resolver = make_resolver()
    old = await resolver.resolve(did)
    rotated = SigningKey.generate("ES256")
    plc.register(rotated, did=did)
    assert (await resolver.resolve(did)).key is old.key, "a fresh cache entry is not re-fetched"
    new = await resolver.resolve(did, force_refresh=True)
    assert isinstance(new.key, P256Key)
    assert new.key.did_key == rotated.did_key


async def test_serves_the_cached_document_while_the_directory_is_down(plc, make_resolver, down):
    clock = ManualClock()
    did = plc.register(SigningKey.generate())
    resolver = make_resolver(clock=clock, fresh_ttl=60)
    plc.down = False
    cached = await resolver.resolve(did)
    plc.down = True
    clock.advance(3600)
    assert await resolver.resolve(did) is cached
    assert plc.requests[did] == 2, "the stale document was refreshed first, and the refresh failed"


async def test_a_down_directory_is_retried_after_a_pause_not_on_every_lookup(plc, make_resolver, down):
    clock = ManualClock()
    did = plc.register(SigningKey.generate())
    resolver = make_resolver(clock=clock, fresh_ttl=60, retry_after=30)
    plc.down = False
    await resolver.resolve(did)
    plc.down = True
    clock.advance(61)
    await resolver.resolve(did)
    await resolver.resolve(did)
    assert plc.requests[did] == 2
    clock.advance(31)
    await resolver.resolve(did)
    assert plc.requests[did] == 3


async def test_a_cached_document_older_than_max_stale_is_not_served(plc, make_resolver, down):
    clock = ManualClock()
    did = plc.register(SigningKey.generate())
    resolver = make_resolver(clock=clock, fresh_ttl=60, max_stale=600)
    plc.down = False
    await resolver.resolve(did)
    plc.down = True
    clock.advance(601)
    with pytest.raises(DirectoryUnavailable, match="HTTP 503"):
        await resolver.resolve(did)


async def test_directory_down_and_nothing_cached_is_unavailable(plc, make_resolver, down):
    did = plc.register(SigningKey.generate())
    with pytest.raises(DirectoryUnavailable) as info:
        await make_resolver().resolve(did)
    assert info.value.did == did
    assert "PLC directory answered HTTP 503" in str(info.value)


async def test_an_unregistered_did_plc_is_not_found(make_resolver):
    with pytest.raises(DidNotFound, match="HTTP 404"):
        await make_resolver().resolve("did:plc:" + "n" * 24)


async def test_a_did_that_disappears_is_dropped_from_the_cache(plc, make_resolver):
    clock = ManualClock()
    did = plc.register(SigningKey.generate())
    resolver = make_resolver(clock=clock, fresh_ttl=60)
    await resolver.resolve(did)
    del plc.documents[did]
    clock.advance(61)
    with pytest.raises(DidNotFound):
        await resolver.resolve(did)
    plc.register(SigningKey.generate(), did=did)
    clock.advance(61)  # past the failure's time in the negative cache
    await resolver.resolve(did)
    assert plc.requests[did] == 3


async def test_an_unreachable_directory_is_unavailable(http):
    from app.identity.resolver import DidResolver
    from tests.support.servers import free_port

    resolver = DidResolver(http=http, plc_url=f"http://127.0.0.1:{free_port()}", dev=True)
    with pytest.raises(DirectoryUnavailable, match="cannot connect"):
        await resolver.resolve("did:plc:" + "x" * 24)


async def test_the_cache_holds_at_most_max_entries_evicting_the_least_recently_used(plc, make_resolver):
    dids = [plc.register(SigningKey.generate()) for _ in range(3)]
    resolver = make_resolver(max_entries=2)
    await resolver.resolve(dids[0])
    await resolver.resolve(dids[1])
    await resolver.resolve(dids[0])  # now dids[1] is the least recently used
    await resolver.resolve(dids[2])
    await resolver.resolve(dids[0])
    assert plc.requests[dids[0]] == 1
    await resolver.resolve(dids[1])
    assert plc.requests[dids[1]] == 2


@pytest.mark.parametrize(
    "did",
    [
        "did:plc:abc/../../admin",
        "did:plc:ABCDEFGHIJKLMNOPQRSTUVWX",
        "did:plc:",
        "did:plc:abc?x=1",
    ],
)
async def test_rejects_a_malformed_did_plc_without_asking_the_directory(plc, make_resolver, did):
    with pytest.raises(UnsupportedDid, match="not a valid did:plc"):
        await make_resolver().resolve(did)
    assert plc.requests[did] == 0


@pytest.mark.parametrize(
    "did", ["did:key:zQ3shokFTS3brHcDQrn82RUDfCZESWL1ZdCEJwekUDPQiYBme", "did:example:1"]
)
async def test_rejects_did_methods_other_than_plc_and_web(make_resolver, did):
    with pytest.raises(UnsupportedDid, match="only did:plc and did:web"):
        await make_resolver().resolve(did)


async def test_document_answered_for_another_did_is_rejected(plc, make_resolver):
    did = plc.register(SigningKey.generate())
    plc.documents[did] = did_document("did:plc:" + "o" * 24, SigningKey.generate())
    with pytest.raises(InvalidDidDocument, match="is not the DID that was resolved"):
        await make_resolver().resolve(did)


# Keys


@pytest.mark.parametrize("alg", [ES256K, ES256])
async def test_reads_legacy_ecdsa_verification_key_types(plc, make_resolver, alg):
    key = SigningKey.generate(alg)
    did = plc.register(key, legacy=True)
    document = await make_resolver().resolve(did)
    assert document.raw["verificationMethod"][0]["type"].startswith("EcdsaSecp256")
    assert document.key is not None and document.key.alg == alg
    assert document.key.did_key == key.did_key
    assert document.key.verify(b"data", key.sign(b"data"))


async def test_finds_the_atproto_method_by_its_relative_id_too(plc, make_resolver):
    key = SigningKey.generate("ES256")
    did = plc.register(key)
    plc.documents[did]["verificationMethod"] = [
        {"id": "#other", "type": "Multikey", "publicKeyMultibase": SigningKey.generate().multikey},
        {"id": "#atproto", "type": "Multikey", "controller": did, "publicKeyMultibase": key.multikey},
    ]
    document = await make_resolver().resolve(did)
    assert document.key is not None and document.key.did_key == key.did_key


async def test_a_document_without_an_atproto_key_resolves_but_says_why_it_has_no_key(plc, make_resolver):
    did = plc.register(SigningKey.generate())
    plc.documents[did]["verificationMethod"] = [
        {"id": f"{did}#atproto", "type": "JsonWebKey2020", "publicKeyJwk": {"kty": "OKP"}}
    ]
    document = await make_resolver().resolve(did)
    assert document.key is None
    assert document.key_problem == "the #atproto verification method has unsupported type 'JsonWebKey2020'"


async def test_a_garbled_atproto_key_resolves_without_a_key(plc, make_resolver):
    did = plc.register(SigningKey.generate())
    plc.documents[did]["verificationMethod"][0]["publicKeyMultibase"] = "zQ3shNotAKey"
    document = await make_resolver().resolve(did)
    assert document.key is None
    assert "is not a valid Multikey key" in (document.key_problem or "")


# did:web


async def test_resolves_a_did_web_with_a_port_over_http_in_dev_mode(did_web_host, make_resolver):
    key = SigningKey.generate("ES256")
    did = did_web_host.serve(key)
    assert did == f"did:web:localhost%3A{did_web_host.port}"
    document = await make_resolver().resolve(did)
    assert document.key is not None and document.key.did_key == key.did_key
    [request] = did_web_host.requests
    assert request.url.path == "/.well-known/did.json"
    assert request.headers["host"] == f"localhost:{did_web_host.port}"
    assert request.headers["accept-encoding"] == "identity", "no compressed answers to inflate past the limit"


async def test_percent_encoded_port_separator_may_be_lower_case(did_web_host, make_resolver):
    did = did_web_host.serve(SigningKey.generate(), did=f"did:web:localhost%3a{did_web_host.port}")
    document = await make_resolver().resolve(did)
    assert document.did == did


async def test_rejects_a_did_web_with_a_path(did_web_host, make_resolver):
    with pytest.raises(UnsupportedDid, match="did:web with a path is not supported"):
        await make_resolver().resolve(f"did:web:localhost%3A{did_web_host.port}:user:alice")
    assert did_web_host.requests == []


@pytest.mark.parametrize(
    "did",
    [
        "did:web:localhost%2F..%2Fadmin",
        "did:web:exa%20mple.com",
        "did:web:-bad-.example",
        "did:web:a%3A1%3A2",
    ],
)
async def test_rejects_a_did_web_that_is_not_a_host_and_port(make_resolver, did):
    with pytest.raises(UnsupportedDid):
        await make_resolver().resolve(did)


async def test_rejects_a_did_web_document_whose_id_is_another_did(did_web_host, make_resolver):
    did_web_host.serve(SigningKey.generate(), did="did:web:evil.example")
    with pytest.raises(InvalidDidDocument, match="'did:web:evil.example' is not the DID"):
        await make_resolver().resolve(did_web_host.did)


async def test_rejects_a_document_larger_than_the_limit_by_its_content_length(did_web_host, make_resolver):
    did_web_host.serve(SigningKey.generate())
    did_web_host.document["padding"] = "x" * 70_000  # type: ignore[index]
    with pytest.raises(InvalidDidDocument, match="larger than 65536 bytes"):
        await make_resolver().resolve(did_web_host.did)


async def test_stops_reading_a_chunked_answer_that_grows_past_the_limit(did_web_host, make_resolver):
    did_web_host.body = b"[" + b"0," * 200_000 + b"0]"
    did_web_host.chunked = True
    with pytest.raises(InvalidDidDocument, match="larger than 4096 bytes"):
        await make_resolver(max_document_bytes=4096).resolve(did_web_host.did)


async def test_rejects_an_answer_that_is_not_json(did_web_host, make_resolver):
    did_web_host.body = b"<html>hello</html>"
    with pytest.raises(InvalidDidDocument, match="not JSON"):
        await make_resolver().resolve(did_web_host.did)


async def test_rejects_an_answer_that_is_json_but_not_an_object(did_web_host, make_resolver):
    did_web_host.body = json.dumps([did_web_host.did]).encode()
    with pytest.raises(InvalidDidDocument, match="not a JSON object"):
        await make_resolver().resolve(did_web_host.did)


async def test_does_not_follow_redirects(did_web_host, make_resolver):
    did_web_host.status = 302
    did_web_host.body = b""
    did_web_host.headers = {"Location": "http://169.254.169.254/latest/meta-data"}
    with pytest.raises(InvalidDidDocument, match="HTTP 302 \\(redirects are not followed\\)"):
        await make_resolver().resolve(did_web_host.did)
    assert len(did_web_host.requests) == 1


async def test_a_host_answering_5xx_is_unavailable(did_web_host, make_resolver):
    did_web_host.serve(SigningKey.generate())
    did_web_host.status = 502
    with pytest.raises(DirectoryUnavailable, match="HTTP 502"):
        await make_resolver().resolve(did_web_host.did)


async def test_a_host_that_does_not_answer_in_time_is_unavailable(did_web_host, make_resolver):
    did_web_host.serve(SigningKey.generate())
    did_web_host.delay = 3
    with pytest.raises(DirectoryUnavailable, match="no answer within 0.3 s"):
        await make_resolver(timeout=0.3).resolve(did_web_host.did)


# did:web outside dev mode: never fetch private addresses


async def test_refuses_did_web_localhost_outside_dev_mode(did_web_host, make_resolver):
    did_web_host.serve(SigningKey.generate())
    with pytest.raises(ForbiddenHost, match="not a public address"):
        await make_resolver(dev=False).resolve(did_web_host.did)
    assert did_web_host.requests == []


async def test_refuses_a_did_web_loopback_ip_literal_outside_dev_mode(did_web_host, make_resolver):
    did = did_web_host.serve(SigningKey.generate(), did=did_web_host.did_for("127.0.0.1"))
    with pytest.raises(ForbiddenHost, match="127.0.0.1 resolves to 127.0.0.1"):
        await make_resolver(dev=False).resolve(did)
    assert did_web_host.requests == []


@pytest.mark.parametrize(
    "addresses",
    [["10.0.0.7"], ["169.254.169.254"], ["93.184.215.14", "192.168.1.20"], ["::ffff:127.0.0.1"], ["fd00::1"]],
)
async def test_refuses_a_did_web_name_when_any_of_its_addresses_is_private(make_resolver, addresses):
    async def resolve_host(host: str, port: int) -> list[str]:
        return addresses

    resolver = make_resolver(dev=False, resolve_host=resolve_host)
    with pytest.raises(ForbiddenHost, match="is not a public address"):
        await resolver.resolve("did:web:internal.example.com")


async def test_a_did_web_name_that_does_not_resolve_is_unavailable(make_resolver):
    async def resolve_host(host: str, port: int) -> list[str]:
        raise OSError("Name or service not known")

    resolver = make_resolver(dev=False, resolve_host=resolve_host)
    with pytest.raises(DirectoryUnavailable, match="does not resolve"):
        await resolver.resolve("did:web:nowhere.example.com")


async def test_fetches_over_https_from_the_checked_address_verifying_the_certificate_for_the_name(
    tmp_path, plc
):
    """Outside dev mode the connection goes to the address that was checked, not a second lookup."""
    from app.identity.resolver import DidResolver

    certfile, keyfile = self_signed(tmp_path, "did-host.test")
    looked_up: list[str] = []

    async def resolve_host(host: str, port: int) -> list[str]:
        looked_up.append(host)
        return ["127.0.0.1"]  # "did-host.test" exists only here: nothing else could resolve it

    with DidWebHost(ssl_certfile=str(certfile), ssl_keyfile=str(keyfile)) as host:
        key = SigningKey.generate()
        did = host.serve(key, did=host.did_for("did-host.test"))
        async with httpx.AsyncClient(verify=trusting(certfile)) as http:
            resolver = DidResolver(
                http=http,
                plc_url=plc.url,
                dev=False,
                resolve_host=resolve_host,
                address_allowed=lambda address: address == ipaddress.ip_address("127.0.0.1"),
            )
            document = await resolver.resolve(did)
    assert document.key is not None and document.key.did_key == key.did_key
    assert looked_up == ["did-host.test"]
    [request] = host.requests
    assert request.headers["host"] == f"did-host.test:{host.port}"
    assert request.url.scheme == "https"


async def test_refuses_a_pinned_https_host_whose_certificate_is_for_another_name(tmp_path, plc):
    from app.identity.resolver import DidResolver

    certfile, keyfile = self_signed(tmp_path, "someone-else.test")

    async def resolve_host(host: str, port: int) -> list[str]:
        return ["127.0.0.1"]

    with DidWebHost(ssl_certfile=str(certfile), ssl_keyfile=str(keyfile)) as host:
        did = host.serve(SigningKey.generate(), did=host.did_for("did-host.test"))
        async with httpx.AsyncClient(verify=trusting(certfile)) as http:
            resolver = DidResolver(
                http=http,
                plc_url=plc.url,
                dev=False,
                resolve_host=resolve_host,
                address_allowed=lambda address: True,
            )
            with pytest.raises(DirectoryUnavailable, match="cannot connect to did-host.test"):
                await resolver.resolve(did)
    assert host.requests == []


# failures and made-up issuers


async def test_a_did_that_failed_is_not_asked_about_again_until_its_failure_expires(plc, make_resolver):
    clock = ManualClock()
    did = "did:plc:" + "m" * 24
    resolver = make_resolver(clock=clock, failure_ttl=60)
    for _ in range(5):
        with pytest.raises(DidNotFound, match="HTTP 404"):
            await resolver.resolve(did)
    assert plc.requests[did] == 1
    clock.advance(61)
    with pytest.raises(DidNotFound):
        await resolver.resolve(did)
    assert plc.requests[did] == 2


async def test_a_directory_that_was_down_is_asked_again_at_once(plc, make_resolver, down):
    did = plc.register(SigningKey.generate())
    resolver = make_resolver(failure_ttl=600)
    with pytest.raises(DirectoryUnavailable):
        await resolver.resolve(did)
    plc.down = False
    assert (await resolver.resolve(did)).did == did
    assert plc.requests[did] == 2


async def test_made_up_issuers_cost_the_directory_at_most_its_rate(plc, make_resolver):
    clock = ManualClock()
    resolver = make_resolver(clock=clock, lookups_per_minute=10)
    made_up = [f"did:plc:{i:024d}" for i in range(300)]
    for did in made_up:
        with pytest.raises(ResolutionError):
            await resolver.resolve(did)
    assert sum(plc.requests[did] for did in made_up) == 10
    # A real issuer arriving meanwhile waits for the directory's next token, not for the flood.
    real = plc.register(SigningKey.generate())
    with pytest.raises(DirectoryUnavailable, match="too many look-ups"):
        await resolver.resolve(real)
    clock.advance(6)
    assert (await resolver.resolve(real)).did == real


async def test_a_throttled_refresh_serves_the_cached_document(plc, make_resolver):
    clock = ManualClock()
    did = plc.register(SigningKey.generate())
    resolver = make_resolver(clock=clock, fresh_ttl=60, lookups_per_minute=1)
    document = await resolver.resolve(did)
    clock.advance(61)
    with pytest.raises(ResolutionError):
        await resolver.resolve("did:plc:" + "x" * 24)  # takes the token that came back
    assert await resolver.resolve(did) is document
    assert plc.requests[did] == 1


async def test_did_web_hosts_of_one_domain_share_its_rate(plc, make_resolver):
    asked: list[str] = []

    async def resolve_host(host: str, port: int) -> list[str]:
        asked.append(host)
        return ["127.0.0.1"]  # nothing listens there over TLS: each look-up fails after asking

    resolver = make_resolver(
        dev=False, lookups_per_minute=2, resolve_host=resolve_host, address_allowed=lambda _: True
    )
    for name in ("a", "b", "c", "d"):
        with pytest.raises(ResolutionError):
            await resolver.resolve(f"did:web:{name}.victim.test%3A{free_port()}")
    assert asked == ["a.victim.test", "b.victim.test"]
    with pytest.raises(ResolutionError):
        await resolver.resolve(f"did:web:other.test%3A{free_port()}")
    assert asked[-1] == "other.test"
    real = plc.register(SigningKey.generate())
    assert (await resolver.resolve(real)).did == real
