"""The backend interface: where a daemon comes from, and what a dead session of it left.

The layers above (``lifecycle``, ``session``, ``reaper``, the fixtures) only ever use the methods
of :class:`Backend`; they never look at a backend's name. Backends are found through the
``pytest_isolated_docker.backends`` entry-point group (see :mod:`pytest_isolated_docker.registry`).
"""

from __future__ import annotations

import abc
import contextlib
import functools
import secrets
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from .. import engines, lazy
from ..coordination import claim_session
from ..daemon import Endpoint, remove_objects
from ..engines import Engine
from ..errors import DaemonUnavailable
from ..hostmirror import certs_d_archive
from ..images import ensure_on_host, image_exists, preload
from ..labels import DAEMON, ROLE, SESSION, Identity
from ..settings import Settings
from ..tls import CertificateAuthority, ClientTLS

if TYPE_CHECKING:
    import docker
    import docker.errors
    import requests
else:
    docker = lazy.module("docker")
    requests = lazy.module("requests")


def engine_now() -> Engine:
    """The host engine as the docker CLI would find it now; an unreadable context is kept as an
    engine without URL whose ``found_by`` says why (reported when the engine is first needed)."""
    try:
        return engines.resolve()
    except engines.EngineNotFound as exc:
        return Engine("", str(exc))


PRELOAD_HINT = (
    "Build or load them into the host engine first (docker build / docker load), or fix the "
    "names given to --docker-preload."
)


@dataclass(frozen=True)
class BackendContext:
    """What every backend gets: the settings, who it works for, and the session's shared files.

    ``engine`` is the host engine as found when the session began: a test that later points
    DOCKER_HOST at its isolated daemon must not make the next daemon start in there.
    ``bind_roots`` are the run's temporary directories (see the field).
    """

    settings: Settings
    identity: Identity
    engine: Engine = field(default_factory=engine_now)
    #: Directories of this run that containers may bind-mount from the host (pytest's basetemp):
    #: a backend handing out the host engine allows binds from these and nowhere else unasked.
    bind_roots: tuple[str, ...] = ()
    #: URL of the session's host mirror (:mod:`pytest_isolated_docker.hostmirror`), "" for none.
    host_mirror: str = ""

    def registry_mirrors(self, backend: type[Backend]) -> tuple[str, ...]:
        """The mirrors a daemon of ``backend`` pulls through, in order: the host mirror first
        (when that backend takes it), then ``--docker-registry-mirror`` and the pull cache."""
        first = (self.host_mirror,) if self._takes_host_mirror(backend) else ()
        return (*first, *self.settings.registry_mirror)

    def registry_certificates(self, backend: type[Backend]) -> bytes | None:
        """A tar for ``/`` with the ``etc/docker/certs.d/`` entry that lets a daemon of
        ``backend`` authenticate to the host mirror; None when it does not use one."""
        if not self._takes_host_mirror(backend):
            return None
        return certs_d_archive(self.client_tls, (urllib.parse.urlsplit(self.host_mirror).netloc,))

    def _takes_host_mirror(self, backend: type[Backend]) -> bool:
        return bool(self.host_mirror) and backend.uses_host_mirror and self.settings.host_mirror

    @property
    def host_environment(self) -> dict[str, str]:
        """DOCKER_HOST and its TLS variables naming the host engine (for processes we start)."""
        return self.engine.environment()

    @property
    def session_dir(self) -> Path:
        """The session's directory (CA, client certificate, VM files), claimed by this process:
        it lives as long as some process of the session does, and no longer."""
        return claim_session(self.identity.session_id)

    def image_donors(self, timeout: float = 600.0) -> list[docker.DockerClient]:
        """Clients of the engines of this machine other than the host engine, that answer: they
        may hold images a remote host engine lacks. The caller closes them."""
        donors = []
        for engine in engines.local_engines():
            if engine.url == self.engine.url:
                continue
            client = engines.client(engine, timeout)
            try:
                client.ping()
            except docker.errors.DockerException:
                client.close()
                continue
            donors.append(client)
        return donors

    @functools.cached_property
    def ca(self) -> CertificateAuthority:
        return CertificateAuthority.load_or_create(self.session_dir, self.identity.session_id)

    @functools.cached_property
    def client_tls(self) -> ClientTLS:
        return self.ca.client_tls(self.session_dir / "client")

    def host_client(self, timeout: float = 60.0) -> docker.DockerClient:
        """A client of the host engine, checked to answer."""
        if not self.engine.url:
            raise DaemonUnavailable(
                f"no host Docker engine: {self.engine.found_by}. Fix DOCKER_CONTEXT or the "
                "current context (`docker context use NAME`), or set DOCKER_HOST."
            )
        try:
            client = engines.client(self.engine, timeout)
            client.ping()
        except (docker.errors.DockerException, requests.exceptions.RequestException) as exc:
            if "paramiko" in str(exc):
                raise DaemonUnavailable(
                    f"the engine {self.engine.describe()} is an ssh:// engine, which docker-py "
                    "reaches only with paramiko installed: pip install "
                    "'pytest-isolated-docker[ssh]'"
                ) from exc
            raise DaemonUnavailable(
                f"the host's Docker engine at {self.engine.describe()} does not answer ({exc}). "
                "Start it, or point DOCKER_HOST (or the Docker context) at a running engine; "
                "`pytest-isolated-docker doctor` checks every backend."
            ) from exc
        return client


