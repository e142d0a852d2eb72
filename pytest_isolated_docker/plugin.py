"""pytest hooks and fixtures: a thin shell over the engine (settings, backends, daemon).

Nothing here knows a backend by name: backends are asked through their interface.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import os
import threading
from collections.abc import Generator, Iterator
from typing import Any, Literal

import docker
import pytest

from . import pullcache
from .backends import BackendContext, backend_class, start_daemon
from .daemon import DockerDaemon
from .errors import DaemonUnavailable, IsolatedDockerError, StartupError
from .images import ensure_on_host
from .labels import Identity, new_session_id
from .reaper import Watchdog, claim_session, reap_session, remove_session_dir, sweep
from .settings import OPTIONS, Settings, SettingsError, resolve

DAEMON_FIXTURES = frozenset({"docker_daemon", "docker_test_daemon", "docker_client", "docker_env"})
_WORKERINPUT_KEY = "pytest_isolated_docker_session"
_WORKEROUTPUT_KEY = "pytest_isolated_docker_daemons"


class UnsafeDockerWarning(pytest.PytestWarning):
    """Tests run against the host's own Docker engine: code under test is root on the host."""


class DockerSession:
    """The plugin's state for one pytest process: settings, identity and its daemon."""

    def __init__(
        self, config: pytest.Config, settings: Settings, identity: Identity, owner_pid: int
    ) -> None:
        self.config = config
        self.owner_pid = owner_pid
        self.identity = identity
        self.use_settings(settings)
        self.holds_pull_cache = False
        self.pull_cache_url: str | None = None
        self._lock = threading.Lock()
        self._future: concurrent.futures.Future[DockerDaemon] | None = None
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None
        self._watchdog: Watchdog | None = None
        self.summaries: list[dict[str, Any]] = []
        self.session_leftovers: list[str] = []

    def use_settings(self, settings: Settings) -> None:
        self.settings = settings
        self.context = BackendContext(settings, identity=self.identity)

    def add_mirror(self, url: str) -> None:
        self.use_settings(
            self.settings.replace(registry_mirror=(*self.settings.registry_mirror, url))
        )

    @property
    def shared_context(self) -> BackendContext:
        """Context of the daemon shared by the session: labelled with the owner's pid, so that
        one worker's crash watchdog never removes what the other workers still use."""
        return BackendContext(
            self.settings, Identity(self.identity.session_id, "shared", self.owner_pid)
        )

    @property
    def owns_session(self) -> bool:
        """The controller (or a run without xdist) owns the session directory and its CA."""
        return not hasattr(self.config, "workerinput")

    def guard(self) -> None:
        """Start this process's watchdog before it creates anything (once)."""
        with self._lock:
            if self._watchdog is None:
                if self.owns_session:
                    claim_session(self.context.session_dir, os.getpid())
                self._watchdog = Watchdog.start(self.identity.session_id, self.owns_session)

    def start_in_background(self) -> None:
        """Begin starting the worker's daemon; collection and other tests go on meanwhile."""
        self.guard()
        with self._lock:
            if self._future is None:
                self._executor = concurrent.futures.ThreadPoolExecutor(
                    max_workers=1, thread_name_prefix="pytest-isolated-docker-start"
                )
                self._future = (
                    self._executor.submit(start_daemon, self.shared_context, shared=True)
                    if self.settings.scope == "session"
                    else self._executor.submit(start_daemon, self.context)
                )

    def daemon(self) -> DockerDaemon:
        self.start_in_background()
        assert self._future is not None
        return self._future.result()

    @property
    def started_daemon(self) -> DockerDaemon | None:
        """The daemon if it started successfully, without waiting or starting one."""
        future = self._future
        if future is None or not future.done() or future.exception() is not None:
            return None
        return future.result()

    def wait_for_start(self) -> None:
        """Let a start still in flight finish, so that stop() removes what it made."""
        if self._future is not None:
            concurrent.futures.wait([self._future])

    def record(self, daemon: DockerDaemon, label: str) -> None:
        facts = daemon.describe()
        leftovers = daemon.stop()
        facts.update(
            worker=self.identity.worker,
            label=label,
            resets=daemon.reset_stats.resets,
            objects_removed=daemon.reset_stats.objects,
            leaks=leftovers,
        )
        self.summaries.append(facts)

    def stop(self) -> None:
        self.wait_for_start()
        daemon = self.started_daemon
        if daemon is not None:
            self.record(daemon, "worker")
        if self._executor is not None:
            self._executor.shutdown(wait=True)
        if self.holds_pull_cache:
            pullcache.release()
        if self.owns_session:
            # Every worker is gone by now: whatever still carries the session's label was left
            # by a worker that crashed, and is a leak to remove and report.
            self.session_leftovers = reap_session(self.identity.session_id)
            remove_session_dir(self.context.session_dir)
        if self._watchdog is not None:
            self._watchdog.dismiss()


