"""``--docker-scope=session``: one daemon shared by every xdist worker of a session.

A policy next to the session, not a backend: it wraps any backend whose daemon can be reached from
several processes (``shareable``). The first worker that asks starts the daemon under the lease's
mutex (readiness and preload included, so nobody uses it half-started) and records how to reach it;
the others attach. Each worker holds the lease (:class:`coordination.Lease`); the last one out
stops the daemon. Its host objects are labelled with the session owner's pid, so a worker's crash
watchdog never removes a daemon others use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from . import lazy
from .backends import Backend, BackendContext
from .coordination import Holder, Lease, read_json, write_json
from .daemon import DockerDaemon, Endpoint
from .errors import DaemonUnavailable
from .lifecycle import start_daemon

if TYPE_CHECKING:
    import docker
else:
    docker = lazy.module("docker")


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
        self._lease = Lease(context.session_dir / f"shared-{inner.name}", "the shared daemon")
        self._state = context.session_dir / f"shared-{inner.name}.json"
        self._holder: Holder | None = None

    @property
    def backend_name(self) -> str:
        return self.inner_class.name

    @property
    def inner(self) -> Backend:
        assert self._inner is not None, "the shared daemon was not started"
        return self._inner

    def start(self) -> Endpoint:
        with self._lease.exclusive():
            state = read_json(self._state)
            if state and self._lease.holders() > 0:
                self._inner = self.inner_class.attach(self.context, state["backend"])
                endpoint = Endpoint(state["base_url"], self.context.client_tls)
            else:
                self._inner = self.inner_class(self.context)
                daemon: DockerDaemon = start_daemon(self.context, self._inner)
                endpoint = daemon.endpoint
                write_json(
                    self._state,
                    {"base_url": endpoint.base_url, "backend": self.inner.share_state()},
                )
            self._holder = self._lease.acquire()
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
        if self._lease.holders() > 0:
            return []
        return self.inner.leftovers() if self._inner else []

    def stop(self) -> None:
        if self._holder is None:
            return
        with self._lease.exclusive():
            if self._lease.release(self._holder):
                self.inner.stop()
                self._state.unlink(missing_ok=True)
            self._holder = None
