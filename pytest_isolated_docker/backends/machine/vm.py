"""One QEMU process of the qemu driver, in a run directory of its own.

Shared by the VMs tests use and by the boot that makes a VM snapshot (``snapshot.py``): the same
machine (CPU, memory, kernel, devices) is described once here, so that a snapshot taken of one
QEMU can be restored by another.

The run directory holds QEMU's identity (``qemu.identity``: pid and creation time) and a file
whose flock QEMU itself holds for its whole life (``qemu.alive``): the crash reaper kills the QEMU
of a dead session's ``vm-*/`` directories only when both say it is still that process. It also
holds QEMU's output, the guest console (serial 0), the control channel (serial 1,
a unix socket) and the QMP socket. QEMU gets ``TMPDIR`` pointing there, so the temporary
copy-on-write file of ``snapshot=on`` goes with the directory.

The control channel carries one exchange: the guest's init writes ``ready`` once it waits for its
configuration (containerd and dockerd are up, dockerd on its unix socket only), and the host
answers with one line, ``config <unix time> <base64 of a gzipped tar>`` (TLS files,
daemon.json, an entropy seed). The boot that makes a snapshot with preloaded images first
answers ``load <unix time> <payload>`` (TLS files of the terminator the images are loaded
through) and, once they are, ``loaded``; the guest stops that terminator and says ``ready`` again.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import gzip
import os
import re
import shlex
import shutil
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from ...coordination import (
    Holder,
    ProcessIdentity,
    die_with_parent,
    is_held,
    read_json,
    write_json,
)
from ...errors import StartupError
from ...net import answers, free_port

QEMU_BINARY = "qemu-system-x86_64"
GUEST_PORT = 2376
PORT_ATTEMPTS = 5
KERNEL_ARGS = (
    "console=ttyS0 root=/dev/vda rw rootfstype=ext4 init=/sbin/pytest-isolated-docker-init "
    "panic=1 quiet loglevel=3 mitigations=off"
)
# On the kernel command line of a snapshot's boot (and so of every VM restored from it): the
# guest's init then flushes and drops its caches before it waits, which makes the snapshot smaller.
SNAPSHOT_KERNEL_ARG = "pytest_isolated_docker.snapshot"
READY_LINE = b"ready\n"
# The guest kernel's watchdog reports a vCPU that made no progress every ~28 s ("watchdog: BUG:
# soft lockup - CPU#0 stuck for 41s!"). Under TCG a boot has been seen to hang for good that way
# (a module load waiting on the other vCPU, which sat idle); a report of this long is a hang, not
# a busy host.
HUNG_AFTER_SECONDS = 60
# A boot that hung is made again from the start, once.
BOOT_ATTEMPTS = 2
_SOFT_LOCKUP = re.compile(r"soft lockup - (CPU#\d+) stuck for (\d+)s")
_T = TypeVar("_T")

#: Builds the text attached to an error (console tail, state) when the error happens.
Diagnostics = Callable[[], str]


@dataclasses.dataclass(frozen=True)
class Machine:
    """What a VM is made of. Two QEMUs with equal machines can hand a snapshot to each other."""

    binary: str
    kernel: Path
    initrd: Path
    accel: str  # "kvm" or "tcg"
    vcpus: int
    memory_mib: int
    snapshot_boot: bool  # booted to be snapshotted (or restored from such a snapshot)

    def accel_args(self) -> list[str]:
        if self.accel == "kvm":
            return ["-accel", "kvm", "-cpu", "host"]
        # Under TCG the plain qemu64 CPU boots faster than "max": guest code avoids the AVX-class
        # paths that are costly to emulate.
        return ["-accel", "tcg,thread=multi", "-cpu", "qemu64"]

    def kernel_args(self) -> str:
        args = KERNEL_ARGS + (f" {SNAPSHOT_KERNEL_ARG}" if self.snapshot_boot else "")
        if self.accel == "tcg":
            # TCG keys its translated code by virtual address: with ASLR, every process start
            # (dockerd runs iptables some 70 times as it starts; runc, shims per container) has
            # its code translated again. Without it, dockerd starts in about half the time.
            args += " norandmaps"
        return args


@dataclasses.dataclass(frozen=True)
class Disk:
    """The root disk: a file, its format, and whether writes go to a throw-away overlay."""

    path: Path
    format: str
    throwaway: bool = True

    def drive_arg(self) -> str:
        spec = f"file={self.path},if=virtio,format={self.format}"
        return spec + (",snapshot=on" if self.throwaway else "")


class GuestHung(StartupError):
    """The guest's kernel stopped making progress while it booted (see :func:`hung_reason`)."""


