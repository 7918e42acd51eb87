"""GitHub Actions expressions: parsing, loose comparison, functions, templates and if: conditions."""

from __future__ import annotations

import math
import re
from typing import Any

import pytest

from app.workflows.expressions import (
    Evaluation,
    ExpressionError,
    evaluate,
    evaluate_condition,
    evaluate_value,
    interpolate,
)

CONTEXTS: dict[str, Any] = {
    "github": {
        "event_name": "workflow_dispatch",
        "sha": "abc123",
        "ref": "refs/heads/main",
        "event": {"inputs": {"name": "World", "flag": "true"}},
    },
    "inputs": {"name": "World", "flag": True, "count": 3.0},
    "env": {"GREETING": "Hello", "EMPTY": ""},
    "matrix": {"os": "ubuntu-latest", "python": 3.11, "experimental": False},
    "steps": {"build": {"outputs": {"version": "1.2.3", "count": "7"}, "outcome": "success"}},
    "needs": {"setup": {"result": "success", "outputs": {"json": '{"include": [{"a": 1}, {"a": 2}]}'}}},
    "strategy": {"job-index": 0},
}


class Status:
    def __init__(self, *, failed: bool = False, cancelled: bool = False) -> None:
        self.failed = failed
        self.was_cancelled = cancelled

    def success(self) -> bool:
        return not self.failed and not self.was_cancelled

    def failure(self) -> bool:
        return self.failed

    def cancelled(self) -> bool:
        return self.was_cancelled


def ev(**status: bool) -> Evaluation:
    return Evaluation(CONTEXTS, Status(**status))


VALUES: list[tuple[str, Any]] = [
    # literals
    ("true", True),
    ("false", False),
    ("null", None),
    ("42", 42.0),
    ("-1.5", -1.5),
    ("1e3", 1000.0),
    ("0xff", 255.0),
    ("'it''s'", "it's"),
    ("''", ""),
    # property access, case-insensitive, missing → null
    ("github.sha", "abc123"),
    ("GitHub.SHA", "abc123"),
    ("github['event_name']", "workflow_dispatch"),
    ("github.event.inputs.name", "World"),
    ("github.event.inputs.missing", None),
    ("github.nothing.deeper", None),
    ("steps.build.outputs.version", "1.2.3"),
    ("needs.setup.result", "success"),
    ("matrix.python", 3.11),
    ("strategy['job-index']", 0),
    ("inputs.name", "World"),
    ("secrets.TOKEN", None),
    # loose equality
    ("github.event_name == 'WORKFLOW_DISPATCH'", True),
    ("'abc' != 'ABC'", False),
    ("1 == '1'", True),
    ("1 == '1.0'", True),
    ("0 == ''", True),
    ("null == 0", True),
    ("null == ''", True),
    ("true == 1", True),
    ("true == 'true'", False),  # 'true' is NaN as a number
    ("'abc' == 0", False),
    ("inputs.flag == true", True),
    ("steps.build.outputs.count == 7", True),
    ("fromJSON('[1]') == fromJSON('[1]')", False),  # arrays equal only themselves
    ("NaN == NaN", False),
    # ordering
    ("steps.build.outputs.count > 5", True),
    ("'b' > 'A'", True),
    ("3 <= 3", True),
    ("'abc' < 5", False),
    ("matrix.python >= 3.1", True),
    # logic returns operands
    ("env.EMPTY || 'fallback'", "fallback"),
    ("env.GREETING && 'second'", "second"),
    ("'' && 'never'", ""),
    ("!env.EMPTY", True),
    ("!!'x'", True),
    ("(1 == 2) || (2 == 2) && 'yes'", "yes"),
    ("!(github.sha == 'abc123')", False),
    # functions
    ("contains('Hello World', 'WORLD')", True),
    ("contains(fromJSON('[\"a\", \"B\"]'), 'b')", True),
    ("contains(fromJSON('[1, 2]'), '2')", True),
    ("contains(fromJSON('[1, 2]'), 3)", False),
    ("startsWith(github.ref, 'refs/HEADS/')", True),
    ("endsWith(matrix.os, '-LATEST')", True),
    ("format('{0} {1}!', env.GREETING, inputs.name)", "Hello World!"),
    ("format('{{0}} is {0}', 'x')", "{0} is x"),
    ("format('{0}', 3.0)", "3"),
    ("join(fromJSON('[\"a\", \"b\", 1]'), '-')", "a-b-1"),
    ('join(fromJSON(\'["a", "b"]\'))', "a,b"),
    ("join('single')", "single"),
    ("toJSON(fromJSON('{\"a\": [1, true, null]}'))", '{\n  "a": [\n    1,\n    true,\n    null\n  ]\n}'),
    ("fromJSON('3')", 3),
    ("fromJSON(needs.setup.outputs.json).include[1].a", 2),
    ("fromJSON(needs.setup.outputs.json).include.*.a", [1, 2]),
    ("toJSON(matrix.experimental)", "false"),
    ("FORMAT('{0}', 'case-insensitive names')", "case-insensitive names"),
    # status functions
    ("success()", True),
    ("failure()", False),
    ("always()", True),
    ("cancelled()", False),
]


@pytest.mark.parametrize(("expression", "expected"), VALUES)
def test_evaluates(expression: str, expected: Any) -> None:
    assert evaluate(expression, ev()) == expected


