"""Malformed trigger bodies with a valid token: 400/413 naming the field, nothing recorded, no knot call.

tests/runs/test_trigger_input.py covers the basic shapes (missing fields, a number for each
field, the main syntaxes); this file goes after the rest: every wrong JSON type for every field,
lengths, trailing newlines that `$` in a regular expression lets through, lone surrogates,
content types, bodies that lie about their size, and nesting meant to blow the parser's stack.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from app.runs.schemas import TRIGGER_NSID
from tests.hostile.conftest import Hostile, assert_xrpc_error

pytestmark = pytest.mark.asyncio(loop_scope="module")

PATH = f"/xrpc/{TRIGGER_NSID}"
REQUIRED = ["knot", "pipelineRkey", "actor", "repoDid", "repoName", "ref"]
WRONG_TYPES: list[Any] = [None, True, 1.5, [], {}, ["x"], {"x": "y"}]


async def refused(hostile: Hostile, response_coro: Any, status: int, error: str, fragment: str) -> None:
    hostile.knot.clear_requests()
    before = await hostile.snapshot()
    response = await response_coro
    body = assert_xrpc_error(response, status, error)
    assert fragment in body["message"], body
    await hostile.assert_unchanged(before)


async def post_raw(hostile: Hostile, content: bytes, content_type: str | None = "application/json") -> Any:
    headers = {"authorization": f"Bearer {hostile.alice.token(hostile.spindle.settings.did)}"}
    if content_type is not None:
        headers["content-type"] = content_type
    return await hostile.spindle.client.post(PATH, content=content, headers=headers)


# -- the body is not a JSON object ----------------------------------------------------------

NOT_AN_OBJECT: list[tuple[str, bytes, str]] = [
    ("empty", b"", "not valid JSON"),
    ("whitespace", b" \r\n\t ", "not valid JSON"),
    ("string", b'"knot"', "must be a JSON object"),
    ("null", b"null", "must be a JSON object"),
    ("number", b"42", "must be a JSON object"),
    ("true", b"true", "must be a JSON object"),
    ("empty-array", b"[]", "must be a JSON object"),
    ("array-of-the-body", b'[{"knot": "k"}]', "must be a JSON object"),
    ("two-objects", b"{} {}", "not valid JSON"),
    ("trailing-garbage", b'{"knot": "k"}x', "not valid JSON"),
    ("single-quotes", b"{'knot': 'k'}", "not valid JSON"),
    ("comment", b'{"knot": "k" /* hi */}', "not valid JSON"),
    ("trailing-comma", b'{"knot": "k",}', "not valid JSON"),
    ("infinity", b'{"ref": Infinity}', "not valid JSON"),
    ("minus-infinity", b'{"ref": -Infinity}', "not valid JSON"),
    ("utf8-bom", b'\xef\xbb\xbf{"knot": "k"}', "not valid JSON"),
    ("utf16", '{"knot": "k"}'.encode("utf-16"), "not UTF-8"),
    ("latin1", '{"repoName": "héllo"}'.encode("latin-1"), "not UTF-8"),
    ("overlong-utf8", b'{"knot": "\xc0\xae"}', "not UTF-8"),
    ("nul-byte", b'{"knot": "k"}\x00', "not valid JSON"),
    ("deep-arrays", b"[" * 30_000 + b"]" * 30_000, "not valid JSON"),
    ("deep-objects", b'{"a":' * 10_000 + b"1" + b"}" * 10_000, "not valid JSON"),
]


@pytest.mark.parametrize(
    ("content", "fragment"), [c[1:] for c in NOT_AN_OBJECT], ids=[c[0] for c in NOT_AN_OBJECT]
)
async def test_rejects_a_body_that_is_not_one_json_object(hostile: Hostile, content: bytes, fragment: str):
    await refused(hostile, post_raw(hostile, content), 400, "InvalidRequest", fragment)


CONTENT_TYPES = [
    None,
    "",
    "text/plain",
    "text/json",
    "application/jsonx",
    "application/json-patch+json",
    "application/ld+json",
    "application/x-www-form-urlencoded",
    "multipart/form-data; boundary=xyz",
    "application/json, text/plain",
    "application/octet-stream",
]


@pytest.mark.parametrize("content_type", CONTENT_TYPES, ids=[repr(c) for c in CONTENT_TYPES])
async def test_rejects_a_content_type_other_than_application_json(hostile: Hostile, content_type: str | None):
    content = json.dumps(hostile.repo.body()).encode()

    await refused(
        hostile, post_raw(hostile, content, content_type), 400, "InvalidRequest", "Content-Type must be"
    )


async def test_accepts_application_json_in_any_case_and_with_parameters(hostile: Hostile):
    content = json.dumps(hostile.repo.body()).encode()

    response = await post_raw(hostile, content, "Application/JSON ; charset=UTF-8")

    assert response.status_code == 200, response.text


# -- every field, every wrong type ----------------------------------------------------------

TYPE_CASES = [(name, value) for name in REQUIRED for value in WRONG_TYPES]


@pytest.mark.parametrize(("field", "value"), TYPE_CASES, ids=[f"{f}={json.dumps(v)}" for f, v in TYPE_CASES])
async def test_rejects_a_required_field_of_the_wrong_json_type_naming_it(
    hostile: Hostile, field: str, value: Any
):
    body = {**hostile.repo.body(), field: value}

    await refused(
        hostile,
        hostile.spindle.trigger(body, by=hostile.alice),
        400,
        "InvalidRequest",
        f"{field} must be a string",
    )


@pytest.mark.parametrize("value", [None, True, 1, 1.5, "a=b", [], [["a", "b"]]], ids=repr)
async def test_rejects_inputs_that_are_not_an_object(hostile: Hostile, value: Any):
    body = {**hostile.repo.body(), "inputs": value}

    await refused(
        hostile,
        hostile.spindle.trigger(body, by=hostile.alice),
        400,
        "InvalidRequest",
        "inputs must be an object",
    )


# -- syntax and length of each field ----------------------------------------------------------

SHA = "0123456789abcdef0123456789abcdef01234567"

BAD_VALUES: list[tuple[str, str, str]] = [
    # A trailing newline passes `^...$` (Python's `$` matches before a final "\n").
    ("knot", "127.0.0.1:5555\n", "knot must be a host"),
    ("actor", "did:plc:abcdefghijklmnopqrstuvwx\n", "actor must be a DID"),
    ("repoDid", "did:plc:abcdefghijklmnopqrstuvwx\n", "repoDid must be a DID"),
    ("ref", SHA + "\n", "ref must be a full commit id"),
    ("repoName", "hello\n", "repoName must be"),
    ("pipelineRkey", "rkey\n", "pipelineRkey must be a record key"),
    # knot: anything but host[:port]
    ("knot", "a" * 64 + ".example.com", "knot must be a host"),
    ("knot", ("abc." * 80) + "com", "knot must be a host"),
    ("knot", "knot.example.com.", "knot must be a host"),
    ("knot", "-knot.example.com", "knot must be a host"),
    ("knot", "knot_1.example.com", "knot must be a host"),
    ("knot", "knöt.example.com", "knot must be a host"),
    ("knot", "knot.example.com:", "knot must be a host"),
    ("knot", ":5555", "knot must be a host"),
    ("knot", "knot.example.com:0", "knot must be a host"),
    ("knot", "knot.example.com:+80", "knot must be a host"),
    ("knot", "knot.example.com: 80", "knot must be a host"),
    ("knot", "knot.example.com:5555/", "knot must be a host"),
    ("knot", "knot.example.com?x=1", "knot must be a host"),
    ("knot", "knot.example.com#x", "knot must be a host"),
    ("knot", "knot.example.com\\evil", "knot must be a host"),
    ("knot", "knot.example.com%2F", "knot must be a host"),
    ("knot", "[::1", "knot must be a host"),
    ("knot", "[zz::1]:80", "knot must be a host"),
    ("knot", "::1", "knot must be a host"),
    ("knot", "\tknot.example.com", "knot must be a host"),
    # DIDs
    ("actor", "did:plc:" + "a" * 3000, "actor must be a DID"),
    ("actor", "did:plc:abc#atproto", "actor must be a DID"),
    ("actor", "did:plc:abc?x=1", "actor must be a DID"),
    ("actor", "did:plc:abc/path", "actor must be a DID"),
    ("actor", "DID:plc:abc", "actor must be a DID"),
    ("actor", "did::abc", "actor must be a DID"),
    ("actor", "did:plc:abc:", "actor must be a DID"),
    ("actor", "did:plc:abc%", "actor must be a DID"),
    ("repoDid", "did:plc:" + "b" * 3000, "repoDid must be a DID"),
    ("repoDid", "did:web:exa mple.com", "repoDid must be a DID"),
    # commits
    ("ref", "HEAD", "ref must be a full commit id"),
    ("ref", "refs/heads/main", "ref must be a full commit id"),
    ("ref", SHA + "^", "ref must be a full commit id"),
    ("ref", " " + SHA, "ref must be a full commit id"),
    ("ref", SHA[:-1] + "~", "ref must be a full commit id"),
    ("ref", "a" * 63, "ref must be a full commit id"),
    ("ref", "a" * 65, "ref must be a full commit id"),
    ("ref", "a" * 10_000, "ref must be a full commit id"),
    # repo names and record keys
    ("repoName", "hello world", "repoName must be"),
    ("repoName", "hello/..", "repoName must be"),
    ("repoName", "%2e%2e", "repoName must be"),
    ("repoName", "héllo", "repoName must be"),
    ("repoName", "x" * 5000, "repoName must be"),
    ("pipelineRkey", "a%2Fb", "pipelineRkey must be a record key"),
    ("pipelineRkey", "ü", "pipelineRkey must be a record key"),
    ("pipelineRkey", "a\\b", "pipelineRkey must be a record key"),
    ("pipelineRkey", "a#b", "pipelineRkey must be a record key"),
    ("pipelineRkey", "a?b", "pipelineRkey must be a record key"),
    ("pipelineRkey", "k" * 20_000, "pipelineRkey must be a record key"),
]


@pytest.mark.parametrize(
    ("field", "value", "fragment"), BAD_VALUES, ids=[f"{f}:{v[:30]!r}" for f, v, _ in BAD_VALUES]
)
async def test_rejects_a_field_with_invalid_syntax_naming_it(
    hostile: Hostile, field: str, value: str, fragment: str
):
    body = {**hostile.repo.body(), field: value}

    await refused(hostile, hostile.spindle.trigger(body, by=hostile.alice), 400, "InvalidRequest", fragment)


BAD_INPUTS: list[tuple[str, dict[str, Any], str]] = [
    ("empty-key", {"": "v"}, "inputs key '' must match"),
    ("space-in-key", {"a b": "v"}, "must match"),
    ("dollar-key", {"$x": "v"}, "must match"),
    ("dash-first", {"-x": "v"}, "must match"),
    ("newline-after-key", {"name\n": "v"}, "must match"),
    ("cyrillic-key", {"ключ": "v"}, "must match"),
    ("thousand-keys", {f"k{i}": "v" for i in range(1000)}, "at most 25"),
    ("bool-value", {"a": True}, "inputs.a must be a string"),
    ("list-value", {"a": ["x"]}, "inputs.a must be a string"),
    ("object-value", {"a": {"b": "c"}}, "inputs.a must be a string"),
    ("float-value", {"a": 1.5}, "inputs.a must be a string"),
    ("nested-value", {"a": json.loads("[" * 500 + "]" * 500)}, "inputs.a must be a string"),
    ("huge-value", {"a": "v" * 40_000}, "KiB in total"),
]


@pytest.mark.parametrize(("inputs", "fragment"), [c[1:] for c in BAD_INPUTS], ids=[c[0] for c in BAD_INPUTS])
async def test_rejects_bad_inputs_naming_the_key(hostile: Hostile, inputs: dict[str, Any], fragment: str):
    body = {**hostile.repo.body(), "inputs": inputs}

    await refused(hostile, hostile.spindle.trigger(body, by=hostile.alice), 400, "InvalidRequest", fragment)


# -- lone surrogates: valid JSON, not valid Unicode -------------------------------------------

SURROGATES: list[tuple[str, str, str]] = [
    ("inputs-value", '"inputs": {"note": "\\ud800"}', "inputs.note"),
    ("inputs-key", '"inputs": {"\\udfff": "v"}', "inputs"),
    ("actor", '"actor": "did:plc:\\ud83d"', "actor"),
    ("unknown-field", '"comment": "\\udc00 low half"', "comment"),
]


@pytest.mark.parametrize(("member", "fragment"), [c[1:] for c in SURROGATES], ids=[c[0] for c in SURROGATES])
async def test_rejects_a_lone_surrogate_escape_naming_the_field(hostile: Hostile, member: str, fragment: str):
    # JSON allows "\ud800", but it is half a character: it cannot be hashed, stored or echoed as UTF-8.
    body = hostile.repo.body()
    body.pop(member.split('"')[1], None)
    content = json.dumps(body)[:-1] + ", " + member + "}"

    await refused(hostile, post_raw(hostile, content.encode()), 400, "InvalidRequest", fragment)


async def test_accepts_an_escaped_surrogate_pair_that_forms_a_real_character(hostile: Hostile):
    content = json.dumps(hostile.repo.body(inputs={"note": "😀"}), ensure_ascii=True).encode()
    assert b"\\ud83d\\ude00" in content

    response = await post_raw(hostile, content)

    assert response.status_code == 200, response.text


# -- bodies that lie about their size -----------------------------------------------------------


async def raw_exchange(hostile: Hostile, head: bytes, body_chunks: list[bytes] | None = None) -> bytes:
    """Send a raw HTTP/1.1 request and return what the server answers (up to the first 64 KiB)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", hostile.spindle.server.port)
    try:
        writer.write(head)
        for chunk in body_chunks or []:
            writer.write(chunk)
            try:
                await asyncio.wait_for(writer.drain(), 10)
            except (ConnectionError, TimeoutError):
                break  # the server stopped reading: it has answered
        async with asyncio.timeout(30):
            return await read_response(reader)
    finally:
        writer.close()
        try:
            await writer.wait_closed()
        except ConnectionError:
            pass


