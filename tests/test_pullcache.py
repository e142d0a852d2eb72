"""--docker-pull-through-cache: one registry mirror per host, used by every isolated daemon.

No public registry is reachable on the project's machines, so the upstream here is a registry
of our own on 127.0.0.1 (Debian's docker-registry) holding an image pushed from the host engine.
"""

from __future__ import annotations

import collections.abc
import contextlib
import shutil
import socket
import subprocess
import time
from pathlib import Path

import docker
import pytest

from pytest_isolated_docker.coordination import read_json

pytestmark = pytest.mark.skipif(
    shutil.which("docker-registry") is None,
    reason="needs Debian's docker-registry (dev/provision-host installs it)",
)

IMAGE = "pulled-thing:1"


def _free_port() -> int:
    with contextlib.closing(socket.socket()) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture
def upstream(tmp_path: Path, host_engine: docker.DockerClient) -> collections.abc.Iterator[str]:
    """A plain registry on 127.0.0.1 holding library/pulled-thing:1."""
    port = _free_port()
    config = tmp_path / "upstream.yml"
    config.write_text(
        f"version: 0.1\nstorage:\n  filesystem:\n    rootdirectory: {tmp_path / 'upstream'}\n"
        f"http:\n  addr: 127.0.0.1:{port}\n"
    )
    process = subprocess.Popen(
        ["docker-registry", "serve", str(config)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    remote = f"127.0.0.1:{port}/library/{IMAGE}"
    try:
        deadline = time.monotonic() + 30
        while True:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1):
                break
            assert time.monotonic() < deadline, "upstream registry did not start"
            time.sleep(0.05)
        host_engine.images.get("debian:bookworm-slim").tag(remote)
        for line in host_engine.images.push(remote, stream=True, decode=True):
            assert "error" not in line, line
        yield f"http://127.0.0.1:{port}"
    finally:
        with contextlib.suppress(docker.errors.ImageNotFound):
            host_engine.images.remove(remote)
        process.terminate()
        process.wait()


def test_isolated_daemons_pull_through_the_host_cache(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, upstream: str
) -> None:
    cache = tmp_path / "cache"
    monkeypatch.setenv("XDG_CACHE_HOME", str(cache))
    pytester.makepyfile(
        f"""
        import pytest

        @pytest.mark.parametrize("worker_test", range(2))
        def test_pull(docker_client, worker_test):
            # The host mirror (https, first) lacks the image: dockerd goes on to the cache.
            host_mirror, mirror = docker_client.info()["RegistryConfig"]["Mirrors"]
            assert host_mirror.startswith("https://")
            assert mirror.startswith("http://")
            docker_client.images.pull("{IMAGE}")
            assert docker_client.containers.run("{IMAGE}", "echo pulled") == b"pulled\\n"
        """
    )
    result = pytester.runpytest_subprocess(
        "-n",
        "2",
        "--docker-pull-through-cache",
        f"--docker-pull-through-upstream={upstream}",
        timeout=300,
    )
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(["isolated-docker: registry mirrors http://*"])
    cache_dir = cache / "pytest-isolated-docker" / "pull-through-cache"
    assert list((cache_dir / "data").rglob("pulled-thing")), "the cache stored nothing"
    assert read_json(cache_dir / "lease.json") == {}, "the last session out must stop the cache"


def test_unreachable_upstream_is_a_clear_error(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    pytester.makepyfile("def test_one(docker_client): pass")
    result = pytester.runpytest_subprocess(
        "--docker-pull-through-cache",
        f"--docker-pull-through-upstream=http://127.0.0.1:{_free_port()}",
        timeout=120,
    )
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        ["*--docker-pull-through-cache*did not listen*Is the upstream reachable*"]
    )
