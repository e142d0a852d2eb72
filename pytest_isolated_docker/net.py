"""Two small facts about TCP ports on this machine, shared by whoever opens one."""

from __future__ import annotations

import contextlib
import socket


def free_port(address: str = "127.0.0.1") -> int:
    """A port nobody listens on at ``address`` right now (the caller binds it soon after)."""
    with contextlib.closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as probe:
        probe.bind((address, 0))
        return int(probe.getsockname()[1])


def answers(address: str, port: int, timeout: float = 0.5) -> bool:
    """True when something accepts a TCP connection at ``address:port``."""
    with contextlib.suppress(OSError), socket.create_connection((address, port), timeout=timeout):
        return True
    return False
