"""The plugin's per-process state: settings, identity, the worker's daemon and its watchdog.

Shared by the hooks (``plugin``) and the fixtures (``fixtures``); no hooks or fixtures here.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import os
import threading
from typing import Any

import pytest

from . import pullcache
from .backends import BackendContext, start_daemon
from .daemon import DockerDaemon
from .labels import Identity
from .reaper import Watchdog, claim_session, reap_session, remove_session_dir
from .settings import Settings

#: Fixtures that need a daemon: a test using one triggers the start, the reset and the log section.
DAEMON_FIXTURES = frozenset({"docker_daemon", "docker_test_daemon", "docker_client", "docker_env"})


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
        previous = getattr(self, "context", None)
        self.context = (
            BackendContext(settings, self.identity)
            if previous is None
            else dataclasses.replace(previous, settings=settings)
        )

    def add_mirror(self, url: str) -> None:
        self.use_settings(
            self.settings.replace(registry_mirror=(*self.settings.registry_mirror, url))
        )

    @property
    def shared_context(self) -> BackendContext:
        """Context of the daemon shared by the session: labelled with the owner's pid, so that
        one worker's crash watchdog never removes what the other workers still use."""
        return dataclasses.replace(
            self.context, identity=Identity(self.identity.session_id, "shared", self.owner_pid)
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
                shared = self.settings.scope == "session"
                context = self.shared_context if shared else self.context
                self._future = self._executor.submit(start_daemon, context, shared=shared)

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
            self.session_leftovers = reap_session(
                self.identity.session_id, self.context.host_environment
            )
            remove_session_dir(self.context.session_dir)
        if self._watchdog is not None:
            self._watchdog.dismiss()


session_key = pytest.StashKey[DockerSession]()
#: The daemon a test used (the worker's or a fresh one), for its failure report.
test_daemon_key = pytest.StashKey[DockerDaemon]()


def session_of(config: pytest.Config) -> DockerSession:
    return config.stash[session_key]
