"""The host mirror: dind daemons started without --docker-preload pull the host engine's images.

Real daemons and the real host engine; the store lives in a temporary cache directory, so the
first pull exports the image (cold) and the next ones reuse it (warm).
"""

from __future__ import annotations

import collections.abc
import contextlib
import dataclasses
import json
import os
import socket
import ssl
import subprocess
import time
from pathlib import Path

import docker
import pytest

from pytest_isolated_docker import hostmirror
from pytest_isolated_docker.backends import BackendContext
from pytest_isolated_docker.daemon import DockerDaemon
from pytest_isolated_docker.labels import Identity, new_session_id
from pytest_isolated_docker.lifecycle import start_daemon
from pytest_isolated_docker.mirrorstore import Store
from pytest_isolated_docker.settings import resolve

IMAGE = "debian:bookworm-slim"


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty user cache directory: the store starts cold."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    return tmp_path / "cache" / "pytest-isolated-docker" / "host-mirror"


@pytest.fixture
def mirrored(cache: Path) -> collections.abc.Iterator[BackendContext]:
    """A session context with its host mirror serving (stopped at the end)."""
    context = BackendContext(resolve({}, os.environ, {}), Identity(new_session_id(), "tests"))
    mirror = hostmirror.serve(context.engine, context.ca, context.session_dir)
    try:
        yield dataclasses.replace(context, host_mirror=mirror.url)
    finally:
        mirror.close()


@contextlib.contextmanager
def daemon_of(context: BackendContext) -> collections.abc.Iterator[DockerDaemon]:
    started = start_daemon(context)
    try:
        yield started
    finally:
        assert started.stop() == []


def test_daemons_without_preload_run_a_host_image_exported_once(
    mirrored: BackendContext, cache: Path
) -> None:
    image_id = docker.from_env().images.get(IMAGE).id
    with daemon_of(mirrored) as first, daemon_of(mirrored) as second:
        assert first.client.images.list() == []
        (mirror,) = first.client.info()["RegistryConfig"]["Mirrors"]
        assert mirror.rstrip("/") == mirrored.host_mirror
        started = time.monotonic()
        assert first.client.containers.run(IMAGE, "echo cold", remove=True) == b"cold\n"
        cold = time.monotonic() - started
        started = time.monotonic()
        assert second.client.containers.run(IMAGE, "echo warm", remove=True) == b"warm\n"
        warm = time.monotonic() - started
        assert second.client.images.get(IMAGE).id == image_id
    exports = Store(cache.parent / "host-mirror").exports()
    assert [entry["image"] for entry in exports] == [image_id], exports
    print(f"first pull and run {cold:.2f} s (export), second daemon {warm:.2f} s")


def test_an_image_the_host_lacks_fails_as_offline_dockerd_does_and_quickly(
    mirrored: BackendContext,
) -> None:
    with daemon_of(mirrored) as daemon:
        started = time.monotonic()
        with pytest.raises(docker.errors.APIError) as failure:
            daemon.client.images.pull("pytest-isolated-docker-nowhere/absent", tag="1")
        elapsed = time.monotonic() - started
    # The mirror answered 404, so dockerd went on to Docker Hub, which is unreachable here.
    assert "registry-1.docker.io" in str(failure.value)
    assert elapsed < 10, f"took {elapsed:.1f} s"


def ask_v2(context: ssl.SSLContext, address: str, port: int) -> bytes:
    """``GET /v2/`` through ``context``: the answer, or b"" when the mirror refused."""
    try:
        with (
            socket.create_connection((address, port), timeout=10) as raw,
            context.wrap_socket(raw, server_hostname=address) as connection,
        ):
            connection.sendall(b"GET /v2/ HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            return connection.recv(1000)
    except (ssl.SSLError, OSError):
        return b""


def test_only_clients_with_a_certificate_of_the_session_are_served(
    mirrored: BackendContext,
) -> None:
    address, port = mirrored.host_mirror.removeprefix("https://").split(":")
    tls = mirrored.client_tls
    anonymous = ssl.create_default_context(cafile=str(tls.ca_cert))
    assert ask_v2(anonymous, address, int(port)) == b""
    session = ssl.create_default_context(cafile=str(tls.ca_cert))
    session.load_cert_chain(str(tls.client_cert), str(tls.client_key))
    answer = ask_v2(session, address, int(port))
    assert answer.startswith(b"HTTP/1.1 200"), answer
    assert b"registry/2.0" in answer


def test_docker_client_and_docker_env_pull_host_images_on_every_worker(
    pytester: pytest.Pytester, cache: Path
) -> None:
    pytester.makepyfile(
        f"""
        import os, subprocess
        import pytest

        def test_run(docker_client):
            assert docker_client.containers.run("{IMAGE}", "echo hi", remove=True) == b"hi\\n"

        def test_cli_pull(docker_env):
            subprocess.run(["docker", "pull", "{IMAGE}"], env={{**os.environ, **docker_env}},
                           check=True)
        """
    )
    result = pytester.runpytest_subprocess("-n", "2", "-p", "no:randomly", timeout=300)
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(["isolated-docker: images of the host engine pulled on demand*"])
    exports = [json.loads(line) for line in (cache / "exports.log").read_text().splitlines()]
    assert [entry["name"] for entry in exports] == [IMAGE]


def test_the_mirror_can_be_turned_off(pytester: pytest.Pytester, cache: Path) -> None:
    pytester.makepyfile(
        """
        def test_mirrors(docker_client):
            assert docker_client.info()["RegistryConfig"]["Mirrors"] == []
        """
    )
    result = pytester.runpytest_subprocess("--docker-host-mirror=false", timeout=300)
    result.assert_outcomes(passed=1)
    assert "pulled on demand" not in result.stdout.str()
    assert not cache.exists()


def test_the_session_leaves_no_listener(pytester: pytest.Pytester, cache: Path) -> None:
    pytester.makepyfile(
        """
        import json, pathlib

        def test_port(docker_client, request):
            (mirror,) = docker_client.info()["RegistryConfig"]["Mirrors"]
            pathlib.Path(request.config.rootpath, "mirror").write_text(mirror)
        """
    )
    result = pytester.runpytest_subprocess(timeout=300)
    result.assert_outcomes(passed=1)
    address, port = (pytester.path / "mirror").read_text().strip("/").split("//")[1].split(":")
    listening = subprocess.run(
        ["ss", "-Htln", f"src {address}:{port}"], capture_output=True, text=True, check=True
    )
    assert listening.stdout.strip() == ""
