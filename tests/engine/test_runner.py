"""Pieces of the runner that need no run: env-file parsing and shell command lines."""

from __future__ import annotations

import pytest

from app.engine.action_steps import input_variable
from app.engine.runner import StepError, parse_file_command, shell_command


def test_parses_env_file_lines_and_heredocs() -> None:
    text = "A=1\nB=x=y\n\nMULTI<<EOF\nline 1\nline 2\nEOF\nEMPTY=\r\n"
    assert parse_file_command(text, "GITHUB_ENV") == {
        "A": "1",
        "B": "x=y",
        "MULTI": "line 1\nline 2",
        "EMPTY": "",
    }


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("X<<END\nnever closed\n", "no line 'END' closes the value of 'X'"),
        ("just words\n", "neither NAME=value"),
    ],
)
def test_rejects_malformed_env_file(text: str, message: str) -> None:
    with pytest.raises(StepError, match=message):
        parse_file_command(text, "GITHUB_OUTPUT")


@pytest.mark.parametrize(
    ("shell", "argv", "extension"),
    [
        (None, ["bash", "-e", "{0}"], ".sh"),
        ("bash", ["bash", "--noprofile", "--norc", "-eo", "pipefail", "{0}"], ".sh"),
        ("sh", ["sh", "-e", "{0}"], ".sh"),
        ("perl {0}", ["perl", "{0}"], ""),
    ],
)
def test_builds_shell_command_lines_as_github_does(
    shell: str | None, argv: list[str], extension: str
) -> None:
    assert shell_command(shell, commands=frozenset({"bash", "sh", "python"})) == (argv, extension)


def test_python_shell_falls_back_to_python3_when_there_is_no_python() -> None:
    argv, extension = shell_command("python", commands=frozenset({"sh", "python3"}))
    assert argv == ["python3", "{0}"] and extension == ".py"


@pytest.mark.parametrize(("shell", "message"), [("cmd", "Windows-only"), ("fish", "not supported")])
def test_rejects_shells_that_cannot_run_here(shell: str, message: str) -> None:
    with pytest.raises(StepError, match=message):
        shell_command(shell, commands=frozenset({"bash", "sh", "python"}))


def test_the_default_shell_is_sh_in_an_image_without_bash() -> None:
    assert shell_command(None, commands=frozenset({"sh"})) == (["sh", "-e", "{0}"], ".sh")


@pytest.mark.parametrize(("name", "variable"), [("who", "INPUT_WHO"), ("node version", "INPUT_NODE_VERSION")])
def test_inputs_become_variables_as_github_names_them(name: str, variable: str) -> None:
    assert input_variable(name) == variable
