"""What the backends that hand out the host's own engine share (``socket``, ``guarded``).

The tests reach the engine through a proxy of this process, on a private unix socket in the
session directory; everything made through it carries the daemon's labels, so that resets,
teardown and the crash watchdog remove exactly that, and never an object that existed before or
belongs to another worker.
"""

from __future__ import annotations

import abc
import contextlib
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

from .. import lazy
from ..daemon import Endpoint, remove_objects
from ..labels import DAEMON
from ..proxying import Connector, PrivateUnixServer, connector_for, host_engine_url, host_tls
from .base import Backend

if TYPE_CHECKING:
    import docker
else:
    docker = lazy.module("docker")


class HostEngineBackend(Backend):
    """The host engine (DOCKER_HOST, else the default socket) behind a proxy of this process."""

    roles = ("test-object",)
    host_engine: ClassVar[bool] = True
    #: The proxy's socket is named ``<socket_prefix>-<worker>-<instance>.sock``.
    socket_prefix: ClassVar[str] = "engine"

    _proxy: PrivateUnixServer | None = None

    @property
    def upstream(self) -> str:
        """The host engine's URL."""
        return host_engine_url(self.context.host_environment)

    def connector(self) -> Connector:
        """Opens a new connection to the host engine."""
        return connector_for(self.upstream, host_tls(self.context.host_environment))

    @abc.abstractmethod
    def make_proxy(self, socket_path: Path) -> PrivateUnixServer:
        """The proxy the tests talk to, listening on ``socket_path`` (not started yet)."""

    def start(self) -> Endpoint:
        self.context.host_client().close()  # a clear error when the engine does not answer
        identity = self.context.identity
        path = self.context.session_dir / (
            f"{self.socket_prefix}-{identity.worker}-{self.instance}.sock"
        )
        self._proxy = self.make_proxy(path).start()
        return Endpoint(self._proxy.base_url)

    def preload(self, target: docker.DockerClient) -> float:
        return 0.0  # the tests use the host engine itself: its images are already there

    def logs(self, tail: int) -> str:
        return f"(the {self.name} backend does not read the host engine's log: {self.upstream})"

    def owned_filters(self) -> dict[str, list[str]]:
        return {"label": [f"{DAEMON}={self.instance}"]}

    def remove_made(self, host: docker.DockerClient) -> None:
        """Remove what the tests made through the proxy (the proxy is still up)."""
        remove_objects(host, self.owned_filters())

    def stop(self) -> None:
        if self._proxy is None:
            return
        try:
            with contextlib.closing(self.context.host_client()) as host:
                self.remove_made(host)
        finally:
            self._proxy.stop()
            self._proxy = None
