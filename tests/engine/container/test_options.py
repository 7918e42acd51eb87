"""`options:` of containers and services: honoured, refused, ignored."""

from __future__ import annotations

import pytest

from app.engine.container.options import OptionsError, duration, parse_options


def test_reads_the_health_flags_github_examples_use() -> None:
    options = parse_options(
        '--health-cmd "pg_isready -U postgres" --health-interval 10s --health-timeout 5s --health-retries 5'
    )

    assert options.health is not None
    assert options.health.cmd == "pg_isready -U postgres"
    assert (options.health.interval, options.health.timeout, options.health.retries) == (10.0, 5.0, 5)


def test_reads_env_user_entrypoint_and_equals_forms() -> None:
    options = parse_options("-e A=1 --env=B=two --user=1000 --entrypoint /bin/sh --memory 512m --cpus=1.5")

    assert options.env == {"A": "1", "B": "two"}
    assert (options.user, options.entrypoint) == ("1000", "/bin/sh")
    assert options.memory_bytes == 512 * 1024 * 1024
    assert options.cpus == 1.5


@pytest.mark.parametrize(
    "text",
    [
        "--privileged",
        "--cap-add SYS_ADMIN",
        "--cap-add=NET_ADMIN",
        "-v /:/host",
        "--volume=/var/run/docker.sock:/var/run/docker.sock",
        "--network host",
        "--pid=host",
        "--security-opt seccomp=unconfined",
        "--device /dev/kvm",
        "--userns host",
        "--mount type=bind,src=/,dst=/host",
        "-p 80:80",
        "--sysctl net.ipv4.ip_forward=1",
    ],
)
def test_refuses_every_flag_that_reaches_the_host(text: str) -> None:
    flag = text.split()[0].split("=")[0]

    with pytest.raises(OptionsError, match=f"{flag} is not allowed"):
        parse_options(text)


def test_ignores_flags_that_change_nothing_here_and_says_which() -> None:
    assert parse_options("--rm --init --label a=b --name x").ignored == [
        "--rm",
        "--init",
        "--label",
        "--name",
    ]


@pytest.mark.parametrize(
    ("text", "seconds"), [("10s", 10.0), ("1m30s", 90.0), ("500ms", 0.5), ("2", 2.0), ("1h", 3600.0)]
)
def test_durations_read_as_docker_reads_them(text: str, seconds: float) -> None:
    assert duration(text, "--health-interval") == seconds


@pytest.mark.parametrize("text", ["--health-interval 10x --health-cmd true", "--memory lots", "--cpus many"])
def test_unreadable_values_are_named(text: str) -> None:
    with pytest.raises(OptionsError, match=text.split()[0] if "health" not in text else "--health-interval"):
        parse_options(text)


def test_health_flags_without_a_command_are_refused() -> None:
    with pytest.raises(OptionsError, match="need --health-cmd"):
        parse_options("--health-interval 10s")


def test_an_unbalanced_quote_is_an_error_not_a_crash() -> None:
    with pytest.raises(OptionsError, match="cannot be split"):
        parse_options('--health-cmd "unterminated')
