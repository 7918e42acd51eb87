"""workflow_dispatch inputs checked and completed as GitHub would, across a trigger's workflows,
and typed for the `inputs` context."""

from __future__ import annotations

import pytest

from app.workflows.exceptions import InvalidWorkflow
from app.workflows.inputs import inputs_context, resolve_inputs
from app.workflows.workflow import parse_workflow
from app.xrpc.errors import InvalidRequest

JOBS = "jobs:\n  build:\n    runs-on: ubuntu-latest\n    steps:\n      - run: echo hi\n"


def dispatch(inputs: str, path: str = ".github/workflows/deploy.yml"):
    return parse_workflow(path, "on:\n  workflow_dispatch:\n    inputs:\n" + inputs + JOBS)


DEPLOY = dispatch(
    "      env:\n        type: environment\n        required: true\n"
    "      debug:\n        type: boolean\n"
    "      level:\n        type: choice\n        options: [low, high]\n        default: low\n"
    "      count:\n        type: number\n        default: 2\n"
    "      tag:\n        default: 7\n"
)
PLAIN = parse_workflow(".github/workflows/ci.yml", "on: push\n" + JOBS)


def test_fills_defaults_and_gives_unset_optionals_their_empty_value():
    [resolved] = resolve_inputs(workflows=[DEPLOY], inputs={"env": "prod"})

    assert resolved == {"env": "prod", "debug": "false", "level": "low", "count": "2", "tag": "7"}


def test_given_values_override_defaults():
    [resolved] = resolve_inputs(
        workflows=[DEPLOY], inputs={"env": "prod", "debug": "true", "level": "high", "count": "-1.5e3"}
    )

    assert resolved["debug"] == "true"
    assert resolved["level"] == "high"
    assert resolved["count"] == "-1.5e3"


def test_a_workflow_without_declarations_gets_the_inputs_as_given():
    deploy, plain = resolve_inputs(workflows=[DEPLOY, PLAIN], inputs={"env": "prod", "tag": "x"})

    assert plain == {"env": "prod", "tag": "x"}
    assert deploy["tag"] == "x"


def test_without_any_declarations_every_input_passes_through():
    [plain] = resolve_inputs(workflows=[PLAIN], inputs={"anything": "goes"})

    assert plain == {"anything": "goes"}


def test_workflow_dispatch_without_inputs_declares_nothing():
    bare = parse_workflow(".github/workflows/b.yml", "on: workflow_dispatch\n" + JOBS)

    assert resolve_inputs(workflows=[bare], inputs={"a": "1"}) == [{"a": "1"}]


@pytest.mark.parametrize(
    ("inputs", "fragment"),
    [
        ({}, "inputs.env is required by .github/workflows/deploy.yml"),
        ({"env": "p", "debug": "True"}, "inputs.debug must be true or false"),
        ({"env": "p", "level": "medium"}, "inputs.level must be one of low, high"),
        ({"env": "p", "count": "1e"}, "inputs.count must be a number"),
        ({"env": "p", "count": "nan"}, "inputs.count must be a number"),
        ({"env": "p", "other": "x"}, "inputs.other is not declared"),
    ],
)
def test_rejects_inputs_the_declarations_do_not_allow(inputs: dict[str, str], fragment: str):
    with pytest.raises(InvalidRequest, match=fragment):
        resolve_inputs(workflows=[DEPLOY, PLAIN], inputs=inputs)


def test_a_required_input_with_a_default_is_not_required():
    workflow = dispatch("      env:\n        required: true\n        default: staging\n")

    assert resolve_inputs(workflows=[workflow], inputs={}) == [{"env": "staging"}]


def test_an_input_declared_by_one_workflow_is_known_to_the_trigger():
    other = dispatch("      colour:\n        type: string\n", path=".github/workflows/paint.yml")

    deploy, paint = resolve_inputs(workflows=[DEPLOY, other], inputs={"env": "p", "colour": "red"})

    assert "colour" not in deploy
    assert paint == {"colour": "red"}


@pytest.mark.parametrize(
    ("declaration", "fragment"),
    [
        ("      x:\n        type: date\n", "type must be one of"),
        ("      x:\n        type: choice\n", "options must be a non-empty list"),
        (
            "      x:\n        type: choice\n        options: [a]\n        default: b\n",
            "default must be one of a",
        ),
        ("      x:\n        type: boolean\n        default: maybe\n", "default must be true or false"),
        ("      x:\n        required: sometimes\n", "required must be true or false"),
        ("      x:\n        default: [1]\n", "default must be a single value"),
        ("      x: 5\n", "must be a map"),
        ("      1x:\n        type: string\n", "an input name must match"),
    ],
)
def test_a_bad_declaration_is_an_error_naming_the_file(declaration: str, fragment: str):
    with pytest.raises(InvalidWorkflow, match=fragment) as caught:
        resolve_inputs(workflows=[dispatch(declaration)], inputs={})

    assert ".github/workflows/deploy.yml" in caught.value.message


def test_the_inputs_context_types_declared_booleans_and_numbers_and_fills_defaults():
    context = inputs_context(DEPLOY.inputs, {"env": "prod", "debug": "TRUE"})

    assert context == {"env": "prod", "debug": True, "level": "low", "count": 2.0, "tag": "7"}


def test_the_inputs_context_of_a_workflow_without_declarations_is_the_inputs_as_given():
    assert inputs_context(PLAIN.inputs, {"debug": "true"}) == {"debug": "true"}
