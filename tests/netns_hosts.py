"""Other machines for the tests: a network namespace with its own dockerd, reached over a veth.

A "host" here is what ENVIRONMENT.md of the project describes: ``ip netns add``, a veth pair
(10.231.N.1 on this side, 10.231.N.2 inside, default route back), and a dockerd of its own (own
data root, exec root, pidfile, cgroup parent and ``/etc/docker`` through a private mount
namespace) started with ``nsenter --net=`` and listening on ``tcp://10.231.N.2:2375``. Never a
second dockerd in this machine's own network namespace: it would delete the host's ``docker0``.
Traffic goes only to these addresses.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import docker

DOCKERD = """
set -eu
mount --bind "$HOST_DIR/etc-docker" /etc/docker
exec nsenter --net=/var/run/netns/"$NETNS" dockerd \
    --data-root "$HOST_DIR/data" --exec-root "$HOST_DIR/exec" --pidfile "$HOST_DIR/dockerd.pid" \
    --cgroup-parent "$NETNS" --host "unix://$HOST_DIR/docker.sock" \
    --host "tcp://$ADDRESS:2375" --tls=false
"""


@dataclass
class NetnsHost:
    """A machine in a network namespace, with its own Docker engine on ``url``."""

    name: str
    address: str
    directory: Path
    process: subprocess.Popen[bytes]

    @property
    def url(self) -> str:
        return f"tcp://{self.address}:2375"

    def client(self, timeout: int = 120) -> docker.DockerClient:
        return docker.DockerClient(base_url=self.url, timeout=timeout)

    def run(self, *command: str) -> None:
        """Run ``command`` in this machine's network namespace."""
        _run("nsenter", f"--net=/var/run/netns/{self.name}", *command)


def available() -> str | None:
    """Why netns hosts cannot be made here, or None."""
    if os.geteuid() != 0:
        return "needs root"
    for tool in ("ip", "nsenter", "unshare", "dockerd"):
        if shutil.which(tool) is None:
            return f"needs {tool}"
    return None


def _run(*args: str) -> None:
    subprocess.run(args, check=True, capture_output=True)


@contextlib.contextmanager
def netns_host(images: list[str], host_engine: docker.DockerClient) -> Iterator[NetnsHost]:
    """A fresh test host with ``images`` copied from ``host_engine``; removed afterwards.

    Its files live in a short directory under /tmp: containerd's socket path inside it must fit
    the 108 bytes of a unix socket address.
    """
    index = secrets.randbelow(200) + 20
    name = f"pid-test-{secrets.token_hex(3)}"
    outside, inside = f"10.231.{index}.1", f"10.231.{index}.2"
    veth = f"v{name[-6:]}"
    directory = Path(tempfile.mkdtemp(prefix=f"{name}-", dir="/tmp"))
    for sub in ("etc-docker", "data", "exec"):
        (directory / sub).mkdir(parents=True)
    _run("ip", "netns", "add", name)
    process: subprocess.Popen[bytes] | None = None
    try:
        _run("ip", "link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", name)
        _run("ip", "addr", "add", f"{outside}/24", "dev", veth)
        _run("ip", "link", "set", veth, "up")
        for command in (
            ["ip", "addr", "add", f"{inside}/24", "dev", "eth0"],
            ["ip", "link", "set", "eth0", "up"],
            ["ip", "link", "set", "lo", "up"],
            ["ip", "route", "add", "default", "via", outside],
        ):
            _run("nsenter", f"--net=/var/run/netns/{name}", *command)
        with (directory / "dockerd.log").open("wb") as log:
            process = subprocess.Popen(
                ["unshare", "--mount", "--propagation", "private", "sh", "-c", DOCKERD],
                env={**os.environ, "HOST_DIR": str(directory), "NETNS": name, "ADDRESS": inside},
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        host = NetnsHost(name, inside, directory, process)
        deadline = time.monotonic() + 60
        while True:
            with contextlib.suppress(docker.errors.DockerException):
                client = host.client()
                break
            if process.poll() is not None or time.monotonic() > deadline:
                log_tail = (directory / "dockerd.log").read_text()[-3000:]
                raise RuntimeError(f"the test host's dockerd did not answer: {log_tail}")
            time.sleep(0.1)
        for image in images:
            client.api.load_image(host_engine.api.get_image(image))
        client.close()
        yield host
    finally:
        if process is not None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        with contextlib.suppress(subprocess.CalledProcessError):
            _run("ip", "link", "del", veth)
        with contextlib.suppress(subprocess.CalledProcessError):
            _run("ip", "netns", "del", name)
        shutil.rmtree(directory, ignore_errors=True)
