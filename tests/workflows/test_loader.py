"""Workflow files read as GitHub reads them (YAML 1.2), safely, with errors naming the file."""

from __future__ import annotations

import pytest

from app.workflows.exceptions import InvalidWorkflow
from app.workflows.loader import load_yaml
from app.workflows.workflow import parse_workflow

PATH = ".github/workflows/ci.yml"
JOBS = "jobs:\n  build:\n    runs-on: ubuntu-latest\n    steps:\n      - run: echo hi\n"


def test_only_true_and_false_are_booleans_as_in_yaml_1_2():
    assert load_yaml("a: yes\nb: off\nc: True\nd: false\ne: on\nf: y", path=PATH) == {
        "a": "yes",
        "b": "off",
        "c": True,
        "d": False,
        "e": "on",
        "f": "y",
    }


def test_numbers_follow_yaml_1_2_not_1_1():
    assert load_yaml(
        "a: 010\nb: 0o10\nc: 0x1f\nd: 1:20\ne: 1_000\nf: 2.5\ng: .inf\nh: 2024-01-02", path=PATH
    ) == {
        "a": 10,
        "b": 8,
        "c": 31,
        "d": "1:20",
        "e": "1_000",
        "f": 2.5,
        "g": float("inf"),
        "h": "2024-01-02",
    }


def test_a_few_anchors_and_aliases_are_fine():
    document = load_yaml("base: &base {runs-on: ubuntu-latest}\na: *base\nb: *base\n", path=PATH)

    assert document["a"] == document["b"] == {"runs-on": "ubuntu-latest"}


def test_refuses_a_billion_laughs_before_building_it():
    lines = ['a0: &a0 ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for i in range(1, 10):
        lines.append(f"a{i}: &a{i} [{','.join(f'*a{i - 1}' for _ in range(9))}]")

    with pytest.raises(InvalidWorkflow, match="once aliases are expanded"):
        load_yaml("\n".join(lines), path=PATH)


def test_refuses_too_many_aliases():
    source = "a: &a x\nb: [" + ", ".join(["*a"] * 101) + "]\n"

    with pytest.raises(InvalidWorkflow, match="more than 100 aliases"):
        load_yaml(source, path=PATH)


def test_refuses_an_alias_inside_its_own_anchor():
    with pytest.raises(InvalidWorkflow, match="refers to its own anchor"):
        load_yaml("a: &a [1, *a]\n", path=PATH)


def test_refuses_deep_nesting_without_a_recursion_error():
    with pytest.raises(InvalidWorkflow, match="nested more than 64 levels"):
        load_yaml("a: " + "[" * 5000 + "]" * 5000, path=PATH)


def test_brackets_inside_strings_do_not_count_as_nesting():
    text = "[" * 100 + "{" * 100
    loaded = load_yaml(f"a: '{text}'\nb: |\n  {text}\n", path=PATH)

    assert loaded == {"a": text, "b": text + "\n"}


def test_refuses_duplicate_keys_as_github_does():
    with pytest.raises(InvalidWorkflow, match="the key 'on' appears twice"):
        parse_workflow(PATH, "on: push\non: pull_request\n" + JOBS)


@pytest.mark.parametrize(
    "tagged", ["!!binary aGk=", "!!timestamp 2001-12-14", "!!python/object:os.system x", "!custom x"]
)
def test_refuses_tags_outside_the_core_schema(tagged: str):
    with pytest.raises(InvalidWorkflow, match=PATH):
        load_yaml(f"a: {tagged}\n", path=PATH)


def test_a_syntax_error_names_the_file_and_the_line():
    with pytest.raises(InvalidWorkflow) as caught:
        parse_workflow(PATH, "on: push\njobs:\n  build: [unclosed\n")

    assert caught.value.status_code == 400
    assert caught.value.message.startswith(f"workflow {PATH}: invalid YAML at line")


def test_refuses_more_than_one_document():
    with pytest.raises(InvalidWorkflow, match="invalid YAML"):
        load_yaml("a: 1\n---\nb: 2\n", path=PATH)


def test_refuses_a_file_over_512_kib():
    with pytest.raises(InvalidWorkflow, match="larger than 512 KiB"):
        load_yaml("#" * (512 * 1024 + 1), path=PATH)
