"""VM snapshots: boot once, restore many times.

Under TCG most of a VM's start-up is its kernel, its modules, containerd and dockerd coming up.
So the first VM of a machine (image, QEMU version, accelerator, size) is booted once more to be
snapshotted: its init stops where every VM differs, waiting on the control channel for its
configuration (certificates, labels, clock, entropy), and QEMU saves its memory and devices
(``migrate`` to a file) beside a qcow2 overlay holding what the guest had written to its disk. Each
VM then starts with ``-incoming`` from that file on a throw-away overlay of the same disk: it
resumes where the snapshot was taken and gets its own configuration: dockerd, running in the
snapshot already but on its unix socket only, reloads the VM's daemon.json, and a TLS terminator
holding the VM's own keys (client certificates required) starts in front of that socket. VMs
restored from one snapshot therefore share dockerd's engine ID (``/etc/docker/key.json``); their
daemon labels tell them apart.

With ``--docker-preload`` the snapshot also holds the images: its boot starts the TLS terminator
with keys of its own (kept in guest memory), the host streams the images into dockerd once, the
terminator stops, and the snapshot is taken. The images are then on the snapshot's qcow2 disk,
which each restored VM sees through a throw-away overlay of its own: no image is streamed per VM,
and whatever a VM does to its images stays in its overlay. Such a snapshot is keyed by the images'
names and IDs too: another preload set, or an image rebuilt under the same name, makes another
snapshot.

Snapshots are cached per machine in ``<cache>/vm-snapshots/<key>/`` and made once (file lock);
a build whose builder was killed is known by its builder lock, which nobody holds any more, and is
removed by the next build or sweep.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import secrets
import shlex
import shutil
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

from ...coordination import Holder, cache_dir, is_held, locked, read_json, write_json
from ...errors import StartupError
from .vm import Diagnostics, Disk, Machine, QemuProcess, retry_hung_boot, tail

# Bumped when the guest side of the protocol (recipes/vm/init.sh) changes what a snapshot holds.
PROTOCOL = "3"
STATE = "state"
DISK = "disk.qcow2"
QEMU_IMG = "qemu-img"
INSTALL_QEMU_IMG = (
    "install Debian's qemu-utils (apt-get install qemu-utils), or use --docker-vm-boot=cold"
)
META = "meta.json"


@dataclasses.dataclass(frozen=True)
class Snapshot:
    """A saved VM waiting for its configuration: its memory/device state and its disk."""

    directory: Path

    @property
    def state(self) -> Path:
        return self.directory / STATE

    def disk(self) -> Disk:
        return Disk(self.directory / DISK, "qcow2", throwaway=True)


@dataclasses.dataclass(frozen=True)
class Preload:
    """Images a snapshot is to hold, and how its boot loads them.

    ``images`` are ``(name, image ID)`` pairs (part of the snapshot's key); ``load`` is called
    once the guest has started a dockerd for them (see ``recipes/vm/init.sh``) and returns once
    they are loaded.
    """

    images: tuple[tuple[str, str], ...]
    load: Callable[[QemuProcess, Diagnostics], None]


def _qemu_version(binary: str) -> str:
    result = subprocess.run([binary, "--version"], capture_output=True, text=True, check=False)
    return result.stdout.strip().splitlines()[0] if result.stdout.strip() else binary


def _file_identity(path: Path) -> list[object]:
    stat = path.stat()
    return [str(path.resolve()), stat.st_size, stat.st_mtime_ns]


def snapshot_key(
    machine: Machine, root_disk: Path, images: tuple[tuple[str, str], ...] = ()
) -> str:
    """Changes whenever a snapshot made with one of these could not be restored by another, or
    would hold other images (``(name, ID)`` pairs, in any order)."""
    identity: dict[str, object] = {
        "protocol": PROTOCOL,
        "qemu": _qemu_version(machine.binary),
        "machine": {
            field.name: str(getattr(machine, field.name))
            for field in dataclasses.fields(machine)
            if field.name not in ("kernel", "initrd")
        },
        "kernel_args": machine.kernel_args(),
        "files": [_file_identity(p) for p in (machine.kernel, machine.initrd, root_disk)],
    }
    if images:
        identity["images"] = sorted(images)
    digest = hashlib.sha256(json.dumps(identity, sort_keys=True).encode())
    return digest.hexdigest()[:20]


def snapshots_dir() -> Path:
    return cache_dir() / "vm-snapshots"


def _builder_file(build: Path) -> Path:
    """The file whose flock the builder of ``build`` holds (beside it, not matching its glob)."""
    return build.with_name(build.name.replace(".build-", ".builder-"))


def unfinished_builds(key: str = "*") -> list[Path]:
    """Snapshot builds whose builder is gone (killed while it made the snapshot)."""
    return [
        build
        for build in snapshots_dir().glob(f"{key}.build-*")
        if build.is_dir() and not is_held(_builder_file(build))
    ]


def _remove_orphans(parent: Path) -> None:
    """Snapshots whose root disk is gone (an image rebuilt under a new key) are useless."""
    for meta_file in parent.glob(f"*/{META}"):
        root_disk = read_json(meta_file).get("root_disk", "")
        if root_disk and not Path(root_disk).exists():
            shutil.rmtree(meta_file.parent, ignore_errors=True)
            meta_file.parent.with_name(f"{meta_file.parent.name}.lock").unlink(missing_ok=True)


def ensure_snapshot(
    machine: Machine,
    root_disk: Path,
    run_dir: Path,
    name: str,
    timeout: float,
    preload: Preload | None = None,
) -> tuple[Snapshot, float]:
    """The snapshot for ``machine`` booted from ``root_disk`` (holding the images of
    ``preload``), made now unless cached.

    Returns it with the seconds spent making it (0 when it was cached). ``run_dir`` is where the
    snapshot's QEMU runs (under the session dir, so that the crash reaper knows it).
    """
    parent = snapshots_dir()
    # A snapshot holds no key (those come after the restore), but it is a VM's memory: ours only.
    parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    key = snapshot_key(machine, root_disk, preload.images if preload else ())
    final = parent / key
    for build in unfinished_builds(key):
        shutil.rmtree(build, ignore_errors=True)
    if (final / META).exists():
        return Snapshot(final), 0.0
    with locked(parent / f"{key}.lock", timeout=max(timeout * 2, 60)):
        if (final / META).exists():
            return Snapshot(final), 0.0
        _remove_orphans(parent)
        started = time.monotonic()
        retry_hung_boot(
            lambda: _build(final, key, machine, root_disk, run_dir, name, timeout, preload),
            between=lambda: None,  # a failed build leaves nothing: _build starts afresh
        )
        return Snapshot(final), time.monotonic() - started


def _build(
    final: Path,
    key: str,
    machine: Machine,
    root_disk: Path,
    run_dir: Path,
    name: str,
    timeout: float,
    preload: Preload | None,
) -> None:
    """One boot that makes the snapshot into ``final``; nothing of it is left if it fails."""
    build = final.parent / f"{key}.build-{secrets.token_hex(4)}"
    builder = Holder.take(_builder_file(build))  # before the dir exists
    build.mkdir()
    try:
        _take_snapshot(machine, root_disk, build, run_dir, name, timeout, preload)
        meta = {"root_disk": str(root_disk.resolve()), "machine": name, "made": time.time()}
        write_json(build / META, {**meta, "images": dict(preload.images if preload else ())})
        if builder is not None:
            builder.release()
        os.replace(build, final)
    finally:
        if builder is not None:
            builder.release()
        shutil.rmtree(build, ignore_errors=True)


def _take_snapshot(
    machine: Machine,
    root_disk: Path,
    build: Path,
    run_dir: Path,
    name: str,
    timeout: float,
    preload: Preload | None,
) -> None:
    try:
        subprocess.run(
            [QEMU_IMG, "create", "-q", "-f", "qcow2", "-F", "raw", "-b", str(root_disk.resolve()),
             str(build / DISK)],
            check=True, capture_output=True, text=True,
        )  # fmt: skip
    except FileNotFoundError:
        raise StartupError("start", f"{QEMU_IMG} not found on PATH: {INSTALL_QEMU_IMG}.") from None
    except subprocess.CalledProcessError as exc:
        raise StartupError(
            "start", f"{QEMU_IMG} could not make the snapshot's disk: {exc.stderr.strip()}"
        ) from None
    run_dir.mkdir(mode=0o700)
    qemu = QemuProcess(run_dir, machine, name)

    def diagnostics() -> str:
        console = tail(qemu.console_log, 50) or "(no console output)"
        return (
            f"the boot that makes the VM snapshot ({root_disk}; --docker-vm-boot=cold boots "
            f"each VM instead)\n--- last 50 lines of the VM's log ---\n{console}"
        )

    try:
        disk = Disk(build / DISK, "qcow2", throwaway=False)
        if preload is None:
            qemu.launch(disk)
        else:  # the host reaches the loading dockerd through a forwarded port
            qemu.launch_forwarded(disk, diagnostics)
        qemu.wait_until_guest_waits(timeout, diagnostics)
        if preload is not None:
            preload.load(qemu, diagnostics)
            qemu.wait_until_guest_waits(timeout, diagnostics)
        qemu.qmp("stop", timeout, diagnostics)
        target = f"exec:cat > {shlex.quote(str(build / STATE))}"
        qemu.qmp("migrate", timeout, diagnostics, uri=target)
        deadline = time.monotonic() + timeout
        while True:
            status = qemu.qmp("query-migrate", timeout, diagnostics).get("status")
            if status == "completed":
                break
            if status in ("failed", "cancelled") or time.monotonic() > deadline:
                raise StartupError(
                    "start", f"saving the VM snapshot ended with status {status!r}", diagnostics()
                )
            time.sleep(0.05)
    finally:
        qemu.kill()
