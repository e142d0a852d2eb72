"""A remote engine over TCP: another machine (a network namespace with its own dockerd)."""

from __future__ import annotations

import collections.abc
import contextlib
import os
import subprocess
import time

import docker
import pytest

from .conftest import dind_starts, header_session, labelled, session_of, spawn_pytest
from .netns_hosts import NetnsHost, available, netns_host

pytestmark = pytest.mark.skipif(available() is not None, reason=str(available()))

DIND_IMAGE = "pytest-isolated-docker/dind:latest"


@pytest.fixture(scope="module")
def remote(host_engine: docker.DockerClient) -> collections.abc.Iterator[NetnsHost]:
    """A machine with its own engine that has the dind image and debian:bookworm-slim."""
    with netns_host([DIND_IMAGE, "debian:bookworm-slim"], host_engine) as host:
        yield host


def test_dind_on_a_remote_tcp_engine(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, remote: NetnsHost
) -> None:
    monkeypatch.setenv("DOCKER_HOST", remote.url)
    pytester.makepyfile(
        "def test_remote(docker_client, docker_env):\n"
        "    out = docker_client.containers.run('debian:bookworm-slim', 'echo far', remove=True)\n"
        "    assert out == b'far\\n'\n"
        f"    assert docker_env['DOCKER_HOST'].startswith('tcp://{remote.address}:')\n"
    )
    result = pytester.runpytest_subprocess(
        "-p", "no:randomly", "--docker-preload", "debian:bookworm-slim", timeout=300
    )
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(
        [
            f"isolated-docker: host engine {remote.url} (found by DOCKER_HOST)",
            f"main: dind * at tcp://{remote.address}:*leaks at teardown: 0*",
        ]
    )
    with contextlib.closing(remote.client()) as client:
        assert labelled(client, session_of(result.stdout.str())) == []


def test_a_published_port_this_machine_cannot_reach_fails_within_seconds(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, remote: NetnsHost
) -> None:
    """The engine answers, but a firewall on its machine drops what its containers publish."""
    monkeypatch.setenv("DOCKER_HOST", remote.url)
    pytester.makepyfile("def test_one(docker_client):\n    pass\n")
    drop = ["DOCKER-USER", "-i", "eth0", "-p", "tcp", "-j", "DROP"]
    remote.run("iptables", "-I", *drop)
    try:
        started = time.monotonic()
        result = pytester.runpytest_subprocess(timeout=120)
        assert time.monotonic() - started < 15
    finally:
        remote.run("iptables", "-D", *drop)
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(
        [f"*published at {remote.address}:* but this machine cannot connect there*"]
    )
    with contextlib.closing(remote.client()) as client:
        assert labelled(client, session_of(result.stdout.str())) == []


def test_an_engine_where_nothing_listens_fails_within_seconds(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, remote: NetnsHost
) -> None:
    url = f"tcp://{remote.address}:2399"
    monkeypatch.setenv("DOCKER_HOST", url)
    pytester.makepyfile("def test_one(docker_client):\n    pass\n")
    started = time.monotonic()
    result = pytester.runpytest_subprocess(timeout=120)
    assert time.monotonic() - started < 15
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(
        [f"*host's Docker engine at {url} (found by DOCKER_HOST) does not*"]
    )


def test_a_remote_engine_without_images_gets_them_from_this_machine(
    pytester: pytest.Pytester,
    monkeypatch: pytest.MonkeyPatch,
    host_engine: docker.DockerClient,
) -> None:
    """No registry, and the remote engine has no image at all: the dind image and the preloaded
    image are copied from this machine's engine, once, and the run passes."""
    with netns_host([], host_engine) as bare:
        monkeypatch.setenv("DOCKER_HOST", bare.url)
        pytester.makepyfile(
            "def test_remote(docker_client):\n"
            "    assert docker_client.containers.run('debian:bookworm-slim', 'true', remove=True) "
            "== b''\n"
        )
        result = pytester.runpytest_subprocess(
            "-n", "2", "--docker-preload", "debian:bookworm-slim", timeout=300
        )
        result.assert_outcomes(passed=1)
        result.stderr.fnmatch_lines(
            ["pytest-isolated-docker: copying debian:bookworm-slim (* MB) from * into the host*"]
        )
        with contextlib.closing(bare.client()) as client:
            assert client.images.get(DIND_IMAGE)
            assert labelled(client, session_of(result.stdout.str())) == []


@pytest.fixture(scope="module")
def second_remote(host_engine: docker.DockerClient) -> collections.abc.Iterator[NetnsHost]:
    """Another machine, whose engine is also reachable through SSH (``ssh_url``)."""
    with netns_host([DIND_IMAGE, "debian:bookworm-slim"], host_engine, ssh=True) as host:
        yield host


