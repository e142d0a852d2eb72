"""The docker-machine drivers: any ``--docker-machine-driver`` other than ``qemu``.

Each daemon gets a machine of its own, named after the session, worker and daemon, kept in a
``MACHINE_STORAGE_PATH`` of its own inside the session directory (so that concurrent workers never
share docker-machine's state, and nothing of another job's machines is visible). The endpoint and
the client certificates come from ``docker-machine config NAME``; ``docker-machine rm -f -y NAME``
removes the machine at teardown.
"""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import shutil
import subprocess
import time
from pathlib import Path

from ...daemon import Endpoint
from ...errors import StartupError
from ...tls import ClientTLS
from ..base import Backend, BackendContext, ReapIncomplete
from .driver import MachineDriver

DOCKER_MACHINE = "docker-machine"
# Machine states docker-machine reports from which the daemon will not come up by itself.
DEAD_STATES = ("Stopped", "Error", "Saved", "Paused", "Stopping", "Does not exist")
STATUS_INTERVAL = 2.0

INSTALL = (
    "install docker-machine (the maintained fork GitLab runners use) and put it on PATH, or use "
    "--docker-machine-driver=qemu"
)

_CONFIG_LINE = re.compile(r'^(--tlscacert|--tlscert|--tlskey|-H)=(?:"(.*)"|(.*))$')


def parse_config(output: str) -> tuple[str, dict[str, Path]]:
    """The daemon URL and the TLS files from ``docker-machine config`` output.

    The documented form is five lines: ``--tlsverify``, ``--tlscacert="…/ca.pem"``,
    ``--tlscert="…/cert.pem"``, ``--tlskey="…/key.pem"``, ``-H=tcp://IP:2376``.
    """
    values: dict[str, str] = {}
    for line in output.split():
        match = _CONFIG_LINE.match(line.strip())
        if match:
            values[match.group(1)] = (
                match.group(2) if match.group(2) is not None else match.group(3)
            )
    if "-H" not in values or not all(k in values for k in ("--tlscacert", "--tlscert", "--tlskey")):
        raise ValueError(f"unexpected `docker-machine config` output: {output!r}")
    files = {
        "ca.pem": Path(values["--tlscacert"]),
        "cert.pem": Path(values["--tlscert"]),
        "key.pem": Path(values["--tlskey"]),
    }
    return values["-H"], files


STORAGE_PREFIX = "docker-machine-"


def run_docker_machine(
    storage: Path, *args: str, timeout: float = 120.0
) -> subprocess.CompletedProcess[str]:
    """``docker-machine ARGS`` with its state in ``storage`` (MACHINE_STORAGE_PATH)."""
    return subprocess.run(
        [DOCKER_MACHINE, *args],
        env={**os.environ, "MACHINE_STORAGE_PATH": str(storage)},
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )


