"""The interface of a VM driver of the machine backend: make, watch and remove one kind of VM."""

from __future__ import annotations

import abc
from pathlib import Path
from typing import ClassVar

from ...daemon import Endpoint
from ..base import Backend, BackendContext


class MachineDriver(abc.ABC):
    """Makes one VM running dockerd, tells how to reach it, and removes it again."""

    #: Short description for reports ("qemu", "docker-machine <driver>").
    kind: ClassVar[str]
    #: True once :meth:`start` made a VM that already holds the preload images.
    preloaded: bool = False

    def __init__(self, backend: Backend) -> None:
        self.backend = backend
        self.context = backend.context
        self.settings = backend.settings

    @classmethod
    @abc.abstractmethod
    def problems(cls, context: BackendContext) -> list[str]:
        """Why this driver cannot work here, each with what to do."""

    @abc.abstractmethod
    def start(self) -> Endpoint:
        """Create and boot the VM; return the endpoint of its dockerd (it need not answer yet)."""

    @abc.abstractmethod
    def failure(self) -> str | None:
        """Why the VM can no longer come up (it died), or None."""

    @abc.abstractmethod
    def state(self) -> str:
        """One line on the VM for diagnostics: name, process, address, status."""

    @abc.abstractmethod
    def logs(self, tail: int) -> str:
        """The last ``tail`` lines of the VM's log (its console, or the driver's output)."""

    @abc.abstractmethod
    def stop(self) -> None:
        """Remove the VM and every file made for it. Idempotent."""

    @abc.abstractmethod
    def leftovers(self) -> list[str]:
        """What still exists of this VM (after :meth:`stop`, a leak)."""

    def details(self) -> dict[str, str]:
        return {"mode": self.kind}

    @classmethod
    @abc.abstractmethod
    def reap(cls, session_dir: Path, dry_run: bool) -> list[str]:
        """Remove what VMs of this driver left in a dead session's directory (processes,
        machines, files); raise :class:`ReapIncomplete` to keep the directory."""

    @classmethod
    def sweep_host(cls, dry_run: bool) -> list[str]:
        """Remove this driver's leftovers that belong to no session."""
        return []
