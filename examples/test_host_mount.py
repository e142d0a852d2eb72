"""``docker run -v /:/host`` through the isolated daemon does not reach the host's ``/``.

With the dind backend ``/`` is the dind container's file system (thrown away with it); with the
machine backend it is the VM's. With the socket backend it *is* the host's: this test then shows
the risk instead (and removes the file it made).
"""

from __future__ import annotations

import uuid
from pathlib import Path

import docker

from pytest_isolated_docker import DockerDaemon

IMAGE = "debian:bookworm-slim"  # preloaded into the isolated daemon by examples/pytest.ini


def test_a_host_mount_stays_inside_the_isolated_daemon(
    docker_test_daemon: DockerDaemon, docker_client: docker.DockerClient
) -> None:
    marker = f"pytest-isolated-docker-marker-{uuid.uuid4().hex}"
    docker_client.containers.run(
        IMAGE,
        ["touch", f"/host/tmp/{marker}"],
        volumes={"/": {"bind": "/host", "mode": "rw"}},
        remove=True,
    )
    on_host = Path("/tmp") / marker
    if docker_test_daemon.unsafe:
        # socket backend: the container wrote to this machine's own /tmp (pytest runs on the
        # engine's host here), which is the point of the warning.
        assert on_host.exists()
        on_host.unlink()
    else:
        assert not on_host.exists(), f"a container of the isolated daemon wrote {on_host}"
        # ...and it did write, into the daemon's own root file system:
        listing = docker_client.containers.run(
            IMAGE,
            ["ls", f"/host/tmp/{marker}"],
            volumes={"/": {"bind": "/host", "mode": "ro"}},
            remove=True,
        )
        assert listing.strip() == f"/host/tmp/{marker}".encode()
