"""The Dockerfile reader of the engine's own builder (app/engine/container/dockerfile.py)."""

from __future__ import annotations

import pytest

from app.engine.backend import StepImageError
from app.engine.container.dockerfile import pairs, parse, substitute


def test_reads_continuations_comments_flags_and_both_forms() -> None:
    instructions = parse(
        "# syntax is ignored\nFROM debian\nRUN echo a \\\n  # dropped\n  && echo b\n"
        'COPY --chown=1000:1000 a b /dst/\nCMD ["run", "it"]\n'
    )

    assert [(i.line, i.name) for i in instructions] == [(2, "FROM"), (3, "RUN"), (6, "COPY"), (7, "CMD")]
    assert instructions[1].text == "echo a  && echo b"
    assert instructions[1].json_list() is None
    assert instructions[2].flags == {"chown": "1000:1000"} and instructions[2].text == "a b /dst/"
    assert instructions[3].json_list() == ["run", "it"]


def test_refuses_an_unsupported_instruction_naming_it_and_its_line() -> None:
    with pytest.raises(StepImageError, match="HEALTHCHECK on line 3 is not supported"):
        parse("FROM debian\n\nHEALTHCHECK CMD true\n")


def test_refuses_a_second_stage() -> None:
    with pytest.raises(StepImageError, match="FROM on line 3: multi-stage"):
        parse("FROM debian AS one\nRUN true\nFROM debian\n")


def test_refuses_a_dockerfile_without_from() -> None:
    with pytest.raises(StepImageError, match="does not start with FROM"):
        parse("RUN true\n")


def test_substitutes_variables_with_defaults_and_escapes() -> None:
    assert substitute("$A ${B:-dflt} ${A:+alt} \\$A", {"A": "1"}) == "1 dflt alt $A"


def test_reads_env_pairs_in_both_forms() -> None:
    [env_new, env_old] = parse('FROM x\nENV A=1 B="two words"\nENV C three words\n')[1:]

    assert pairs(env_new, {}) == [("A", "1"), ("B", "two words")]
    assert pairs(env_old, {}) == [("C", "three words")]
