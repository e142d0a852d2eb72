"""pytest hooks: a thin shell over the engine (settings, backends, daemon).

The fixtures live in ``fixtures`` and the per-process state in ``session``. Nothing here knows a
backend by name: backends are asked through their interface.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Generator
from typing import Any, Literal

import pytest

from . import fixtures, pullcache
from .backends import backend_class
from .backends.base import PRELOAD_HINT
from .engines import EngineNotFound
from .errors import DaemonUnavailable, StartupError
from .images import ensure_on_host
from .labels import Identity, new_session_id
from .session import (
    WORKER_DAEMON_FIXTURES,
    DockerSession,
    own_daemon_options,
    session_key,
    test_daemon_key,
)
from .settings import OPTIONS, Settings, SettingsError, override, resolve

_WORKERINPUT_KEY = "pytest_isolated_docker_session"
_WORKEROUTPUT_KEY = "pytest_isolated_docker_daemons"


class UnsafeDockerWarning(pytest.PytestWarning):
    """Tests run against the host's own Docker engine: code under test is root on the host."""


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
        "docker_daemon(fresh=False, **options): fresh=True, or any option of the settings table "
        "(backend='machine', preload=[...]), gives this test a brand-new daemon of its own.",
    )
    settings = _resolve_settings(config)
    workerinput = getattr(config, "workerinput", None)
    if workerinput is not None:
        session_id, owner_pid, mirror = workerinput[_WORKERINPUT_KEY]
        identity = Identity(session_id, os.environ.get("PYTEST_XDIST_WORKER", "gw"))
    else:
        identity, owner_pid, mirror = Identity(new_session_id()), os.getpid(), None
    try:
        state = DockerSession(config, settings, identity, owner_pid)
    except EngineNotFound as exc:
        raise pytest.UsageError(f"{exc} (from {settings.sources['engine']})") from None
    config.stash[session_key] = state
    if mirror:
        state.add_mirror(mirror)
    # Registered now, after every installed plugin: see the fixtures module's docstring.
    config.pluginmanager.register(fixtures, "pytest-isolated-docker-fixtures")
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
        session = node.config.stash[session_key]
        node.workerinput[_WORKERINPUT_KEY] = (
            session.identity.session_id,
            session.owner_pid,
            session.pull_cache_url,
        )

    def pytest_testnodedown(self, node: Any, error: Any) -> None:
        output = getattr(node, "workeroutput", {}) or {}
        node.config.stash[session_key].summaries.extend(output.get(_WORKEROUTPUT_KEY, []))


def pytest_report_header(config: pytest.Config) -> list[str]:
    session = config.stash[session_key]
    settings = session.settings
    line = (
        f"isolated-docker: backend={settings.backend} scope={settings.scope} "
        f"reset={settings.reset} session={session.identity.session_id}"
    )
    lines = [line]
    if session.pool.is_pool:
        urls = ", ".join(engine.url for engine in session.pool.engines)
        lines.append(f"isolated-docker: engines {urls} (--docker-engine: least loaded first)")
    else:
        engine = session.pool.engines[0]
        lines.append(
            "isolated-docker: host engine "
            + (engine.describe() if engine.url else f"not found: {engine.found_by}")
        )
    if settings.preload:
        lines.append(f"isolated-docker: preloading {', '.join(settings.preload)}")
    if settings.registry_mirror:
        lines.append(f"isolated-docker: registry mirrors {', '.join(settings.registry_mirror)}")
    if session.serves_host_images:
        lines.append(
            "isolated-docker: images of the host engine pulled on demand (host mirror; "
            "--docker-host-mirror=false to stop)"
        )
    lines += backend_class(settings.backend).header_lines()
    return lines


@pytest.hookimpl(wrapper=True)
def pytest_sessionstart(session: pytest.Session) -> Generator[None, None, None]:
    """Before xdist starts its workers: the pull-through cache, whose address they receive.
    After (so that the workers boot meanwhile): the check that the preload images exist."""
    state = session.config.stash[session_key]
    if not state.owns_session or session.config.option.collectonly:
        return (yield)
    state.claim()
    if state.settings.pull_through_cache:
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
    result = yield
    session.config.stash[_preload_problem_key] = _preload_problem(state)
    return result


@pytest.hookimpl(wrapper=True)
def pytest_collection(session: pytest.Session) -> Generator[None, None, Any]:
    """A missing preload image ends the run here, once the session has begun (so that xdist
    stops the workers it started)."""
    problem = session.config.stash.get(_preload_problem_key, None)
    if problem is not None:
        raise pytest.UsageError(problem)
    return (yield)


#: Why the preload images cannot be had, found at the session's start (None: they can).
_preload_problem_key = pytest.StashKey[str | None]()