def listed_machines(storage: Path) -> list[str] | None:
    """Machines docker-machine knows in ``storage``; None when that cannot be told."""
    if not storage.exists():
        return []
    try:
        listed = run_docker_machine(storage, "ls", "-q", timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return listed.stdout.split() if listed.returncode == 0 else None


class DockerMachineDriver(MachineDriver):
    """A machine made by ``docker-machine create -d <driver>`` in a private storage path."""

    kind = "docker-machine"

    def __init__(self, backend: Backend) -> None:
        super().__init__(backend)
        self.machine = backend.object_name("machine")
        self.storage = self.context.session_dir / f"{STORAGE_PREFIX}{backend.instance}"
        self._created = False
        self._url = ""
        self._last_status = ""
        self._status_checked = 0.0

    @classmethod
    def problems(cls, context: BackendContext) -> list[str]:
        if shutil.which(DOCKER_MACHINE) is None:
            return [
                f"--docker-machine-driver={context.settings.machine_driver} needs "
                f"{DOCKER_MACHINE} on PATH: {INSTALL}."
            ]
        return []

    @property
    def create_log(self) -> Path:
        return self.storage / "create.log"

    def _env(self) -> dict[str, str]:
        return {**os.environ, "MACHINE_STORAGE_PATH": str(self.storage)}

    def _run(self, *args: str, timeout: float = 120.0) -> subprocess.CompletedProcess[str]:
        return run_docker_machine(self.storage, *args, timeout=timeout)

    def create_command(self) -> list[str]:
        command = [DOCKER_MACHINE, "create", "-d", self.settings.machine_driver]
        for option in self.settings.machine_opt:
            command += shlex.split(option)
        for mirror in self.settings.registry_mirror:
            command += ["--engine-registry-mirror", mirror]
        for key, value in self.backend.labels("machine").items():
            command += ["--engine-label", f"{key}={value}"]
        return [*command, self.machine]

    def start(self) -> Endpoint:
        if shutil.which(DOCKER_MACHINE) is None:
            raise StartupError(
                "create",
                f"--docker-machine-driver={self.settings.machine_driver}: {DOCKER_MACHINE} not "
                f"found on PATH: {INSTALL}.",
            )
        self.storage.mkdir(mode=0o700)
        self._created = True  # from here on, stop() runs `rm`: create may fail half-way
        timeout = self.settings.startup_timeout
        with self.create_log.open("w") as log:
            try:
                result = subprocess.run(
                    self.create_command(),
                    env=self._env(),
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                    timeout=timeout,
                )
            except subprocess.TimeoutExpired as exc:
                raise StartupError(
                    "create",
                    f"`docker-machine create -d {self.settings.machine_driver}` did not finish "
                    f"within {timeout:.0f} s (--docker-startup-timeout).",
                    self.backend.diagnostics(),
                ) from exc
        if result.returncode != 0:
            raise StartupError(
                "create",
                f"`docker-machine create -d {self.settings.machine_driver}` failed with code "
                f"{result.returncode}: check the driver name and --docker-machine-opt values "
                "(its output is below).",
                self.backend.diagnostics(),
            )
        config = self._run("config", self.machine)
        try:
            if config.returncode != 0:
                raise ValueError(config.stderr.strip() or config.stdout.strip())
            self._url, files = parse_config(config.stdout)
        except ValueError as exc:
            raise StartupError(
                "create",
                f"`docker-machine config {self.machine}` gave no usable endpoint: {exc}",
                self.backend.diagnostics(),
            ) from exc
        return Endpoint(self._url, self._client_tls(files))

    def _client_tls(self, files: dict[str, Path]) -> ClientTLS:
        """docker-machine keeps ca.pem, cert.pem and key.pem in one directory; if a driver does
        not, they are copied into one, the layout DOCKER_CERT_PATH needs."""
        directories = {path.parent for path in files.values()}
        if len(directories) == 1 and all(path.name == name for name, path in files.items()):
            return ClientTLS(directories.pop())
        cert_dir = self.storage / "client"
        cert_dir.mkdir(mode=0o700, exist_ok=True)
        for name, path in files.items():
            shutil.copyfile(path, cert_dir / name)
        os.chmod(cert_dir / "key.pem", 0o600)
        return ClientTLS(cert_dir)

    def failure(self) -> str | None:
        # Polled while waiting for the daemon: ask docker-machine only every few seconds.
        if not self._url or time.monotonic() - self._status_checked < STATUS_INTERVAL:
            return None
        self._status_checked = time.monotonic()
        try:
            status = self._run("status", self.machine, timeout=30)
        except subprocess.TimeoutExpired:
            return None
        lines = (status.stdout.strip() or status.stderr.strip()).splitlines()
        self._last_status = lines[-1] if lines else ""
        if any(self._last_status.startswith(state) for state in DEAD_STATES):
            return f"docker-machine status {self.machine}: {self._last_status}"
        return None

    def state(self) -> str:
        return (
            f"docker-machine {self.machine} (driver {self.settings.machine_driver}, "
            f"MACHINE_STORAGE_PATH={self.storage}): endpoint {self._url or '-'}, "
            f"last status {self._last_status or '-'}"
        )

    def logs(self, tail: int) -> str:
        try:
            lines = self.create_log.read_text(errors="replace").splitlines()
        except FileNotFoundError:
            return "(no docker-machine output)"
        return "\n".join(lines[-tail:])

    def details(self) -> dict[str, str]:
        return {"mode": f"docker-machine {self.settings.machine_driver}", "machine": self.machine}

    def stop(self) -> None:
        if self._created:
            self._created = False
            with contextlib.suppress(OSError, subprocess.TimeoutExpired):
                self._run("rm", "-f", "-y", self.machine, timeout=300)
            if self._listed():
                # Keep docker-machine's state of a machine it failed to remove: leftovers()
                # reports it, and `docker-machine rm` with this storage path can still remove it.
                return
        shutil.rmtree(self.storage, ignore_errors=True)

    def _listed(self) -> bool:
        machines = listed_machines(self.storage)
        # Unknown (None): keep the state rather than orphan a machine.
        return machines is None or self.machine in machines

    @classmethod
    def reap(cls, session_dir: Path, dry_run: bool) -> list[str]:
        """``docker-machine rm -f -y`` every machine of a dead session, before its storage path
        (docker-machine's only record of them) is deleted with the session directory."""
        removed: list[str] = []
        for storage in sorted(session_dir.glob(f"{STORAGE_PREFIX}*")):
            if shutil.which(DOCKER_MACHINE) is None:
                raise ReapIncomplete(
                    f"{DOCKER_MACHINE} is not on PATH, so the machines kept in {storage} were not "
                    f"removed: run `MACHINE_STORAGE_PATH={storage} {DOCKER_MACHINE} ls` and "
                    f"`{DOCKER_MACHINE} rm -f -y NAME`, then `pytest-isolated-docker prune`"
                )
            machines = listed_machines(storage)
            if machines is None:
                raise ReapIncomplete(f"`{DOCKER_MACHINE} ls` failed for {storage}")
            for machine in machines:
                removed.append(f"docker-machine {machine} ({storage})")
                if not dry_run:
                    with contextlib.suppress(OSError, subprocess.TimeoutExpired):
                        run_docker_machine(storage, "rm", "-f", "-y", machine, timeout=300)
            if not dry_run and listed_machines(storage):
                raise ReapIncomplete(f"`{DOCKER_MACHINE} rm` left machines in {storage}")
        return removed

    def leftovers(self) -> list[str]:
        found: list[str] = []
        if self._listed():
            found.append(
                f"docker-machine {self.machine} (MACHINE_STORAGE_PATH={self.storage} "
                f"docker-machine rm -f -y {self.machine})"
            )
        if self.storage.exists():
            found.append(f"directory {self.storage}")
        return found
