"""The host mirror's store: images of the host engine as registry blobs and manifests.

An image is exported once (``docker save``) and translated into what a registry serves: its
config and its layers, each stored under its sha256 digest, and a schema2 manifest naming them.
Layers stay uncompressed tars, exactly as ``docker save`` writes them: a pulling dockerd detects
the compression of a layer itself, and checks its digest and diff ID as for any pull.

The store lives in the user cache directory and is shared by every session of the host: files
appear under their final names only complete (written aside, then renamed), and a lock per image
makes concurrent sessions export it once. ``images/<id>`` (the image's manifest digest) is
written last: an image is in the store exactly when that file exists.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import posixpath
import re
import secrets
import tarfile
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from .coordination import cache_dir, locked

MANIFEST_TYPE = "application/vnd.docker.distribution.manifest.v2+json"
CONFIG_TYPE = "application/vnd.docker.container.image.v1+json"
#: Uncompressed layer tars; dockerd 20.10 and later unpack them as they come.
LAYER_TYPE = "application/vnd.docker.image.rootfs.diff.tar"
DIGEST = re.compile(r"sha256:[0-9a-f]{64}")
# Members of a `docker save` stream up to this size are kept in memory (configs, manifests,
# legacy metadata); larger ones go to a file at once, hashed on the way.
_IN_MEMORY = 1 << 20
_CHUNK = 1 << 20


class ExportError(Exception):
    """A ``docker save`` stream is not an image this store can serve."""


@dataclass
class _Member:
    digest: str
    size: int
    data: bytes | None  # small members' content; None when staged in a file
    staged: Path | None  # the file holding it until it is renamed into the store


class IterableStream(io.RawIOBase):
    """A readable file over an iterable of byte chunks (docker-py's ``get_image``)."""

    def __init__(self, chunks: Iterable[bytes]) -> None:
        self._chunks: Iterator[bytes] = iter(chunks)
        self._rest = b""

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        while not self._rest:
            chunk = next(self._chunks, None)
            if chunk is None:
                return 0
            self._rest = chunk
        size = min(len(buffer), len(self._rest))
        buffer[:size] = self._rest[:size]
        self._rest = self._rest[size:]
        return size


class Store:
    """Blobs and manifests under ``root`` (``blobs/``, ``manifests/``, ``images/``)."""

    def __init__(self, root: Path) -> None:
        self.root = root

    @classmethod
    def default(cls) -> Store:
        """The host's store, in the user cache directory."""
        return cls(cache_dir() / "host-mirror")

    def _directory(self, name: str) -> Path:
        path = self.root / name
        path.mkdir(parents=True, exist_ok=True)
        return path

    def blob(self, digest: str) -> Path | None:
        """The file holding blob ``digest``, if stored."""
        if not DIGEST.fullmatch(digest):
            return None
        path = self.root / "blobs" / digest.replace(":", "-")
        return path if path.is_file() else None

    def manifest(self, digest: str) -> bytes | None:
        """The stored manifest ``digest`` (only manifests this store made)."""
        if not DIGEST.fullmatch(digest):
            return None
        with contextlib.suppress(FileNotFoundError):
            return (self.root / "manifests" / digest.replace(":", "-")).read_bytes()
        return None

    def image_manifest(self, image_id: str) -> tuple[str, bytes] | None:
        """Digest and content of the manifest made for host image ``image_id``, if exported."""
        if not DIGEST.fullmatch(image_id):
            return None
        try:
            digest = (self.root / "images" / image_id.replace(":", "-")).read_text().strip()
        except FileNotFoundError:
            return None
        data = self.manifest(digest)
        return None if data is None else (digest, data)

    def add_image(
        self, image_id: str, export: Callable[[], Iterable[bytes]], name: str = ""
    ) -> tuple[str, bytes]:
        """The manifest of ``image_id``, exporting it with ``export`` (a ``docker save`` stream
        of that image) unless some process of the host did already."""
        if not DIGEST.fullmatch(image_id):
            raise ExportError(f"{image_id!r} is not an image ID")
        found = self.image_manifest(image_id)
        if found is not None:
            return found
        key = image_id.replace(":", "-")
        with locked(self._directory("locks") / f"{key}.lock", purpose=f"exporting {image_id}"):
            found = self.image_manifest(image_id)
            if found is not None:
                return found
            staging = self._directory("staging")
            for stale in staging.glob(f"{key}.*"):  # of an export that was killed
                stale.unlink(missing_ok=True)
            started = time.monotonic()
            stream = io.BufferedReader(IterableStream(export()), _CHUNK)
            manifest = self.import_save(stream, f"{key}.")
            digest = "sha256:" + hashlib.sha256(manifest).hexdigest()
            if _config_digest(manifest) != image_id:  # the config's digest is the image's ID
                raise ExportError(f"docker save of {image_id} gave another image's config")
            self._write(self._directory("manifests") / digest.replace(":", "-"), manifest)
            self._write(self._directory("images") / key, digest.encode())
            self._log(image_id, name, digest, time.monotonic() - started)
            return digest, manifest

    def _log(self, image_id: str, name: str, digest: str, seconds: float) -> None:
        entry = {"image": image_id, "name": name, "manifest": digest, "seconds": round(seconds, 3)}
        with (self.root / "exports.log").open("a") as log:
            log.write(json.dumps(entry, sort_keys=True) + "\n")

    def exports(self) -> list[dict[str, Any]]:
        """One entry per export this store made (image, name, manifest, seconds)."""
        try:
            lines = (self.root / "exports.log").read_text().splitlines()
        except FileNotFoundError:
            return []
        return [json.loads(line) for line in lines if line.strip()]

    def import_save(self, stream: IO[bytes], staging_prefix: str = "") -> bytes:
        """Store the config and layers of the one image in a ``docker save`` stream; return its
        schema2 manifest (not yet stored). Both the legacy layout (``<id>/layer.tar``) and the
        OCI one (``blobs/sha256/...``) carry ``manifest.json``, which names what is needed."""
        staging = self._directory("staging")
        members: dict[str, _Member] = {}
        links: dict[str, str] = {}
        try:
            with tarfile.open(fileobj=stream, mode="r|") as tar:
                for info in tar:
                    name = posixpath.normpath(info.name)
                    if info.issym():
                        links[name] = posixpath.normpath(
                            posixpath.join(posixpath.dirname(name), info.linkname)
                        )
                    elif info.islnk():
                        links[name] = posixpath.normpath(info.linkname)
                    elif info.isfile():
                        source = tar.extractfile(info)
                        assert source is not None
                        members[name] = self._read_member(
                            source, info.size, staging / f"{staging_prefix}{secrets.token_hex(8)}"
                        )
            manifest = self._translate(members, links)
        finally:
            for member in members.values():
                if member.staged is not None:
                    member.staged.unlink(missing_ok=True)
        return manifest

    def _read_member(self, source: IO[bytes], size: int, staged: Path) -> _Member:
        if size <= _IN_MEMORY:
            data = source.read()
            return _Member("sha256:" + hashlib.sha256(data).hexdigest(), len(data), data, None)
        digest = hashlib.sha256()
        written = 0
        with staged.open("wb") as out:
            while chunk := source.read(_CHUNK):
                digest.update(chunk)
                out.write(chunk)
                written += len(chunk)
        return _Member("sha256:" + digest.hexdigest(), written, None, staged)

    def _translate(self, members: dict[str, _Member], links: dict[str, str]) -> bytes:
        def member(path: str) -> _Member:
            path = posixpath.normpath(path)
            for _ in range(len(links) + 1):  # a link to a link, never a loop
                if path not in links:
                    break
                path = links[path]
            if path not in members:
                raise ExportError(f"the docker save stream lacks {path}")
            return members[path]

        index = members.get("manifest.json")
        if index is None or index.data is None:
            raise ExportError("the docker save stream has no manifest.json")
        images = json.loads(index.data)
        if not isinstance(images, list) or len(images) != 1:
            raise ExportError(f"the docker save stream holds {len(images)} images, not one")
        config = member(images[0]["Config"])
        layers = [member(path) for path in images[0]["Layers"]]
        blobs = self._directory("blobs")
        for item in (config, *layers):
            target = blobs / item.digest.replace(":", "-")
            if item.staged is not None:
                os.replace(item.staged, target)  # the same content under the same name: harmless
                item.staged = None
            elif item.data is not None and not target.exists():
                self._write(target, item.data)
        manifest = {
            "schemaVersion": 2,
            "mediaType": MANIFEST_TYPE,
            "config": {"mediaType": CONFIG_TYPE, "size": config.size, "digest": config.digest},
            "layers": [
                {"mediaType": LAYER_TYPE, "size": layer.size, "digest": layer.digest}
                for layer in layers
            ],
        }
        return json.dumps(manifest, indent=3).encode()

    def _write(self, path: Path, data: bytes) -> None:
        temporary = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
        temporary.write_bytes(data)
        os.replace(temporary, path)


def _config_digest(manifest: bytes) -> str:
    return str(json.loads(manifest)["config"]["digest"])
