"""A small example suite to copy: tests that get an isolated Docker daemon from fixtures.

Run it with ``pytest examples`` (the default backend is dind: a fresh daemon in a container).
"""

from __future__ import annotations

import os
import subprocess

import docker

from pytest_isolated_docker import DockerDaemon

IMAGE = os.environ.get("EXAMPLE_IMAGE", "debian:bookworm-slim")


def test_run_a_container(docker_client: docker.DockerClient) -> None:
    """docker-py against the isolated daemon; the container is removed after the test."""
    output = docker_client.containers.run(IMAGE, ["echo", "hello from an isolated daemon"])
    assert output == b"hello from an isolated daemon\n"


def test_docker_cli(docker_env: dict[str, str]) -> None:
    """The docker CLI (or compose) pointed at the same daemon through ``docker_env``."""
    result = subprocess.run(
        ["docker", "info", "--format", "{{.ID}} {{.ServerVersion}}"],
        env={**os.environ, **docker_env},
        capture_output=True,
        text=True,
        check=True,
    )
    print("docker CLI talked to daemon", result.stdout.strip(), "at", docker_env["DOCKER_HOST"])


def test_which_daemon(docker_daemon: DockerDaemon) -> None:
    """Shows which daemon the session uses (run with -s to see it)."""
    print(f"backend={docker_daemon.backend} endpoint={docker_daemon.base_url}")
    assert docker_daemon.client.ping()
