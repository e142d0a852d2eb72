"""The ``socket`` backend: the host's own engine, behind a labelling proxy. UNSAFE by nature.

Code under test gets the host engine, so it is root on the host: a container started with
``-v /:/host`` writes to the host's ``/``. It therefore refuses to start without an explicit
opt-in. Objects the tests create are labelled on their way through the proxy, so cleanup removes
exactly those and never anything that existed before or belongs to another worker.
"""

from __future__ import annotations

from pathlib import Path

from ..daemon import Endpoint
from ..errors import UnsafeBackendRefused
from ..labelproxy import LabelProxy
from ..proxying import DEFAULT_HOST, host_engine_url
from .base import BackendContext
from .hostengine import HostEngineBackend

REFUSAL = (
    "the 'socket' backend gives the tests the host's own Docker engine, so any code under test "
    "is root on this host: `docker run -v /:/host ...` writes to the host's `/`, and parallel "
    "jobs see and remove each other's containers. It needs an explicit opt-in: "
    "--docker-allow-unsafe (or PYTEST_DOCKER_ALLOW_UNSAFE=1, or ini docker_allow_unsafe = true). "
    "Prefer --docker-backend=dind (an isolated daemon), --docker-backend=guarded (the host engine "
    "behind a default-deny guard) or --docker-backend=machine (a VM)."
)


class SocketBackend(HostEngineBackend):
    """The host engine (DOCKER_HOST, else the default socket), only with --docker-allow-unsafe."""

    name = "socket"
    unsafe = True

    @classmethod
    def problems(cls, context: BackendContext) -> list[str]:
        found = super().problems(context)
        if not context.settings.allow_unsafe:
            found.append(
                "needs the explicit opt-in --docker-allow-unsafe (PYTEST_DOCKER_ALLOW_UNSAFE=1)"
            )
        return found

    def start(self) -> Endpoint:
        if not self.settings.allow_unsafe:
            raise UnsafeBackendRefused(REFUSAL)
        return super().start()

    def make_proxy(self, socket_path: Path) -> LabelProxy:
        return LabelProxy(socket_path, self.connector(), self.labels("test-object"))

    def details(self) -> dict[str, str]:
        return {"mode": f"UNSAFE: the host's own engine at {self.upstream}"}


__all__ = ["DEFAULT_HOST", "REFUSAL", "SocketBackend", "host_engine_url"]
