"""Small facts about addresses and TCP ports on this machine, shared by whoever opens one."""

from __future__ import annotations

import contextlib
import ipaddress
import socket
from typing import TYPE_CHECKING

from . import lazy
from .errors import StartupError

if TYPE_CHECKING:
    import docker
else:
    docker = lazy.module("docker")


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


def bridge_gateway(host: docker.DockerClient) -> str:
    """The host engine's bridge gateway: the address of this machine its containers reach."""
    for config in host.networks.get("bridge").attrs["IPAM"]["Config"] or []:
        if config.get("Gateway"):
            return str(config["Gateway"])
        if config.get("Subnet") and ":" not in config["Subnet"]:
            # The engine leaves the default gateway implicit: the subnet's first address.
            return str(next(ipaddress.ip_network(config["Subnet"]).hosts()))
    raise StartupError("bridge", "the host engine's bridge network has no IPv4 subnet")
