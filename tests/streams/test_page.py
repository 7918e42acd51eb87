"""The run page: every value escaped, scripts only from our own origin, 404 for unknown pipelines."""

from __future__ import annotations

from html.parser import HTMLParser

import httpx

from app.runs.models import Status
from tests.streams.runs import KNOT, Recorder
from tests.support.app import context_of, running_app

HOSTILE = "x\"'><script>alert(1)</script>"


class Elements(HTMLParser):
    """Start tags and their attributes, as a browser's parser would see them."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))


def parse(html: str) -> list[tuple[str, dict[str, str | None]]]:
    parser = Elements()
    parser.feed(html)
    return parser.tags


async def test_run_page_lists_each_workflow_with_its_status_and_log_path_and_one_status_path(
    make_settings, sqlite_url
):
    async with running_app(make_settings(database_url=sqlite_url)) as (app, client):
        recorder = Recorder(context_of(app).sessionmaker, context_of(app).broker)
        runs = await recorder.pipeline("3ppage", ("build", "test"))
        await recorder.move(runs["test"], Status.RUNNING)
        response = await client.get(f"/runs/{KNOT}/3ppage")

    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    csp = response.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "default-src 'none'" in csp
    sections = [attrs for tag, attrs in parse(response.text) if tag == "section"]
    assert [(s["data-workflow"], s["data-logs-path"]) for s in sections] == [
        ("build", f"../../logs/{KNOT}/3ppage/build"),
        ("test", f"../../logs/{KNOT}/3ppage/test"),
    ]
    assert all("data-status-path" not in s for s in sections)
    # The whole pipeline's statuses come over one stream, however many workflows it has.
    (main,) = [attrs for tag, attrs in parse(response.text) if tag == "main"]
    assert main["data-status-path"] == f"../../status/{KNOT}/3ppage"
    badges = [attrs["class"] for tag, attrs in parse(response.text) if attrs.get("data-role") == "badge"]
    assert badges == ["badge status-pending", "badge status-running"]
    scripts = [attrs for tag, attrs in parse(response.text) if tag == "script"]
    assert scripts == [{"src": "../../static/run.js", "defer": None}]


async def test_run_page_escapes_a_hostile_workflow_name(make_settings, sqlite_url):
    async with running_app(make_settings(database_url=sqlite_url)) as (app, client):
        await Recorder(context_of(app).sessionmaker).pipeline("3phostile", (HOSTILE,))
        response = await client.get(f"/runs/{KNOT}/3phostile")

    assert "<script>alert" not in response.text
    tags = parse(response.text)
    assert [tag for tag, _ in tags].count("script") == 1  # only run.js
    (section,) = [attrs for tag, attrs in tags if tag == "section"]
    assert section["data-workflow"] == HOSTILE
    assert section["data-logs-path"] == (
        f"../../logs/{KNOT}/3phostile/x%22%27%3E%3Cscript%3Ealert%281%29%3C%2Fscript%3E"
    )


async def test_run_page_of_an_unknown_pipeline_is_a_404_page(make_settings, sqlite_url):
    async with running_app(make_settings(database_url=sqlite_url)) as (_, client):
        response = await client.get(f"/runs/{KNOT}/3p<nothing>")
    assert response.status_code == 404
    assert response.headers["content-type"].startswith("text/html")
    assert "Pipeline not found" in response.text and "3p&lt;nothing&gt;" in response.text


async def test_the_page_script_and_style_are_served_and_nothing_else_is(make_settings, sqlite_url):
    async with running_app(make_settings(database_url=sqlite_url)) as (_, client):
        script = await client.get("/static/run.js")
        style = await client.get("/static/run.css")
        other = await client.get("/static/..%2Fconfig.py")
    assert script.headers["content-type"].startswith("text/javascript") and "textContent" in script.text
    assert style.headers["content-type"].startswith("text/css")
    assert other.status_code == 404


async def test_status_json_links_to_the_run_page(make_settings, sqlite_url):
    settings = make_settings(database_url=sqlite_url)
    async with running_app(settings) as (app, client):
        await Recorder(context_of(app).sessionmaker).pipeline("3plink")
        doc = (await client.get(f"/status/{KNOT}/3plink/ci")).json()
        page = await client.get(httpx.URL(doc["runUrl"]).path)
    assert doc["runUrl"] == f"{settings.base_url}/runs/{KNOT}/3plink"
    assert page.status_code == 200
