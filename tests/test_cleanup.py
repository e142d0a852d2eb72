"""Nothing leaks, nothing hangs: crash cleanup, prune, interrupts, a full disk."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import docker
import pytest

from pytest_isolated_docker.coordination import state_root
from pytest_isolated_docker.labels import HOST, PID, SESSION, host_id
from pytest_isolated_docker.reaper import claim_session

from .conftest import labelled, spawn_pytest

SLOW_TEST = """
import time

def test_slow(docker_client):
    docker_client.networks.create("made-before-the-crash")
    docker_client.containers.run("debian:bookworm-slim", "sleep 300", detach=True)
    open("started", "w").close()
    time.sleep(300)
"""


def _wait_for(condition: object, timeout: float, what: str) -> None:
    assert callable(condition)
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.2)


def _session_from_header(process: subprocess.Popen[bytes]) -> str:
    """The session id from the report header, the first lines pytest prints."""
    assert process.stdout is not None
    for _, raw in zip(range(10), process.stdout, strict=False):
        line = raw.decode()
        if line.startswith("isolated-docker: backend="):
            return line.rsplit("session=", 1)[1].strip()
    process.kill()
    raise AssertionError("pytest printed no isolated-docker header")


@pytest.mark.parametrize("workers", [[], ["-n", "2"]], ids=["no-xdist", "xdist"])
def test_kill_9_leaves_nothing_behind(
    pytester: pytest.Pytester, host_engine: docker.DockerClient, workers: list[str]
) -> None:
    pytester.makepyfile(SLOW_TEST)
    process = spawn_pytest(
        pytester.path, "-p", "no:randomly", "--docker-preload", "debian:bookworm-slim", *workers
    )
    session = _session_from_header(process)
    try:
        _wait_for(lambda: (pytester.path / "started").exists(), 120, "the test to start")
        assert labelled(host_engine, session), "the run should have made labelled objects"
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait()
        assert process.stdout is not None
        process.stdout.close()
    session_dir = state_root() / "sessions" / session
    _wait_for(
        lambda: labelled(host_engine, session) == [] and not session_dir.exists(),
        15,
        "the watchdog's cleanup",
    )


def test_keyboard_interrupt_during_startup(
    pytester: pytest.Pytester, host_engine: docker.DockerClient
) -> None:
    pytester.makepyfile("def test_one(docker_client):\n    pass\n")
    process = spawn_pytest(pytester.path, "--docker-preload", "debian:bookworm-slim")
    session = _session_from_header(process)
    _wait_for(lambda: labelled(host_engine, session) != [], 60, "the dind container")
    process.send_signal(signal.SIGINT)
    output = process.communicate(timeout=120)[0].decode(errors="replace")
    assert process.returncode in (pytest.ExitCode.INTERRUPTED, pytest.ExitCode.TESTS_FAILED), output
    assert labelled(host_engine, session) == []


def test_full_disk_while_preloading(
    pytester: pytest.Pytester, host_engine: docker.DockerClient
) -> None:
    """A dind daemon on a 40 MB tmpfs cannot take a 117 MB image: a clear error, no leftovers."""
    pytester.makepyfile("def test_one(docker_client):\n    pass\n")
    result = pytester.runpytest_subprocess(
        "--docker-dind-storage=tmpfs:40m", "--docker-preload", "debian:bookworm-slim", timeout=300
    )
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*[[]preload[]]*debian:bookworm-slim*"])
    assert "no space left on device" in result.stdout.str().lower()
    session = result.stdout.str().split("session=", 1)[1].split()[0]
    assert labelled(host_engine, session) == []


def _dead_pid() -> int:
    child = subprocess.Popen(["true"])
    child.wait()
    return child.pid


@pytest.mark.serial
def test_prune_removes_only_what_dead_sessions_left(
    host_engine: docker.DockerClient, tmp_path: Path
) -> None:
    dead = str(_dead_pid())
    alive = str(os.getpid())
    session = f"prune-test-{dead}"
    stale = host_engine.volumes.create(
        labels={SESSION: session, PID: dead, HOST: host_id()}, name=f"prune-stale-{dead}"
    )
    live = host_engine.volumes.create(
        labels={SESSION: session + "-live", PID: alive, HOST: host_id()},
        name=f"prune-live-{dead}",
    )
    other_host = host_engine.volumes.create(
        labels={SESSION: session + "-remote", PID: dead, HOST: "another-machine"},
        name=f"prune-remote-{dead}",
    )
    stale_dir = state_root() / "sessions" / session
    stale_dir.mkdir(parents=True)
    claim_session(stale_dir, int(dead))
    try:
        dry = subprocess.run(
            [sys.executable, "-m", "pytest_isolated_docker.cli", "prune", "--dry-run"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        assert f"would remove: volume prune-stale-{dead}" in dry
        assert f"would remove: session directory {stale_dir}" in dry
        assert "prune-live" not in dry
        assert "prune-remote" not in dry
        assert {v.name for v in host_engine.volumes.list()} >= {stale.name, live.name}

        done = subprocess.run(
            [sys.executable, "-m", "pytest_isolated_docker.cli", "prune"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        assert f"removed: volume prune-stale-{dead}" in done
        names = {v.name for v in host_engine.volumes.list()}
        assert stale.name not in names
        assert live.name in names
        assert other_host.name in names
        assert not stale_dir.exists()
    finally:
        for volume in (stale, live, other_host):
            with contextlib.suppress(docker.errors.NotFound):
                volume.remove(force=True)
