"""The ``machine`` backend: a disposable VM per session or xdist worker (a CPU-level boundary).

The backend holds what every VM driver shares (the Backend interface, diagnostics, teardown
guarantees); a :class:`MachineDriver` only knows how to make, watch and remove its kind of VM.
``--docker-machine-driver=qemu`` (default) is built in; any other name is a docker-machine driver
driven through the ``docker-machine`` CLI.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from ... import lazy
from ...daemon import Endpoint
from ...errors import DaemonUnavailable
from ...images import image_exists
from ..base import Backend, BackendContext, DeadSession, ReapIncomplete
from .docker_machine import DockerMachineDriver
from .driver import MachineDriver
from .qemu import QemuDriver

if TYPE_CHECKING:
    import docker
else:
    docker = lazy.module("docker")

QEMU = "qemu"


def driver_classes() -> list[type[MachineDriver]]:
    """Every driver (the crash cleanup asks each)."""
    return [QemuDriver, DockerMachineDriver]


def driver_class(name: str) -> type[MachineDriver]:
    qemu, docker_machine = driver_classes()
    return qemu if name == QEMU else docker_machine


class MachineBackend(Backend):
    """A dockerd in a VM of its own: the built-in QEMU driver or a docker-machine driver."""

    name = "machine"

    def __init__(self, context: BackendContext) -> None:
        super().__init__(context)
        self.driver = driver_class(self.settings.machine_driver)(self)
        self._started = False

    @classmethod
    def problems(cls, context: BackendContext) -> list[str]:
        found = driver_class(context.settings.machine_driver).problems(context)
        if context.settings.preload:
            # Preloading streams images from the host engine; without preload none is needed.
            try:
                context.host_client().close()
            except DaemonUnavailable as exc:
                found.append(f"--docker-preload needs the host engine: {exc}")
        return found

    def start(self) -> Endpoint:
        self._started = True
        return self.driver.start()

    def failure(self) -> str | None:
        return self.driver.failure()

    def diagnostics(self) -> str:
        return (
            f"{self.driver.state()}\n--- last 50 lines of the VM's log ---\n{self.driver.logs(50)}"
        )

    def logs(self, tail: int) -> str:
        return self.driver.logs(tail)

    def preload(self, target: docker.DockerClient) -> float:
        if self.settings.preload and self.driver.preloaded:
            # On the VM's disk from its snapshot: only check that they are.
            started = time.monotonic()
            missing = [name for name in self.settings.preload if not image_exists(target, name)]
            if not missing:
                return time.monotonic() - started
        # Loading an image into a VM under TCG can take longer than a client's usual 60 s read
        # timeout (the engine answers only when the load is done): allow the startup timeout.
        saved = target.api.timeout
        target.api.timeout = max(saved, self.settings.startup_timeout)
        try:
            return super().preload(target)
        finally:
            target.api.timeout = saved

    def details(self) -> dict[str, str]:
        return self.driver.details()

    def stop(self) -> None:
        if self._started:
            self.driver.stop()

    def leftovers(self) -> list[str]:
        return self.driver.leftovers()

    @classmethod
    def reap(cls, dead: DeadSession, dry_run: bool = False) -> list[str]:
        if dead.directory is None:
            return []
        removed: list[str] = []
        incomplete: list[str] = []
        for driver in driver_classes():
            try:
                removed += driver.reap(dead.directory, dry_run)
            except ReapIncomplete as exc:
                incomplete.append(str(exc))
        if incomplete:
            raise ReapIncomplete("; ".join(incomplete))
        return removed

    @classmethod
    def sweep_host(cls, dry_run: bool = False) -> list[str]:
        return [item for driver in driver_classes() for item in driver.sweep_host(dry_run)]


__all__ = ["MachineBackend", "MachineDriver", "driver_class", "driver_classes"]