def hung_reason(console: str) -> str | None:
    """Why the console shows a hung guest ("CPU#0 stuck for 67 s"), or None."""
    for match in _SOFT_LOCKUP.finditer(console):
        if int(match.group(2)) >= HUNG_AFTER_SECONDS:
            return f"{match.group(1)} stuck for {match.group(2)} s"
    return None


def retry_hung_boot(boot: Callable[[], _T], between: Callable[[], None]) -> _T:
    """``boot()``, made again after ``between()`` when the guest hung (:class:`GuestHung`), up to
    :data:`BOOT_ATTEMPTS` boots in all; the last hang is raised."""
    for _ in range(BOOT_ATTEMPTS - 1):
        try:
            return boot()
        except GuestHung:
            between()
    return boot()


def tail(path: Path, lines: int) -> str:
    try:
        with path.open("rb") as handle:
            handle.seek(0, os.SEEK_END)
            handle.seek(max(0, handle.tell() - 256 * 1024))
            text = handle.read().decode(errors="replace")
    except FileNotFoundError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


def config_line(archive: bytes, now: float | None = None, kind: str = "config") -> bytes:
    """The control channel's answer to ``ready``: the guest's clock and its configuration
    (``kind`` "config"), or the TLS files of a dockerd that loads images ("load")."""
    payload = base64.b64encode(gzip.compress(archive)).decode()
    return f"{kind} {time.time() if now is None else now:.3f} {payload}\n".encode()


