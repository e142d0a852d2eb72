"""Images: preloading from the host engine into isolated daemons, and the shipped recipes.

Preloading keeps the image cache while keeping isolation: the host engine's export of an image is
streamed straight into the isolated daemon's load (no temporary file), several images at once.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Sequence
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING

from . import lazy
from .coordination import LockTimeout, cache_dir, locked, state_root
from .errors import StartupError
from .settings import Settings

if TYPE_CHECKING:
    import docker
    import docker.errors
else:
    docker = lazy.module("docker")

_CHUNK = 1024 * 1024
RECIPES = ("dind", "vm")


def _split(image: str) -> tuple[str, str]:
    name, sep, tag = image.rpartition(":")
    if not sep or "/" in tag:
        return image, "latest"
    return name, tag


def pull_with_progress(host: docker.DockerClient, image: str) -> str | None:
    """Pull ``image`` into ``host``, printing progress to stderr; the reason when it fails."""
    print(f"pytest-isolated-docker: pulling {image} into the host engine", file=sys.stderr)
    last = ""
    try:
        for event in host.api.pull(*_split(image), stream=True, decode=True):
            if "error" in event:
                return str(event["error"])
            status = f"{event.get('id', '')} {event.get('status', '')}".strip()
            if status != last:
                print(f"  {status} {event.get('progress', '')}", file=sys.stderr, flush=True)
                last = status
    except docker.errors.DockerException as exc:
        return str(getattr(exc, "explanation", None) or exc)
    return None


def copy_between(source: docker.DockerClient, target: docker.DockerClient, image: str) -> None:
    """Stream ``image`` from ``source`` into ``target`` (``docker save | docker load``)."""
    size = source.api.inspect_image(image).get("Size", 0)
    print(
        f"pytest-isolated-docker: copying {image} ({size / 1e6:.0f} MB) from "
        f"{source.api.base_url} into the host engine",
        file=sys.stderr,
    )
    for message in target.api.load_image(source.api.get_image(image, chunk_size=_CHUNK)) or ():
        if isinstance(message, dict) and message.get("error"):
            raise docker.errors.DockerException(str(message["error"]))


def ensure_on_host(
    host: docker.DockerClient,
    images: Iterable[str],
    phase: str,
    hint: str,
    donors: Sequence[docker.DockerClient] = (),
) -> None:
    """Make sure each image is in the host engine, once per host (file lock): copied from a
    ``donor`` engine that has it (the engines of this machine, when the host engine is another
    machine's), else pulled.

    Raises a StartupError for ``phase`` naming every image that is neither present, nor held by a
    donor, nor pullable, followed by ``hint`` (what to do instead).
    """
    missing: list[str] = []
    for image in images:
        with locked(state_root() / f"pull-{hashlib.sha256(image.encode()).hexdigest()[:16]}.lock"):
            if image_exists(host, image):
                continue
            donor = next((d for d in donors if image_exists(d, image)), None)
            if donor is not None:
                try:
                    copy_between(donor, host, image)
                    continue
                except docker.errors.DockerException as exc:
                    missing.append(f"{image} (copying it from {donor.api.base_url} failed: {exc})")
                    continue
            reason = pull_with_progress(host, image)
            if reason is not None:
                missing.append(f"{image} ({reason})")
    if missing:
        where = " nor in an engine of this machine" if donors else ""
        raise StartupError(
            phase,
            f"not in the host engine{where} and cannot be pulled: "
            + "; ".join(missing)
            + f". {hint}",
        )


def preload(host: docker.DockerClient, target: docker.DockerClient, images: Sequence[str]) -> float:
    """Stream each image from ``host`` into ``target`` in parallel; return the seconds taken."""
    if not images:
        return 0.0
    start = time.monotonic()

    def copy(image: str) -> None:
        # Each stream gets its own connection pool: the save and the load run concurrently.
        export = host.api.get_image(image, chunk_size=_CHUNK)
        try:
            # The engine reports a failed load (a full disk, say) inside the answer's stream.
            for message in target.api.load_image(export, quiet=True) or ():
                if isinstance(message, dict) and message.get("error"):
                    raise StartupError(
                        "preload",
                        f"loading {image} into the isolated daemon failed: {message['error']}",
                    )
        except docker.errors.DockerException as exc:
            raise StartupError(
                "preload", f"loading {image} into the isolated daemon failed: {exc}"
            ) from exc
        try:
            target.api.inspect_image(image)
        except docker.errors.ImageNotFound as exc:
            raise StartupError(
                "preload",
                f"{image} was streamed into the isolated daemon but it does not show the image: "
                "its disk may be full (see the daemon log).",
            ) from exc

    # One stream per image, however many of its names are asked for: the others are tags.
    by_id: dict[str, list[str]] = {}
    for image in dict.fromkeys(images):
        # A digest or an ID cannot be made a tag in the target: such a name is streamed itself.
        taggable = "@" not in image and not image.startswith("sha256:")
        key = host.api.inspect_image(image)["Id"] if taggable else image
        by_id.setdefault(key, []).append(image)
    with concurrent.futures.ThreadPoolExecutor(max_workers=min(4, len(by_id))) as pool:
        for future in [pool.submit(copy, names[0]) for names in by_id.values()]:
            future.result()
    for first, *others in by_id.values():
        for other in others:
            target.api.tag(first, *_split(other))
    return time.monotonic() - start


def recipe_dir(name: str) -> Path:
    if name not in RECIPES:
        raise ValueError(f"unknown recipe {name!r}; valid recipes: {', '.join(RECIPES)}")
    return Path(str(resources.files("pytest_isolated_docker") / "recipes" / name))


def recipe_hash(name: str) -> str:
    """Hash of a recipe's files: names a built image, so a changed recipe builds anew."""
    digest = hashlib.sha256()
    root = recipe_dir(name)
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        digest.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()[:12]


DIND_REPOSITORY = "pytest-isolated-docker/dind"


def image_exists(host: docker.DockerClient, image: str) -> bool:
    try:
        host.images.get(image)
    except docker.errors.ImageNotFound:
        return False
    return True


def dind_image_tag() -> str:
    return f"{DIND_REPOSITORY}:{recipe_hash('dind')}"


def build_dind_image(host: docker.DockerClient, quiet: bool = False) -> str:
    """Build the Debian-based dind image (FROM debian:bookworm-slim) unless it exists.

    Tagged with the recipe's hash and as ``pytest-isolated-docker/dind:latest``.
    """
    tag = dind_image_tag()
    with locked(state_root() / "build-dind.lock"):
        if not image_exists(host, tag):
            for chunk in host.api.build(
                path=str(recipe_dir("dind")),
                tag=tag,
                rm=True,
                forcerm=True,
                decode=True,
                labels={"pytest-isolated-docker.recipe": recipe_hash("dind")},
            ):
                if "error" in chunk:
                    raise StartupError("build", f"building {tag} failed: {chunk['error']}")
                if not quiet and "stream" in chunk:
                    sys.stderr.write(chunk["stream"])
        host.images.get(tag).tag(DIND_REPOSITORY, "latest")
    return tag


# --- The machine backend's VM image: kernel, initramfs and an ext4 root disk --------------------

VM_REPOSITORY = "pytest-isolated-docker/vm"
VM_FILES = ("vmlinuz", "initrd.img", "disk.img")
# Free space the guest's dockerd gets on its (copy-on-write, sparse) root disk.
VM_DISK_HEADROOM = 4 * 1024**3


def vm_image_key() -> str:
    """Cache key of the VM image: its recipe and the dind recipe it is built from."""
    return f"{recipe_hash('vm')}-{recipe_hash('dind')}"


def default_vm_image_dir() -> Path:
    return cache_dir() / "vm" / vm_image_key()


def vm_image_dir(settings: Settings) -> Path:
    """Where the qemu driver finds vmlinuz, initrd.img and disk.img."""
    if settings.vm_image:
        return Path(settings.vm_image).expanduser().resolve()
    return default_vm_image_dir()


def missing_vm_files(directory: Path) -> list[str]:
    return [name for name in VM_FILES if not (directory / name).is_file()]


def build_vm_image(host: docker.DockerClient, quiet: bool = False) -> Path:
    """Build the VM image into the user cache unless it is there; return its directory.

    The dind image is built first, then the vm recipe FROM it; the container's filesystem is
    exported into a directory (as root, keeping owners and modes), made into an ext4 disk with
    ``mkfs.ext4 -d``, and the kernel and initramfs are copied out of its /boot. Concurrent callers
    build once (file lock); the result appears atomically (built in a temporary directory, renamed).
    """
    target = default_vm_image_dir()
    if not missing_vm_files(target):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with locked(target.parent / f"{target.name}.lock"):
        if not missing_vm_files(target):
            return target
        if os.geteuid() != 0:
            raise StartupError(
                "build",
                "building the VM image needs root: the exported filesystem must keep its owners "
                "and modes. Run `pytest-isolated-docker build-image vm` as root once (it is "
                f"cached in {target}), or point --docker-vm-image at a directory holding "
                f"{', '.join(VM_FILES)}.",
            )
        for stale in target.parent.glob(f".{target.name}-*"):
            # A build killed half-way (we hold the lock, so none is running now).
            shutil.rmtree(stale, ignore_errors=True)
        dind = build_dind_image(host, quiet=quiet)
        tag = f"{VM_REPOSITORY}:{vm_image_key()}"
        _build_recipe(host, "vm", tag, {"DIND_IMAGE": dind}, quiet)
        work = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
        try:
            rootfs = work / "rootfs"
            rootfs.mkdir()
            _export_into(host, tag, rootfs)
            _copy_boot_files(rootfs, work)
            _make_disk(rootfs, work / "disk.img")
            shutil.rmtree(rootfs)
            if target.exists():  # an incomplete earlier image
                shutil.rmtree(target)
            os.replace(work, target)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    _remove_older_vm_images(host, keep=target)
    return target


def _remove_older_vm_images(host: docker.DockerClient, keep: Path) -> None:
    """VM images of other recipes (an upgraded plugin) are dead weight: ~0.7 GB of disk each,
    plus their build image in the host engine. One being built (its lock held) is left alone;
    a VM still running from one keeps its open files until it ends."""
    for directory in keep.parent.iterdir():
        if directory == keep or directory.name.startswith(".") or not directory.is_dir():
            continue
        lock = directory.parent / f"{directory.name}.lock"
        try:
            with locked(lock, timeout=0):
                shutil.rmtree(directory, ignore_errors=True)
            lock.unlink(missing_ok=True)
        except LockTimeout:
            continue
        with contextlib.suppress(docker.errors.DockerException):
            host.images.remove(f"{VM_REPOSITORY}:{directory.name}")


def _build_recipe(
    host: docker.DockerClient, recipe: str, tag: str, buildargs: dict[str, str], quiet: bool
) -> None:
    try:
        host.images.get(tag)
        return
    except docker.errors.ImageNotFound:
        pass
    for chunk in host.api.build(
        path=str(recipe_dir(recipe)),
        tag=tag,
        rm=True,
        forcerm=True,
        decode=True,
        buildargs=buildargs,
        labels={"pytest-isolated-docker.recipe": recipe_hash(recipe)},
    ):
        if "error" in chunk:
            raise StartupError("build", f"building {tag} failed: {chunk['error']}")
        if not quiet and "stream" in chunk:
            sys.stderr.write(chunk["stream"])


def _export_into(host: docker.DockerClient, image: str, rootfs: Path) -> None:
    """Extract the filesystem of a (never started) container of ``image`` into ``rootfs``."""
    container = host.api.create_container(
        image, command=["true"], labels={"pytest-isolated-docker.role": "vm-export"}
    )
    try:
        with tempfile.TemporaryFile() as errors:
            tar = subprocess.Popen(
                ["tar", "-x", "-p", "--numeric-owner", "-C", str(rootfs)],
                stdin=subprocess.PIPE,
                stderr=errors,
            )
            assert tar.stdin is not None
            try:
                for chunk in host.api.export(container["Id"], chunk_size=_CHUNK):
                    tar.stdin.write(chunk)
            except BaseException:
                tar.kill()
                raise
            finally:
                tar.stdin.close()
                tar.wait()
            errors.seek(0)
            message = errors.read().decode(errors="replace").strip()
        if tar.returncode != 0:
            raise StartupError("build", f"extracting {image} into {rootfs} failed: {message}")
    finally:
        host.api.remove_container(container["Id"], force=True, v=True)


def _copy_boot_files(rootfs: Path, work: Path) -> None:
    for pattern, name in (("vmlinuz-*", "vmlinuz"), ("initrd.img-*", "initrd.img")):
        found = sorted((rootfs / "boot").glob(pattern))
        if not found:
            raise StartupError(
                "build", f"the vm recipe left no /boot/{pattern}: is linux-image installed in it?"
            )
        shutil.copyfile(found[-1], work / name)


def _make_disk(rootfs: Path, disk: Path) -> None:
    used = sum((Path(d) / f).lstat().st_size for d, _, files in os.walk(rootfs) for f in files)
    size_mib = (int(used * 1.2) + VM_DISK_HEADROOM) // 1024**2
    free = shutil.disk_usage(disk.parent).free
    if free < used * 1.3:
        raise StartupError(
            "build",
            f"not enough disk space in {disk.parent}: the VM disk needs about "
            f"{used * 1.3 / 1024**3:.1f} GiB, {free / 1024**3:.1f} GiB are free. Free some space "
            "or set XDG_CACHE_HOME to a larger filesystem.",
        )
    result = subprocess.run(
        ["mkfs.ext4", "-q", "-d", str(rootfs), "-L", "root", str(disk), f"{size_mib}M"],
        capture_output=True,
        text=True,
    )
    if result.returncode != 0:
        raise StartupError(
            "build",
            f"mkfs.ext4 -d failed ({result.returncode}): {result.stderr.strip()}. It needs "
            "e2fsprogs >= 1.43 (apt-get install e2fsprogs) and free space for the disk.",
        )
