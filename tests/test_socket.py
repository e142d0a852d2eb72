"""The socket backend: the host's own engine, refused without opt-in, loudly unsafe, and tidy."""

from __future__ import annotations

import collections.abc

import docker
import pytest

from .conftest import labelled, session_of

SOCKET_TESTS = """
import os, subprocess

def test_container(docker_client):
    docker_client.containers.run("debian:bookworm-slim", "sleep 60", detach=True, name=None)
    docker_client.networks.create("pid-socket-test-net")
    docker_client.volumes.create()
    assert docker_client.containers.list()

def test_cli(docker_env):
    out = subprocess.run(
        ["docker", "run", "-d", "debian:bookworm-slim", "sleep", "60"],
        env={**os.environ, **docker_env}, capture_output=True, text=True, check=True,
    ).stdout.strip()
    labels = subprocess.run(
        ["docker", "inspect", "--format", "{{json .Config.Labels}}", out],
        env={**os.environ, **docker_env}, capture_output=True, text=True, check=True,
    ).stdout
    assert "pytest-isolated-docker.session" in labels
"""


@pytest.fixture
def preexisting(host_engine: docker.DockerClient) -> collections.abc.Iterator[str]:
    """A container the plugin did not create: it must survive every run."""
    container = host_engine.containers.run(
        "debian:bookworm-slim", "sleep 600", detach=True, labels={"purpose": "preexisting"}
    )
    try:
        yield container.id
    finally:
        container.remove(force=True)


def test_refused_without_opt_in(pytester: pytest.Pytester) -> None:
    pytester.makepyfile("def test_one(docker_client): pass")
    result = pytester.runpytest_subprocess("--docker-backend=socket", "-p", "no:warnings")
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(
        ["*root on this host*-v /:/host*--docker-allow-unsafe*--docker-backend=dind*"]
    )


def test_refusal_can_skip(pytester: pytest.Pytester) -> None:
    pytester.makepyfile("def test_one(docker_client): pass")
    result = pytester.runpytest_subprocess(
        "--docker-backend=socket", "--docker-unavailable=skip", "-p", "no:warnings", "-rs"
    )
    result.assert_outcomes(skipped=1)
    result.stdout.fnmatch_lines(["*SKIPPED*--docker-allow-unsafe*"])


def test_opt_in_runs_and_cleans_only_its_own(
    pytester: pytest.Pytester, host_engine: docker.DockerClient, preexisting: str
) -> None:
    networks_before = {n.id for n in host_engine.networks.list()}
    pytester.makepyfile(SOCKET_TESTS)
    result = pytester.runpytest_subprocess(
        "--docker-backend=socket",
        "--docker-allow-unsafe",
        "--docker-reset=never",
        "-p",
        "no:randomly",
    )
    result.assert_outcomes(passed=2, warnings=1)
    result.stdout.fnmatch_lines(
        [
            "isolated-docker: UNSAFE*",
            "*UnsafeDockerWarning*root on this host*",
            "main: socket UNSAFE*leaks at teardown: 0",
        ]
    )
    assert labelled(host_engine, session_of(result.stdout.str())) == []
    assert host_engine.containers.get(preexisting).status == "running"
    assert {n.id for n in host_engine.networks.list()} == networks_before


def test_workers_never_remove_each_others_objects(
    pytester: pytest.Pytester, host_engine: docker.DockerClient, preexisting: str
) -> None:
    """Under -n 2, each worker's reset only touches what that worker's tests created."""
    pytester.makepyfile(
        """
        import time, pytest

        @pytest.mark.parametrize("i", range(6))
        def test_keep(docker_client, i):
            c = docker_client.containers.run("debian:bookworm-slim", "sleep 60", detach=True)
            time.sleep(0.3)
            c.reload()
            assert c.status == "running"
        """
    )
    result = pytester.runpytest_subprocess(
        "-n", "2", "--docker-backend=socket", "--docker-allow-unsafe", "-W", "ignore"
    )
    result.assert_outcomes(passed=6)
    assert labelled(host_engine, session_of(result.stdout.str())) == []
    assert host_engine.containers.get(preexisting).status == "running"
