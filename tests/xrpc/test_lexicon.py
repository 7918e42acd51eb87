"""Lexicon documents compiled into validators: the trigger's input and output, and the lexicon types."""

from __future__ import annotations

from typing import Any

import pytest

from app.runs.schemas import TRIGGER_NSID
from app.xrpc.errors import InvalidRequest
from app.xrpc.lexicon import Lexicons, lexicons

VALID_INPUT = {
    "knot": "knot1.tangled.sh",
    "pipelineRkey": "3kabc",
    "actor": "did:plc:alice",
    "repoDid": "did:plc:alice",
    "repoName": "app",
    "ref": "a" * 40,
}


def test_loads_the_project_lexicons_once():
    assert lexicons() is lexicons()
    assert TRIGGER_NSID in lexicons().documents


def test_a_valid_trigger_input_passes():
    lexicons().input_validator(TRIGGER_NSID)({**VALID_INPUT, "inputs": {"a": "b"}})


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"actor": "alice"}, "actor must be a DID"),
        ({"ref": 7}, "ref must be a string"),
        ({"inputs": "x"}, "inputs must be an object"),
        ({"knot": None}, "knot must be a string"),
    ],
)
def test_trigger_input_failures_name_the_field(change: dict[str, Any], message: str):
    with pytest.raises(InvalidRequest, match=message):
        lexicons().input_validator(TRIGGER_NSID)({**VALID_INPUT, **change})


def test_the_output_follows_refs_into_workflow_results():
    validate = lexicons().output_validator(TRIGGER_NSID)
    output = {"submitted": True, "knot": "k", "pipelineRkey": "r", "ref": "a" * 40, "workflows": []}
    validate({**output, "workflows": [{"workflow": "ci", "logsUrl": "wss://h/logs/k/r/ci"}]})

    with pytest.raises(InvalidRequest, match=r"workflows\[0\].workflow is required"):
        validate({**output, "workflows": [{"logsUrl": "wss://h/logs"}]})
    with pytest.raises(InvalidRequest, match=r"workflows\[0\].statusUrl must be a URI"):
        validate({**output, "workflows": [{"workflow": "ci", "statusUrl": "not a uri"}]})
    with pytest.raises(InvalidRequest, match="submitted must be a boolean"):
        validate({**output, "submitted": 1})


def test_strings_integers_arrays_and_unions():
    lexicon = Lexicons(
        {
            "com.example.thing": {
                "lexicon": 1,
                "id": "com.example.thing",
                "defs": {
                    "main": {
                        "type": "procedure",
                        "input": {
                            "encoding": "application/json",
                            "schema": {
                                "type": "object",
                                "properties": {
                                    "name": {"type": "string", "maxLength": 4, "enum": ["ab", "abcde"]},
                                    "count": {"type": "integer", "minimum": 1, "maximum": 3},
                                    "tags": {"type": "array", "items": {"type": "string"}, "maxLength": 2},
                                    "when": {"type": "string", "format": "datetime"},
                                    "item": {"type": "union", "refs": ["#a"], "closed": True},
                                },
                            },
                        },
                    },
                    "a": {"type": "object", "required": ["x"], "properties": {"x": {"type": "boolean"}}},
                },
            }
        }
    )
    validate = lexicon.input_validator("com.example.thing")
    validate(
        {
            "name": "ab",
            "count": 2,
            "tags": ["a"],
            "when": "2024-01-01T00:00:00Z",
            "item": {"$type": "com.example.thing#a", "x": True},
        }
    )

    for body, message in [
        ({"name": "abcde"}, "name must be at most 4 bytes"),
        ({"name": "abc"}, "name must be one of"),
        ({"count": True}, "count must be an integer"),
        ({"count": 4}, "count must be at most 3"),
        ({"tags": ["a", "b", "c"]}, "tags must have at most 2 items"),
        ({"tags": [1]}, r"tags\[0\] must be a string"),
        ({"when": "yesterday"}, "when must be an RFC 3339 datetime"),
        ({"item": {"$type": "com.example.other"}}, "item.\\$type must be one of"),
        ({"item": {"$type": "com.example.thing#a"}}, "item.x is required"),
    ]:
        with pytest.raises(InvalidRequest, match=message):
            validate(body)
