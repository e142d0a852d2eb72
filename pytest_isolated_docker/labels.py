"""Labels put on every object the plugin creates, and the identity of a session and worker."""

from __future__ import annotations

import functools
import os
import secrets
import time
from dataclasses import dataclass, field

from .coordination import runtime_id

PREFIX = "pytest-isolated-docker"
SESSION = f"{PREFIX}.session"
WORKER = f"{PREFIX}.worker"
PID = f"{PREFIX}.pid"
ROLE = f"{PREFIX}.role"
DAEMON = f"{PREFIX}.daemon"
HOST = f"{PREFIX}.host"


@functools.cache
def host_id() -> str:
    """The ``host`` label's value: which runtime directory the owner's session lives in.

    A sweep that shares it can prove a session dead by its holders; any other (another container
    or machine on the same engine, even one with the same ``/etc/machine-id``) only by an expired
    heartbeat on the engine.
    """
    return runtime_id()


def new_session_id() -> str:
    """Sortable by start time, unique across hosts sharing an engine."""
    return time.strftime("%Y%m%d%H%M%S") + "-" + secrets.token_hex(4)


@dataclass(frozen=True)
class Identity:
    """Who owns an object: the test session, the xdist worker (or "main") and the process."""

    session_id: str
    worker: str = "main"
    pid: int = field(default_factory=os.getpid)

    def labels(self, role: str) -> dict[str, str]:
        return {
            SESSION: self.session_id,
            WORKER: self.worker,
            PID: str(self.pid),
            HOST: host_id(),
            ROLE: role,
        }

    def name(self, suffix: str) -> str:
        """A readable, unique object name: ``pid-<session>-<worker>-<suffix>``."""
        return f"pid-{self.session_id}-{self.worker}-{suffix}"