async def read_response(reader: asyncio.StreamReader) -> bytes:
    """One HTTP response: its head and as much body as its Content-Length says (or until EOF)."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = await reader.read(65536)
        if not chunk:
            return data
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = next(
        (
            int(line.split(b":", 1)[1])
            for line in head.split(b"\r\n")
            if line.lower().startswith(b"content-length:")
        ),
        None,
    )
    while length is not None and len(body) < length:
        chunk = await reader.read(65536)
        if not chunk:
            break
        body += chunk
    return head + b"\r\n\r\n" + body


def request_head(hostile: Hostile, extra: str) -> bytes:
    token = hostile.alice.token(hostile.spindle.settings.did)
    return (
        f"POST {PATH} HTTP/1.1\r\nHost: {hostile.spindle.server.host}\r\n"
        f"Authorization: Bearer {token}\r\nContent-Type: application/json\r\n{extra}\r\n"
    ).encode()


async def test_a_declared_length_over_64_kib_is_refused_before_the_body_arrives(hostile: Hostile):
    before = await hostile.snapshot()

    # The body never comes: the answer must not wait for 10 MB that will not be sent.
    answer = await raw_exchange(hostile, request_head(hostile, "Content-Length: 10485760\r\n"))

    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    assert b'"PayloadTooLarge"' in answer
    await hostile.assert_unchanged(before)


async def test_an_absurd_declared_length_is_refused_without_a_500(hostile: Hostile):
    before = await hostile.snapshot()

    answer = await raw_exchange(hostile, request_head(hostile, "Content-Length: 99999999999999999999999\r\n"))

    assert answer.startswith((b"HTTP/1.1 413", b"HTTP/1.1 400")), answer[:200]
    await hostile.assert_unchanged(before)


async def test_a_chunked_body_of_many_megabytes_is_cut_off_at_64_kib(hostile: Hostile):
    before = await hostile.snapshot()
    chunk = b"%x\r\n%s\r\n" % (65536, b" " * 65536)

    answer = await raw_exchange(
        hostile, request_head(hostile, "Transfer-Encoding: chunked\r\n"), [chunk] * 160
    )

    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    await hostile.assert_unchanged(before)


async def test_a_body_longer_than_its_declared_length_is_refused(hostile: Hostile):
    # The server takes the declared 2 bytes ("{}") as the body and the rest as a next request that
    # is not HTTP: either way a 400, and the trigger in the surplus bytes is never acted on.
    before = await hostile.snapshot()
    content = json.dumps(hostile.repo.body()).encode()

    answer = await raw_exchange(hostile, request_head(hostile, "Content-Length: 2\r\n") + content)

    assert answer.startswith(b"HTTP/1.1 400"), answer[:200]
    await hostile.assert_unchanged(before)