ERRORS: list[tuple[str, str]] = [
    ("", "empty expression"),
    ("github.", "expected a property name"),
    ("(1 == 1", "expected ')'"),
    ("1 == ", "unexpected end"),
    ("'unterminated", "unterminated string"),
    ("foo.bar", "unrecognized named-value 'foo'"),
    ("nosuch(1)", "unrecognized function 'nosuch'"),
    ("contains('a')", "contains() takes 2 arguments"),
    ("success(1)", "takes no arguments"),
    ("fromJSON('{bad')", "fromJSON(): invalid JSON"),
    ("format('{1}', 'a')", "placeholder {1} has no argument"),
    ("1 2", "unexpected '2.0'"),
    ("github.sha ~ 1", "unexpected character '~'"),
    ("!" * 60 + "true", "nests deeper than"),
]


@pytest.mark.parametrize(("expression", "message"), ERRORS)
def test_rejects_malformed_expression_with_a_message_naming_the_problem(
    expression: str, message: str
) -> None:
    with pytest.raises(ExpressionError, match=re.escape(message)):
        evaluate(expression, ev())


TEMPLATES: list[tuple[str, str]] = [
    ("plain text", "plain text"),
    ("Hello ${{ inputs.name }}!", "Hello World!"),
    ("${{ env.GREETING }}, ${{ inputs.name }}", "Hello, World"),
    ("${{ format('}}') }}", "}"),  # '}}' inside a string does not end the expression
    (
        "${{ null }}|${{ true }}|${{ 1.50 }}|${{ fromJSON('[1]') }}|${{ github.event }}",
        "|true|1.5|Array|Object",
    ),
    ("python ${{ matrix.python }}", "python 3.11"),
]


@pytest.mark.parametrize(("template", "expected"), TEMPLATES)
def test_interpolates_templates(template: str, expected: str) -> None:
    assert interpolate(template, ev()) == expected


def test_unclosed_template_is_an_error_naming_its_position() -> None:
    with pytest.raises(ExpressionError, match="position 7 is never closed"):
        interpolate("Hello ${{ inputs.name", ev())


def test_a_lone_expression_keeps_its_type_but_text_around_it_makes_a_string() -> None:
    assert evaluate_value('${{ fromJSON(\'{"os": ["a", "b"]}\') }}', ev()) == {"os": ["a", "b"]}
    assert evaluate_value("  ${{ inputs.count }} ", ev()) == 3.0
    assert evaluate_value("n=${{ inputs.count }}", ev()) == "n=3"
    assert evaluate_value({"list": ["${{ matrix.os }}", 1]}, ev()) == {"list": ["ubuntu-latest", 1]}


CONDITIONS: list[tuple[Any, dict[str, bool], bool]] = [
    (None, {}, True),
    (None, {"failed": True}, False),
    ("github.event_name == 'workflow_dispatch'", {}, True),
    ("${{ github.event_name == 'push' }}", {}, False),
    # without a status function an if: means success() && (...)
    ("github.sha == 'abc123'", {"failed": True}, False),
    ("failure()", {"failed": True}, True),
    ("failure()", {}, False),
    ("always()", {"failed": True}, True),
    ("always()", {"cancelled": True}, True),
    ("${{ always() && inputs.flag }}", {"failed": True}, True),
    ("cancelled()", {"cancelled": True}, True),
    ("success() || failure()", {"failed": True}, True),
    ("!cancelled()", {"failed": True}, True),
    (True, {}, True),
    (False, {}, False),
    (True, {"failed": True}, False),
    ("steps.build.outcome == 'success'", {}, True),
    ("matrix.experimental", {}, False),
    # text around ${{ }} makes a non-empty string, which is true: GitHub's known pitfall
    ("${{ false }} == true", {}, True),
]


@pytest.mark.parametrize(("condition", "status", "expected"), CONDITIONS)
def test_if_conditions(condition: Any, status: dict[str, bool], expected: bool) -> None:
    assert evaluate_condition(condition, ev(**status)) is expected


def test_numbers_read_as_github_prints_them() -> None:
    assert interpolate("${{ 0.1 }} ${{ 1e21 }} ${{ -0 }}", ev()) == "0.1 1e+21 0"
    assert math.isnan(evaluate("fromJSON('1') == 'x' || NaN", ev()))


def test_nested_format_calls_cannot_build_unbounded_text() -> None:
    # Each level multiplies the text by 16: eight levels would be 2**32 characters.
    expression = "'x'"
    for _ in range(8):
        expression = "format('{0}{0}{0}{0}{0}{0}{0}{0}{0}{0}{0}{0}{0}{0}{0}{0}', " + expression + ")"

    with pytest.raises(ExpressionError, match=r"format\(\): the result is longer than 1 MiB"):
        evaluate(expression, Evaluation({}))


def test_many_large_results_in_one_expression_hit_the_evaluation_budget() -> None:
    big = "format('{0}{0}{0}{0}{0}{0}{0}{0}', format('{0}{0}{0}{0}{0}{0}{0}{0}', fromJSON(inputs.blob)))"
    expression = " == ".join([big] * 30)

    with pytest.raises(ExpressionError, match="builds more than 16 MiB of text"):
        evaluate(expression, Evaluation({"inputs": {"blob": '"' + "y" * 15_000 + '"'}}))


def test_join_of_a_huge_array_is_refused() -> None:
    with pytest.raises(ExpressionError, match=r"join\(\): the result is longer than 1 MiB"):
        evaluate(
            "join(fromJSON(inputs.list), inputs.glue)",
            Evaluation({"inputs": {"list": "[" + ",".join(["1"] * 1000) + "]", "glue": "z" * 2000}}),
        )
