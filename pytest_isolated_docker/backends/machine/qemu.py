"""The built-in QEMU driver: a VM booted from the cached kernel, initramfs and ext4 root disk.

Each VM sees the shared root disk through a throw-away copy-on-write overlay (nothing is copied
per VM), gets its certificates, ``daemon.json``, clock and an entropy seed over its control
channel (see ``vm.py``), and is reached through QEMU's user-mode network, its dockerd port
forwarded on 127.0.0.1 only. KVM is used when a short probe shows it works, else TCG.

By default (``--docker-vm-boot=snapshot``) a VM is not booted but restored from a snapshot of a
VM that booted as far as it can without its configuration (``snapshot.py``); ``cold`` boots each.
With ``--docker-preload``, the snapshot holds the images too (one snapshot per preload set), so
that they are there when the VM starts; a cold-booted VM has them streamed in.

Everything a VM uses lives in ``<session dir>/vm-<instance>/``, QEMU's identity included
(``vm.py``): the crash cleanup of a dead session (:meth:`QemuDriver.reap`) kills the QEMUs that
still run there.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import secrets
import shutil
import subprocess
import tempfile
import urllib.parse
from pathlib import Path
from typing import TYPE_CHECKING

from ... import lazy
from ...coordination import locked, read_json, runtime_root, write_json
from ...daemon import Endpoint, wait_until_ready
from ...errors import StartupError
from ...images import VM_FILES, missing_vm_files, preload, vm_image_dir
from ...tls import server_archive
from ..base import Backend, BackendContext, ReapIncomplete
from .driver import MachineDriver
from .snapshot import INSTALL_QEMU_IMG, QEMU_IMG, Preload, ensure_snapshot, unfinished_builds
from .vm import (
    QEMU_BINARY,
    Diagnostics,
    Disk,
    Machine,
    QemuProcess,
    config_line,
    reap_qemu,
    retry_hung_boot,
    tail,
)

if TYPE_CHECKING:
    import docker
else:
    docker = lazy.module("docker")

HOST_FROM_GUEST = "10.0.2.2"
VCPUS = 2
MEMORY_MIB = 2048
KVM_PROBE_TIMEOUT = 8.0

INSTALL_QEMU = (
    "install Debian's qemu-system-x86 (apt-get install qemu-system-x86), or put "
    f"{QEMU_BINARY} on PATH"
)


def qemu_binary() -> str | None:
    return shutil.which(QEMU_BINARY)


KVM_PROBE_ARGS = "panic=-1 console=ttyS0"


def kvm_problem(binary: str, kernel: Path) -> str | None:
    """None when KVM runs a guest here, else why not. The answer is cached per host boot.

    ``/dev/kvm`` existing proves little: nested KVM can abort at vCPU setup, or run real mode but
    spin once the kernel enters long mode. So the VM's own kernel is booted with the VM's CPU
    settings and no root disk: it must reach its "no root" panic and exit (``panic=-1`` with
    ``-no-reboot``) within a few seconds.
    """
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        return "/dev/kvm is missing or not writable"
    try:
        boot_id = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        boot_id = "unknown"
    memo = runtime_root() / f"kvm-probe-{boot_id}.json"
    with locked(memo.with_suffix(".lock")):
        known = read_json(memo)
        if "problem" in known:
            problem = known["problem"]
            return str(problem) if problem else None
        problem = _probe_kvm(binary, kernel)
        write_json(memo, {"problem": problem or ""})
    return problem


def _probe_kvm(binary: str, kernel: Path) -> str | None:
    with tempfile.TemporaryDirectory(prefix="pytest-isolated-docker-kvm-") as tmp:
        console = Path(tmp) / "console.log"
        command = [
            binary, "-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
            "-accel", "kvm", "-cpu", "host", "-smp", str(_vcpus()), "-m", "256",
            "-kernel", str(kernel), "-append", KVM_PROBE_ARGS, "-serial", f"file:{console}",
        ]  # fmt: skip
        try:
            result = subprocess.run(
                command, capture_output=True, text=True, timeout=KVM_PROBE_TIMEOUT
            )
        except subprocess.TimeoutExpired:
            return f"a KVM test boot did not finish within {KVM_PROBE_TIMEOUT:.0f} s"
        reached_panic = "Kernel panic" in console.read_text(errors="replace")
    if result.returncode != 0 or not reached_panic:
        last = (result.stderr.strip().splitlines() or ["no message"])[-1]
        return f"a KVM test boot failed (exit {result.returncode}: {last})"
    return None


def _vcpus() -> int:
    return min(VCPUS, os.cpu_count() or 1)


def guest_url(url: str) -> str:
    """``url`` as the guest reaches it: QEMU's user-mode network shows the host's loopback to the
    guest as 10.0.2.2 (other host addresses are reachable as they are)."""
    parts = urllib.parse.urlsplit(url)
    if parts.hostname not in ("127.0.0.1", "localhost", "::1"):
        return url
    netloc = HOST_FROM_GUEST + (f":{parts.port}" if parts.port else "")
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc))


class QemuDriver(MachineDriver):
    """A QEMU VM from the VM image (``build-image vm``), dockerd reached on 127.0.0.1:PORT."""

    kind = "qemu"

    def __init__(self, backend: Backend) -> None:
        super().__init__(backend)
        self.vm_dir = self.context.session_dir / f"vm-{backend.instance}"
        self.image_dir = vm_image_dir(self.settings)
        self.qemu: QemuProcess | None = None
        self._kvm_problem: str | None = None
        self._accel = ""
        self._boot = ""

    @classmethod
    def problems(cls, context: BackendContext) -> list[str]:
        found: list[str] = []
        if qemu_binary() is None:
            found.append(f"{QEMU_BINARY} not found on PATH: {INSTALL_QEMU}.")
        if context.settings.vm_boot == "snapshot" and shutil.which(QEMU_IMG) is None:
            found.append(f"{QEMU_IMG} not found on PATH: {INSTALL_QEMU_IMG}.")
        image = vm_image_dir(context.settings)
        missing = missing_vm_files(image)
        if missing:
            found.append(_missing_image_message(image, missing, context.settings.vm_image))
        return found

    def start(self) -> Endpoint:
        binary = qemu_binary()
        if binary is None:
            raise StartupError("start", f"{QEMU_BINARY} not found on PATH: {INSTALL_QEMU}.")
        missing = missing_vm_files(self.image_dir)
        if missing:
            raise StartupError(
                "start", _missing_image_message(self.image_dir, missing, self.settings.vm_image)
            )
        self._kvm_problem = kvm_problem(binary, self.image_dir / "vmlinuz")
        self._accel = "tcg" if self._kvm_problem else "kvm"
        from_snapshot = self.settings.vm_boot == "snapshot"
        machine = Machine(
            binary=binary,
            kernel=self.image_dir / "vmlinuz",
            initrd=self.image_dir / "initrd.img",
            accel=self._accel,
            vcpus=_vcpus(),
            memory_mib=MEMORY_MIB,
            snapshot_boot=from_snapshot,
        )
        timeout = self.settings.startup_timeout
        root_disk = self.image_dir / "disk.img"
        disk, incoming = Disk(root_disk, "raw"), None
        if from_snapshot:
            with contextlib.ExitStack() as stack:
                images = None
                if self.settings.preload:
                    host = stack.enter_context(self.backend.preload_source())
                    images = self._preload(host)
                snapshot, seconds = ensure_snapshot(
                    machine,
                    root_disk,
                    self.context.session_dir / f"vm-{self.backend.instance}-snapshot",
                    self.backend.object_name("vm-snapshot"),
                    timeout,
                    images,
                )
            disk, incoming = snapshot.disk(), snapshot.state
            self.preloaded = images is not None
            self._boot = (
                "restored from a snapshot"
                + (" holding the preloaded images" if self.preloaded else "")
                + (f" (made in {seconds:.1f} s)" if seconds else "")
            )
        else:
            self._boot = "cold boot"

        def launch() -> QemuProcess:
            self.vm_dir.mkdir(mode=0o700)
            qemu = self.qemu = QemuProcess(self.vm_dir, machine, self.backend.object_name("vm"))
            qemu.launch_forwarded(disk, self.backend.diagnostics, incoming)
            if incoming is not None:
                qemu.resume_snapshot(timeout, self.backend.diagnostics)
            else:
                qemu.wait_until_guest_waits(timeout, self.backend.diagnostics)
            return qemu

        def kill() -> None:  # and its directory: the next boot starts afresh
            if self.qemu is not None:
                self.qemu.kill()

        qemu = retry_hung_boot(launch, between=kill)
        qemu.send_config(config_line(self._guest_config()), timeout, self.backend.diagnostics)
        return Endpoint(f"tcp://127.0.0.1:{qemu.port}", self.context.client_tls)

    def _preload(self, host: docker.DockerClient) -> Preload:
        """The preload images (as the host engine has them now) and how a snapshot's boot loads
        them: through the guest's TLS terminator, with keys of this session that the guest forgets
        again."""
        names = self.settings.preload
        images = tuple((name, str(host.api.inspect_image(name)["Id"])) for name in names)
        timeout = self.settings.startup_timeout

        def load(qemu: QemuProcess, diagnostics: Diagnostics) -> None:
            server = self.context.ca.server_tls(["127.0.0.1", "localhost"])
            qemu.send_config(config_line(server_archive(server), kind="load"), timeout, diagnostics)
            endpoint = Endpoint(f"tcp://127.0.0.1:{qemu.port}", self.context.client_tls)
            failure = functools.partial(_exited, qemu)
            api_version = wait_until_ready(endpoint, timeout, failure, diagnostics)
            # Loading under TCG can outlast a client's usual 60 s read timeout.
            with contextlib.closing(endpoint.client(api_version, max(60.0, timeout))) as guest:
                preload(host, guest, names)
            qemu.send_config(b"loaded\n", timeout, diagnostics)

        return Preload(images, load)

    def _guest_config(self) -> bytes:
        """What the guest's init unpacks: TLS files, dockerd's daemon.json and a fresh seed for
        the kernel's random generator (VMs restored from one snapshot start with equal ones)."""
        server = self.context.ca.server_tls(["127.0.0.1", "localhost"])
        daemon_json: dict[str, object] = {
            "labels": [f"{k}={v}" for k, v in self.backend.labels("machine").items()]
        }
        if self.settings.registry_mirror:
            daemon_json["registry-mirrors"] = [guest_url(m) for m in self.settings.registry_mirror]
        return server_archive(
            server,
            extra=[
                ("daemon.json", json.dumps(daemon_json).encode()),
                ("entropy", secrets.token_bytes(64)),
            ],
        )

    def failure(self) -> str | None:
        return _exited(self.qemu) if self.qemu is not None else None

    def state(self) -> str:
        qemu = self.qemu
        status = "not started"
        if qemu is not None and qemu.process is not None:
            code = qemu.exit_code()
            status = f"pid {qemu.process.pid} " + ("running" if code is None else f"exited {code}")
        accel = self._accel or "?"
        if self._kvm_problem:
            accel += f" (KVM not used: {self._kvm_problem})"
        port = qemu.port if qemu is not None and qemu.port else "-"
        text = (
            f"qemu VM {self.vm_dir.name}: {status}, accel {accel}, {self._boot or 'not booted'}, "
            f"port 127.0.0.1:{port}, image {self.image_dir}"
        )
        output = tail(qemu.output_log, 20) if qemu is not None else ""
        if output:
            text += f"\n--- QEMU's output ---\n{output}"
        return text

    def logs(self, tail_lines: int) -> str:
        console = tail(self.qemu.console_log, tail_lines) if self.qemu is not None else ""
        return console or "(no console output yet)"

    def details(self) -> dict[str, str]:
        return {
            "mode": f"qemu {self._accel.upper()} {_vcpus()} vCPU, {self._boot}",
            "image": str(self.image_dir),
        }

    def stop(self) -> None:
        if self.qemu is not None:
            self.qemu.kill()
        else:
            shutil.rmtree(self.vm_dir, ignore_errors=True)

    @classmethod
    def reap(cls, session_dir: Path, dry_run: bool) -> list[str]:
        removed: list[str] = []
        for run_dir in sorted(session_dir.glob("vm-*")):
            try:
                removed += reap_qemu(run_dir, dry_run)
            except LookupError as exc:
                raise ReapIncomplete(str(exc)) from None
        return removed

    @classmethod
    def sweep_host(cls, dry_run: bool) -> list[str]:
        removed = []
        for build in unfinished_builds():
            removed.append(f"unfinished VM snapshot {build}")
            if not dry_run:
                shutil.rmtree(build, ignore_errors=True)
        return removed

    def leftovers(self) -> list[str]:
        found: list[str] = []
        if self.qemu is not None:
            process = self.qemu.process
            if process is not None and process.poll() is None:
                found.append(f"qemu process {process.pid}")
            stray = self.qemu.stray_pid()
            if stray is not None:
                found.append(f"qemu process {stray}")
        if self.vm_dir.exists():
            found.append(f"directory {self.vm_dir}")
        return found


def _exited(qemu: QemuProcess) -> str | None:
    code = qemu.exit_code()
    if code is None:
        return None
    return f"QEMU exited with code {code} (the guest stopped; see its console below)"


def _missing_image_message(directory: Path, missing: list[str], configured: str) -> str:
    what = f"the VM image in {directory} lacks {', '.join(missing)}"
    if configured:
        return (
            f"{what} (--docker-vm-image={configured}). Point --docker-vm-image at a directory "
            f"holding {', '.join(VM_FILES)}, or drop it and run "
            "`pytest-isolated-docker build-image vm`."
        )
    return f"{what}: run `pytest-isolated-docker build-image vm` (as root, once; it is cached)."
