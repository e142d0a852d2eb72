"""Fixtures shared by the integration examples: where did a container really run?

Every integration example starts a container with some tool (testcontainers, pytest-docker-tools,
the docker CLI, compose, python-on-whales) and then asks both engines about it: the container must
be known to the test's isolated daemon and unknown to the host's engine. A tool that silently
talks to the host engine therefore fails its example.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import docker
import docker.errors
import pytest

from pytest_isolated_docker import DockerDaemon


@pytest.fixture(scope="session")
def host_engine() -> Iterator[docker.DockerClient]:
    """The host's own engine, only to check that nothing ran there."""
    client = docker.from_env()
    with contextlib.closing(client):
        yield client


class Whereabouts:
    """Asks the isolated daemon and the host engine where a container is."""

    def __init__(
        self, daemon: DockerDaemon, isolated: docker.DockerClient, host: docker.DockerClient
    ) -> None:
        self.daemon = daemon
        self.isolated = isolated
        self.host = host

    def assert_isolated(self, container: str) -> None:
        """``container`` (an id or a name) is in the isolated daemon and not in the host engine."""
        try:
            self.isolated.containers.get(container)
        except docker.errors.NotFound:
            pytest.fail(f"container {container} is not in the isolated daemon: where did it run?")
        if self.daemon.on_host_engine:
            # The socket and guarded backends *are* the host engine, behind a proxy: the container
            # is there, and must carry the session's labels (made through the proxy).
            labels = self.host.containers.get(container).labels
            assert "pytest-isolated-docker.session" in labels, labels
            return
        try:
            self.host.containers.get(container)
        except docker.errors.NotFound:
            return
        pytest.fail(f"container {container} ran in the host's engine, not in the isolated daemon")

    def assert_engine_is_isolated(self, engine_id: str) -> None:
        """``engine_id`` (``docker info``'s ID, as a tool reports it) is the isolated daemon's."""
        assert engine_id == self.isolated.info()["ID"]
        if not self.daemon.on_host_engine:
            assert engine_id != self.host.info()["ID"]


@pytest.fixture
def whereabouts(docker_test_daemon: DockerDaemon, host_engine: docker.DockerClient) -> Whereabouts:
    """The check, with a client of its own: it never depends on the fixtures under test."""
    return Whereabouts(docker_test_daemon, docker_test_daemon.client, host_engine)
