"""``--docker-scope=session``: one daemon shared by every xdist worker of a session.

The first worker that asks starts the daemon under a file lock (readiness and preload included, so
nobody uses it half-started) and records it in the session directory; the others attach to it.
Each worker holds a lease; the last one to leave stops the daemon. Its host objects are labelled
with the session owner's pid, so a worker's crash watchdog never removes a daemon others use.
"""

from __future__ import annotations

import os
from typing import Any

import docker

from ..coordination import locked, read_json, write_json
from ..daemon import DockerDaemon, Endpoint
from ..errors import DaemonUnavailable
from . import Backend, BackendContext, start_daemon


class SharedBackend(Backend):
    """A lease on a daemon of another backend, shared by the session's workers."""

    name = "shared"

    def __init__(self, context: BackendContext, inner: type[Backend]) -> None:
        super().__init__(context)
        if not inner.shareable:
            raise DaemonUnavailable(
                f"the {inner.name} backend cannot share one daemon between workers "
                "(--docker-scope=session); use --docker-scope=worker"
            )
        self.inner_class = inner
        self._inner: Backend | None = None
        self._daemon: DockerDaemon | None = None
        self._lease = context.session_dir / f"shared-{inner.name}.json"
        self._lock = context.session_dir / f"shared-{inner.name}.lock"
        self._holding = False

    @property
    def backend_name(self) -> str:
        return self.inner_class.name

    @property
    def inner(self) -> Backend:
        assert self._inner is not None, "the shared daemon was not started"
        return self._inner

    def start(self) -> Endpoint:
        with locked(self._lock):
            lease = read_json(self._lease)
            if lease.get("users"):
                self._inner = self.inner_class.attach(self.context, lease["backend"])
                endpoint = Endpoint(lease["base_url"], self.context.client_tls)
            else:
                self._daemon = start_daemon(self.context, self.inner_class.name)
                self._inner = self._daemon.backend_object
                endpoint = self._daemon.endpoint
                lease = {
                    "base_url": endpoint.base_url,
                    "backend": self.inner.share_state(),
                    "preload_seconds": self._daemon.preload_seconds,
                    "users": [],
                }
            lease["users"].append(os.getpid())
            write_json(self._lease, lease)
            self._holding = True
        return endpoint

    def preload(self, target: docker.DockerClient) -> float:
        return 0.0  # done once, by the worker that started the daemon

    def failure(self) -> str | None:
        return self.inner.failure() if self._inner else None

    def logs(self, tail: int) -> str:
        return self.inner.logs(tail) if self._inner else "(not started)"

    def diagnostics(self) -> str:
        return self.inner.diagnostics() if self._inner else ""

    def owned_filters(self) -> dict[str, list[str]]:
        return self.inner.owned_filters()

    def details(self) -> dict[str, Any]:
        return {**(self.inner.details() if self._inner else {}), "scope": "shared by the session"}

    def leftovers(self) -> list[str]:
        # While other workers hold the lease the daemon is in use, not leaked.
        if read_json(self._lease).get("users"):
            return []
        return self.inner.leftovers() if self._inner else []

    def stop(self) -> None:
        if not self._holding:
            return
        with locked(self._lock):
            lease = read_json(self._lease)
            users = [pid for pid in lease.get("users", []) if pid != os.getpid()]
            if users:
                write_json(self._lease, {**lease, "users": users})
            else:
                self.inner.stop()
                self._lease.unlink(missing_ok=True)
            self._holding = False
