"""pytest-docker-tools fixtures created in the test's isolated daemon.

pytest-docker-tools builds every container, image and network fixture on a fixture named
``docker_client``, and defines one on the host engine. pytest-isolated-docker's own, registered
after every other plugin, wins, so these fixtures never reach the host engine.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import docker
from pytest_docker_tools import container, image  # type: ignore[import-untyped]

if TYPE_CHECKING:
    from conftest import Whereabouts

# The image is preloaded into the isolated daemon (examples/pytest.ini): no registry needed.
debian_image = image(name="debian:bookworm-slim", scope="function")
sleeper = container(image="{debian_image.id}", command=["sleep", "infinity"])


def test_pytest_docker_tools_container_runs_in_the_isolated_daemon(
    sleeper: object, whereabouts: Whereabouts, docker_client: docker.DockerClient
) -> None:
    container_id = getattr(sleeper, "id")  # noqa: B009 (pytest-docker-tools is untyped)
    assert getattr(sleeper, "status") == "running"  # noqa: B009
    whereabouts.assert_isolated(container_id)
    exit_code, output = docker_client.containers.get(container_id).exec_run(
        ["cat", "/etc/os-release"]
    )
    assert exit_code == 0
    assert b"bookworm" in output
