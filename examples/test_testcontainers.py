"""testcontainers-python starting its containers in the test's isolated daemon.

testcontainers reads ``DOCKER_HOST`` (and the TLS variables, through docker-py) from the
environment when a container object is made, and writes ``DOCKER_HOST`` back into ``os.environ``
itself. ``monkeypatch`` sets them for this test only and restores the environment afterwards.

Its reaper, Ryuk, is a container that mounts the engine's socket; its image would have to be pulled
and it would hold the daemon's socket, so it is disabled: the isolated daemon is thrown away (or
reset after the test) anyway.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import docker
import pytest
from testcontainers.core.config import testcontainers_config
from testcontainers.core.container import DockerContainer
from testcontainers.core.labels import LABEL_SESSION_ID, SESSION_ID

if TYPE_CHECKING:
    from conftest import Whereabouts

IMAGE = "debian:bookworm-slim"  # preloaded into the isolated daemon by examples/pytest.ini


@pytest.fixture
def testcontainers_env(docker_env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    """Point testcontainers at the isolated daemon for one test, with its reaper off.

    testcontainers builds its client with ``docker.from_env()``; ``docker_env`` also points
    ``REQUESTS_CA_BUNDLE``/``CURL_CA_BUNDLE`` at a bundle holding the daemon's CA, so a CA bundle
    set by the CI image does not break the TLS handshake.
    """
    for name, value in docker_env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("TESTCONTAINERS_RYUK_DISABLED", "true")
    # The setting is read once and cached: set it on the config object too.
    monkeypatch.setattr(testcontainers_config, "ryuk_disabled", True)


@pytest.mark.usefixtures("testcontainers_env")
def test_testcontainers_runs_in_the_isolated_daemon(
    whereabouts: Whereabouts,
    docker_client: docker.DockerClient,
    host_engine: docker.DockerClient,
) -> None:
    mine = {"label": [f"{LABEL_SESSION_ID}={SESSION_ID}"]}
    with DockerContainer(IMAGE).with_command(["sleep", "infinity"]) as container:
        wrapped = container.get_wrapped_container()
        exit_code, output = wrapped.exec_run(["echo", "hello from testcontainers"])
        assert (exit_code, output) == (0, b"hello from testcontainers\n")
        whereabouts.assert_isolated(wrapped.id)
        whereabouts.assert_engine_is_isolated(container.get_docker_client().client.info()["ID"])
    # testcontainers removed its container from the isolated daemon, and nothing (no Ryuk either)
    # was ever made in the host engine.
    assert docker_client.containers.list(all=True, filters=mine) == []
    assert host_engine.containers.list(all=True, filters=mine) == []
