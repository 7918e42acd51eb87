"""`spindle runner-image build`: its arguments, its errors, and what it asks the builder for."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from pathlib import Path

import aiodocker
import pytest

from app import cli
from app.engine.container import images
from tests.support.podman import TEST_IMAGE, PodmanEngine


def test_tag_and_repeated_packages_are_read() -> None:
    args = cli._parser().parse_args(
        ["runner-image", "build", "--tag", "localhost/mine:1", "--package", "rustc", "--package", "g++"]
    )
    assert (args.command, args.image_command, args.tag, args.package) == (
        "runner-image",
        "build",
        "localhost/mine:1",
        ["rustc", "g++"],
    )


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--package=--hook=sh"], "not a Debian package name"),
        (["--package", "a,b"], "not a Debian package name"),
        (["--tag", "Not A Tag"], "not an image reference"),
        (["--tag", "a:b:c"], "not an image reference"),
    ],
)
def test_bad_arguments_are_refused_before_anything_runs(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit:
        cli._parser().parse_args(["runner-image", "build", *argv])
    assert exit.value.code == 2
    assert message in capsys.readouterr().err


def test_an_engine_that_does_not_answer_exits_non_zero_naming_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("SPINDLE_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("SPINDLE_DOCKER_HOST", f"unix://{tmp_path}/none.sock")
    assert cli.main(["runner-image", "build"]) == 1
    assert (
        f"spindle: SPINDLE_DOCKER_HOST=unix://{tmp_path}/none.sock does not answer" in capsys.readouterr().err
    )


def test_builds_the_default_packages_and_the_extra_ones_under_the_tag_given(
    podman_engine: PodmanEngine,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    asked: list[tuple[images.DebianImage, Sequence[str]]] = []

    async def build(
        docker: aiodocker.Docker,
        image: images.DebianImage,
        *,
        progress: images.Progress,
        also_tag: Sequence[str],
    ) -> str:
        # Everything but mmdebstrap: the small image stands in for the one it would make.
        asked.append((image, also_tag))
        progress("I: success")
        for ref in also_tag:
            repository, tag = images.split_ref(ref)
            await docker.images.tag(TEST_IMAGE.tag, repository, tag=tag)
        return image.tag

    monkeypatch.setattr(images, "build", build)
    monkeypatch.setenv("SPINDLE_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("SPINDLE_DOCKER_HOST", podman_engine.url)
    try:
        assert (
            cli.main(["runner-image", "build", "--tag", "localhost/spindle-cli-test:1", "--package", "rustc"])
            == 0
        )
    finally:
        asyncio.run(untag(podman_engine.url, "localhost/spindle-cli-test:1"))
    [(image, also_tag)] = asked
    assert image.repository == "localhost/spindle-cli-test"
    assert set(image.packages) == {*images.RUNNER_PACKAGES, "rustc"}
    assert also_tag == ["localhost/spindle-cli-test:1"]
    out = capsys.readouterr().out
    assert "engine: Podman " in out and "I: success" in out
    assert "localhost/spindle-cli-test:1 (localhost/spindle-cli-test:bookworm-" in out


async def untag(url: str, ref: str) -> None:
    async with aiodocker.Docker(url=url) as docker:
        if await images.image_exists(docker, ref):
            await docker.images.delete(ref)
