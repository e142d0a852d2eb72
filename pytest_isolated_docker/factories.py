"""Fixture factories: a daemon of any scope and options, and the per-test fixtures on top of it.

In the style of pytest-postgresql, as plain closures. In a ``conftest.py``::

    from pytest_isolated_docker import factories

    machine_daemon = factories.docker_daemon(scope="module", backend="machine")
    machine_client = factories.docker_client("machine_daemon")
    machine_env = factories.docker_env("machine_daemon")

``docker_daemon`` takes any option of the settings table as a keyword (``backend``, ``preload``,
``dind_storage``, ...), validated as its command-line flag would be. The plugin's own fixtures
(``docker_daemon``, ``docker_client``, ``docker_env``) are outputs of these factories.

A client or environment fixture made here takes part in the test's reset: what appeared on the
daemon during the test is removed at its end, what existed when it began (wider-scoped fixtures'
containers among it) stays; a failing test's report carries the daemon's log.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, Literal

import pytest

from . import lazy
from .daemon import DockerDaemon
from .session import daemon_or_outcome, own_daemon_options, session_of

if TYPE_CHECKING:
    import docker
else:
    docker = lazy.module("docker")

Scope = Literal["session", "package", "module", "class", "function"]


def _fixture(
    function: Callable[..., Any], doc: str | None, scope: Scope = "function"
) -> Callable[..., Any]:
    if doc is not None:
        function.__doc__ = doc
    fixture: Callable[..., Any] = pytest.fixture(scope=scope)(function)
    return fixture


def docker_daemon(
    scope: Scope = "session", *, doc: str | None = None, **options: Any
) -> Callable[..., Any]:
    """A fixture giving a daemon of its own per ``scope``, started with the session's settings
    and ``options``; stopped, with everything it made, when the scope ends.

    With ``scope="session"`` and no options it is the worker's daemon (the one ``docker_daemon``
    gives): started ahead of time as soon as the worker is handed a test that needs it. ``doc``
    becomes the fixture's docstring (``pytest --fixtures``).
    """

    def daemon_fixture(request: pytest.FixtureRequest) -> Iterator[DockerDaemon]:
        session = session_of(request.config)
        if scope == "session" and not options:
            yield daemon_or_outcome(session.settings, session.worker_daemon)
            return
        settings = session.settings_for(
            options, f"factories.docker_daemon() of the fixture {request.fixturename!r}"
        )
        daemon = daemon_or_outcome(settings, lambda: session.start_daemon(settings))
        try:
            yield daemon
        finally:
            session.record(daemon, f"{request.fixturename} ({scope})")

    daemon_fixture.__doc__ = f"A Docker daemon per {scope} (pytest_isolated_docker.factories)."
    return _fixture(daemon_fixture, doc, scope)


def docker_test_daemon(daemon_fixture: str, *, doc: str | None = None) -> Callable[..., Any]:
    """A function fixture: the daemon of the fixture named ``daemon_fixture`` for this test, or,
    with ``@pytest.mark.docker_daemon(fresh=True)`` or ``backend=...``, a brand-new one of its
    own, stopped when the test ends."""

    def test_daemon_fixture(request: pytest.FixtureRequest) -> Iterator[DockerDaemon]:
        session = session_of(request.config)
        options = own_daemon_options(request.node)
        if options is None:
            daemon: DockerDaemon = request.getfixturevalue(daemon_fixture)
            with session.used_by_test(request, daemon):
                yield daemon
            return
        settings = session.settings_for(options, "@pytest.mark.docker_daemon")
        daemon = daemon_or_outcome(settings, lambda: session.start_daemon(settings))
        try:
            with session.used_by_test(request, daemon, reset=False):
                yield daemon
        finally:
            session.record(daemon, f"fresh for {request.node.nodeid}")

    return _fixture(test_daemon_fixture, doc)


def docker_client(daemon_fixture: str, *, doc: str | None = None) -> Callable[..., Any]:
    """A function fixture: a ``docker.DockerClient`` of its own for the daemon of the fixture
    named ``daemon_fixture`` (closed after the test, which is reset as described above)."""

    def client_fixture(request: pytest.FixtureRequest) -> Iterator[docker.DockerClient]:
        daemon: DockerDaemon = request.getfixturevalue(daemon_fixture)
        with session_of(request.config).used_by_test(request, daemon):
            client = daemon.new_client()
            try:
                yield client
            finally:
                client.close()

    return _fixture(client_fixture, doc)


def docker_env(daemon_fixture: str, *, doc: str | None = None) -> Callable[..., Any]:
    """A function fixture: environment variables pointing a subprocess (docker CLI, compose,
    docker-py based tools) at the daemon of the fixture named ``daemon_fixture``."""

    def env_fixture(request: pytest.FixtureRequest) -> Iterator[dict[str, str]]:
        daemon: DockerDaemon = request.getfixturevalue(daemon_fixture)
        with session_of(request.config).used_by_test(request, daemon):
            yield daemon.env

    return _fixture(env_fixture, doc)


__all__ = ["docker_client", "docker_daemon", "docker_env", "docker_test_daemon"]