POOL_TESTS = """
import pytest

@pytest.mark.parametrize("i", range(8))
def test_on_the_pool(docker_client, i):
    assert docker_client.containers.run("debian:bookworm-slim", "true", remove=True) == b""
"""


def test_a_pool_of_two_engines_gets_two_daemons_each_and_is_cleaned(
    pytester: pytest.Pytester, remote: NetnsHost, second_remote: NetnsHost
) -> None:
    pytester.makepyfile(POOL_TESTS)
    engines = ["--docker-engine", remote.url, "--docker-engine", second_remote.url]
    result = pytester.runpytest_subprocess(
        "-n", "4", *engines, "--docker-preload", "debian:bookworm-slim", timeout=600
    )
    result.assert_outcomes(passed=8)
    result.stdout.fnmatch_lines(
        [f"isolated-docker: engines {remote.url}, {second_remote.url} (--docker-engine*"]
    )
    text = result.stdout.str()
    for host in (remote, second_remote):
        assert text.count(f" at tcp://{host.address}:") == 2, text
        with contextlib.closing(host.client()) as client:
            assert labelled(client, session_of(text)) == []


def test_kill_9_of_a_pool_run_leaves_nothing_on_any_engine(
    pytester: pytest.Pytester,
    monkeypatch: pytest.MonkeyPatch,
    remote: NetnsHost,
    second_remote: NetnsHost,
) -> None:
    """A pool of a TCP and an SSH engine: the killed run's watchdogs clean both."""
    monkeypatch.setenv("PATH", f"{second_remote.ssh_path}:{os.environ['PATH']}")
    pytester.makepyfile(
        "import pathlib, time\n"
        "def test_slow(docker_client, worker_id):\n"
        "    pathlib.Path(f'started-{worker_id}').touch()\n"
        "    time.sleep(300)\n"
        "def test_slow_too(docker_client, worker_id):\n"
        "    pathlib.Path(f'started-{worker_id}').touch()\n"
        "    time.sleep(300)\n"
    )
    process = spawn_pytest(
        pytester.path, "-n", "2", "--docker-engine", remote.url,
        "--docker-engine", second_remote.ssh_url,
    )  # fmt: skip
    try:
        session = header_session(process)
        deadline = time.monotonic() + 120
        while len(list(pytester.path.glob("started-*"))) < 2:
            assert time.monotonic() < deadline, "the tests did not start"
            time.sleep(0.2)
        for host in (remote, second_remote):
            with contextlib.closing(host.client()) as client:
                assert labelled(client, session), f"nothing of the run on {host.url}"
    finally:
        process.kill()
        process.communicate()
    deadline = time.monotonic() + 15
    for host in (remote, second_remote):
        with contextlib.closing(host.client()) as client:
            while labelled(client, session):
                assert time.monotonic() < deadline, labelled(client, session)
                time.sleep(0.2)


def test_a_pool_engine_where_nothing_listens_is_named_within_seconds(
    pytester: pytest.Pytester, remote: NetnsHost
) -> None:
    dead = f"tcp://{remote.address}:2399"
    pytester.makepyfile("def test_one(docker_client):\n    pass\n")
    started = time.monotonic()
    result = pytester.runpytest_subprocess(
        "--docker-engine", dead, "--docker-engine", remote.url, timeout=120
    )
    assert time.monotonic() - started < 15
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines([f"*engine at {dead} (found by --docker-engine) does not answer*"])


def test_a_pool_of_a_tcp_and_an_ssh_engine_without_images(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, host_engine: docker.DockerClient
) -> None:
    """Neither engine has an image and no registry is reachable: both get them from this machine;
    the SSH engine's daemons are reached through SSH tunnels; two daemons on each engine."""
    with (
        netns_host([], host_engine) as tcp_host,
        netns_host([], host_engine, ssh=True) as ssh_host,
    ):
        monkeypatch.setenv("PATH", f"{ssh_host.ssh_path}:{os.environ['PATH']}")
        pytester.makepyfile(POOL_TESTS)
        since = time.time() - 1
        result = pytester.runpytest_subprocess(
            "-n", "4", "--docker-engine", tcp_host.url, "--docker-engine", ssh_host.ssh_url,
            "--docker-preload", "debian:bookworm-slim", timeout=900,
        )  # fmt: skip
        result.assert_outcomes(passed=8)
        session = session_of(result.stdout.str())
        counts = {}
        for host in (tcp_host, ssh_host):
            with contextlib.closing(host.client()) as client:
                counts[host.url] = dind_starts(client, session, since)
                assert labelled(client, session) == []
        assert counts == {tcp_host.url: 2, ssh_host.url: 2}, result.stdout.str()
        tunnels = subprocess.run(
            ["pgrep", "-f", f"ssh -N .* {ssh_host.address}"], capture_output=True, text=True
        )
        assert tunnels.stdout == "", "an SSH tunnel outlived its daemon"
