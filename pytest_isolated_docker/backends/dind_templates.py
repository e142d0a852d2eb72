"""Template data roots of the dind backend: preloaded images in a fresh daemon without loading them.

For each preload set (the images' IDs and names, and the dind image, which fixes dockerd's version
and storage driver) one dind daemon per host engine loads the images once; its ``/var/lib/docker``
is then kept in a store volume, split in two: ``root/`` (the metadata: image and layer databases,
bolt files, overlay2's link files) and ``layers/<id>/`` (each overlay2 layer's ``diff``). A daemon
started from the template copies ``root/`` (tens of files) and bind-mounts each layer read-only
onto its ``overlay2/<id>/diff`` (see the dind entrypoint): its images are there when dockerd
starts, and nothing it does (``rmi``, ``tag``, ``build``, a container writing into
``/var/lib/docker``) can change the template, since every layer it shares is a read-only mount.
dockerd unmounts a layer's mount before it removes the layer.

Which templates exist is recorded on the engine itself, as one marker volume per template, so that
every process, container and machine using the engine sees the same store. A template whose images
the host engine no longer has and that no daemon uses is evicted when the next one is made;
``pytest-isolated-docker prune --caches`` removes the store when no daemon uses it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .. import lazy
from ..labels import PREFIX, ROLE

if TYPE_CHECKING:
    import docker
    import docker.errors
else:
    docker = lazy.module("docker")

#: Bumped when the layout of a template changes: templates of another format are never used.
FORMAT = 1
STORE_VOLUME = f"{PREFIX}-dind-templates"
#: Where the store is mounted in a dind container (read-only, and unmounted before dockerd starts,
#: except in the container that makes a template).
STORE_PATH = "/pytest-isolated-docker-store"
MARKER_PREFIX = f"{PREFIX}-dind-template-"
#: On a marker, the template's key; on a dind container, the template it started from.
TEMPLATE = f"{PREFIX}.template"
IMAGES = f"{PREFIX}.template-images"
STORE_ROLE = "dind-template-store"
MARKER_ROLE = "dind-template"


@dataclass(frozen=True)
class TemplateKey:
    """Names one template: the preload set as the host engine resolves it, and the dind image."""

    key: str
    images: tuple[tuple[str, str], ...]  # (name as asked, image ID)
    dind_image_id: str

    @classmethod
    def of(cls, host: docker.DockerClient, dind_image: str, images: Sequence[str]) -> TemplateKey:
        """The key of ``images`` (present in ``host``) started with ``dind_image``."""
        names = sorted(dict.fromkeys(images))
        resolved = tuple((name, str(host.api.inspect_image(name)["Id"])) for name in names)
        dind_id = str(host.api.inspect_image(dind_image)["Id"])
        material = json.dumps([FORMAT, dind_id, resolved]).encode()
        return cls(hashlib.sha256(material).hexdigest()[:32], resolved, dind_id)

    @property
    def marker(self) -> str:
        return MARKER_PREFIX + self.key

    def labels(self) -> dict[str, str]:
        return {
            ROLE: MARKER_ROLE,
            TEMPLATE: self.key,
            IMAGES: json.dumps(dict(self.images)),
        }


def store_labels() -> dict[str, str]:
    return {ROLE: STORE_ROLE}


def ensure_store(host: docker.DockerClient) -> str:
    """The store volume's name, created if needed (creating an existing volume returns it)."""
    return str(host.volumes.create(name=STORE_VOLUME, labels=store_labels()).name)


def is_made(host: docker.DockerClient, key: TemplateKey) -> bool:
    try:
        host.volumes.get(key.marker)
    except docker.errors.NotFound:
        return False
    return True


def record(host: docker.DockerClient, key: TemplateKey) -> None:
    host.volumes.create(name=key.marker, labels=key.labels())


def forget(host: docker.DockerClient, key: str) -> None:
    """Drop the marker of a template found missing or evicted (its next user makes it anew)."""
    with contextlib.suppress(docker.errors.NotFound):
        host.volumes.get(MARKER_PREFIX + key).remove(force=True)


def markers(host: docker.DockerClient) -> dict[str, dict[str, str]]:
    """Each recorded template's key and its images (name to ID)."""
    found: dict[str, dict[str, str]] = {}
    volumes = host.api.volumes(filters={"label": [f"{ROLE}={MARKER_ROLE}"]}).get("Volumes") or []
    for volume in volumes:
        labels = volume.get("Labels") or {}
        key = labels.get(TEMPLATE)
        if not key:
            continue
        try:
            images = json.loads(labels.get(IMAGES, "{}"))
        except ValueError:
            images = {}
        found[key] = images if isinstance(images, dict) else {}
    return found


def in_use(host: docker.DockerClient) -> set[str]:
    """Keys of the templates a dind container (running or not) started from."""
    containers = host.api.containers(all=True, filters={"label": [TEMPLATE]})
    return {str((c.get("Labels") or {}).get(TEMPLATE)) for c in containers}


def _still_named(host: docker.DockerClient, name: str, image_id: str) -> bool:
    try:
        return bool(host.api.inspect_image(name)["Id"] == image_id)
    except docker.errors.ImageNotFound:
        return False


def evictable(host: docker.DockerClient) -> list[str]:
    """Templates no key can name again (a name they hold no longer names the same image in the
    host engine) and no daemon uses: removed by the next template maker."""
    used = in_use(host)
    return [
        key
        for key, images in markers(host).items()
        if key not in used
        and not all(_still_named(host, name, image_id) for name, image_id in images.items())
    ]


def describe(host: docker.DockerClient) -> list[str]:
    """One line per template, for the doctor."""
    used = in_use(host)
    return [
        f"dind template {key[:12]}: {', '.join(images) or '?'}"
        + (" (in use)" if key in used else "")
        for key, images in markers(host).items()
    ]


def prune(host: docker.DockerClient, dry_run: bool = False) -> list[str]:
    """Remove the template store and its markers when no dind container uses a template; return
    what was (or would be) removed, or say why the store is kept."""
    try:
        host.volumes.get(STORE_VOLUME)
    except docker.errors.NotFound:
        store = False
    else:
        store = True
    recorded = markers(host)
    if not store and not recorded:
        return []
    used = in_use(host)
    if used:
        return [f"kept: volume {STORE_VOLUME} ({len(used)} template(s) in use by dind daemons)"]
    removed = [f"volume {MARKER_PREFIX}{key}" for key in recorded]
    removed += [f"volume {STORE_VOLUME}"] if store else []
    if not dry_run:
        for key in recorded:
            forget(host, key)
        if store:
            with contextlib.suppress(docker.errors.NotFound):
                host.volumes.get(STORE_VOLUME).remove(force=True)
    return removed
