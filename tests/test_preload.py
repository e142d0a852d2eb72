"""Preloading: images only the host engine has run inside isolated daemons, no registry needed."""

from __future__ import annotations

import collections.abc
import io
import os
import time

import docker
import pytest

from .conftest import api_daemon, labelled, session_of

# One tag per xdist worker of this suite: each worker's module fixture builds and removes its own.
LOCAL_IMAGE = f"local/thing-{os.environ.get('PYTEST_XDIST_WORKER', 'main')}:1"


@pytest.fixture(scope="module")
def local_image(host_engine: docker.DockerClient) -> collections.abc.Iterator[str]:
    """An image that exists only in the host engine (built here, never pushed anywhere)."""
    dockerfile = b"FROM debian:bookworm-slim\nRUN echo 'made on this host' > /thing\n"
    host_engine.images.build(fileobj=io.BytesIO(dockerfile), tag=LOCAL_IMAGE, rm=True)
    try:
        yield LOCAL_IMAGE
    finally:
        host_engine.images.remove(LOCAL_IMAGE, force=True)


def test_local_image_runs_in_both_workers_daemons(
    pytester: pytest.Pytester, host_engine: docker.DockerClient, local_image: str
) -> None:
    pytester.makepyfile(
        f"""
        import pytest

        @pytest.mark.parametrize("i", range(4))
        def test_thing(docker_client, i):
            out = docker_client.containers.run("{local_image}", ["cat", "/thing"], remove=True)
            assert out == b"made on this host\\n"
        """
    )
    result = pytester.runpytest_subprocess(
        "-n", "2", "--docker-preload", local_image, "-p", "no:randomly", timeout=300
    )
    result.assert_outcomes(passed=4)
    result.stdout.fnmatch_lines(
        [f"isolated-docker: preloading {local_image}", "gw0: *preload*", "gw1: *preload*"]
    )
    assert labelled(host_engine, session_of(result.stdout.str())) == []


def test_preload_from_environment_and_ini(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, local_image: str
) -> None:
    pytester.makeini("[pytest]\ndocker_preload =\n    debian:bookworm-slim\n")
    monkeypatch.setenv("PYTEST_DOCKER_PRELOAD", f"{local_image},debian:bookworm-slim")
    pytester.makepyfile(
        f"""
        def test_both(docker_client):
            assert docker_client.images.get("{local_image}")
            assert docker_client.images.get("debian:bookworm-slim")
        """
    )
    result = pytester.runpytest_subprocess(timeout=300)
    result.assert_outcomes(passed=1)


def test_image_that_exists_nowhere_fails_before_any_test(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        def test_never_runs(docker_client):
            raise AssertionError("must not run")
        """
    )
    result = pytester.runpytest_subprocess(
        "--docker-preload",
        "debian:bookworm-slim",
        "--docker-preload",
        "pytest-isolated-docker/nowhere:404",
        timeout=300,
    )
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        ["*[[]preload[]]*cannot be pulled: pytest-isolated-docker/nowhere:404*--docker-preload*"]
    )
    assert "must not run" not in result.stdout.str()


def test_an_image_under_several_names_is_streamed_once(host_engine: docker.DockerClient) -> None:
    """Two tags of one image: one load into the daemon (its own events say so), both tags there."""
    alias = f"local/alias-{os.environ.get('PYTEST_XDIST_WORKER', 'main')}:1"
    host_engine.images.get("debian:bookworm-slim").tag(alias)
    try:
        with api_daemon(preload=["debian:bookworm-slim", alias], preload_mode="stream") as daemon:
            events = daemon.client.api.events(
                since=0, until=int(time.time()) + 1, decode=True, filters={"type": "image"}
            )
            actions = [event["Action"] for event in events]
            assert actions.count("load") == 1, actions
            tags = daemon.client.images.get(alias).tags
            assert set(tags) >= {"debian:bookworm-slim", alias}
    finally:
        host_engine.images.remove(alias)
