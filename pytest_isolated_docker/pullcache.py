"""``--docker-pull-through-cache``: one registry mirror per host, shared by every isolated daemon.

Debian's ``docker-registry`` runs in proxy mode with its storage in the user cache directory, so a
public image is fetched from the upstream registry once per host, however many fresh daemons
pull it. It listens on the host engine's bridge gateway, which dind containers reach directly and
VMs reach through QEMU's user-mode NAT.

Each session that uses it holds a :class:`~pytest_isolated_docker.coordination.Lease`. The
registry runs under a small supervisor (``python -m pytest_isolated_docker.pullcache supervise``)
that holds the ``supervisor.alive`` flock for its life and stops the registry once no live session
holds the lease: the last one out stops it, even when it was killed, and no stored pid is ever
signalled. Lease and state live in the runtime directory (they mean nothing after a reboot), the
registry's data in the cache directory.
"""

from __future__ import annotations

import argparse
import hashlib
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

from . import lazy
from .coordination import (
    Holder,
    Lease,
    cache_dir,
    is_held,
    read_json,
    runtime_root,
    write_json,
)
from .errors import StartupError
from .net import answers, bridge_gateway, free_port

if TYPE_CHECKING:
    import docker
else:
    docker = lazy.module("docker")

REGISTRY_BINARY = "docker-registry"
_START_TIMEOUT = 30.0
_IDLE_CHECKS = 2
_CHECK_INTERVAL = 0.5

_holder: Holder | None = None


def _root() -> Path:
    """The registry's storage, config and log (kept: it is the cache)."""
    path = cache_dir() / "pull-through-cache"
    path.mkdir(parents=True, exist_ok=True)
    return path


def _runtime() -> Path:
    """Lease and state of the registry serving :func:`_root` (one per cache directory)."""
    key = hashlib.sha256(str(_root().resolve()).encode()).hexdigest()[:12]
    path = runtime_root() / f"pull-through-cache-{key}"
    path.mkdir(mode=0o700, exist_ok=True)
    return path


def _lease() -> Lease:
    return Lease(_runtime() / "users", "the pull-through cache registry")


def _state_file() -> Path:
    return _runtime() / "state.json"


def _alive_file() -> Path:
    return _runtime() / "supervisor.alive"


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
    global _holder
    binary = shutil.which(REGISTRY_BINARY)
    if binary is None:
        raise StartupError(
            "pull-through-cache",
            f"{REGISTRY_BINARY} is not installed: apt-get install docker-registry (Debian), or "
            "drop --docker-pull-through-cache and use --docker-registry-mirror URL",
        )
    lease = _lease()
    with lease.exclusive():
        state = read_json(_state_file())
        running = bool(state) and is_held(_alive_file())
        if running and state.get("upstream") != upstream:
            raise StartupError(
                "pull-through-cache",
                f"this host's cache registry already serves {state.get('upstream')} for another "
                f"session; it cannot also serve {upstream}",
            )
        holder = lease.acquire()
        if not running:
            try:
                state = _start(binary, _root(), bridge_gateway(host), upstream)
            except BaseException:
                holder.release()
                raise
            write_json(_state_file(), state)
        _holder = holder
    return f"http://{state['address']}:{state['port']}"


def _start(binary: str, root: Path, address: str, upstream: str) -> dict[str, object]:
    port = free_port(address)
    config = root / "config.yml"
    config.write_text(_config(root / "data", address, port, upstream))
    log_file = root / "registry.log"
    log_start = log_file.stat().st_size if log_file.exists() else 0
    with log_file.open("ab") as log:
        supervisor = subprocess.Popen(
            [sys.executable, "-m", "pytest_isolated_docker.pullcache", "supervise",
             "--binary", binary, "--config", str(config), "--runtime", str(_runtime())],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,  # outlives one session: it serves the host's later sessions
        )  # fmt: skip
    deadline = time.monotonic() + _START_TIMEOUT
    while not (answers(address, port) and is_held(_alive_file())):
        if supervisor.poll() is not None or time.monotonic() > deadline:
            supervisor.kill()
            supervisor.wait()
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
    return {"address": address, "port": port, "upstream": upstream}


def release() -> None:
    """Drop this process's lease; the supervisor stops the registry once nobody holds it."""
    global _holder
    if _holder is None:
        return
    lease = _lease()
    with lease.exclusive():
        lease.release(_holder)
        _holder = None


def running() -> bool:
    """True while a supervised registry serves this cache directory."""
    return is_held(_alive_file())


def log_path() -> Path:
    return _root() / "registry.log"


def _supervise(binary: str, config: Path, runtime: Path) -> int:
    """Run the registry while some session holds the lease; then stop it and exit."""
    alive = Holder.take(runtime / "supervisor.alive")
    if alive is None:
        print("pytest-isolated-docker: another supervisor serves this cache", file=sys.stderr)
        return 1
    lease = Lease(runtime / "users", "the pull-through cache registry")
    registry = subprocess.Popen([binary, "serve", str(config)], stdin=subprocess.DEVNULL)
    idle = 0
    try:
        while registry.poll() is None:
            time.sleep(_CHECK_INTERVAL)
            idle = idle + 1 if lease.holders() == 0 else 0
            if idle < _IDLE_CHECKS:
                continue
            with lease.exclusive():
                if lease.holders() == 0:  # nobody joined meanwhile: stop, seen as one step
                    registry.terminate()
                    registry.wait(timeout=30)
                    (runtime / "state.json").unlink(missing_ok=True)
                    alive.release()
                    return 0
            idle = 0
        return 1
    finally:
        if registry.poll() is None:
            registry.kill()
        alive.release()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pytest_isolated_docker.pullcache")
    sub = parser.add_subparsers(dest="command", required=True)
    supervise = sub.add_parser("supervise")
    supervise.add_argument("--binary", required=True)
    supervise.add_argument("--config", type=Path, required=True)
    supervise.add_argument("--runtime", type=Path, required=True)
    args = parser.parse_args(argv)
    return _supervise(args.binary, args.config, args.runtime)


if __name__ == "__main__":
    sys.exit(main())
