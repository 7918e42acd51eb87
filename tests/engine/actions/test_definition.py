"""action.yml read into ActionDefinition: the three kinds of action, and what users get told when
a file is wrong."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from app.engine.actions import (
    CompositeRuns,
    DockerRuns,
    InvalidDefinition,
    MissingDefinition,
    NodeRuns,
    load_definition,
    parse_definition,
)
from tests.engine.actions.conftest import NODE_ACTION

ACTION = "acme/hello@v1"


def test_reads_a_node_action_with_its_inputs_and_outputs() -> None:
    definition = parse_definition(NODE_ACTION, action=ACTION)
    assert definition.name == "Hello"
    assert definition.description == "says hello"
    assert definition.using == "node20"
    assert definition.runs == NodeRuns(using="node20", main="dist/index.js")
    assert definition.inputs["who"].default == "world"
    assert definition.inputs["who"].required is False
    assert definition.outputs["greeting"].description == "what was said"


def test_reads_pre_and_post_of_a_node_action_with_their_conditions() -> None:
    definition = parse_definition(
        textwrap.dedent(
            """\
            runs:
              using: Node24
              pre: setup.js
              pre-if: runner.os == 'Linux'
              main: main.js
              post: cleanup.js
              post-if: success()
            """
        ),
        action=ACTION,
    )
    assert definition.runs == NodeRuns(
        using="node24",
        main="main.js",
        pre="setup.js",
        pre_if="runner.os == 'Linux'",
        post="cleanup.js",
        post_if="success()",
    )
    assert definition.name == ACTION  # no name: the reference names it


def test_input_defaults_and_required_read_as_github_writes_them() -> None:
    definition = parse_definition(
        textwrap.dedent(
            """\
            inputs:
              count: {default: 3, required: true}
              flag: {default: false, required: "false"}
              token: {default: "${{ github.token }}", deprecationMessage: use auth}
              bare:
            runs: {using: node20, main: index.js}
            """
        ),
        action=ACTION,
    )
    inputs = definition.inputs
    assert (inputs["count"].default, inputs["count"].required) == ("3", True)
    assert (inputs["flag"].default, inputs["flag"].required) == ("false", False)
    assert inputs["token"].default == "${{ github.token }}"
    assert inputs["token"].deprecation_message == "use auth"
    assert inputs["bare"].default is None


def test_reads_a_composite_action_keeping_its_steps_as_written() -> None:
    definition = parse_definition(
        textwrap.dedent(
            """\
            name: Composite
            outputs:
              random:
                value: ${{ steps.pick.outputs.n }}
            runs:
              using: composite
              steps:
                - id: pick
                  run: echo "n=4" >> "$GITHUB_OUTPUT"
                  shell: bash
                - uses: ./inner
                  with: {x: 1}
            """
        ),
        action=ACTION,
    )
    assert isinstance(definition.runs, CompositeRuns)
    assert definition.runs.steps == (
        {"id": "pick", "run": 'echo "n=4" >> "$GITHUB_OUTPUT"', "shell": "bash"},
        {"uses": "./inner", "with": {"x": 1}},
    )
    assert definition.outputs["random"].value == "${{ steps.pick.outputs.n }}"


def test_reads_a_docker_action() -> None:
    definition = parse_definition(
        textwrap.dedent(
            """\
            runs:
              using: docker
              image: Dockerfile
              pre-entrypoint: /setup.sh
              entrypoint: /entry.sh
              post-entrypoint: /cleanup.sh
              args: ["${{ inputs.who }}", 7, true]
              env:
                MODE: fast
                LEVEL: 2
            """
        ),
        action=ACTION,
    )
    assert definition.runs == DockerRuns(
        image="Dockerfile",
        entrypoint="/entry.sh",
        args=("${{ inputs.who }}", "7", "true"),
        env={"MODE": "fast", "LEVEL": "2"},
        pre_entrypoint="/setup.sh",
        post_entrypoint="/cleanup.sh",
    )


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ("runs:\n  using: node10\n  main: a.js\n", "runs.using: 'node10' is not supported"),
        ("runs:\n  using: deno\n", "runs.using: 'deno' is not supported"),
        ("runs:\n  main: a.js\n", "runs.using: missing"),
        ("name: x\n", "runs: missing"),
        ("runs:\n  using: node20\n", "runs.main: missing"),
        ("runs:\n  using: docker\n", "runs.image: missing"),
        ("runs:\n  using: composite\n", "runs.steps: missing or not a list"),
        ("runs:\n  using: composite\n  steps: [echo hi]\n", "runs.steps[0]: expected a mapping"),
        (
            "outputs: {o: {description: d}}\nruns: {using: composite, steps: []}\n",
            "outputs.o.value: missing",
        ),
        ("inputs: [a, b]\nruns: {using: node20, main: a.js}\n", "inputs: expected a mapping"),
        ("name: [a]\nruns: {using: node20, main: a.js}\n", "name: expected text"),
        ("- just\n- a list\n", "is not a mapping"),
        ("runs:\n  using: node20\n   main: a.js\n", "invalid YAML at line 3"),
        ("runs: {using: node20, main: a.js}\nruns: {using: node16, main: a.js}\n", "appears twice"),
    ],
)
def test_refuses_a_definition_naming_the_action_the_file_and_the_problem(source: str, message: str) -> None:
    with pytest.raises(InvalidDefinition) as caught:
        parse_definition(source, action=ACTION, file="sub/action.yml")
    assert str(caught.value).startswith(f"action {ACTION}: sub/action.yml")
    assert message in str(caught.value)


def test_loads_action_yml_or_action_yaml_at_a_path(tmp_path: Path) -> None:
    (tmp_path / "one").mkdir()
    (tmp_path / "one" / "action.yaml").write_text("name: One\nruns: {using: node20, main: a.js}\n")
    (tmp_path / "action.yml").write_text(NODE_ACTION)
    assert load_definition(tmp_path, action=ACTION).name == "Hello"
    one = load_definition(tmp_path, "one", action=ACTION)
    assert (one.name, one.file) == ("One", "one/action.yaml")


def test_a_directory_with_only_a_dockerfile_is_a_docker_action(tmp_path: Path) -> None:
    (tmp_path / "Dockerfile").write_text("FROM alpine\n")
    definition = load_definition(tmp_path, action=ACTION)
    assert definition.runs == DockerRuns(image="Dockerfile")


def test_missing_action_yml_names_the_action_and_the_path(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    with pytest.raises(MissingDefinition, match=r"action acme/hello@v1: there is no action.yml .* at sub$"):
        load_definition(tmp_path, "sub", action=ACTION)
    with pytest.raises(MissingDefinition, match="at the root of its repository"):
        load_definition(tmp_path, action=ACTION)
    with pytest.raises(MissingDefinition):
        load_definition(tmp_path, "nowhere", action=ACTION)


def test_never_reads_a_file_through_a_link_out_of_the_repository(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "action.yml").write_text(NODE_ACTION)
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "action.yml").symlink_to(outside / "action.yml")
    (repo / "sub").symlink_to(outside)
    with pytest.raises(InvalidDefinition, match="action.yml is a link that leads out of"):
        load_definition(repo, action=ACTION)
    with pytest.raises(InvalidDefinition, match="sub/action.yml is a link that leads out of"):
        load_definition(repo, "sub", action=ACTION)


def test_follows_a_link_that_stays_inside_the_repository(tmp_path: Path) -> None:
    (tmp_path / "real").mkdir()
    (tmp_path / "real" / "action.yml").write_text(NODE_ACTION)
    (tmp_path / "alias").symlink_to("real")
    assert load_definition(tmp_path, "alias", action=ACTION).name == "Hello"


def test_refuses_action_yml_that_is_not_utf8(tmp_path: Path) -> None:
    (tmp_path / "action.yml").write_bytes(b"name: \xff\xfe\nruns: {}\n")
    with pytest.raises(InvalidDefinition, match="action.yml is not UTF-8 text"):
        load_definition(tmp_path, action=ACTION)
