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
import filelock

# Runs in a mount namespace of its own: /etc/docker is the host's own, and for SSH sessions the
# machine's engine is at /var/run/docker.sock (where `docker system dial-stdio` looks for it).
DOCKERD = """
set -eu
mount --bind "$HOST_DIR/etc-docker" /etc/docker
nsenter --net=/var/run/netns/"$NETNS" dockerd \
    --data-root "$HOST_DIR/data" --exec-root "$HOST_DIR/exec" --pidfile "$HOST_DIR/dockerd.pid" \
    --cgroup-parent "$NETNS" --host "unix://$HOST_DIR/docker.sock" \
    --host "tcp://$ADDRESS:2375" --tls=false &
if [ -n "$SSHD_CONFIG" ]; then
    i=0
    while [ ! -S "$HOST_DIR/docker.sock" ] && [ $i -lt 600 ]; do sleep 0.05; i=$((i + 1)); done
    mount --bind "$HOST_DIR/docker.sock" /var/run/docker.sock
    mkdir -p /run/sshd
    nsenter --net=/var/run/netns/"$NETNS" /usr/sbin/sshd -D -e -f "$SSHD_CONFIG" &
fi
wait
"""

SSHD_CONFIG = """
ListenAddress {address}
HostKey {directory}/ssh_host_key
PidFile {directory}/sshd.pid
AuthorizedKeysFile {directory}/authorized_keys
UsePAM no
StrictModes no
PasswordAuthentication no
PermitRootLogin prohibit-password
"""

SSH_CONFIG = """
Host *
    IdentityFile {directory}/client_key
    IdentitiesOnly yes
    StrictHostKeyChecking no
    UserKnownHostsFile /dev/null
    LogLevel ERROR
    # One SSH connection shared by every request (docker-py opens one per request otherwise).
    ControlMaster auto
    ControlPath {directory}/cm-%C
    ControlPersist 30
"""


@dataclass
class NetnsHost:
    """A machine in a network namespace, with its own Docker engine on ``url``."""

    name: str
    address: str
    directory: Path
    process: subprocess.Popen[bytes]
    ssh: bool = False

    @property
    def url(self) -> str:
        return f"tcp://{self.address}:2375"

    @property
    def ssh_url(self) -> str:
        """The engine through SSH (with ``ssh_path`` first on PATH, so that ``ssh`` knows the
        key and accepts this host without changing the user's own SSH files)."""
        assert self.ssh, "made without ssh=True"
        return f"ssh://root@{self.address}"

    @property
    def ssh_path(self) -> str:
        return str(self.directory / "bin")

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


def _prepare_ssh(directory: Path, address: str) -> Path:
    """Keys, sshd's configuration and an ``ssh`` wrapper using a configuration of its own."""
    for key in ("ssh_host_key", "client_key"):
        _run("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(directory / key))
    (directory / "authorized_keys").write_text((directory / "client_key.pub").read_text())
    (directory / "ssh_config").write_text(SSH_CONFIG.format(directory=directory))
    (directory / "bin").mkdir()
    wrapper = directory / "bin" / "ssh"
    wrapper.write_text(f'#!/bin/sh\nexec /usr/bin/ssh -F {directory}/ssh_config "$@"\n')
    wrapper.chmod(0o755)
    config = directory / "sshd_config"
    config.write_text(SSHD_CONFIG.format(address=address, directory=directory))
    return config


@contextlib.contextmanager
def netns_host(
    images: list[str], host_engine: docker.DockerClient, ssh: bool = False
) -> Iterator[NetnsHost]:
    """A fresh test host with ``images`` copied from ``host_engine``; removed afterwards.

    Its files live in a short directory under /tmp: containerd's socket path inside it must fit
    the 108 bytes of a unix socket address.
    """
    name = f"pid-test-{secrets.token_hex(3)}"
    veth = f"v{name[-6:]}"
    directory = Path(tempfile.mkdtemp(prefix=f"{name}-", dir="/tmp"))
    for sub in ("etc-docker", "data", "exec"):
        (directory / sub).mkdir(parents=True)
    _run("ip", "netns", "add", name)
    process: subprocess.Popen[bytes] | None = None
    try:
        _run("ip", "link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", name)
        # A subnet no other test host uses, chosen and taken under one lock (hosts are made by
        # several test processes at once).
        with filelock.FileLock("/tmp/pytest-isolated-docker-netns-hosts.lock"):
            used = subprocess.run(
                ["ip", "-o", "-4", "addr", "show"], capture_output=True, text=True, check=True
            ).stdout
            index = next(n for n in range(20, 250) if f" 10.231.{n}.1/" not in used)
            outside, inside = f"10.231.{index}.1", f"10.231.{index}.2"
            _run("ip", "addr", "add", f"{outside}/24", "dev", veth)
        _run("ip", "link", "set", veth, "up")
        for command in (
            ["ip", "addr", "add", f"{inside}/24", "dev", "eth0"],
            ["ip", "link", "set", "eth0", "up"],
            ["ip", "link", "set", "lo", "up"],
            ["ip", "route", "add", "default", "via", outside],
        ):
            _run("nsenter", f"--net=/var/run/netns/{name}", *command)
        sshd_config = str(_prepare_ssh(directory, inside)) if ssh else ""
        env = {"HOST_DIR": str(directory), "NETNS": name, "ADDRESS": inside}
        with (directory / "dockerd.log").open("wb") as log:
            process = subprocess.Popen(
                ["unshare", "--mount", "--propagation", "private", "sh", "-c", DOCKERD],
                env={**os.environ, **env, "SSHD_CONFIG": str(sshd_config)},
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        host = NetnsHost(name, inside, directory, process, ssh)
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
        for pidfile in ("sshd.pid", "dockerd.pid"):
            with contextlib.suppress(OSError, ValueError):
                os.kill(int((directory / pidfile).read_text().strip()), signal.SIGTERM)
        if process is not None:
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        # What outlives its parent there: sshd's per-connection processes, say (a client may
        # still hold its connection).
        with contextlib.suppress(subprocess.CalledProcessError):
            for pid in subprocess.run(
                ["ip", "netns", "pids", name], check=True, capture_output=True, text=True
            ).stdout.split():
                with contextlib.suppress(OSError):
                    os.kill(int(pid), signal.SIGKILL)
        with contextlib.suppress(subprocess.CalledProcessError):
            _run("ip", "link", "del", veth)
        with contextlib.suppress(subprocess.CalledProcessError):
            _run("ip", "netns", "del", name)
        shutil.rmtree(directory, ignore_errors=True)
