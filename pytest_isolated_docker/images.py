"""Images: preloading from the host engine into isolated daemons, and the shipped recipes.

Preloading keeps the image cache while keeping isolation: the host engine's export of an image is
streamed straight into the isolated daemon's load (no temporary file), several images at once.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import sys
import time
from collections.abc import Iterable, Sequence
from importlib import resources
from pathlib import Path

import docker
import docker.errors

from .coordination import locked, state_root
from .errors import StartupError

_CHUNK = 1024 * 1024
RECIPES = ("dind", "vm")


def _split(image: str) -> tuple[str, str]:
    name, sep, tag = image.rpartition(":")
    if not sep or "/" in tag:
        return image, "latest"
    return name, tag


def ensure_on_host(host: docker.DockerClient, images: Iterable[str]) -> None:
    """Make sure each image is in the host engine, pulling it once per host (file lock).

    Raises a StartupError naming every image that is neither present nor pullable.
    """
    missing: list[str] = []
    for image in images:
        with locked(state_root() / f"pull-{hashlib.sha256(image.encode()).hexdigest()[:16]}.lock"):
            try:
                host.images.get(image)
                continue
            except docker.errors.ImageNotFound:
                pass
            print(f"pytest-isolated-docker: pulling {image} into the host engine", file=sys.stderr)
            try:
                host.images.pull(*_split(image))
            except docker.errors.DockerException as exc:
                missing.append(f"{image} ({str(exc).splitlines()[0][:200]})")
    if missing:
        raise StartupError(
            "preload",
            "image(s) to preload are not in the host engine and cannot be pulled: "
            + "; ".join(missing)
            + ". Build or load them into the host engine first (docker build / docker load), or "
            "fix the names given to --docker-preload.",
        )


def preload(
    host: docker.DockerClient, target: docker.DockerClient, images: Sequence[str]
) -> float:
    """Stream each image from ``host`` into ``target`` in parallel; return the seconds taken."""
    if not images:
        return 0.0
    start = time.monotonic()

    def copy(image: str) -> None:
        # Each stream gets its own connection pool: the save and the load run concurrently.
        export = host.api.get_image(image, chunk_size=_CHUNK)
        try:
            target.api.load_image(export, quiet=True)
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

    with concurrent.futures.ThreadPoolExecutor(max_workers=min(4, len(images))) as pool:
        for future in [pool.submit(copy, image) for image in images]:
            future.result()
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


def dind_image_tag() -> str:
    return f"{DIND_REPOSITORY}:{recipe_hash('dind')}"


def build_dind_image(host: docker.DockerClient, quiet: bool = False) -> str:
    """Build the Debian-based dind image (FROM debian:bookworm-slim) unless it exists.

    Tagged with the recipe's hash and as ``pytest-isolated-docker/dind:latest``.
    """
    tag = dind_image_tag()
    with locked(state_root() / "build-dind.lock"):
        try:
            host.images.get(tag)
        except docker.errors.ImageNotFound:
            for chunk in host.api.build(
                path=str(recipe_dir("dind")), tag=tag, rm=True, forcerm=True, decode=True,
                labels={"pytest-isolated-docker.recipe": recipe_hash("dind")},
            ):
                if "error" in chunk:
                    raise StartupError("build", f"building {tag} failed: {chunk['error']}")
                if not quiet and "stream" in chunk:
                    sys.stderr.write(chunk["stream"])
        host.images.get(tag).tag(DIND_REPOSITORY, "latest")
    return tag