_session_key = pytest.StashKey[DockerSession]()


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup(
        "isolated-docker",
        "pytest-isolated-docker: an isolated Docker daemon per session or xdist worker "
        "(each option also reads PYTEST_DOCKER_<NAME> and ini docker_<name>)",
    )
    for spec in OPTIONS:
        kwargs: dict[str, Any] = {"dest": spec.dest, "default": None}
        if spec.is_flag:
            kwargs["action"] = "store_const"
            kwargs["const"] = True
        elif spec.is_list:
            kwargs["action"] = "append"
            kwargs["metavar"] = spec.metavar
        else:
            kwargs["metavar"] = spec.metavar or "{" + ",".join(spec.choices) + "}"
        group.addoption(spec.flag, help=spec.help, **kwargs)
        ini_type: Literal["linelist", "string"] = "linelist" if spec.is_list else "string"
        parser.addini(spec.ini, help=spec.help, type=ini_type)


def _resolve_settings(config: pytest.Config) -> Settings:
    flags = {spec.name: config.getoption(spec.dest) for spec in OPTIONS}
    ini = {spec.name: config.getini(spec.ini) for spec in OPTIONS}
    try:
        return resolve(flags, os.environ, ini)
    except SettingsError as exc:
        raise pytest.UsageError(str(exc)) from None


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "docker_daemon(fresh=False, backend=None): fresh=True gives this test a brand-new daemon "
        "of its own; backend='machine' (or another) runs this test on that backend.",
    )
    settings = _resolve_settings(config)
    workerinput = getattr(config, "workerinput", None)
    if workerinput is not None:
        session_id, owner_pid, mirror = workerinput[_WORKERINPUT_KEY]
        identity = Identity(session_id, os.environ.get("PYTEST_XDIST_WORKER", "gw"))
    else:
        identity, owner_pid, mirror = Identity(new_session_id()), os.getpid(), None
    state = DockerSession(config, settings, identity, owner_pid)
    config.stash[_session_key] = state
    if mirror:
        state.add_mirror(mirror)
    if config.pluginmanager.hasplugin("xdist"):
        config.pluginmanager.register(_XdistHooks(), "pytest-isolated-docker-xdist")
    if workerinput is None and backend_class(settings.backend).unsafe:
        config.issue_config_time_warning(
            UnsafeDockerWarning(
                f"--docker-backend={settings.backend} ({settings.sources['backend']}): tests get "
                "the host's own Docker engine and any code under test is root on this host. Use "
                "--docker-backend=dind or machine for isolation."
            ),
            stacklevel=2,
        )


class _XdistHooks:
    """Hooks that exist only when pytest-xdist is installed."""

    def pytest_configure_node(self, node: Any) -> None:
        session = node.config.stash[_session_key]
        node.workerinput[_WORKERINPUT_KEY] = (
            session.identity.session_id,
            session.owner_pid,
            session.pull_cache_url,
        )

    def pytest_testnodedown(self, node: Any, error: Any) -> None:
        output = getattr(node, "workeroutput", {}) or {}
        node.config.stash[_session_key].summaries.extend(output.get(_WORKEROUTPUT_KEY, []))


def pytest_report_header(config: pytest.Config) -> list[str]:
    session = config.stash[_session_key]
    settings = session.settings
    line = (
        f"isolated-docker: backend={settings.backend} scope={settings.scope} "
        f"reset={settings.reset} session={session.identity.session_id}"
    )
    lines = [line]
    if settings.preload:
        lines.append(f"isolated-docker: preloading {', '.join(settings.preload)}")
    if settings.registry_mirror:
        lines.append(f"isolated-docker: registry mirrors {', '.join(settings.registry_mirror)}")
    if backend_class(settings.backend).unsafe:
        lines.append(
            "isolated-docker: UNSAFE: tests use the host's own Docker engine (code under test is "
            "root on this host)"
        )
    return lines


def pytest_sessionstart(session: pytest.Session) -> None:
    state = session.config.stash[_session_key]
    if state.owns_session:
        state.guard()
        threading.Thread(
            target=_sweep_stale, name="pytest-isolated-docker-sweep", daemon=True
        ).start()
    if state.settings.pull_through_cache and state.owns_session:
        # Before xdist configures its workers, so that they receive the mirror's address.
        try:
            with contextlib.closing(state.context.host_client()) as host:
                state.pull_cache_url = pullcache.acquire(host, state.settings.pull_through_upstream)
        except (DaemonUnavailable, StartupError) as exc:
            raise pytest.UsageError(
                f"--docker-pull-through-cache ({state.settings.sources['pull_through_cache']}): "
                f"{exc}"
            ) from None
        state.holds_pull_cache = True
        state.add_mirror(state.pull_cache_url)
    if state.settings.preload and not hasattr(session.config, "workerinput"):
        # Once per run, before any test: a missing image is a configuration error, not N failures.
        try:
            host = state.context.host_client()
        except DaemonUnavailable:
            return  # each test reports (or skips on) the unreachable engine itself
        try:
            ensure_on_host(host, state.settings.preload)
        except StartupError as exc:
            raise pytest.UsageError(f"{exc} (from {state.settings.sources['preload']})") from None
        finally:
            host.close()


