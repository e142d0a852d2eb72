"""The built-in QEMU driver: a VM booted from the cached kernel, initramfs and ext4 root disk.

Each VM sees the shared root disk through ``snapshot=on`` (copy-on-write; nothing is copied per
VM), gets its certificates and ``daemon.json`` on a small read-only config disk (a tar file the
guest's init unpacks from ``/dev/vdb``), and is reached through QEMU's user-mode network, its
dockerd port forwarded on 127.0.0.1 only. KVM is used when a short probe shows it works, else TCG.

Everything a VM uses lives in ``<session dir>/vm-<instance>/`` and QEMU writes its pid to
``qemu.pid`` there: the crash reaper kills the pids found in ``vm-*/qemu.pid`` and removes those
directories. QEMU also gets ``TMPDIR`` pointing there, so its temporary snapshot file goes too.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.parse
from pathlib import Path

from ...coordination import cache_dir, locked, read_json, write_json
from ...daemon import Endpoint
from ...errors import StartupError
from ...images import VM_FILES, missing_vm_files, vm_image_dir
from ...tls import server_archive
from .. import BackendContext
from . import MachineBackend, MachineDriver

QEMU_BINARY = "qemu-system-x86_64"
GUEST_PORT = 2376
HOST_FROM_GUEST = "10.0.2.2"
VCPUS = 2
MEMORY_MIB = 2048
KERNEL_ARGS = (
    "console=ttyS0 root=/dev/vda rw rootfstype=ext4 init=/sbin/pytest-isolated-docker-init "
    "panic=1 quiet loglevel=3 mitigations=off"
)
PORT_ATTEMPTS = 5
KVM_PROBE_TIMEOUT = 8.0

INSTALL_QEMU = (
    "install Debian's qemu-system-x86 (apt-get install qemu-system-x86), or put "
    f"{QEMU_BINARY} on PATH"
)


def qemu_binary() -> str | None:
    return shutil.which(QEMU_BINARY)


def _set_parent_death_signal() -> None:
    # Runs in the child between fork and exec: QEMU gets SIGKILL when the thread that started it
    # dies, so a VM cannot outlive a killed pytest even before the crash reaper runs.
    libc = ctypes.CDLL(None, use_errno=True)
    pr_set_pdeathsig = 1
    libc.prctl(pr_set_pdeathsig, signal.SIGKILL, 0, 0, 0)


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
    memo = cache_dir() / f"kvm-probe-{boot_id}.json"
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


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _tail(path: Path, lines: int) -> str:
    try:
        with path.open("rb") as handle:
            handle.seek(0, os.SEEK_END)
            handle.seek(max(0, handle.tell() - 256 * 1024))
            text = handle.read().decode(errors="replace")
    except FileNotFoundError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


class QemuDriver(MachineDriver):
    """A QEMU VM from the VM image (``build-image vm``), dockerd reached on 127.0.0.1:PORT."""

    kind = "qemu"

    def __init__(self, backend: MachineBackend) -> None:
        super().__init__(backend)
        self.vm_dir = self.context.session_dir / f"vm-{backend.instance}"
        self.image_dir = vm_image_dir(self.settings)
        self._process: subprocess.Popen[bytes] | None = None
        # Every QEMU launched (port retries included), for leftovers().
        self._launched: list[subprocess.Popen[bytes]] = []
        self._accel = ""
        self._kvm_problem: str | None = None
        self._port = 0

    @classmethod
    def problems(cls, context: BackendContext) -> list[str]:
        found: list[str] = []
        if qemu_binary() is None:
            found.append(f"{QEMU_BINARY} not found on PATH: {INSTALL_QEMU}.")
        image = vm_image_dir(context.settings)
        missing = missing_vm_files(image)
        if missing:
            found.append(_missing_image_message(image, missing, context.settings.vm_image))
        return found

    @property
    def console_log(self) -> Path:
        return self.vm_dir / "console.log"

    @property
    def qemu_log(self) -> Path:
        return self.vm_dir / "qemu.log"

    def start(self) -> Endpoint:
        binary = qemu_binary()
        if binary is None:
            raise StartupError("start", f"{QEMU_BINARY} not found on PATH: {INSTALL_QEMU}.")
        missing = missing_vm_files(self.image_dir)
        if missing:
            raise StartupError(
                "start", _missing_image_message(self.image_dir, missing, self.settings.vm_image)
            )
        self.vm_dir.mkdir(mode=0o700)
        self._write_config_disk()
        self._kvm_problem = kvm_problem(binary, self.image_dir / "vmlinuz")
        self._accel = "tcg" if self._kvm_problem else "kvm"
        for _ in range(PORT_ATTEMPTS):
            self._port = _free_port()
            self._launch(binary)
            if self._wait_for_forwarding():
                return Endpoint(f"tcp://127.0.0.1:{self._port}", self.context.client_tls)
        raise StartupError(
            "start",
            f"QEMU could not forward a port on 127.0.0.1 in {PORT_ATTEMPTS} attempts (each "
            "picked port was taken before QEMU bound it). Free some local ports and retry.",
            self.backend.diagnostics(),
        )

    def _write_config_disk(self) -> None:
        """A tar file the guest reads from /dev/vdb: TLS material and dockerd's daemon.json."""
        server = self.context.ca.server_tls(["127.0.0.1", "localhost"])
        daemon_json: dict[str, object] = {
            "labels": [f"{k}={v}" for k, v in self.backend.labels("machine").items()]
        }
        if self.settings.registry_mirror:
            daemon_json["registry-mirrors"] = [guest_url(m) for m in self.settings.registry_mirror]
        archive = server_archive(server, extra=[("daemon.json", json.dumps(daemon_json).encode())])
        fd = os.open(self.vm_dir / "config.tar", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as handle:
            handle.write(archive)

    def _command(self, binary: str) -> list[str]:
        accel = ["-accel", "kvm", "-cpu", "host"] if self._accel == "kvm" else [
            # Under TCG the plain qemu64 CPU boots faster than "max": guest code avoids the
            # AVX-class paths that are costly to emulate.
            "-accel", "tcg,thread=multi", "-cpu", "qemu64",
        ]  # fmt: skip
        image = self.image_dir
        return [
            binary,
            "-name", f"{self.backend.object_name('vm')},process=pytest-isolated-docker-vm",
            "-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
            *accel,
            "-smp", str(_vcpus()), "-m", str(MEMORY_MIB),
            "-kernel", str(image / "vmlinuz"), "-initrd", str(image / "initrd.img"),
            "-append", KERNEL_ARGS,
            "-drive", f"file={image / 'disk.img'},if=virtio,format=raw,snapshot=on",
            "-drive", f"file={self.vm_dir / 'config.tar'},if=virtio,format=raw,readonly=on",
            "-netdev", f"user,id=net0,hostfwd=tcp:127.0.0.1:{self._port}-:{GUEST_PORT}",
            "-device", "virtio-net-pci,netdev=net0",
            "-device", "virtio-rng-pci",
            "-serial", f"file:{self.console_log}",
            "-pidfile", str(self.vm_dir / "qemu.pid"),
        ]  # fmt: skip

    def _launch(self, binary: str) -> None:
        with self.qemu_log.open("wb") as log:
            self._process = subprocess.Popen(
                self._command(binary),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, "TMPDIR": str(self.vm_dir)},
                # Its own session: a Ctrl-C meant for pytest must not kill the VM before stop()
                # removes it in order; the parent-death signal covers pytest being killed.
                start_new_session=True,
                preexec_fn=_set_parent_death_signal,
            )
        self._launched.append(self._process)

    def _wait_for_forwarding(self) -> bool:
        """True once QEMU listens on the forwarded port; False when another process took it."""
        process = self._process
        assert process is not None
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            code = process.poll()
            if code is not None:
                output = self.qemu_log.read_text(errors="replace")
                if "hostfwd" in output or "host forwarding" in output:
                    self._process = None
                    return False
                raise StartupError(
                    "start",
                    f"QEMU exited at once with code {code}: {output.strip()[-2000:]}",
                    self.backend.diagnostics(),
                )
            with (
                contextlib.suppress(OSError),
                socket.create_connection(("127.0.0.1", self._port), timeout=0.2),
            ):
                return True
            time.sleep(0.02)
        raise StartupError(
            "start",
            f"QEMU did not open 127.0.0.1:{self._port} within 30 s",
            self.backend.diagnostics(),
        )

    def failure(self) -> str | None:
        if self._process is None:
            return None
        code = self._process.poll()
        if code is None:
            return None
        return f"QEMU exited with code {code} (the guest stopped; see its console below)"

    def state(self) -> str:
        process = self._process
        status = "not started"
        if process is not None:
            code = process.poll()
            status = f"pid {process.pid} " + ("running" if code is None else f"exited {code}")
        accel = self._accel or "?"
        if self._kvm_problem:
            accel += f" (KVM not used: {self._kvm_problem})"
        text = (
            f"qemu VM {self.vm_dir.name}: {status}, accel {accel}, "
            f"port 127.0.0.1:{self._port or '-'}, image {self.image_dir}"
        )
        qemu_output = _tail(self.qemu_log, 20)
        if qemu_output:
            text += f"\n--- QEMU's output ---\n{qemu_output}"
        return text

    def logs(self, tail: int) -> str:
        return _tail(self.console_log, tail) or "(no console output yet)"

    def details(self) -> dict[str, str]:
        return {"mode": f"qemu {self._accel.upper()} {_vcpus()} vCPU", "image": str(self.image_dir)}

    def stop(self) -> None:
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            # The disk is a throw-away snapshot: nothing in the guest needs a clean shutdown.
            process.kill()
            process.wait(timeout=30)
        shutil.rmtree(self.vm_dir, ignore_errors=True)

    def leftovers(self) -> list[str]:
        found = [f"qemu process {p.pid}" for p in self._launched if p.poll() is None]
        with contextlib.suppress(OSError, ValueError):
            # A QEMU this object does not know (say, left by a process that crashed).
            pid = int((self.vm_dir / "qemu.pid").read_text().strip())
            if (
                pid not in {p.pid for p in self._launched}
                and b"qemu" in Path(f"/proc/{pid}/cmdline").read_bytes()
            ):
                found.append(f"qemu process {pid}")
        if self.vm_dir.exists():
            found.append(f"directory {self.vm_dir}")
        return found


def _missing_image_message(directory: Path, missing: list[str], configured: str) -> str:
    what = f"the VM image in {directory} lacks {', '.join(missing)}"
    if configured:
        return (
            f"{what} (--docker-vm-image={configured}). Point --docker-vm-image at a directory "
            f"holding {', '.join(VM_FILES)}, or drop it and run "
            "`pytest-isolated-docker build-image vm`."
        )
    return f"{what}: run `pytest-isolated-docker build-image vm` (as root, once; it is cached)."
