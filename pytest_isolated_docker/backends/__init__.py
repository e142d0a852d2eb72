"""Backends: where a daemon comes from. One small interface, three implementations.

The layer above (``daemon.py``, ``plugin.py``) only ever calls :func:`start_daemon` and the
methods of :class:`Backend`; it never looks at a backend's name.
"""

from __future__ import annotations

import abc
import contextlib
import functools
import importlib
import os
import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import docker
import docker.errors

from ..coordination import session_dir
from ..daemon import DockerDaemon, Endpoint, phase, wait_until_ready
from ..errors import DaemonUnavailable, IsolatedDockerError
from ..images import preload
from ..labels import DAEMON, Identity
from ..settings import Settings
from ..tls import CertificateAuthority, ClientTLS

HOST_ENGINE_VARIABLES = ("DOCKER_HOST", "DOCKER_TLS_VERIFY", "DOCKER_CERT_PATH")


def host_environment_now() -> dict[str, str]:
    environment = {name: os.environ[name] for name in HOST_ENGINE_VARIABLES if name in os.environ}
    # Never empty: docker.from_env() reads os.environ again when handed an empty mapping.
    environment.setdefault("DOCKER_HOST", "unix:///var/run/docker.sock")
    return environment


@dataclass(frozen=True)
class BackendContext:
    """What every backend gets: the settings, who it works for, and the session's shared files.

    ``host_environment`` is how the host engine was reached when the session began: a test that
    later points DOCKER_HOST at its isolated daemon must not make the next daemon start in there.
    """

    settings: Settings
    identity: Identity
    host_environment: Mapping[str, str] = field(default_factory=host_environment_now)

    @property
    def session_dir(self) -> Path:
        return session_dir(self.identity.session_id)

    @functools.cached_property
    def ca(self) -> CertificateAuthority:
        return CertificateAuthority.load_or_create(self.session_dir, self.identity.session_id)

    @functools.cached_property
    def client_tls(self) -> ClientTLS:
        return self.ca.client_tls(self.session_dir / "client")

    def host_client(self, timeout: float = 60.0) -> docker.DockerClient:
        """A client of the host engine (DOCKER_HOST, else the default socket)."""
        try:
            client = docker.from_env(timeout=int(timeout), environment=dict(self.host_environment))
            client.ping()
        except docker.errors.DockerException as exc:
            raise DaemonUnavailable(
                f"the host's Docker engine does not answer ({exc}). Start it (on this project's "
                "machines: dev/provision-host), or point DOCKER_HOST at a running engine; "
                "`pytest-isolated-docker doctor` checks every backend."
            ) from exc
        return client


class Backend(abc.ABC):
    """Starts one daemon, tells how to reach it, shows its log, and removes all it made."""

    name: ClassVar[str]
    #: True when code under test can reach the host as root through this backend.
    unsafe: ClassVar[bool] = False
    #: True when one daemon can serve several processes (``share_state``/``attach``).
    shareable: ClassVar[bool] = False

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

    @abc.abstractmethod
    def start(self) -> Endpoint:
        """Launch the daemon and return its endpoint (it need not answer yet)."""

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

    def preload(self, target: docker.DockerClient) -> float:
        """Load the configured images from the host engine into the started daemon."""
        if not self.settings.preload:
            return 0.0
        with contextlib.closing(self.context.host_client()) as host:
            return preload(host, target, self.settings.preload)

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


_BACKEND_MODULES = {
    "dind": "pytest_isolated_docker.backends.dind",
    "socket": "pytest_isolated_docker.backends.socket",
    "machine": "pytest_isolated_docker.backends.machine",
}


def backend_class(name: str) -> type[Backend]:
    module = importlib.import_module(_BACKEND_MODULES[name])
    cls: type[Backend] = module.BACKEND
    return cls


def start_daemon(
    context: BackendContext, backend_name: str | None = None, *, shared: bool = False
) -> DockerDaemon:
    """Start a daemon with the configured (or the given) backend and wait until it answers.

    With ``shared``, take a lease on the session's shared daemon instead (started by whichever
    process asks first). Whatever the backend made is removed again if any step fails, Ctrl-C
    included.
    """
    cls = backend_class(backend_name or context.settings.backend)
    backend: Backend
    if shared:
        from .shared import SharedBackend

        backend = SharedBackend(context, cls)
    else:
        backend = cls(context)
    started = time.monotonic()
    try:
        endpoint = backend.start()
        api_version = wait_until_ready(
            endpoint, context.settings.startup_timeout, backend.failure, backend.diagnostics
        )
        daemon = DockerDaemon(backend, endpoint, api_version, time.monotonic() - started)
        with phase("preload", "Check the host engine's disk and the daemon log."):
            daemon.preload_seconds = backend.preload(daemon.client)
    except BaseException:
        backend.stop()
        raise
    return daemon


__all__ = [
    "Backend",
    "BackendContext",
    "DaemonUnavailable",
    "IsolatedDockerError",
    "describe_objects",
    "start_daemon",
]
