"""Property: whatever body an authenticated caller sends, the trigger answers 200 or a 4xx XRPC error.

Bodies are built around a valid trigger for the registered repo, each field kept, dropped or
replaced by arbitrary JSON or by text from an alphabet full of separators, controls and lone
surrogates; sometimes the whole body is arbitrary JSON or arbitrary bytes. Every request carries
a fresh valid token, so the body is what is tested. Never a 5xx, never a hang (the client's
timeout fails the test), and nothing recorded unless the answer is 200.
"""

from __future__ import annotations

import json
import sqlite3
from typing import Any

import httpx
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from app.runs.schemas import TRIGGER_NSID
from app.xrpc.lexicon import lexicons
from tests.hostile.conftest import Hostile, assert_xrpc_error

validate_output = lexicons().output_validator(TRIGGER_NSID)

# Characters that break parsers and regular expressions: separators, controls, `$`-bait
# newlines, percent signs, NUL, lone surrogates, non-ASCII look-alikes.
NASTY = st.sampled_from(list("\n\r\t \x00%#?/@:.\\\"'`~-_") + ["\ud800", "\udfff", "é", "ı", "\u202e", "😀"])
nasty_text = st.lists(st.one_of(NASTY, st.characters(codec=None)), max_size=40).map("".join)

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | nasty_text,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(nasty_text, inner, max_size=3),
    max_leaves=10,
)

ABSENT = object()
# A few record keys, so that retries and reuses with other content happen.
RKEYS = ["fuzz-a", "fuzz-b", "fuzz-c"]


def field(draw: st.DrawFn, good: Any, variants: list[Any]) -> Any:
    """Mostly the good value (so that most bodies get deep into the route), else a mutation."""
    how = draw(st.sampled_from(["good"] * 14 + ["variant"] * 3 + ["absent", "text", "suffix", "json"]))
    if how == "variant" and variants:
        return draw(st.sampled_from(variants))
    if how == "absent":
        return ABSENT
    if how == "text":
        return draw(nasty_text)
    if how == "suffix" and isinstance(good, str):
        return good + draw(nasty_text)
    if how == "json":
        return draw(json_values)
    return good


@st.composite
def bodies(draw: st.DrawFn, base: dict[str, Any], variants: dict[str, list[Any]]) -> bytes:
    shape = draw(st.sampled_from(["trigger"] * 8 + ["json", "bytes"]))
    if shape == "bytes":
        return draw(st.binary(max_size=200))
    if shape == "json":
        return json.dumps(draw(json_values)).encode()
    body: dict[str, Any] = {}
    for name, good in base.items():
        value = field(draw, good, variants.get(name, []))
        if value is not ABSENT:
            body[name] = value
    inputs = draw(
        st.one_of(
            st.just(ABSENT),
            st.dictionaries(
                st.from_regex(r"[A-Za-z_][A-Za-z0-9_-]{0,8}", fullmatch=True), nasty_text, max_size=4
            ),
            st.dictionaries(nasty_text, json_values, max_size=4),
            json_values,
        )
    )
    if inputs is not ABSENT:
        body["inputs"] = inputs
    body.update(draw(st.dictionaries(nasty_text, json_values, max_size=2)))
    # ensure_ascii=False writes lone surrogates raw: not even UTF-8 (surrogatepass makes the bytes).
    ascii_only = draw(st.booleans())
    return json.dumps(body, ensure_ascii=ascii_only).encode("utf-8", errors="surrogatepass")


def recorded(hostile: Hostile) -> tuple[int, int]:
    """Pipelines and workflow runs in the service's SQLite file (read-only, from this thread)."""
    with sqlite3.connect(f"file:{hostile.tmp / 'spindle.db'}?mode=ro", uri=True) as db:
        pipelines = db.execute("SELECT count(*) FROM pipeline").fetchone()[0]
        runs = db.execute("SELECT count(*) FROM workflow_run").fetchone()[0]
    return pipelines, runs


def test_any_body_gets_a_2xx_or_a_4xx_xrpc_error_and_records_only_on_200(hostile: Hostile):
    # A sync test over real HTTP: the service runs in its own thread, Hypothesis drives this one.
    base = hostile.repo.body(pipelineRkey=RKEYS[0])
    # Valid but wrong values reach authorization (403) and the knot (400 for an unknown commit).
    variants = {
        "ref": [base["ref"].upper(), "0" * 40],
        "pipelineRkey": RKEYS,
        "actor": [hostile.bob.did],
        "repoDid": [hostile.bob.did],
        "repoName": ["other-repo"],
        "knot": ["127.0.0.1:1", "knot.example.com"],
    }
    url = f"{hostile.spindle.server.url}/xrpc/{TRIGGER_NSID}"
    seen: dict[int, int] = {}

    @settings(
        max_examples=250,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(content=bodies(base, variants))
    def check(content: bytes) -> None:
        before = recorded(hostile)
        token = hostile.alice.token(hostile.spindle.settings.did)
        response = client.post(
            url,
            content=content,
            headers={"authorization": f"Bearer {token}", "content-type": "application/json"},
        )
        after = recorded(hostile)
        seen[response.status_code] = seen.get(response.status_code, 0) + 1

        assert response.status_code < 500, (content, response.text)
        if response.status_code == 200:
            validate_output(response.json())
            assert after[0] - before[0] in (0, 1)
        else:
            assert 400 <= response.status_code < 500
            assert_xrpc_error(response, response.status_code)
            assert after == before, (content, response.text)

    with httpx.Client(timeout=30) as client:
        check()
    # The generator must reach the end of the path, not only the parser's refusals.
    assert seen.get(200, 0) >= 5, seen
    assert seen.get(400, 0) >= 50, seen
    assert seen.get(403, 0) >= 5, seen
