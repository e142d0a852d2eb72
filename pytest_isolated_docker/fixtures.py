"""The public fixtures. Registered by the plugin after every other plugin is loaded, so that
another plugin's fixture of the same name (pytest-docker-tools defines ``docker_client`` on the
host's engine) can never silently replace ours; a ``conftest.py`` still overrides them as usual.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from typing import Any

import docker
import pytest

from .backends import start_daemon
from .daemon import DockerDaemon
from .errors import DaemonUnavailable, IsolatedDockerError
from .session import DockerSession, session_of, test_daemon_key
from .settings import BACKENDS, Settings


def _daemon_or_outcome(session: DockerSession, start: Any) -> DockerDaemon:
    """Run ``start``; turn "no daemon can be had" into a failure or a skip, as configured."""
    try:
        daemon: DockerDaemon = start()
        return daemon
    except (IsolatedDockerError, docker.errors.DockerException) as exc:
        reason = f"pytest-isolated-docker: no {session.settings.backend} daemon: {exc}"
        skip = session.settings.unavailable == "skip" and isinstance(exc, DaemonUnavailable)
    # Outside the except block, so that the report shows the reason, not a chain of tracebacks.
    if skip:
        pytest.skip(reason)
    pytest.fail(reason, pytrace=False)


@pytest.fixture(scope="session")
def docker_daemon(pytestconfig: pytest.Config) -> DockerDaemon:
    """The worker's isolated Docker daemon (one per session, or per xdist worker).

    A :class:`pytest_isolated_docker.DockerDaemon`: ``.client`` (docker-py), ``.env``
    (DOCKER_HOST, DOCKER_TLS_VERIFY, DOCKER_CERT_PATH for subprocesses), ``.base_url``,
    ``.backend``, ``.logs()``. Started in the background as soon as a test needing it is
    collected; stopped, with everything it made, at the end of the session.
    """
    session = session_of(pytestconfig)
    return _daemon_or_outcome(session, session.daemon)


@pytest.fixture
def docker_test_daemon(request: pytest.FixtureRequest) -> Iterator[DockerDaemon]:
    """The daemon this test uses: the worker's, or, with ``@pytest.mark.docker_daemon(fresh=True)``
    or ``backend=...``, a brand-new one of its own, stopped when the test ends."""
    session = session_of(request.config)
    marker = request.node.get_closest_marker("docker_daemon")
    options = dict(marker.kwargs) if marker else {}
    backend = options.pop("backend", None)
    fresh = bool(options.pop("fresh", False)) or (
        backend is not None and backend != session.settings.backend
    )
    if options:
        pytest.fail(
            f"@pytest.mark.docker_daemon got unknown arguments {sorted(options)}; "
            f"it takes fresh=True and backend={'|'.join(map(repr, BACKENDS))}.",
            pytrace=False,
        )
    if not fresh:
        shared: DockerDaemon = request.getfixturevalue("docker_daemon")
        request.node.stash[test_daemon_key] = shared
        yield shared
        return
    context = session.context
    if backend is not None:
        context = dataclasses.replace(
            context, settings=_resolve_marker_backend(session.settings, backend)
        )
    session.guard()
    daemon = _daemon_or_outcome(session, lambda: start_daemon(context))
    request.node.stash[test_daemon_key] = daemon
    try:
        yield daemon
    finally:
        session.record(daemon, f"fresh for {request.node.nodeid}")


def _resolve_marker_backend(settings: Settings, backend: str) -> Settings:
    if backend not in BACKENDS:
        pytest.fail(
            f"@pytest.mark.docker_daemon(backend={backend!r}): unknown backend. "
            f"Valid backends: {', '.join(BACKENDS)}.",
            pytrace=False,
        )
    return settings.replace(backend=backend)


@pytest.fixture
def docker_client(docker_test_daemon: DockerDaemon) -> Iterator[docker.DockerClient]:
    """A ``docker.DockerClient`` for this test's isolated daemon (closed after the test)."""
    client = docker_test_daemon.new_client()
    try:
        yield client
    finally:
        client.close()


@pytest.fixture
def docker_env(docker_test_daemon: DockerDaemon) -> dict[str, str]:
    """Environment variables pointing a subprocess (docker CLI, compose) at this test's daemon.

    A fresh copy the test may change: ``subprocess.run([...], env={**os.environ, **docker_env})``.
    ``os.environ`` of the test process is never changed.
    """
    return docker_test_daemon.env
