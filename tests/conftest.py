"""Shared helpers of the test suite. Every test talks to real engines: no mocks of Docker."""

from __future__ import annotations

import collections.abc
import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import docker
import pytest

from pytest_isolated_docker.backends import BackendContext, describe_objects
from pytest_isolated_docker.daemon import DockerDaemon
from pytest_isolated_docker.labels import ROLE, SESSION, Identity, new_session_id
from pytest_isolated_docker.lifecycle import start_daemon
from pytest_isolated_docker.settings import resolve


@pytest.fixture(scope="session")
def host_engine() -> collections.abc.Iterator[docker.DockerClient]:
    """The host's engine, to check what a run left behind (read-mostly)."""
    client = docker.from_env()
    try:
        client.ping()
    except docker.errors.DockerException as exc:
        pytest.fail(f"the host engine must run for this suite (make test starts it): {exc}")
    with contextlib.closing(client):
        yield client


def labelled(host: docker.DockerClient, session: str | None = None) -> list[str]:
    """Objects on the host engine carrying our session label (of one session, or of any)."""
    label = f"{SESSION}={session}" if session else SESSION
    return describe_objects(host, {"label": [label]})


def spawn_pytest(directory: Path, *args: str) -> subprocess.Popen[bytes]:
    """An inner pytest run we can signal (SIGINT, SIGKILL) while it works."""
    return subprocess.Popen(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", *args],
        cwd=directory,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        # As in a terminal: a suite started in the background of a non-interactive shell inherits
        # SIGINT ignored, and Python then never turns it into KeyboardInterrupt.
        preexec_fn=_default_sigint,
    )


def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def session_of(output: str) -> str:
    """The session id a run printed in its report header."""
    for line in output.splitlines():
        if line.startswith("isolated-docker: backend="):
            return line.rsplit("session=", 1)[1].strip()
    raise AssertionError(f"no isolated-docker header in:\n{output}")


def header_session(process: subprocess.Popen[bytes]) -> str:
    """The session id from the report header of a spawned run (its first lines)."""
    assert process.stdout is not None
    for _, raw in zip(range(10), process.stdout, strict=False):
        line = raw.decode()
        if line.startswith("isolated-docker: backend="):
            return line.rsplit("session=", 1)[1].strip()
    process.kill()
    raise AssertionError("pytest printed no isolated-docker header")


def dind_starts(engine: docker.DockerClient, session: str, since: float) -> int:
    """How many dind containers the session started on ``engine``, by the engine's own events
    (a privileged attempt the engine refuses is created, never started)."""
    events = engine.events(
        since=int(since),
        until=int(time.time()) + 1,
        decode=True,
        filters={
            "type": "container",
            "event": "start",
            "label": [f"{SESSION}={session}", f"{ROLE}=dind"],
        },
    )
    return sum(1 for _ in events)


@contextlib.contextmanager
def api_daemon(**flags: Any) -> collections.abc.Iterator[DockerDaemon]:
    """A dind daemon started through the engine API, without pytest's plugin layer, with
    ``flags`` as command-line values; it must stop leaving nothing behind."""
    settings = resolve(flags, os.environ, {})
    started = start_daemon(BackendContext(settings, Identity(new_session_id(), "tests")))
    try:
        yield started
    finally:
        assert started.stop() == []