class ReapIncomplete(Exception):
    """Something of a dead session could not be removed: the sweep keeps its directory (so that
    nothing needed to remove it later is lost) and reports why."""


@dataclass(frozen=True)
class DeadSession:
    """What a sweep knows of a session whose death is proven: its id, its directory on this
    machine (None when it has none here) and a client of the host engine (None when unreachable).
    """

    session_id: str
    directory: Path | None
    engine: docker.DockerClient | None


class Backend(abc.ABC):
    """Starts one daemon, tells how to reach it, shows its log, and removes all it made.

    The class also owns the crash cleanup of its kind (:meth:`reap`, :meth:`sweep_host`): the
    reaper calls every registered backend and knows none by name.
    """

    name: ClassVar[str]
    #: Roles (the ``pytest-isolated-docker.role`` label) of the host-engine objects it makes.
    roles: ClassVar[tuple[str, ...]] = ()
    #: True when code under test can reach the host as root through this backend.
    unsafe: ClassVar[bool] = False
    #: True when one daemon can serve several processes (``share_state``/``attach``).
    shareable: ClassVar[bool] = False
    #: True when the daemon is the host's own engine behind a proxy: what the tests make lives
    #: there, and the engine's ID is the host engine's.
    host_engine: ClassVar[bool] = False
    #: True when a new daemon starts faster than many containers are removed: a reset may then
    #: swap in a warm spare and destroy the used daemon in the background.
    cheap_to_replace: ClassVar[bool] = False
    #: True when its daemons start without images and can reach the host mirror on the host
    #: engine's bridge (they get it first among their registry mirrors).
    uses_host_mirror: ClassVar[bool] = False
    #: True when a used daemon can be made fresh in place (:meth:`renew`), which costs less than
    #: stopping it and starting another.
    renewable: ClassVar[bool] = False

    def __init__(self, context: BackendContext) -> None:
        self.context = context
        self.settings = context.settings
        #: Tells this daemon's objects from those of other daemons of the same worker.
        self.instance = secrets.token_hex(4)

    def labels(self, role: str) -> dict[str, str]:
        """Labels for an object this daemon makes on the host engine."""
        return {**self.context.identity.labels(role), DAEMON: self.instance}

    @property
    def backend_name(self) -> str:
        """The name reports show (a wrapper shows the backend it wraps)."""
        return self.name

    def share_state(self) -> dict[str, Any]:
        """What another process needs to :meth:`attach` to this daemon (shareable backends)."""
        raise NotImplementedError(f"the {self.name} backend cannot be shared")

    @classmethod
    def attach(cls, context: BackendContext, state: dict[str, Any]) -> Backend:
        """A handle on a daemon another process started, from its :meth:`share_state`."""
        raise NotImplementedError(f"the {cls.name} backend cannot be shared")

    def object_name(self, suffix: str) -> str:
        return self.context.identity.name(f"{self.instance}-{suffix}")

    @classmethod
    def problems(cls, context: BackendContext) -> list[str]:
        """Why this backend cannot work on this machine, each with what to do (doctor)."""
        try:
            context.host_client().close()
        except DaemonUnavailable as exc:
            return [str(exc)]
        return []

    @classmethod
    def header_lines(cls) -> list[str]:
        """Lines this backend adds to pytest's report header."""
        if cls.unsafe:
            return [
                "isolated-docker: UNSAFE: tests use the host's own Docker engine (code under test "
                "is root on this host)"
            ]
        return []

    @classmethod
    def notes(cls, context: BackendContext) -> list[str]:
        """Facts worth knowing that are not problems (doctor prints them)."""
        return []

    @classmethod
    def reap(cls, dead: DeadSession, dry_run: bool = False) -> list[str]:
        """Remove what a dead session of this backend left; return what (would be) removed.

        The default removes the session's host-engine objects of this backend's :attr:`roles`.
        """
        if dead.engine is None or not cls.roles:
            return []
        removed: list[str] = []
        for role in cls.roles:
            filters = {"label": [f"{SESSION}={dead.session_id}", f"{ROLE}={role}"]}
            found = describe_objects(dead.engine, filters)
            if found and not dry_run:
                remove_objects(dead.engine, filters)
            removed += found
        return removed

    @classmethod
    def sweep_host(cls, dry_run: bool = False) -> list[str]:
        """Remove leftovers of this backend that belong to no session (say, a cache entry whose
        making was killed); return what (would be) removed."""
        return []

    @classmethod
    def prune_caches(cls, engine: docker.DockerClient, dry_run: bool = False) -> list[str]:
        """Remove what this backend keeps on ``engine`` across sessions to start faster (caches
        no session owns) when no daemon uses it; return what (would be) removed or kept."""
        return []

    @abc.abstractmethod
    def start(self) -> Endpoint:
        """Launch the daemon and return its endpoint (it need not answer yet)."""

    def renew(self) -> Endpoint | None:
        """Replace the used daemon by a fresh one in place: nothing of the old one left (its
        objects, data, processes, identity), the preload images as at a start. Return the
        endpoint the new daemon will answer on (the old one may still answer for a moment: the
        caller waits for a new engine ID), or None when this daemon cannot be renewed, having
        changed nothing (the caller then stops it)."""
        return None

    def failure(self) -> str | None:
        """Why the daemon can no longer come up, or None while it still may."""
        return None

    @abc.abstractmethod
    def logs(self, tail: int) -> str:
        """The last ``tail`` lines of the daemon's log."""

    @abc.abstractmethod
    def stop(self) -> None:
        """Stop the daemon and remove everything this backend created. Idempotent."""

    def diagnostics(self) -> str:
        """State and log tail attached to start-up errors."""
        return "--- last 50 lines of the daemon's log ---\n" + self.logs(50)

    def owned_filters(self) -> dict[str, list[str]]:
        """Filters selecting the objects tests may have made; empty means everything in it."""
        return {}

    def details(self) -> dict[str, str]:
        """Backend-specific facts for the report (mode, image, ...)."""
        return {}

    @contextlib.contextmanager
    def preload_source(self) -> Iterator[docker.DockerClient]:
        """A client of the host engine holding every configured preload image (brought there
        from this machine's other engines, or pulled, when it lacks some)."""
        with contextlib.closing(self.context.host_client()) as host:
            self.ensure_preload_on_host(host)
            yield host

    def preload(self, target: docker.DockerClient) -> float:
        """Load the configured images from the host engine into the started daemon."""
        if not self.settings.preload:
            return 0.0
        with self.preload_source() as host:
            return preload(host, target, self.settings.preload)

    def ensure_preload_on_host(self, host: docker.DockerClient) -> None:
        """Copy the preload images the host engine lacks from the engines of this machine (an
        engine of a pool, say, that has not had them yet)."""
        missing = [image for image in self.settings.preload if not image_exists(host, image)]
        if missing:
            donors = self.context.image_donors()
            try:
                ensure_on_host(host, missing, "preload", PRELOAD_HINT, donors)
            finally:
                for donor in donors:
                    donor.close()

    def leftovers(self) -> list[str]:
        """What this daemon made that still exists (after :meth:`stop`, a leak)."""
        with contextlib.closing(self.context.host_client()) as host:
            return describe_objects(host, {"label": [f"{DAEMON}={self.instance}"]})


def list_objects(
    client: docker.DockerClient, filters: dict[str, list[str]]
) -> list[tuple[str, dict[str, str]]]:
    """``("kind name", labels)`` of each container, network and volume matching ``filters``."""
    api = client.api
    found = [
        (f"container {c['Names'][0].lstrip('/')}", c["Labels"] or {})
        for c in api.containers(all=True, filters=filters)
    ]
    found += [(f"network {n['Name']}", n["Labels"] or {}) for n in api.networks(filters=filters)]
    volumes = api.volumes(filters=filters).get("Volumes") or []
    found += [(f"volume {v['Name']}", v["Labels"] or {}) for v in volumes]
    return found


def describe_objects(client: docker.DockerClient, filters: dict[str, list[str]]) -> list[str]:
    """``kind name`` of each container, network and volume matching ``filters``."""
    return [what for what, _ in list_objects(client, filters)]


__all__ = [
    "Backend",
    "BackendContext",
    "DeadSession",
    "ReapIncomplete",
    "describe_objects",
    "list_objects",
]
