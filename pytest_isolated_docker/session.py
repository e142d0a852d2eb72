"""The plugin's per-process state: settings, identity, the worker's daemon, its watchdog, and what
each test used (for its reset and its failure report).

Shared by the hooks (``plugin``) and the fixtures (``fixtures``, ``factories``); no hooks or
fixtures here.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import threading
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import pytest

from . import hostmirror, lazy, pullcache, reaper
from .backends import Backend, BackendContext, backend_class
from .coordination import created_first, release_session
from .daemon import Baseline, DockerDaemon
from .errors import DaemonUnavailable, IsolatedDockerError
from .labels import Identity
from .lifecycle import renew_daemon, start_daemon
from .placement import Placement, Pool
from .settings import Settings, SettingsError, override
from .sharing import SharedBackend
from .spares import Spares
from .watchdog import Watchdog

if TYPE_CHECKING:
    import docker
else:
    docker = lazy.module("docker")

#: A reset facing at least this many containers swaps in a warm spare when it may.
SWAP_AT_CONTAINERS = 5

#: A file in the session directory: some process of the session began to use the host engine.
ENGINE_USED = "engine-used"

#: The default fixtures that use the worker's daemon: a test asking for one of them (and not for a
#: fresh daemon) lets the worker start its daemon ahead of time.
WORKER_DAEMON_FIXTURES = frozenset(
    {"docker_daemon", "docker_test_daemon", "docker_client", "docker_env"}
)


class DockerSession:
    """The plugin's state for one pytest process: settings, identity and its daemons."""

    def __init__(
        self, config: pytest.Config, settings: Settings, identity: Identity, owner_pid: int
    ) -> None:
        self.config = config
        self.owner_pid = owner_pid
        self.identity = identity
        self.settings = settings
        self.context = BackendContext(settings, identity)
        #: Raises EngineNotFound for a --docker-engine context that does not exist.
        self.pool = Pool.of(settings.engine, self.context.engine)
        self._placements: dict[int, Placement] = {}
        self.holds_pull_cache = False
        self.host_mirror: hostmirror.HostMirror | None = None
        #: Why the session serves no host images although asked to ("" when it does).
        self.host_mirror_note = ""
        self._mirror_lock = threading.Lock()
        self.pull_cache_url: str | None = None
        self._lock = threading.Lock()
        self._future: concurrent.futures.Future[DockerDaemon] | None = None
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None
        self._watchdog: Watchdog | None = None
        self.summaries: list[dict[str, Any]] = []
        self.session_leftovers: list[str] = []
        self._spares = Spares(self._start_own, self._finish, self._renew)
        #: A fixture wider than a test used the worker's daemon (see :meth:`_note_wider_users`).
        self._worker_daemon_held = False

    def add_mirror(self, url: str) -> None:
        self.settings = self.settings.replace(registry_mirror=(*self.settings.registry_mirror, url))
        self.context = dataclasses.replace(self.context, settings=self.settings)

    @property
    def serves_host_images(self) -> bool:
        """The settings ask for the host mirror and the configured backend takes it."""
        return self._asks_host_mirror(self.settings) and not self.pool.is_pool

    @staticmethod
    def _asks_host_mirror(settings: Settings) -> bool:
        return settings.host_mirror and backend_class(settings.backend).uses_host_mirror

    def _serve_host_images(self, settings: Settings) -> None:
        """Before this process first starts a daemon that takes the host mirror: serve the host
        engine's images to the session's daemons from this process too (see :mod:`.hostmirror`:
        every process of the session listens on one port, so the mirror lives as long as any of
        them, as a daemon shared by the workers does). Once per process; lazily, so that a run
        without Docker tests never contacts the engine."""
        if not self._asks_host_mirror(settings):
            return
        with self._mirror_lock:
            if self.host_mirror is not None or self.host_mirror_note:
                return
            if self.pool.is_pool:
                self.host_mirror_note = "not with a pool of engines (--docker-engine)"
                return
            try:
                self.host_mirror = hostmirror.serve(
                    self.pool.engines[0], self.context.ca, self.context.session_dir
                )
            except hostmirror.MirrorUnavailable as exc:
                self.host_mirror_note = str(exc)
                return
            self.context = dataclasses.replace(self.context, host_mirror=self.host_mirror.url)

    @property
    def shared_context(self) -> BackendContext:
        """Context of the daemon shared by the session: labelled with the owner's pid, so that
        one worker's crash watchdog never removes what the other workers still use."""
        return dataclasses.replace(
            self.context, identity=Identity(self.identity.session_id, "shared", self.owner_pid)
        )

    @property
    def owns_session(self) -> bool:
        """The controller (or a run without xdist) owns the session and ends it."""
        return not hasattr(self.config, "workerinput")

    def claim(self) -> None:
        """Hold the session directory for this process's life (no engine is contacted)."""
        _ = self.context.session_dir

    def guard(self) -> None:
        """Before this process first creates anything: hold the session directory, start the
        watchdog, and sweep what dead sessions left (in the background)."""
        with self._lock:
            if self._watchdog is not None:
                return
            self.claim()
            self.context = dataclasses.replace(self.context, bind_roots=self._run_directories())
            # Tells the session's owner, at its end, that the host engine may hold leftovers;
            # and makes its creator the one process of the session that sweeps (the xdist
            # workers start at once, and a second sweep would only take CPU from their starts).
            sweeps = created_first(self.context.session_dir / ENGINE_USED)
            self._watchdog = Watchdog.start(self.identity, self.pool.environments())
            if sweeps:
                threading.Thread(
                    target=self._sweep_stale, name="pytest-isolated-docker-sweep", daemon=True
                ).start()

    def _run_directories(self) -> tuple[str, ...]:
        """pytest's basetemp (this worker's): where tests' tmp_path directories live, which a
        backend handing out the host engine lets containers bind-mount."""
        factory = getattr(self.config, "_tmp_path_factory", None)
        if factory is None:
            return ()
        return (str(factory.getbasetemp()),)

    def _sweep_stale(self) -> None:
        for engine in self.pool.engines:
            try:
                client = dataclasses.replace(self.context, engine=engine).host_client(timeout=30)
            except DaemonUnavailable:
                client = None
            try:
                reaper.sweep(client)
            except (docker.errors.DockerException, OSError, IsolatedDockerError):
                pass  # best effort; `pytest-isolated-docker prune` reports what it cannot remove
            finally:
                if client is not None:
                    client.close()

    # ---- the worker's daemon ----------------------------------------------------------------

    def start_in_background(self) -> None:
        """Begin starting the worker's daemon; other tests go on meanwhile. Idempotent."""
        self.guard()
        with self._lock:
            if self._future is None:
                self._executor = concurrent.futures.ThreadPoolExecutor(
                    max_workers=1, thread_name_prefix="pytest-isolated-docker-start"
                )
                self._future = self._executor.submit(self._start_worker_daemon)

    def _start_worker_daemon(self) -> DockerDaemon:
        self._serve_host_images(self.settings)
        cls = backend_class(self.settings.backend)
        if self.settings.scope == "session":
            # One daemon for every worker: on the pool's first engine.
            context = dataclasses.replace(self.shared_context, engine=self.pool.engines[0])
            return start_daemon(context, SharedBackend(context, cls))
        return self._placed(self.context, cls)

    def _placed(self, context: BackendContext, cls: type[Backend]) -> DockerDaemon:
        """Start a daemon of ``cls`` on the least loaded engine of the pool."""
        placement = self.pool.place()
        try:
            daemon = start_daemon(dataclasses.replace(context, engine=placement.engine), cls)
        except BaseException:
            placement.release()
            raise
        self._placements[id(daemon)] = placement
        return daemon

    def worker_daemon(self) -> DockerDaemon:
        """The worker's daemon, started now unless it is already starting."""
        self.start_in_background()
        assert self._future is not None
        return self._future.result()

    @property
    def started_daemon(self) -> DockerDaemon | None:
        """The worker's daemon if it started successfully, without waiting or starting one."""
        future = self._future
        if future is None or not future.done() or future.exception() is not None:
            return None
        return future.result()

    # ---- other daemons (fresh per test, factories) ------------------------------------------

    def settings_for(self, options: dict[str, Any], origin: str) -> Settings:
        """The session's settings with ``options`` from a factory or a marker (UsageError-free:
        a bad value fails the test that asked, naming ``origin``)."""
        try:
            return override(self.settings, options, origin)
        except SettingsError as exc:
            pytest.fail(str(exc), pytrace=False)

    def start_daemon(self, settings: Settings) -> DockerDaemon:
        """A new daemon of its own with ``settings``: the spare :meth:`prepare_daemon` started,
        else one started now (the caller hands it back with :meth:`record`)."""
        self.guard()
        return self._spares.take(settings)

    def prepare_daemon(self, settings: Settings) -> None:
        """Start a daemon with ``settings`` in the background, for the next :meth:`start_daemon`
        with the same settings (the next test's, known ahead)."""
        self.guard()
        self._spares.prepare(settings)

    def _start_own(self, settings: Settings) -> DockerDaemon:
        self._serve_host_images(settings)
        context = dataclasses.replace(self.context, settings=settings)
        return self._placed(context, backend_class(settings.backend))

    def record(self, daemon: DockerDaemon, label: str) -> None:
        """Stop ``daemon`` in the background and keep its facts for the terminal summary."""
        self._spares.retire(daemon, label)

    def _finish(
        self, daemon: DockerDaemon, label: str, facts: dict[str, Any] | None = None
    ) -> None:
        """Stop ``daemon``; record its facts (``facts`` when the caller has them), and as leaks
        what it left or why it did not stop. A daemon swapped out by a reset or a spare no test
        took (no ``label``) is recorded only if it leaked."""
        facts = daemon.describe() if facts is None else facts
        try:
            leftovers = daemon.stop()
        except Exception as exc:  # in the background: reported, not raised
            leftovers = [f"(stopping it failed: {exc})"]
            label = label or "a daemon"
        placement = self._placements.pop(id(daemon), None)
        if placement is not None:
            placement.release()
        self._note_finished(daemon, facts, label, leftovers)

    def _renew(self, daemon: DockerDaemon, label: str) -> DockerDaemon | None:
        """``daemon`` made fresh in place (its facts recorded as those of a daemon stopped
        without leaks: a renewal leaves nothing); else finished as usual, and None."""
        facts = daemon.describe()
        try:
            renewed = renew_daemon(daemon)
        except Exception:  # the renewal failed half-way: stopped below, a new spare instead
            renewed = None
        if renewed is None:
            self._finish(daemon, label, facts)
            return None
        placement = self._placements.pop(id(daemon), None)
        if placement is not None:
            self._placements[id(renewed)] = placement
        self._note_finished(daemon, facts, label, [])
        return renewed

    def _note_finished(
        self, daemon: DockerDaemon, facts: dict[str, Any], label: str, leftovers: list[str]
    ) -> None:
        if not label and not leftovers:
            return
        label = label or "swapped out by a reset, or a spare no test took"
        facts.update(
            worker=self.identity.worker,
            label=label,
            resets=daemon.reset_stats.resets,
            objects_removed=daemon.reset_stats.objects,
            leaks=leftovers,
        )
        self.summaries.append(facts)

    # ---- a test's use of a daemon -----------------------------------------------------------

    @contextlib.contextmanager
    def used_by_test(
        self, request: pytest.FixtureRequest, daemon: DockerDaemon, *, reset: bool = True
    ) -> Iterator[None]:
        """While a test uses ``daemon``: its failure report carries the daemon's log, and at its
        end what appeared during the test is removed (``--docker-reset=test``). Objects that
        existed when the test began, those of wider-scoped fixtures among them, stay. A daemon
        the test has to itself (``reset=False``) is destroyed instead: nothing to reset."""
        uses = request.node.stash.setdefault(test_uses_key, {})
        if id(daemon) in uses:  # another fixture of this test tracks it already
            yield
            return
        uses[id(daemon)] = daemon
        request.node.stash[test_daemon_key] = daemon
        reset = reset and self.settings.reset == "test"
        baseline = daemon.baseline() if reset else Baseline()
        if daemon is self.started_daemon:
            self._note_wider_users(request)
        try:
            yield
        finally:
            uses.pop(id(daemon), None)
            if reset:
                self._reset(daemon, baseline)

    def _note_wider_users(self, request: pytest.FixtureRequest) -> None:
        """Remember for good when a fixture wider than a test uses the worker's daemon: it may
        hold the daemon's address, so that daemon is never swapped for a spare."""
        if self._worker_daemon_held:
            return
        info = getattr(request.node, "_fixtureinfo", None)
        definitions = getattr(info, "name2fixturedefs", None)
        if definitions is None:  # another pytest: assume the worst
            self._worker_daemon_held = True
            return
        for chain in definitions.values():
            fixture = chain[-1]
            if getattr(fixture, "scope", "function") != "function" and (
                WORKER_DAEMON_FIXTURES.intersection(getattr(fixture, "argnames", ()))
            ):
                self._worker_daemon_held = True
                return

    def _reset(self, daemon: DockerDaemon, baseline: Baseline) -> None:
        """Empty ``daemon`` after a test. When the test left many containers on the worker's
        daemon and nothing else of it must stay, swap in a warm spare (started after an earlier
        such reset) and destroy the used daemon in the background: removing twenty containers
        takes seconds, the swap milliseconds. A reset with few containers costs no extra call."""
        if self._may_swap(daemon, baseline):
            containers = daemon.container_count()
            if containers >= SWAP_AT_CONTAINERS and self._nothing_to_keep(daemon, baseline):
                spare = self._spares.ready(self.settings)
                if spare is not None:
                    held = daemon.holdings(containers)
                    daemon.swap(spare)  # ``spare`` now stands for the used daemon
                    self._swap_placements(daemon, spare)
                    held.resets = 1
                    daemon.reset_stats.add(held)
                    self._spares.retire(spare, "")
                    self._spares.prepare(self.settings)
                    return
                if not self._spares.pending(self.settings):
                    self._spares.prepare(self.settings)  # for the next such reset
        daemon.reset(keep=baseline)

    def _swap_placements(self, one: DockerDaemon, other: DockerDaemon) -> None:
        first = self._placements.pop(id(one), None)
        second = self._placements.pop(id(other), None)
        if second is not None:
            self._placements[id(one)] = second
        if first is not None:
            self._placements[id(other)] = first

    def _may_swap(self, daemon: DockerDaemon, baseline: Baseline) -> bool:
        """The worker's own daemon (not shared), of a backend cheap to replace, used by no wider
        fixture, and no container or volume of it existed when the test began."""
        return not (
            daemon is not self.started_daemon
            or self.settings.scope != "worker"
            or not daemon.cheap_to_replace
            or self._worker_daemon_held
            or baseline.containers
            or baseline.volumes
        )

    def _nothing_to_keep(self, daemon: DockerDaemon, baseline: Baseline) -> bool:
        """No network of the daemon existed when the test began, and every image it holds a new
        daemon has too (preloaded) or can pull again (pulled); a built image would be lost."""
        api = daemon.client.api
        custom = {n["Id"] for n in api.networks(filters={"type": ["custom"]})}
        if custom & baseline.networks:
            return False
        preloaded = set(self.settings.preload)
        return all(
            image.get("RepoDigests") or preloaded.intersection(image.get("RepoTags") or ())
            for image in api.images()
        )

    # ---- the end ----------------------------------------------------------------------------

    def stop(self) -> None:
        if self._future is not None:
            concurrent.futures.wait([self._future])
        daemon = self.started_daemon
        if daemon is not None:
            self.record(daemon, "worker")
        self._spares.close()
        if self._executor is not None:
            self._executor.shutdown(wait=True)
        if self.holds_pull_cache:
            pullcache.release()
        if self.host_mirror is not None:
            self.host_mirror.close()
            self.host_mirror = None
        if self.owns_session and (self.context.session_dir / ENGINE_USED).exists():
            # Every worker is gone by now: whatever still carries the session's label was left
            # by a worker that crashed, and is a leak to remove and report.
            self.session_leftovers = [
                item
                for item in reaper.end_session(
                    self.identity.session_id, self.context.session_dir, self.pool.environments()
                )
                if not item.startswith("session directory ")
            ]
        release_session(self.identity.session_id)
        if self._watchdog is not None:
            self._watchdog.dismiss()


