"""The docker CLI, docker compose and python-on-whales driven through ``docker_env``.

``docker_env`` holds ``DOCKER_HOST``, ``DOCKER_TLS_VERIFY``, ``DOCKER_CERT_PATH`` (and an empty
``DOCKER_CONTEXT``, and with TLS ``REQUESTS_CA_BUNDLE``/``CURL_CA_BUNDLE``) for the test's
isolated daemon: merge it over ``os.environ`` for a subprocess. The test process's own
environment is never changed.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from python_on_whales import DockerClient as WhalesClient

if TYPE_CHECKING:
    from conftest import Whereabouts

IMAGE = "debian:bookworm-slim"  # preloaded into the isolated daemon by examples/pytest.ini

COMPOSE_FILE = """\
version: "3.7"
services:
  app:
    image: debian:bookworm-slim
    command: ["sleep", "infinity"]
  worker:
    image: debian:bookworm-slim
    command: ["sleep", "infinity"]
"""


def run(command: list[str], env: dict[str, str], cwd: Path | None = None) -> str:
    """Run ``command`` with ``env`` merged over ``os.environ``; fail with its stderr."""
    result = subprocess.run(
        command, env={**os.environ, **env}, cwd=cwd, capture_output=True, text=True, check=False
    )
    if result.returncode != 0:
        pytest.fail(f"{command} exited with {result.returncode}:\n{result.stderr}", pytrace=False)
    return result.stdout.strip()


def docker_cli(docker_env: dict[str, str], *args: str) -> str:
    return run(["docker", *args], docker_env)


def test_docker_cli_runs_in_the_isolated_daemon(
    docker_env: dict[str, str], whereabouts: Whereabouts
) -> None:
    whereabouts.assert_engine_is_isolated(docker_cli(docker_env, "info", "--format", "{{.ID}}"))
    container_id = docker_cli(docker_env, "run", "-d", IMAGE, "sleep", "infinity")
    whereabouts.assert_isolated(container_id)
    assert docker_cli(docker_env, "exec", container_id, "echo", "hi") == "hi"


def compose_command() -> list[str]:
    """``docker compose`` (v2 plugin) when the CLI has it, else Debian's ``docker-compose``."""
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    probe = subprocess.run(["docker", "compose", "version"], capture_output=True, check=False)
    if probe.returncode == 0:
        return ["docker", "compose"]
    pytest.skip("neither docker-compose nor the docker compose plugin is installed")


def test_docker_compose_runs_in_the_isolated_daemon(
    docker_env: dict[str, str], whereabouts: Whereabouts, tmp_path: Path
) -> None:
    # Debian's docker-compose (v1) is built on docker-py and requests: docker_env's
    # REQUESTS_CA_BUNDLE/CURL_CA_BUNDLE (the daemon's CA plus the environment's) let it verify
    # the daemon even where the CI image sets those variables.
    (tmp_path / "compose.yaml").write_text(COMPOSE_FILE)
    compose = [*compose_command(), "--project-name", "example", "--file", "compose.yaml"]

    def compose_run(*args: str) -> str:
        return run([*compose, *args], docker_env, cwd=tmp_path)

    compose_run("up", "--detach")
    try:
        ids = compose_run("ps", "--quiet").split()
        assert len(ids) == 2
        for container_id in ids:
            whereabouts.assert_isolated(container_id)
    finally:
        compose_run("down", "--volumes", "--timeout", "0")
    assert compose_run("ps", "--quiet").split() == []


def whales_client(docker_env: dict[str, str]) -> WhalesClient:
    """A python-on-whales client for the daemon that ``docker_env`` describes."""
    cert_path = Path(docker_env["DOCKER_CERT_PATH"]) if docker_env["DOCKER_CERT_PATH"] else None
    if cert_path is None:  # a unix socket (socket backend): no TLS
        return WhalesClient(host=docker_env["DOCKER_HOST"])
    return WhalesClient(
        host=docker_env["DOCKER_HOST"],
        tlsverify=True,
        tlscacert=cert_path / "ca.pem",
        tlscert=cert_path / "cert.pem",
        tlskey=cert_path / "key.pem",
    )


def test_python_on_whales_runs_in_the_isolated_daemon(
    docker_env: dict[str, str], whereabouts: Whereabouts
) -> None:
    whales = whales_client(docker_env)
    whereabouts.assert_engine_is_isolated(str(whales.system.info().id))
    container = whales.run(IMAGE, ["sleep", "infinity"], detach=True, remove=True)
    whereabouts.assert_isolated(container.id)
    assert whales.execute(container, ["echo", "hi"]) == "hi"
    # python-on-whales runs the docker CLI: the same container, seen through docker_env.
    assert (
        json.loads(
            docker_cli(docker_env, "inspect", "--format", "{{json .State.Running}}", container.id)
        )
        is True
    )
