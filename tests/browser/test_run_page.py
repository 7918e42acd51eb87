"""The run page in a real browser: log lines appear as the run writes them, then the final status."""

from __future__ import annotations

import pytest
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from app.runs.models import Status
from tests.streams.runs import KNOT, data, step

pytestmark = pytest.mark.browser

PATIENCE = 20  # seconds: a guard against hangs, not a speed requirement
HOSTILE = "<img src=x onerror=\"document.title='pwned'\">"


def log_lines(section) -> list[str]:
    return [line.text for line in section.find_elements(By.CSS_SELECTOR, ".log .line")]


def test_run_page_shows_log_lines_as_they_arrive_and_the_final_status(service, browser):
    runs = service.engine.now("pipeline", "3bpage", ("build", "test"))
    build = runs["build"]
    service.engine.now("move", build, Status.RUNNING)
    service.engine.now("lines", build, [step(1, "compile", command="make"), data(HOSTILE)])

    browser.get(f"{service.url}/runs/{KNOT}/3bpage")
    wait = WebDriverWait(browser, PATIENCE)
    section = browser.find_element(By.CSS_SELECTOR, 'section[data-workflow="build"]')
    badge = section.find_element(By.CSS_SELECTOR, ".badge")
    wait.until(lambda _: badge.text == "running")
    wait.until(lambda _: len(log_lines(section)) == 2)

    service.engine.now("lines", build, [data("tests passed", stream="stderr")])
    wait.until(lambda _: log_lines(section)[-1:] == ["tests passed"])
    service.engine.now("lines", build, [step(1, "compile", "end")])
    service.engine.now("move", build, Status.FAILED, error="step 2 exited with 1", exit_code=1)
    wait.until(lambda _: badge.text == "failed")
    wait.until(lambda _: section.get_attribute("data-log-complete") == "true")

    assert log_lines(section) == [
        "▶ step 1: compile\n$ make",
        HOSTILE,
        "tests passed",
        "■ end of step 1: compile",
    ]
    # The hostile line stayed text: no element was made from it and no script ran.
    assert section.find_elements(By.CSS_SELECTOR, ".log img") == []
    assert browser.title != "pwned"
    assert "status-failed" in badge.get_attribute("class")
    meta = section.find_element(By.CSS_SELECTOR, ".meta").text
    assert meta == "exit code 1 · step 2 exited with 1"
    stderr = section.find_elements(By.CSS_SELECTOR, ".log .line.stderr")
    assert [line.text for line in stderr] == ["tests passed"]
    # The other workflow is still pending, with nothing logged yet.
    other = browser.find_element(By.CSS_SELECTOR, 'section[data-workflow="test"]')
    assert other.find_element(By.CSS_SELECTOR, ".badge").text == "pending"
    assert log_lines(other) == []
    # Nothing the page did was refused by its Content-Security-Policy or failed.
    assert [entry for entry in browser.get_log("browser") if entry["level"] == "SEVERE"] == []


def test_run_page_of_an_unknown_pipeline_says_so(service, browser):
    browser.get(f"{service.url}/runs/{KNOT}/3bnothing")
    assert browser.find_element(By.TAG_NAME, "h1").text == "Pipeline not found"
    assert "3bnothing" in browser.find_element(By.TAG_NAME, "main").text


def test_run_page_follows_eight_workflows_over_one_status_stream(service, browser):
    # A hostile name among them: the page finds a workflow's section by name without a selector.
    names = (*(f"job{i}" for i in range(7)), HOSTILE)
    runs = service.engine.now("pipeline", "3bwide", names)
    browser.get(f"{service.url}/runs/{KNOT}/3bwide")
    wait = WebDriverWait(browser, PATIENCE)

    def badges() -> dict[str, str]:
        sections = browser.find_elements(By.CSS_SELECTOR, "section.workflow")
        return {
            s.get_attribute("data-workflow"): s.find_element(By.CSS_SELECTOR, ".badge").text for s in sections
        }

    # Live transitions while every run is unfinished: one stream per workflow would leave two of
    # eight waiting for a connection (six per host), and their badges would stay "pending".
    for name in names:
        service.engine.now("move", runs[name], Status.RUNNING)
    wait.until(lambda _: set(badges().values()) == {"running"})
    finals = [Status.SUCCESS, Status.FAILED, Status.TIMEOUT, Status.CANCELLED] * 2
    for name, final in zip(names, finals, strict=True):
        service.engine.now("move", runs[name], final)
    wait.until(lambda _: badges() == {name: final.value for name, final in zip(names, finals, strict=True)})
    wait.until(
        lambda _: browser.find_element(By.TAG_NAME, "main").get_attribute("data-status-stream") == "closed"
    )
    assert browser.title != "pwned"
    assert [entry for entry in browser.get_log("browser") if entry["level"] == "SEVERE"] == []
