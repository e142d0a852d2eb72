"""Nothing leaks, nothing hangs: crash cleanup, prune, interrupts, a full disk."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import docker
import pytest

from pytest_isolated_docker.coordination import claim_session, release_session, state_root
from pytest_isolated_docker.labels import HOST, PID, SESSION, host_id

from .conftest import header_session, labelled, spawn_pytest

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


@pytest.mark.parametrize("workers", [[], ["-n", "2"]], ids=["no-xdist", "xdist"])
def test_kill_9_leaves_nothing_behind(
    pytester: pytest.Pytester, host_engine: docker.DockerClient, workers: list[str]
) -> None:
    pytester.makepyfile(SLOW_TEST)
    process = spawn_pytest(
        pytester.path, "-p", "no:randomly", "--docker-preload", "debian:bookworm-slim", *workers
    )
    session = header_session(process)
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
    session = header_session(process)
    _wait_for(lambda: labelled(host_engine, session) != [], 60, "the dind container")
    process.send_signal(signal.SIGINT)
    output = process.communicate(timeout=120)[0].decode(errors="replace")
    assert process.returncode in (pytest.ExitCode.INTERRUPTED, pytest.ExitCode.TESTS_FAILED), output
    assert labelled(host_engine, session) == []


def test_full_disk_while_preloading(
    pytester: pytest.Pytester, host_engine: docker.DockerClient
) -> None:
    """A dind daemon on a 40 MB tmpfs cannot load a 117 MB image: a clear error, no leftovers.
    (From a template it has it: the layers are mounted from the store, see test_templates.)"""
    pytester.makepyfile("def test_one(docker_client):\n    pass\n")
    result = pytester.runpytest_subprocess(
        "--docker-dind-storage=tmpfs:40m", "--docker-preload", "debian:bookworm-slim",
        "--docker-preload-mode=stream", timeout=300,
    )  # fmt: skip
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*[[]preload[]]*debian:bookworm-slim*"])
    assert "no space left on device" in result.stdout.str().lower()
    session = result.stdout.str().split("session=", 1)[1].split()[0]
    assert labelled(host_engine, session) == []


@pytest.mark.serial
def test_prune_removes_only_what_dead_sessions_left(
    host_engine: docker.DockerClient, tmp_path: Path
) -> None:
    """Dead: a session of this runtime dir nobody holds. Alive: one this process holds. Not
    proven: another runtime dir's session (another container or machine) without a heartbeat."""
    tag = f"{os.getpid()}-{time.time_ns()}"
    dead, live, remote = f"prune-dead-{tag}", f"prune-live-{tag}", f"prune-remote-{tag}"
    stale = host_engine.volumes.create(
        labels={SESSION: dead, PID: "1", HOST: host_id()}, name=f"prune-stale-{tag}"
    )
    alive = host_engine.volumes.create(
        labels={SESSION: live, PID: str(os.getpid()), HOST: host_id()}, name=f"prune-alive-{tag}"
    )
    other_host = host_engine.volumes.create(
        labels={SESSION: remote, PID: "1", HOST: "another-runtime"}, name=f"prune-remote-{tag}"
    )
    stale_dir = state_root() / "sessions" / dead
    (stale_dir / "holders").mkdir(parents=True)
    (stale_dir / "holders" / "gone.holder").touch()  # its holder's process has ended
    live_dir = claim_session(live)
    try:
        dry = subprocess.run(
            [sys.executable, "-m", "pytest_isolated_docker.cli", "prune", "--dry-run"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        assert f"would remove: volume prune-stale-{tag}" in dry
        assert f"would remove: session directory {stale_dir}" in dry
        assert f"prune-alive-{tag}" not in dry
        assert f"volume prune-remote-{tag}" not in dry
        assert {v.name for v in host_engine.volumes.list()} >= {stale.name, alive.name}

        done = subprocess.run(
            [sys.executable, "-m", "pytest_isolated_docker.cli", "prune"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        assert f"removed: volume prune-stale-{tag}" in done
        names = {v.name for v in host_engine.volumes.list()}
        assert stale.name not in names
        assert alive.name in names
        assert other_host.name in names
        assert not stale_dir.exists()
        assert live_dir.exists()
    finally:
        release_session(live)
        for volume in (stale, alive, other_host):
            with contextlib.suppress(docker.errors.NotFound):
                volume.remove(force=True)


WAITING_TEST = """
import pathlib, time

def test_waits(docker_client):
    docker_client.containers.run("debian:bookworm-slim", "sleep 300", detach=True, name="mine")
    pathlib.Path("started").touch()
    deadline = time.monotonic() + 240
    while not pathlib.Path("go").exists():
        assert time.monotonic() < deadline
        time.sleep(0.2)
    # Its daemon and its container are still there.
    assert docker_client.containers.get("mine").status == "running"
"""

NAMESPACE = ["unshare", "--pid", "--fork", "--mount-proc", "--kill-child"]
needs_unshare = pytest.mark.skipif(
    shutil.which("unshare") is None or os.geteuid() != 0, reason="needs root and unshare"
)


def _spawn_in_pid_namespace(directory: Path, *args: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [*NAMESPACE, sys.executable, "-m", "pytest", "-p", "no:cacheprovider", *args],
        cwd=directory,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )


def _lasting(host: docker.DockerClient, session: str) -> list[str]:
    """The session's objects but its heartbeat (renewed every few seconds under a new name)."""
    return [o for o in labelled(host, session) if "-heartbeat-" not in o]


def _prune(*args: str) -> str:
    return subprocess.run(
        [sys.executable, "-m", "pytest_isolated_docker.cli", "prune", *args],
        capture_output=True,
        text=True,
        check=True,
    ).stdout


@needs_unshare
def test_a_session_in_its_own_pid_namespace_survives_another_sessions_start(
    pytester: pytest.Pytester, host_engine: docker.DockerClient, tmp_path: Path
) -> None:
    """Two CI jobs on one engine, one unable to see the other's pids: the second one's start-up
    sweep (and an explicit prune) must leave the first one's session alone."""
    first_dir = tmp_path / "first"
    first_dir.mkdir()
    (first_dir / "test_waiting.py").write_text(WAITING_TEST)
    first = _spawn_in_pid_namespace(first_dir, "--docker-preload", "debian:bookworm-slim")
    try:
        session = header_session(first)
        _wait_for(lambda: (first_dir / "started").exists(), 120, "the first run's test")
        made = _lasting(host_engine, session)
        assert any("dind" in o for o in made), made

        pytester.makepyfile("def test_second(docker_client):\n    assert docker_client.ping()\n")
        second = pytester.runpytest_subprocess(timeout=300)
        second.assert_outcomes(passed=1)
        pruned = _prune()
        assert session not in pruned, pruned
        assert _lasting(host_engine, session) == made
        assert (state_root() / "sessions" / session / "client" / "ca.pem").exists()

        (first_dir / "go").touch()
        output = first.communicate(timeout=120)[0].decode(errors="replace")
        assert first.returncode == 0, output
    finally:
        if first.poll() is None:
            first.kill()
            first.communicate()
    assert labelled(host_engine, session) == []


@needs_unshare
def test_a_session_of_another_runtime_dir_is_swept_only_when_its_heartbeat_expires(
    host_engine: docker.DockerClient, tmp_path: Path
) -> None:
    """Another container (own /tmp, same engine): alive while its watchdog's heartbeat is fresh,
    swept once the engine says the heartbeat expired after the whole namespace was killed."""
    from pytest_isolated_docker.reaper import HEARTBEAT_EXPIRY
    from pytest_isolated_docker.watchdog import FIRST_BEAT_DELAY

    other = tmp_path / "other"
    (other / "runtime").mkdir(parents=True)
    (other / "test_slow.py").write_text(SLOW_TEST)
    env = {**os.environ, "XDG_RUNTIME_DIR": str(other / "runtime")}
    process = subprocess.Popen(
        [*NAMESPACE, sys.executable, "-m", "pytest", "--docker-preload", "debian:bookworm-slim"],
        cwd=other,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env=env,
    )
    try:
        session = header_session(process)
        _wait_for(lambda: (other / "started").exists(), 120, "the other run's test")
        made = labelled(host_engine, session)
        assert made
        # The watchdog's first heartbeat comes FIRST_BEAT_DELAY after its start.
        _wait_for(
            lambda: any("-heartbeat-" in o for o in labelled(host_engine, session)),
            FIRST_BEAT_DELAY + 30,
            "the other run's first heartbeat",
        )
        assert session not in _prune(), "a session with a fresh heartbeat must be kept"
    finally:
        process.kill()  # --kill-child: pytest and its watchdog die together, nothing cleans up
        process.communicate()
    killed = time.monotonic()
    assert labelled(host_engine, session), "nobody should have cleaned up yet"
    assert session not in _prune(), "the heartbeat has not expired yet"
    try:
        deadline = killed + HEARTBEAT_EXPIRY + 30
        while labelled(host_engine, session):
            assert time.monotonic() < deadline, f"not swept: {labelled(host_engine, session)}"
            time.sleep(2)
            _prune()
    finally:
        # Its session directory (a CA key among it) is in the other runtime dir, ours to remove.
        shutil.rmtree(other / "runtime", ignore_errors=True)
