"""The ``guarded`` backend: the host's engine behind a default-deny guard, one per daemon.

As fast as the ``socket`` backend (the host's image cache, nothing to start) without handing the
tests the host: the guard (:mod:`pytest_isolated_docker.guard`) passes only the endpoints and
request bodies it knows to be safe, labels everything made through it, and lets the tests see and
touch only those objects. No ``--docker-allow-unsafe`` is needed. What it cannot stop: an exploit
of the shared kernel from inside an allowed container (use ``machine`` for untrusted code).
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

from .. import lazy
from ..coordination import state_root
from ..guard import BindRoot, GuardProxy, make_guard
from ..labels import DAEMON, ROLE, SESSION
from .base import BackendContext, DeadSession
from .hostengine import HostEngineBackend

if TYPE_CHECKING:
    import docker
    import docker.errors
else:
    docker = lazy.module("docker")

#: Host paths no bind may reach, whatever the allow-list says: engine and containerd sockets and
#: state (each is root on the host).
ENGINE_PATHS = (
    "/var/run/docker.sock",
    "/run/docker.sock",
    "/run/docker",
    "/run/containerd",
    "/var/lib/docker",
    "/var/lib/containerd",
)


def parse_allow_bind(entry: str) -> BindRoot:
    """``PATH`` or ``PATH:ro`` from --docker-guard-allow-bind."""
    path, read_only = entry, False
    if entry.endswith((":ro", ":rw")):
        path, read_only = entry[:-3], entry.endswith(":ro")
    return BindRoot(path, read_only, f"--docker-guard-allow-bind {entry}")


def _remove_images(
    host: docker.DockerClient, labels: list[str], dry_run: bool = False
) -> list[str]:
    found = host.api.images(all=True, filters={"label": labels})
    removed = []
    for image in found:
        tags = [t for t in image.get("RepoTags") or [] if t != "<none>:<none>"]
        removed.append(f"image {tags[0] if tags else image['Id']}")
        if not dry_run:
            with contextlib.suppress(docker.errors.NotFound, docker.errors.APIError):
                host.api.remove_image(image["Id"], force=True)
    return removed


class GuardedBackend(HostEngineBackend):
    """The host engine (DOCKER_HOST, else the default socket) behind a default-deny guard."""

    name = "guarded"
    socket_prefix: ClassVar[str] = "guard"

    @classmethod
    def header_lines(cls) -> list[str]:
        return [
            "isolated-docker: GUARDED: tests use the host's Docker engine through a default-deny "
            "guard (only their own objects, no host access; refusals are counted in the summary)"
        ]

    @classmethod
    def notes(cls, context: BackendContext) -> list[str]:
        allowed = ", ".join(context.settings.guard_allow_bind) or "none"
        return [
            "containers may bind-mount pytest's basetemp (tmp_path) and the allow-listed "
            f"directories (--docker-guard-allow-bind: {allowed}); the guard refuses the rest"
        ]

    def bind_roots(self) -> list[BindRoot]:
        """Where binds may come from: pytest's basetemp, then the allow-list."""
        roots = [BindRoot(path, False, "pytest's basetemp") for path in self.context.bind_roots]
        return roots + [parse_allow_bind(entry) for entry in self.settings.guard_allow_bind]

    def forbidden_paths(self) -> list[str]:
        paths = [*ENGINE_PATHS, str(state_root())]
        if self.upstream.startswith("unix://"):
            paths.append(self.upstream[len("unix://") :])
        return paths

    def make_proxy(self, socket_path: Path) -> GuardProxy:
        return make_guard(
            socket_path,
            self.connector(),
            self.labels("test-object"),
            DAEMON,
            self.bind_roots(),
            self.forbidden_paths(),
        )

    @property
    def guard(self) -> GuardProxy | None:
        return self._proxy if isinstance(self._proxy, GuardProxy) else None

    def refusals(self) -> int:
        return self.guard.refusals if self.guard else 0

    def details(self) -> dict[str, str]:
        count = self.refusals()
        return {
            "mode": f"GUARDED: the host's engine at {self.upstream} behind a default-deny guard, "
            f"{count} request{'' if count == 1 else 's'} refused"
        }

    def logs(self, tail: int) -> str:
        guard = self.guard
        lines = guard.log_tail(tail) if guard else []
        return (
            f"(the guarded backend does not read the host engine's log: {self.upstream}; the "
            f"guard's refusals follow)\n" + ("\n".join(lines) or "(no refusals)")
        )

    def remove_made(self, host: docker.DockerClient) -> None:
        super().remove_made(host)
        _remove_images(host, [f"{DAEMON}={self.instance}"])

    def leftovers(self) -> list[str]:
        with contextlib.closing(self.context.host_client()) as host:
            images = _remove_images(host, [f"{DAEMON}={self.instance}"], dry_run=True)
        return super().leftovers() + images

    @classmethod
    def reap(cls, dead: DeadSession, dry_run: bool = False) -> list[str]:
        removed = super().reap(dead, dry_run)
        if dead.engine is not None:
            labels = [f"{SESSION}={dead.session_id}", f"{ROLE}=test-object"]
            removed += _remove_images(dead.engine, labels, dry_run)
        return removed
