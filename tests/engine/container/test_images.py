"""Images: local ones used as is, missing ones pulled (or failing clearly), Debian ones built."""

from __future__ import annotations

from pathlib import Path

import aiodocker
import pytest

from app.config import Settings
from app.engine.container import images
from tests.support.podman import TEST_IMAGE


async def test_a_local_image_is_used_without_pulling(docker: aiodocker.Docker) -> None:
    lines: list[str] = []
    await images.ensure_image(docker, TEST_IMAGE.tag, progress=lines.append)
    assert lines == []


async def test_a_missing_image_that_cannot_be_pulled_fails_naming_it(docker: aiodocker.Docker) -> None:
    lines: list[str] = []
    ref = "registry.invalid/nobody/nothing:1"  # .invalid never resolves (RFC 2606)
    with pytest.raises(images.ImagePullFailed, match=f"cannot pull image {ref}: .*registry.invalid"):
        await images.ensure_image(docker, ref, progress=lines.append)
    assert lines == [f"pulling {ref}"]


@pytest.mark.parametrize(
    ("ref", "name"),
    [
        ("node", "docker.io/library/node:latest"),
        ("node:20", "docker.io/library/node:20"),
        ("someone/tool:1", "docker.io/someone/tool:1"),
        ("ghcr.io/someone/tool", "ghcr.io/someone/tool:latest"),
        ("localhost:5000/tool:2", "localhost:5000/tool:2"),
        ("localhost/spindle-runner:bookworm", "localhost/spindle-runner:bookworm"),
        ("node@sha256:" + "a" * 64, "docker.io/library/node@sha256:" + "a" * 64),
    ],
)
def test_names_are_pulled_as_docker_reads_them(ref: str, name: str) -> None:
    assert images.qualified_name(ref) == name


def test_the_tag_changes_with_the_package_list_and_not_with_its_order() -> None:
    one = images.DebianImage("localhost/x", ("bash", "git"))
    assert one.tag.startswith("localhost/x:bookworm-")
    assert images.DebianImage("localhost/x", ("git", "bash", "git")).tag == one.tag
    assert images.DebianImage("localhost/x", ("bash", "git", "jq")).tag != one.tag
    assert images.DebianImage("localhost/x", ("bash", "git"), suite="trixie").tag != one.tag


async def test_the_built_image_has_its_packages_and_a_shell_by_default(docker: aiodocker.Docker) -> None:
    config = (await docker.images.inspect(TEST_IMAGE.tag))["Config"]
    assert config["Cmd"] == ["bash"]
    assert "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin" in config["Env"]
    container = await docker.containers.run(
        {"Image": TEST_IMAGE.tag, "Cmd": ["bash", "-c", "git --version && ls /usr/share/man | wc -l"]}
    )
    try:
        assert (await container.wait())["StatusCode"] == 0
        output = "".join(await container.log(stdout=True))
    finally:
        await container.delete(force=True)
    assert output.startswith("git version ")
    assert output.splitlines()[-1] == "0"  # man pages are left out


async def test_a_built_image_is_found_by_its_tag_and_named_again(docker: aiodocker.Docker) -> None:
    lines: list[str] = []
    other = "localhost/spindle-test-alias:1"
    tag = await images.ensure_built(docker, TEST_IMAGE, progress=lines.append, also_tag=[other])
    try:
        assert tag == TEST_IMAGE.tag
        assert lines == []
        assert (await docker.images.inspect(other))["Id"] == (await docker.images.inspect(tag))["Id"]
    finally:
        await docker.images.delete(other)


async def test_a_package_name_mmdebstrap_would_read_as_an_option_is_refused(
    docker: aiodocker.Docker,
) -> None:
    image = images.DebianImage("localhost/x", ("bash", "--customize-hook=rm -rf /"))
    with pytest.raises(images.ImageBuildFailed, match="not Debian package names"):
        await images.build(docker, image, progress=lambda line: None)


async def test_the_default_runner_image_is_built_only_when_it_is_the_configured_one(
    docker: aiodocker.Docker, tmp_path: Path
) -> None:
    settings = Settings(data_dir=tmp_path, runner_image="localhost/someone-else:1")
    lines: list[str] = []
    assert await images.ensure_default_runner_image(docker, settings=settings, progress=lines.append) is None
    assert lines == []


def test_an_image_under_the_default_tag_is_kept_when_it_has_every_runner_package() -> None:
    image = images.DebianImage("localhost/x", ("bash", "git"))
    more = images.DebianImage("localhost/x", ("bash", "git", "rustc"))
    assert image.is_built_by({"Labels": more.labels})
    assert not more.is_built_by({"Labels": image.labels})
    assert not image.is_built_by({"Labels": {**image.labels, images.RECIPE_LABEL: "bookworm/0"}})
    assert not image.is_built_by({"Labels": None})
    assert not image.is_built_by({})


async def test_a_built_image_says_what_went_into_it(docker: aiodocker.Docker) -> None:
    config = (await docker.images.inspect(TEST_IMAGE.tag))["Config"]
    assert config["Labels"] == TEST_IMAGE.labels
    assert TEST_IMAGE.is_built_by(config)


def test_references_are_split_at_the_tag_not_at_a_registry_port() -> None:
    assert images.split_ref("localhost/a:b") == ("localhost/a", "b")
    assert images.split_ref("localhost:5000/a") == ("localhost:5000/a", "latest")
    assert images.split_ref("localhost:5000/a:1.0") == ("localhost:5000/a", "1.0")
