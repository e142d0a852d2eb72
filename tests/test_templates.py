"""Template data roots: preloaded images are in a fresh dind daemon at start, made once per engine,
and nothing a daemon does changes the template or the next daemon's images."""

from __future__ import annotations

import collections.abc
import concurrent.futures
import io
import os
import secrets
import subprocess
import sys
import time

import docker
import docker.errors
import pytest

from pytest_isolated_docker.backends import dind_templates as templates
from pytest_isolated_docker.daemon import DockerDaemon

from .conftest import api_daemon

DIND_IMAGE = os.environ.get("PYTEST_DOCKER_DIND_IMAGE", "pytest-isolated-docker/dind:latest")


def in_store(host: docker.DockerClient, script: str) -> str:
    """Run ``script`` in a throw-away container with the template store mounted at /store."""
    templates.ensure_store(host)
    out: bytes = host.containers.run(
        DIND_IMAGE,
        ["-c", script],
        entrypoint=["sh"],
        volumes={templates.STORE_VOLUME: {"bind": "/store", "mode": "rw"}},
        remove=True,
    )
    return out.decode()


def content_hash(host: docker.DockerClient, key: str) -> str:
    """A hash of every name, mode, owner and file content of a template."""
    return in_store(
        host,
        f"cd /store/templates/{key} && "
        "find . -printf '%p %m %U %G %s %l\\n' | sort | sha256sum && "
        "find . -type f -print0 | sort -z | xargs -0 sha256sum | sha256sum",
    )


@pytest.fixture
def unique_image(host_engine: docker.DockerClient) -> collections.abc.Iterator[str]:
    """A name of debian:bookworm-slim no other test uses: a preload set of its own, so a
    template of its own; the template is removed afterwards."""
    name = f"pid-template-test/{secrets.token_hex(4)}:1"
    host_engine.images.get("debian:bookworm-slim").tag(name)
    key = templates.TemplateKey.of(host_engine, DIND_IMAGE, [name])
    try:
        yield name
    finally:
        host_engine.images.remove(name)
        templates.forget(host_engine, key.key)
        in_store(host_engine, f"rm -rf /store/templates/{key.key}")


def cloned(daemon: DockerDaemon) -> bool:
    """Whether the daemon started from a template (its entrypoint says so in its log)."""
    return "cloned template" in daemon.logs(1000)


def test_template_is_made_once_then_each_daemon_starts_with_the_images(
    host_engine: docker.DockerClient, unique_image: str
) -> None:
    key = templates.TemplateKey.of(host_engine, DIND_IMAGE, [unique_image])
    assert not templates.is_made(host_engine, key)
    with api_daemon(preload=[unique_image]) as first:
        assert templates.is_made(host_engine, key)
        assert cloned(first)
        marker = host_engine.volumes.get(key.marker).attrs["CreatedAt"]
        assert first.client.containers.run(unique_image, ["echo", "hi"], remove=True) == b"hi\n"
    made = content_hash(host_engine, key.key)
    for _ in range(2):
        with api_daemon(preload=[unique_image]) as daemon:
            assert cloned(daemon)
            assert daemon.preload_seconds < 1.0
            assert (
                daemon.client.images.get(unique_image).id == host_engine.images.get(unique_image).id
            )
    assert host_engine.volumes.get(key.marker).attrs["CreatedAt"] == marker
    assert content_hash(host_engine, key.key) == made


def test_nothing_a_daemon_does_changes_the_template_or_the_next_daemon(
    host_engine: docker.DockerClient, unique_image: str
) -> None:
    key = templates.TemplateKey.of(host_engine, DIND_IMAGE, [unique_image])
    with api_daemon(preload=[unique_image]):
        pass
    before = content_hash(host_engine, key.key)
    with api_daemon(preload=[unique_image]) as daemon:
        client = daemon.client
        # Writing into the daemon's own data root from a container: every shared layer is a
        # read-only mount.
        write = "for f in /d/overlay2/*/diff/usr/bin/apt; do echo x >> $f; done 2>&1; true"
        out = client.containers.run(
            unique_image,
            ["sh", "-c", write],
            volumes={"/var/lib/docker": {"bind": "/d", "mode": "rw"}},
            remove=True,
        )
        assert b"Read-only file system" in out
        client.containers.run(unique_image, ["rm", "-rf", "/usr/bin"], remove=True)
        client.images.get(unique_image).tag("retagged/thing:2")
        client.images.build(
            fileobj=io.BytesIO(f"FROM {unique_image}\nRUN echo built > /built\n".encode()),
            tag="built/thing:1",
            rm=True,
        )
        client.images.remove(unique_image, force=True)
        client.images.remove("retagged/thing:2", force=True)
        client.images.remove("built/thing:1", force=True)
        client.images.prune(filters={"dangling": False})
        assert client.images.list() == []
    assert content_hash(host_engine, key.key) == before
    with api_daemon(preload=[unique_image]) as after:
        assert cloned(after)
        out = after.client.containers.run(unique_image, ["ls", "/usr/bin/apt"], remove=True)
        assert out == b"/usr/bin/apt\n"