def _preload_problem(state: DockerSession) -> str | None:
    """Once per run, before any test: a missing image is a configuration error, not N failures.
    (The engines of a pool get what they lack as each daemon starts.)"""
    if not state.settings.preload or state.pool.is_pool:
        return None
    try:
        host = state.context.host_client()
    except DaemonUnavailable:
        return None  # each test reports (or skips on) the unreachable engine itself
    donors = state.context.image_donors()
    try:
        ensure_on_host(host, state.settings.preload, "preload", PRELOAD_HINT, donors)
    except StartupError as exc:
        return f"{exc} (from {state.settings.sources['preload']})"
    finally:
        host.close()
        for donor in donors:
            donor.close()
    return None


def _uses_docker(item: pytest.Item | None) -> bool:
    """True when ``item`` asks for one of the default fixtures that need a daemon."""
    return item is not None and bool(
        WORKER_DAEMON_FIXTURES.intersection(getattr(item, "fixturenames", ()))
    )


def _needs_worker_daemon(item: pytest.Item | None) -> bool:
    """True when ``item`` will use the worker's daemon (not one of its own)."""
    return item is not None and _uses_docker(item) and own_daemon_options(item) is None


def pytest_collection_finish(session: pytest.Session) -> None:
    """Start the daemon in the background once the tests that will run are known (after
    deselection), if one of them needs it; never for --collect-only."""
    config = session.config
    if config.option.collectonly:
        return
    needing = sum(1 for item in session.items if _needs_worker_daemon(item))
    workerinput = getattr(config, "workerinput", None)
    # An xdist worker collects every test but runs only those it is handed: it starts at once
    # when there are enough such tests for every worker to get one (while the controller still
    # schedules), else when it is handed one.
    workers = int(workerinput.get("workercount", 1)) if workerinput is not None else 1
    if needing and needing >= workers:
        config.stash[session_key].start_in_background()


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None) -> None:
    """Start the worker's daemon for the test about to run or, ahead of time, for the next one
    (an xdist worker learns its tests one by one); and the daemon of its own the next test will
    take (a warm spare)."""
    state = item.config.stash[session_key]
    if _needs_worker_daemon(item) or _needs_worker_daemon(nextitem):
        state.start_in_background()
    # Spares are taken in order: this test's first (unless a test before had it started).
    for test in (item, *_coming(item, nextitem)):
        options = own_daemon_options(test) if _uses_docker(test) else None
        if options is None or test.stash.get(_spare_key, False):
            continue
        try:
            settings = override(state.settings, options, "@pytest.mark.docker_daemon")
        except SettingsError:
            continue  # the test itself reports its bad marker
        state.prepare_daemon(settings)
        test.stash[_spare_key] = True


#: Set on a test once the daemon of its own it will take is being started.
_spare_key = pytest.StashKey[bool]()
#: Where each test is in the run's order (without xdist, which hands out tests one by one).
_order_key = pytest.StashKey[dict[int, int]]()
#: How many tests ahead spares are started: a daemon takes longer to start than a short test
#: runs, so the next test's alone would often not be ready in time.
SPARES_AHEAD = 2


def _coming(item: pytest.Item, nextitem: pytest.Item | None) -> list[pytest.Item]:
    """The tests that run after ``item``: :data:`SPARES_AHEAD` of them when the order is known
    (no xdist), else the next one (an xdist worker knows only that one)."""
    config = item.config
    items = item.session.items
    if hasattr(config, "workerinput") or nextitem is None or not items:
        return [nextitem] if nextitem is not None else []
    order = config.stash.get(_order_key, None)
    if order is None or len(order) != len(items):
        order = config.stash[_order_key] = {id(test): i for i, test in enumerate(items)}
    index = order.get(id(item))
    if index is None or items[index + 1 : index + 2] != [nextitem]:
        return [nextitem]
    return items[index + 1 : index + 1 + SPARES_AHEAD]


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, Any, None]:
    outcome = yield
    report: pytest.TestReport = outcome.get_result()
    if report.passed or report.skipped:
        return
    daemon = item.stash.get(test_daemon_key, None)
    if daemon is not None:
        report.sections.append(("docker daemon log (last 50 lines)", daemon.logs(50)))


def pytest_sessionfinish(session: pytest.Session) -> None:
    state = session.config.stash[session_key]
    state.stop()
    workeroutput = getattr(session.config, "workeroutput", None)
    if workeroutput is not None:
        workeroutput[_WORKEROUTPUT_KEY] = state.summaries


def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    state = config.stash[session_key]
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
            + (", renewed in place" if facts.get("renewed") else "")
            + f", {facts['resets']} resets removed "
            f"{facts['objects_removed']} objects, leaks at teardown: {len(facts['leaks'])}"
            + (f" ({', '.join(facts['leaks'])})" if facts["leaks"] else "")
            + (f" ({facts['scope']})" if facts.get("scope") else "")
            + ("" if facts["label"] == "worker" else f" [{facts['label']}]")
        )