def _sweep_stale() -> None:
    """Remove what earlier sessions that died left behind (their owner process is gone)."""
    try:
        client = docker.from_env(timeout=30)
    except docker.errors.DockerException:
        client = None
    try:
        sweep(client)
    except (docker.errors.DockerException, OSError):
        pass  # best effort; `pytest-isolated-docker prune` reports what it cannot remove
    finally:
        if client is not None:
            client.close()


def pytest_itemcollected(item: pytest.Item) -> None:
    if DAEMON_FIXTURES.intersection(getattr(item, "fixturenames", ())):
        item.config.stash[_session_key].start_in_background()


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
    session = pytestconfig.stash[_session_key]
    return _daemon_or_outcome(session, session.daemon)


@pytest.fixture
def docker_test_daemon(request: pytest.FixtureRequest) -> Iterator[DockerDaemon]:
    """The daemon this test uses: the worker's, or, with ``@pytest.mark.docker_daemon(fresh=True)``
    or ``backend=...``, a brand-new one of its own, stopped when the test ends."""
    session = request.config.stash[_session_key]
    marker = request.node.get_closest_marker("docker_daemon")
    options = dict(marker.kwargs) if marker else {}
    backend = options.pop("backend", None)
    fresh = bool(options.pop("fresh", False)) or (
        backend is not None and backend != session.settings.backend
    )
    if options:
        pytest.fail(
            f"@pytest.mark.docker_daemon got unknown arguments {sorted(options)}; "
            "it takes fresh=True and backend='dind'|'socket'|'machine'.",
            pytrace=False,
        )
    if not fresh:
        yield request.getfixturevalue("docker_daemon")
        return
    context = session.context
    if backend is not None:
        context = BackendContext(
            _resolve_marker_backend(session.settings, backend), session.identity
        )
    session.guard()
    daemon = _daemon_or_outcome(session, lambda: start_daemon(context))
    try:
        yield daemon
    finally:
        session.record(daemon, f"fresh for {request.node.nodeid}")


def _resolve_marker_backend(settings: Settings, backend: str) -> Settings:
    try:
        backend_class(backend)
    except KeyError:
        pytest.fail(
            f"@pytest.mark.docker_daemon(backend={backend!r}): unknown backend. "
            "Valid backends: dind, socket, machine.",
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


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_teardown(item: pytest.Item) -> Generator[None, None, None]:
    yield
    if not DAEMON_FIXTURES.intersection(getattr(item, "fixturenames", ())):
        return
    session = item.config.stash[_session_key]
    daemon = session.started_daemon
    if daemon is not None and session.settings.reset == "test":
        daemon.reset()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, Any, None]:
    outcome = yield
    report: pytest.TestReport = outcome.get_result()
    if report.passed or report.skipped:
        return
    if not DAEMON_FIXTURES.intersection(getattr(item, "fixturenames", ())):
        return
    daemon = item.config.stash[_session_key].started_daemon
    if daemon is not None:
        report.sections.append(("docker daemon log (last 50 lines)", daemon.logs(50)))


def pytest_sessionfinish(session: pytest.Session) -> None:
    state = session.config.stash[_session_key]
    state.stop()
    workeroutput = getattr(session.config, "workeroutput", None)
    if workeroutput is not None:
        workeroutput[_WORKEROUTPUT_KEY] = state.summaries


def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    state = config.stash[_session_key]
    summaries = state.summaries
    if not summaries and not state.session_leftovers:
        return
    terminalreporter.section("isolated docker daemons")
    if state.session_leftovers:
        terminalreporter.write_line(
            "removed at the end of the session, left by a worker that did not finish: "
            + ", ".join(state.session_leftovers),
            red=True,
        )
    for facts in sorted(summaries, key=lambda f: (f["worker"], f["label"])):
        terminalreporter.write_line(
            f"{facts['worker']}: {facts['backend']} {facts.get('mode', '')} "
            f"at {facts['endpoint']}, engine {facts['engine']}, "
            f"ready in {facts['startup_seconds']:.2f} s"
            + (
                f" (preload {facts['preload_seconds']:.2f} s)"
                if facts.get("preload_seconds")
                else ""
            )
            + f", {facts['resets']} resets removed "
            f"{facts['objects_removed']} objects, leaks at teardown: {len(facts['leaks'])}"
            + (f" ({', '.join(facts['leaks'])})" if facts["leaks"] else "")
            + (f" ({facts['scope']})" if facts.get("scope") else "")
            + ("" if facts["label"] == "worker" else f" [{facts['label']}]")
        )
