"""Warm spares: daemons of their own started ahead of the tests that will take them, and used ones
destroyed off the critical path.

A test marked ``@pytest.mark.docker_daemon(fresh=True)`` (or with options) gets a daemon of its
own. While the test before it runs, the plugin, which knows the next test, has a spare with the
same settings started in the background; the test takes it ready. Its teardown hands the used
daemon to a background thread that stops it and records what it left, so that the next test does
not wait for that either.
"""

from __future__ import annotations

import concurrent.futures
import threading
from collections.abc import Callable

from .daemon import DockerDaemon
from .settings import Settings


class Spares:
    """Spare daemons by settings, started with ``start``; used daemons finished with ``finish``
    in the background. Thread-safe."""

    def __init__(
        self,
        start: Callable[[Settings], DockerDaemon],
        finish: Callable[[DockerDaemon, str], None],
    ) -> None:
        self._start = start
        self._finish = finish
        self._lock = threading.Lock()
        self._spares: dict[Settings, list[concurrent.futures.Future[DockerDaemon]]] = {}
        self._starter = concurrent.futures.ThreadPoolExecutor(
            max_workers=2, thread_name_prefix="pytest-isolated-docker-spare"
        )
        self._finisher = concurrent.futures.ThreadPoolExecutor(
            max_workers=2, thread_name_prefix="pytest-isolated-docker-retire"
        )
        self._retiring: list[concurrent.futures.Future[None]] = []

    def prepare(self, settings: Settings) -> None:
        """Start one more spare with ``settings`` in the background (one per test to come)."""
        with self._lock:
            future = self._starter.submit(self._start, settings)
            self._spares.setdefault(settings, []).append(future)

    def take(self, settings: Settings) -> DockerDaemon:
        """The spare with ``settings`` (waiting for it if it is still starting), else a daemon
        started now. A spare that failed to start is started again here, so that the error the
        test reports is its own."""
        with self._lock:
            waiting = self._spares.get(settings)
            future = waiting.pop(0) if waiting else None
        if future is not None:
            try:
                return future.result()
            except Exception:  # reported by the start below, if it fails again
                pass
        return self._start(settings)

    def ready(self, settings: Settings) -> DockerDaemon | None:
        """A spare with ``settings`` that is ready now, without waiting; else None."""
        with self._lock:
            waiting = self._spares.get(settings) or []
            for future in waiting:
                if future.done() and future.exception() is None:
                    waiting.remove(future)
                    return future.result()
        return None

    def pending(self, settings: Settings) -> int:
        """How many spares with ``settings`` are ready or starting."""
        with self._lock:
            return len(self._spares.get(settings) or [])

    def retire(self, daemon: DockerDaemon, label: str) -> None:
        """Finish ``daemon`` (stop it, record its facts) in the background."""
        with self._lock:
            self._retiring.append(self._finisher.submit(self._finish, daemon, label))

    def close(self) -> None:
        """Finish the spares no test took (no label: reported only if they leaked) and wait
        until every daemon is finished."""
        with self._lock:
            unused = [future for futures in self._spares.values() for future in futures]
            self._spares = {}
        for future in unused:
            if future.cancel():
                continue
            try:
                daemon = future.result()
            except Exception:  # a spare nobody took: its error concerns no test
                continue
            self.retire(daemon, "")
        with self._lock:
            retiring, self._retiring = self._retiring, []
        for retired in retiring:
            retired.result()
        self._finisher.shutdown(wait=True)
        # Last: a helper process a daemon runs (a VM, an SSH tunnel) dies with the thread that
        # started it (see coordination.die_with_parent), so the starter's threads must outlive
        # every daemon they started.
        self._starter.shutdown(wait=True)
