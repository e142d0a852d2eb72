"""``--docker-pull-through-cache``: one registry mirror per host, shared by every isolated daemon.

Debian's ``docker-registry`` runs in proxy mode with its storage in the user cache directory, so a
public image is fetched from the upstream registry once per host, however many fresh daemons
pull it. It listens on the host engine's bridge gateway, which dind containers reach directly and
VMs reach through QEMU's user-mode NAT. The first session to need it starts it under a file lock;
each session holds a lease; the last one to leave stops it.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import docker

from .coordination import cache_dir, locked, read_json, write_json
from .errors import StartupError
from .reaper import process_alive

REGISTRY_BINARY = "docker-registry"
_START_TIMEOUT = 30.0


def _root() -> Path:
    path = cache_dir() / "pull-through-cache"
    path.mkdir(parents=True, exist_ok=True)
    return path


def _bridge_gateway(host: docker.DockerClient) -> str:
    for config in host.networks.get("bridge").attrs["IPAM"]["Config"] or []:
        if config.get("Gateway"):
            return str(config["Gateway"])
        if config.get("Subnet") and ":" not in config["Subnet"]:
            # The engine leaves the default gateway implicit: the subnet's first address.
            return str(next(ipaddress.ip_network(config["Subnet"]).hosts()))
    raise StartupError("pull-through-cache", "the host engine's bridge network has no IPv4 subnet")


def _free_port(address: str) -> int:
    with contextlib.closing(socket.socket()) as probe:
        probe.bind((address, 0))
        return int(probe.getsockname()[1])


def _answers(address: str, port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection((address, port), timeout=0.5):
        return True
    return False


def _config(storage: Path, address: str, port: int, upstream: str) -> str:
    return (
        "version: 0.1\n"
        "log:\n  level: info\n"
        f"storage:\n  filesystem:\n    rootdirectory: {storage}\n"
        f"http:\n  addr: {address}:{port}\n"
        f"proxy:\n  remoteurl: {upstream}\n"
    )


def acquire(host: docker.DockerClient, upstream: str) -> str:
    """Take a lease on the host's cache registry (starting it if needed); return its URL."""
    binary = shutil.which(REGISTRY_BINARY)
    if binary is None:
        raise StartupError(
            "pull-through-cache",
            f"{REGISTRY_BINARY} is not installed: apt-get install docker-registry (Debian), or "
            "drop --docker-pull-through-cache and use --docker-registry-mirror URL",
        )
    root = _root()
    lease_path = root / "lease.json"
    with locked(root / "lease.lock"):
        lease = read_json(lease_path)
        users = [pid for pid in lease.get("users", []) if process_alive(pid)]
        running = lease.get("pid") and process_alive(int(lease["pid"]))
        if not (running and _answers(lease["address"], lease["port"])):
            lease = _start(binary, root, _bridge_gateway(host), upstream)
        elif lease.get("upstream") != upstream:
            raise StartupError(
                "pull-through-cache",
                f"this host's cache registry already serves {lease.get('upstream')} for another "
                f"session; it cannot also serve {upstream}",
            )
        lease["users"] = [*users, os.getpid()]
        write_json(lease_path, lease)
    return f"http://{lease['address']}:{lease['port']}"


def _start(binary: str, root: Path, address: str, upstream: str) -> dict[str, object]:
    port = _free_port(address)
    config = root / "config.yml"
    config.write_text(_config(root / "data", address, port, upstream))
    log_file = root / "registry.log"
    log_start = log_file.stat().st_size if log_file.exists() else 0
    log = log_file.open("ab")
    process = subprocess.Popen(
        [binary, "serve", str(config)],
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        start_new_session=True,  # outlives one session: it serves the host's later sessions
    )
    deadline = time.monotonic() + _START_TIMEOUT
    while not _answers(address, port):
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            process.wait()
            with log_file.open("rb") as handle:
                handle.seek(log_start)
                reasons = [
                    line
                    for line in handle.read().decode(errors="replace").splitlines()
                    if line.startswith(("panic:", "configuration error")) or "level=fatal" in line
                ]
            raise StartupError(
                "pull-through-cache",
                f"{binary} (upstream {upstream}) did not listen on {address}:{port}: "
                + ("; ".join(reasons) or f"no answer within {_START_TIMEOUT:.0f} s")
                + f". Its log: {log_file}. Is the upstream reachable from this host? Choose "
                "another with --docker-pull-through-upstream.",
            )
        time.sleep(0.05)
    return {"pid": process.pid, "address": address, "port": port, "upstream": upstream}


def release() -> None:
    """Drop this process's lease; the last session to leave stops the registry."""
    root = _root()
    lease_path = root / "lease.json"
    with locked(root / "lease.lock"):
        lease = read_json(lease_path)
        users = [pid for pid in lease.get("users", []) if pid != os.getpid() and process_alive(pid)]
        if users:
            write_json(lease_path, {**lease, "users": users})
            return
        if lease.get("pid") and process_alive(int(lease["pid"])):
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(lease["pid"]), signal.SIGTERM)
        lease_path.unlink(missing_ok=True)


def log_path() -> Path:
    return _root() / "registry.log"
