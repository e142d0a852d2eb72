"""The ``socket`` backend: the host's own engine, behind a labelling proxy. UNSAFE by nature.

Code under test gets the host engine, so it is root on the host: a container started with
``-v /:/host`` writes to the host's ``/``. It therefore refuses to start without an explicit
opt-in. Objects the tests create are labelled on their way through the proxy, so cleanup removes
exactly those and never anything that existed before or belongs to another worker.
"""

from __future__ import annotations

import contextlib
import os
import ssl
from collections.abc import Mapping

import docker

from ..daemon import Endpoint, remove_objects
from ..errors import UnsafeBackendRefused
from ..labelproxy import LabelProxy, connector_for
from ..labels import DAEMON
from .base import Backend, BackendContext

DEFAULT_HOST = "unix:///var/run/docker.sock"

REFUSAL = (
    "the 'socket' backend gives the tests the host's own Docker engine, so any code under test "
    "is root on this host: `docker run -v /:/host ...` writes to the host's `/`, and parallel "
    "jobs see and remove each other's containers. It needs an explicit opt-in: "
    "--docker-allow-unsafe (or PYTEST_DOCKER_ALLOW_UNSAFE=1, or ini docker_allow_unsafe = true). "
    "Prefer --docker-backend=dind (an isolated daemon) or --docker-backend=machine (a VM)."
)


def host_engine_url(environment: Mapping[str, str]) -> str:
    return environment.get("DOCKER_HOST") or DEFAULT_HOST


def _host_tls(environment: Mapping[str, str]) -> ssl.SSLContext | None:
    if not environment.get("DOCKER_TLS_VERIFY"):
        return None
    cert_path = environment.get("DOCKER_CERT_PATH") or os.path.expanduser("~/.docker")
    context = ssl.create_default_context(cafile=os.path.join(cert_path, "ca.pem"))
    context.load_cert_chain(os.path.join(cert_path, "cert.pem"), os.path.join(cert_path, "key.pem"))
    return context


class SocketBackend(Backend):
    """The host engine (DOCKER_HOST, else the default socket), only with --docker-allow-unsafe."""

    name = "socket"
    roles = ("test-object",)
    unsafe = True

    _proxy: LabelProxy | None = None

    @property
    def _upstream(self) -> str:
        return host_engine_url(self.context.host_environment)

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
        self.context.host_client().close()  # a clear error when the engine does not answer
        identity = self.context.identity
        self._proxy = LabelProxy(
            self.context.session_dir / f"engine-{identity.worker}-{self.instance}.sock",
            connector_for(self._upstream, _host_tls(self.context.host_environment)),
            self.labels("test-object"),
        ).start()
        return Endpoint(self._proxy.base_url)

    def preload(self, target: docker.DockerClient) -> float:
        return 0.0  # the tests use the host engine itself: its images are already there

    def logs(self, tail: int) -> str:
        return f"(the socket backend does not read the host engine's log: {self._upstream})"

    def owned_filters(self) -> dict[str, list[str]]:
        return {"label": [f"{DAEMON}={self.instance}"]}

    def details(self) -> dict[str, str]:
        return {"mode": f"UNSAFE: the host's own engine at {self._upstream}"}

    def stop(self) -> None:
        if self._proxy is None:
            return
        try:
            with contextlib.closing(self.context.host_client()) as host:
                remove_objects(host, self.owned_filters())
        finally:
            self._proxy.stop()
            self._proxy = None