def test_concurrent_first_starts_make_one_template(
    host_engine: docker.DockerClient, unique_image: str
) -> None:
    key = templates.TemplateKey.of(host_engine, DIND_IMAGE, [unique_image])
    since = time.time()

    def start_and_check() -> bool:
        with api_daemon(preload=[unique_image]) as daemon:
            return daemon.client.images.get(unique_image) is not None and cloned(daemon)

    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        assert list(pool.map(lambda _: start_and_check(), range(2))) == [True, True]
    made = [
        event
        for event in host_engine.events(
            since=int(since), until=int(time.time()) + 1, decode=True,
            filters={"type": "volume", "event": "create"},
        )
        if event["Actor"]["ID"] == key.marker
    ]  # fmt: skip
    assert len(made) == 1
    assert in_store(host_engine, f"ls -d /store/build/{key.key}-* 2>/dev/null || true") == ""


def test_a_template_missing_from_the_store_is_streamed_then_made_again(
    host_engine: docker.DockerClient, unique_image: str
) -> None:
    key = templates.TemplateKey.of(host_engine, DIND_IMAGE, [unique_image])
    with api_daemon(preload=[unique_image]):
        pass
    in_store(host_engine, f"rm -rf /store/templates/{key.key}")  # a store pruned by hand
    with api_daemon(preload=[unique_image]) as streamed:
        assert not cloned(streamed)
        assert streamed.client.images.get(unique_image)
    assert not templates.is_made(host_engine, key)
    with api_daemon(preload=[unique_image]) as again:
        assert cloned(again)


def test_another_dind_image_gets_another_template(
    host_engine: docker.DockerClient, unique_image: str
) -> None:
    other = f"pid-template-test/dind-{secrets.token_hex(4)}:1"
    host_engine.images.build(
        fileobj=io.BytesIO(f"FROM {DIND_IMAGE}\nLABEL upgraded=yes\n".encode()),
        tag=other,
        rm=True,
        forcerm=True,
    )
    try:
        ours = templates.TemplateKey.of(host_engine, DIND_IMAGE, [unique_image])
        theirs = templates.TemplateKey.of(host_engine, other, [unique_image])
        assert ours.key != theirs.key
        with api_daemon(preload=[unique_image], dind_image=other) as daemon:
            assert cloned(daemon)
        assert templates.is_made(host_engine, theirs)
        assert not templates.is_made(host_engine, ours)
    finally:
        templates.forget(host_engine, theirs.key)
        in_store(host_engine, f"rm -rf /store/templates/{theirs.key}")
        host_engine.images.remove(other)


def test_stale_builds_and_templates_of_removed_images_are_evicted(
    host_engine: docker.DockerClient, unique_image: str
) -> None:
    gone = f"pid-template-test/gone-{secrets.token_hex(4)}:1"
    host_engine.images.build(
        fileobj=io.BytesIO(b"FROM debian:bookworm-slim\nRUN echo gone > /gone\n"),
        tag=gone,
        rm=True,
        forcerm=True,
    )
    gone_key = templates.TemplateKey.of(host_engine, DIND_IMAGE, [gone])
    try:
        with api_daemon(preload=[gone]):
            pass
    finally:
        host_engine.images.remove(gone)
    in_store(
        host_engine,
        "mkdir -p /store/build/killed-half-way /store/templates/unrecorded && "
        "touch -d '1 hour ago' /store/build/killed-half-way /store/templates/unrecorded",
    )
    assert gone_key.key in templates.evictable(host_engine)
    with api_daemon(preload=[unique_image]):
        pass
    assert not templates.is_made(host_engine, gone_key)
    listing = in_store(host_engine, "ls /store/templates /store/build")
    assert gone_key.key not in listing
    assert "killed-half-way" not in listing
    assert "unrecorded" not in listing


def test_a_small_tmpfs_daemon_has_images_larger_than_itself(
    host_engine: docker.DockerClient, unique_image: str
) -> None:
    """The layers stay in the store: a daemon on a 40 MB tmpfs runs a 117 MB image."""
    with api_daemon(preload=[unique_image], dind_storage="tmpfs:40m") as daemon:
        assert cloned(daemon)
        out = daemon.client.containers.run(unique_image, ["echo", "fits"], remove=True)
        assert out == b"fits\n"


def test_stream_mode_loads_into_each_daemon(
    host_engine: docker.DockerClient, unique_image: str
) -> None:
    key = templates.TemplateKey.of(host_engine, DIND_IMAGE, [unique_image])
    with api_daemon(preload=[unique_image], preload_mode="stream") as daemon:
        assert daemon.client.images.get(unique_image)
        assert not cloned(daemon)
    assert not templates.is_made(host_engine, key)


def prune_caches() -> str:
    return subprocess.run(
        [sys.executable, "-m", "pytest_isolated_docker.cli", "prune", "--caches"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout


@pytest.mark.serial  # removes the whole store, which other tests' daemons start from
def test_prune_caches_removes_the_store_unless_a_daemon_uses_it(
    host_engine: docker.DockerClient, unique_image: str
) -> None:
    key = templates.TemplateKey.of(host_engine, DIND_IMAGE, [unique_image])
    with api_daemon(preload=[unique_image]):
        assert "kept: volume pytest-isolated-docker-dind-templates" in prune_caches()
        assert templates.is_made(host_engine, key)
    out = prune_caches()
    assert f"removed: volume {key.marker}" in out
    assert f"removed: volume {templates.STORE_VOLUME}" in out
    assert templates.markers(host_engine) == {}
    with pytest.raises(docker.errors.NotFound):
        host_engine.volumes.get(templates.STORE_VOLUME)