def own_daemon_options(node: pytest.Item) -> dict[str, Any] | None:
    """The options of the daemon of its own a test asks for with its ``docker_daemon`` marker
    (``fresh=True``, or any option), or None when it uses the worker's daemon."""
    marker = node.get_closest_marker("docker_daemon")
    options = dict(marker.kwargs) if marker else {}
    fresh = bool(options.pop("fresh", False))
    return options if fresh or options else None


def daemon_or_outcome(settings: Settings, start: Callable[[], DockerDaemon]) -> DockerDaemon:
    """Run ``start``; turn "no daemon can be had" into a failure or a skip, as configured."""
    try:
        return start()
    except (IsolatedDockerError, docker.errors.DockerException) as exc:
        reason = f"pytest-isolated-docker: no {settings.backend} daemon: {exc}"
        skip = settings.unavailable == "skip" and isinstance(exc, DaemonUnavailable)
    # Outside the except block, so that the report shows the reason, not a chain of tracebacks.
    if skip:
        pytest.skip(reason)
    pytest.fail(reason, pytrace=False)


session_key = pytest.StashKey[DockerSession]()
#: The daemon a test used last (the worker's or one of its own), for its failure report.
test_daemon_key = pytest.StashKey[DockerDaemon]()
#: The daemons a test uses, tracked once each for their reset.
test_uses_key = pytest.StashKey[dict[int, DockerDaemon]]()


def session_of(config: pytest.Config) -> DockerSession:
    return config.stash[session_key]


__all__ = [
    "DockerSession",
    "daemon_or_outcome",
    "own_daemon_options",
    "session_key",
    "session_of",
    "test_daemon_key",
]
