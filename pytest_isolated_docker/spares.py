"""Warm spares: daemons of their own started ahead of the tests that will take them, and used ones
destroyed off the critical path.

A test marked ``@pytest.mark.docker_daemon(fresh=True)`` (or with options) gets a daemon of its
own. While the test before it runs, the plugin, which knows the next test, has a spare with the
same settings started in the background; the test takes it ready. Its teardown hands the used
daemon to a background thread that stops it and records what it left, so that the next test does
not wait for that either.

A used daemon whose backend can renew it in place (dind: a new dockerd from a fresh data root in
the same container) is parked instead, and the next spare with its settings is made by renewing
it, which costs a fraction of a new start; parked daemons nobody claims are stopped at the end.
"""

from __future__ import annotations

import concurrent.futures
import threading
from collections.abc import Callable

from .daemon import DockerDaemon
from .settings import Settings

#: How many used daemons with the same settings wait to be renewed into spares: one suffices for
#: tests that each take a daemon (a test's teardown parks one, the next test's spare claims it),
#: and more would only wait to be stopped at the end.
PARKED_PER_SETTINGS = 1


class Spares:
    """Spare daemons by settings, started with ``start`` or renewed from used ones with
    ``renew``; used daemons finished with ``finish`` in the background. Thread-safe.

    ``renew(daemon, label)`` returns the daemon made fresh in place, or None when it could not
    be renewed, having finished it (stopped, recorded) itself."""

    def __init__(
        self,
        start: Callable[[Settings], DockerDaemon],
        finish: Callable[[DockerDaemon, str], None],
        renew: Callable[[DockerDaemon, str], DockerDaemon | None],
    ) -> None:
        self._start = start
        self._finish = finish
        self._renew = renew
        self._lock = threading.Lock()
        self._spares: dict[Settings, list[concurrent.futures.Future[DockerDaemon]]] = {}
        #: The settings of each daemon handed out (by id), so that it is parked under them.
        self._handed: dict[int, Settings] = {}
        self._parked: dict[Settings, list[tuple[DockerDaemon, str]]] = {}
        #: The used daemon each renewal future makes fresh (finished if the future is cancelled).
        self._renewing: dict[concurrent.futures.Future[DockerDaemon], tuple[DockerDaemon, str]] = {}
        self._closing = False
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
            parked = self._parked.get(settings)
            if parked:
                daemon, label = parked.pop(0)
                future = self._starter.submit(self._renew_or_start, daemon, label, settings)
                self._renewing[future] = (daemon, label)
                future.add_done_callback(self._forget_renewal)
            else:
                future = self._starter.submit(self._start, settings)
            self._spares.setdefault(settings, []).append(future)

    def _forget_renewal(self, future: concurrent.futures.Future[DockerDaemon]) -> None:
        self._renewing.pop(future, None)

    def _renew_or_start(self, daemon: DockerDaemon, label: str, settings: Settings) -> DockerDaemon:
        renewed = self._renew(daemon, label)
        return renewed if renewed is not None else self._start(settings)

    def _hand_out(self, daemon: DockerDaemon, settings: Settings) -> DockerDaemon:
        with self._lock:
            self._handed[id(daemon)] = settings
        return daemon

    def take(self, settings: Settings) -> DockerDaemon:
        """The spare with ``settings`` (waiting for it if it is still starting), else a daemon
        started now. A spare that failed to start is started again here, so that the error the
        test reports is its own."""
        with self._lock:
            waiting = self._spares.get(settings)
            future = waiting.pop(0) if waiting else None
        if future is not None:
            try:
                return self._hand_out(future.result(), settings)
            except Exception:  # reported by the start below, if it fails again
                pass
        return self._hand_out(self._start(settings), settings)

    def ready(self, settings: Settings) -> DockerDaemon | None:
        """A spare with ``settings`` that is ready now, without waiting; else None."""
        with self._lock:
            waiting = self._spares.get(settings) or []
            for future in waiting:
                if future.done() and future.exception() is None:
                    waiting.remove(future)
                    self._handed[id(future.result())] = settings
                    return future.result()
        return None

    def pending(self, settings: Settings) -> int:
        """How many spares with ``settings`` are ready or starting."""
        with self._lock:
            return len(self._spares.get(settings) or [])

    def retire(self, daemon: DockerDaemon, label: str) -> None:
        """Park ``daemon``, handed out here, to be renewed into a spare; or else finish it (stop
        it, record its facts) in the background."""
        with self._lock:
            settings = self._handed.pop(id(daemon), None)
            parked = self._parked.setdefault(settings, []) if settings is not None else None
            if (
                parked is not None
                and daemon.renewable
                and not self._closing
                and len(parked) < PARKED_PER_SETTINGS
            ):
                parked.append((daemon, label))
                return
            self._retiring.append(self._finisher.submit(self._finish, daemon, label))

    def close(self) -> None:
        """Finish the spares no test took (no label: reported only if they leaked) and wait
        until every daemon is finished."""
        with self._lock:
            self._closing = True
            unused = [future for futures in self._spares.values() for future in futures]
            self._spares = {}
            parked = [pair for pairs in self._parked.values() for pair in pairs]
            self._parked = {}
        for daemon, label in parked:
            self.retire(daemon, label)
        for future in unused:
            renewing = self._renewing.get(future)
            if future.cancel():
                if renewing is not None:  # the used daemon it was to renew
                    self.retire(*renewing)
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
