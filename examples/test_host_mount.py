"""``docker run -v /:/host`` through the isolated daemon does not reach the host's ``/``.

With the dind backend ``/`` is the dind container's file system (thrown away with it); with the
machine backend it is the VM's. With the guarded backend the guard refuses the mount (403) before
anything runs. With the socket backend it *is* the host's: this test then shows the risk instead
(and removes the file it made).
"""

from __future__ import annotations

import uuid
from pathlib import Path

import docker
import docker.errors
import pytest

from pytest_isolated_docker import DockerDaemon

IMAGE = "debian:bookworm-slim"  # preloaded into the isolated daemon by examples/pytest.ini


def test_a_host_mount_stays_inside_the_isolated_daemon(
    docker_test_daemon: DockerDaemon, docker_client: docker.DockerClient
) -> None:
    marker = f"pytest-isolated-docker-marker-{uuid.uuid4().hex}"
    on_host = Path("/tmp") / marker

    def write_through_host_mount() -> None:
        docker_client.containers.run(
            IMAGE,
            ["touch", f"/host/tmp/{marker}"],
            volumes={"/": {"bind": "/host", "mode": "rw"}},
            remove=True,
        )

    if docker_test_daemon.on_host_engine and not docker_test_daemon.unsafe:
        # guarded backend: refused before anything runs, naming the rule that refused it.
        with pytest.raises(docker.errors.APIError, match="host-bind") as refused:
            write_through_host_mount()
        assert refused.value.status_code == 403
        assert not on_host.exists()
        return
    write_through_host_mount()
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