class QemuProcess:
    """A QEMU running ``machine`` in ``run_dir``; :meth:`kill` ends it and removes the dir."""

    def __init__(self, run_dir: Path, machine: Machine, name: str) -> None:
        self.run_dir = run_dir
        self.machine = machine
        self.name = name
        self.port = 0
        self.process: subprocess.Popen[bytes] | None = None
        self._control: socket.socket | None = None

    @property
    def console_log(self) -> Path:
        return self.run_dir / "console.log"

    @property
    def output_log(self) -> Path:
        return self.run_dir / "qemu.log"

    @property
    def pid_file(self) -> Path:
        return self.run_dir / "qemu.pid"

    @property
    def identity_file(self) -> Path:
        return self.run_dir / IDENTITY_FILE

    @property
    def alive_file(self) -> Path:
        return self.run_dir / ALIVE_FILE

    def command(self, disk: Disk, port: int | None, incoming: Path | None) -> list[str]:
        machine, run = self.machine, self.run_dir
        netdev = "user,id=net0"
        if port is not None:
            netdev += f",hostfwd=tcp:127.0.0.1:{port}-:{GUEST_PORT}"
        command = [
            machine.binary,
            "-name", f"{self.name},process=pytest-isolated-docker-vm",
            "-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
            *machine.accel_args(),
            "-smp", str(machine.vcpus), "-m", str(machine.memory_mib),
            "-kernel", str(machine.kernel), "-initrd", str(machine.initrd),
            "-append", machine.kernel_args(),
            "-drive", disk.drive_arg(),
            "-netdev", netdev,
            "-device", "virtio-net-pci,netdev=net0",
            "-device", "virtio-rng-pci",
            "-serial", f"file:{self.console_log}",
            "-serial", f"unix:{run / 'control.sock'},server=on,wait=off",
            "-qmp", f"unix:{run / 'qmp.sock'},server=on,wait=off",
            "-pidfile", str(self.pid_file),
        ]  # fmt: skip
        if incoming is not None:
            command += ["-incoming", f"exec:cat {shlex.quote(str(incoming))}"]
        return command

    def launch(self, disk: Disk, port: int | None = None, incoming: Path | None = None) -> None:
        """Start QEMU; with ``incoming``, it waits for the snapshot in that file, paused."""
        self.close_control()
        self.port = port or 0
        for stale in ("control.sock", "qmp.sock", "console.log"):
            (self.run_dir / stale).unlink(missing_ok=True)
        alive = Holder.take(self.alive_file)
        if alive is None:
            raise StartupError("start", f"another QEMU still runs in {self.run_dir}")
        try:
            with self.output_log.open("wb") as log:
                self.process = subprocess.Popen(
                    self.command(disk, port, incoming),
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    env={**os.environ, "TMPDIR": str(self.run_dir)},
                    # Its own session: a Ctrl-C meant for pytest must not kill the VM before the
                    # plugin removes it in order; the parent-death signal covers pytest killed.
                    start_new_session=True,
                    preexec_fn=die_with_parent,
                    # QEMU holds the flock from now on: alive exactly while QEMU runs.
                    pass_fds=(alive.fd,),
                )
        finally:
            alive.release(unlink=False)
        write_json(self.identity_file, ProcessIdentity.of(self.process.pid).to_json())

    def launch_forwarded(
        self, disk: Disk, diagnostics: Diagnostics, incoming: Path | None = None
    ) -> None:
        """:meth:`launch` with the guest's dockerd port forwarded on a free 127.0.0.1 port
        (another process may take a picked port before QEMU binds it: a few are tried)."""
        for _ in range(PORT_ATTEMPTS):
            self.launch(disk, port=free_port(), incoming=incoming)
            if self.wait_for_forwarding(30, diagnostics):
                return
        raise StartupError(
            "start",
            f"QEMU could not forward a port on 127.0.0.1 in {PORT_ATTEMPTS} attempts (each "
            "picked port was taken before QEMU bound it). Free some local ports and retry.",
            diagnostics(),
        )

    def exit_code(self) -> int | None:
        return None if self.process is None else self.process.poll()

    def output(self) -> str:
        return (
            self.output_log.read_text(errors="replace").strip() if self.output_log.exists() else ""
        )

    def _check_running(self, doing: str, diagnostics: Diagnostics) -> None:
        code = self.exit_code()
        if code is not None:
            raise StartupError(
                "start",
                f"QEMU exited with code {code} while {doing}: {self.output()[-2000:]}",
                diagnostics(),
            )

    def wait_for_forwarding(self, timeout: float, diagnostics: Diagnostics) -> bool:
        """True once QEMU listens on the forwarded port; False when another process took it."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.exit_code() is not None:
                output = self.output()
                if "hostfwd" in output or "host forwarding" in output:
                    self.process = None
                    return False
                self._check_running("opening its port", diagnostics)
            if answers("127.0.0.1", self.port, timeout=0.2):
                return True
            time.sleep(0.02)
        raise StartupError(
            "start",
            f"QEMU did not open 127.0.0.1:{self.port} within {timeout:.0f} s",
            diagnostics(),
        )

    def _connect(self, name: str, timeout: float, diagnostics: Diagnostics) -> socket.socket:
        deadline = time.monotonic() + timeout
        while True:
            self._check_running(f"opening its {name} socket", diagnostics)
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                sock.connect(str(self.run_dir / name))
                return sock
            except OSError:
                sock.close()
                if time.monotonic() > deadline:
                    raise StartupError(
                        "start", f"QEMU did not open its {name} socket", diagnostics()
                    ) from None
                time.sleep(0.02)

    def qmp(self, command: str, timeout: float, diagnostics: Diagnostics, **arguments: Any) -> Any:
        """Run one QMP command; its answer (a QMP error is a StartupError)."""
        # Imported here: it brings asyncio, and every run's start-up sweep imports this module.
        from qemu.qmp import QMPError
        from qemu.qmp.legacy import QEMUMonitorProtocol

        monitor = QEMUMonitorProtocol(self._connect("qmp.sock", timeout, diagnostics))
        try:
            monitor.settimeout(timeout)
            monitor.connect()
            return monitor.cmd(command, **arguments)
        except (QMPError, OSError) as exc:
            self._check_running(f"answering {command}", diagnostics)
            raise StartupError(
                "start", f"QEMU's monitor failed on {command}: {exc}", diagnostics()
            ) from exc
        finally:
            monitor.close()

    def resume_snapshot(self, timeout: float, diagnostics: Diagnostics) -> None:
        """Once QEMU has read the snapshot it was launched with, let the guest run."""
        deadline = time.monotonic() + timeout
        while self.qmp("query-status", timeout, diagnostics)["status"] == "inmigrate":
            if time.monotonic() > deadline:
                raise StartupError(
                    "start",
                    f"QEMU did not load the VM snapshot within {timeout:.0f} s",
                    diagnostics(),
                )
            time.sleep(0.02)
        self.qmp("cont", timeout, diagnostics)

    def _control_socket(self, timeout: float, diagnostics: Diagnostics) -> socket.socket:
        if self._control is None:
            self._control = self._connect("control.sock", timeout, diagnostics)
        return self._control

    def wait_until_guest_waits(self, timeout: float, diagnostics: Diagnostics) -> None:
        """Block until the guest's init says ``ready`` on the control channel."""
        control = self._control_socket(timeout, diagnostics)
        deadline = time.monotonic() + timeout
        received = b""
        while READY_LINE not in received:
            self._check_running("booting", diagnostics)
            hung = hung_reason(tail(self.console_log, 20))
            if hung is not None:
                raise GuestHung(
                    "start", f"the VM's kernel hung while it booted ({hung})", diagnostics()
                )
            if time.monotonic() > deadline:
                raise StartupError(
                    "start",
                    f"the VM did not come up within {timeout:.0f} s (its init never said it "
                    "waits for its configuration; see the console below)",
                    diagnostics(),
                )
            control.settimeout(0.2)
            with contextlib.suppress(TimeoutError):
                chunk = control.recv(4096)
                if not chunk:
                    # QEMU closes the channel as it exits: report the exit when it is one.
                    with contextlib.suppress(subprocess.TimeoutExpired):
                        if self.process is not None:
                            self.process.wait(timeout=5)
                    self._check_running("booting", diagnostics)
                    raise StartupError(
                        "start", "QEMU closed the VM's control channel", diagnostics()
                    )
                received = (received + chunk)[-64:]

    def send_config(self, line: bytes, timeout: float, diagnostics: Diagnostics) -> None:
        control = self._control_socket(timeout, diagnostics)
        control.settimeout(timeout)
        control.sendall(line)

    def close_control(self) -> None:
        if self._control is not None:
            self._control.close()
            self._control = None

    def kill(self) -> None:
        """End QEMU (nothing in the guest needs a clean shutdown) and remove the run dir."""
        self.close_control()
        process, self.process = self.process, None
        if process is not None and process.poll() is None:
            process.kill()
            process.wait(timeout=30)
        shutil.rmtree(self.run_dir, ignore_errors=True)

    def stray_pid(self) -> int | None:
        """A QEMU recorded in this run dir that still runs and is not this object's process
        (say, left by a process that crashed), or None."""
        if not is_held(self.alive_file):
            return None
        identity = ProcessIdentity.from_json(read_json(self.identity_file))
        ours = self.process.pid if self.process is not None and self.process.poll() is None else 0
        if identity is None or identity.pid == ours:
            return None
        return identity.pid


IDENTITY_FILE = "qemu.identity"
ALIVE_FILE = "qemu.alive"


def reap_qemu(run_dir: Path, dry_run: bool) -> list[str]:
    """Kill the QEMU of a dead session's run directory, if it still runs.

    Raises LookupError when QEMU still runs (its flock is held) but this process cannot see it
    (another PID namespace): it cannot be stopped from here, and must not be judged gone.
    """
    if not is_held(run_dir / ALIVE_FILE):
        return []
    identity = ProcessIdentity.from_json(read_json(run_dir / IDENTITY_FILE))
    if identity is None or identity.process() is None:
        raise LookupError(
            f"a QEMU still runs in {run_dir} but is not visible from this process "
            "(another PID namespace?): stop it from where it was started"
        )
    if not dry_run:
        identity.kill()
    return [f"qemu process {identity.pid} ({run_dir.name})"]
