"""The host mirror's store: a ``docker save`` stream built here becomes blobs and a manifest."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from pathlib import Path

import pytest

from pytest_isolated_docker.mirrorstore import (
    CONFIG_TYPE,
    LAYER_TYPE,
    MANIFEST_TYPE,
    ExportError,
    Store,
)

BIG = 3 << 20  # larger than what the store keeps in memory: streamed to a file


def digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def layer(name: str, size: int) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        info = tarfile.TarInfo(name)
        info.size = size
        tar.addfile(info, io.BytesIO(bytes(size)))
    return buffer.getvalue()


def saved_image(layers: list[bytes], symlink_last: bool = False) -> tuple[bytes, bytes]:
    """A ``docker save`` stream (legacy layout) of one image, and its config."""
    rootfs = {"type": "layers", "diff_ids": [digest(data) for data in layers]}
    config = json.dumps({"architecture": "amd64", "os": "linux", "rootfs": rootfs}).encode()
    config_name = digest(config)[7:] + ".json"
    members: list[tuple[str, bytes | str]] = [(config_name, config)]
    paths = []
    for number, data in enumerate(layers):
        path = f"{number:064x}/layer.tar"
        if symlink_last and number == len(layers) - 1:
            members.append((path, f"../{0:064x}/layer.tar"))  # docker save's repeated layer
        else:
            members.append((path, data))
        members.append((f"{number:064x}/json", b"{}"))
        paths.append(path)
    index = [{"Config": config_name, "RepoTags": ["x:1"], "Layers": paths}]
    members.append(("manifest.json", json.dumps(index).encode()))
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for name, content in members:
            info = tarfile.TarInfo(name)
            if isinstance(content, str):
                info.type, info.linkname = tarfile.SYMTYPE, content
                tar.addfile(info)
            else:
                info.size = len(content)
                tar.addfile(info, io.BytesIO(content))
    return buffer.getvalue(), config


def chunks(data: bytes, size: int = 100_000) -> list[bytes]:
    return [data[i : i + size] for i in range(0, len(data), size)]


def test_a_saved_image_becomes_a_manifest_with_its_config_and_uncompressed_layers(
    tmp_path: Path,
) -> None:
    layers = [layer("small", 10), layer("big", BIG)]
    stream, config = saved_image(layers)
    store = Store(tmp_path)
    manifest_digest, raw = store.add_image(digest(config), lambda: chunks(stream), "x:1")
    assert manifest_digest == digest(raw)
    manifest = json.loads(raw)
    assert manifest["schemaVersion"] == 2
    assert manifest["mediaType"] == MANIFEST_TYPE
    assert manifest["config"] == {
        "mediaType": CONFIG_TYPE,
        "size": len(config),
        "digest": digest(config),
    }
    assert manifest["layers"] == [
        {"mediaType": LAYER_TYPE, "size": len(data), "digest": digest(data)} for data in layers
    ]
    for data in (config, *layers):
        path = store.blob(digest(data))
        assert path is not None
        assert path.read_bytes() == data
    assert store.manifest(manifest_digest) == raw
    assert store.image_manifest(digest(config)) == (manifest_digest, raw)
    assert not list((tmp_path / "staging").iterdir()), "nothing staged is left"


def test_an_image_is_exported_once(tmp_path: Path) -> None:
    stream, config = saved_image([layer("a", 100)])
    calls = []

    def export() -> list[bytes]:
        calls.append(1)
        return chunks(stream)

    first = Store(tmp_path).add_image(digest(config), export)
    assert Store(tmp_path).add_image(digest(config), export) == first
    assert len(calls) == 1
    assert [entry["image"] for entry in Store(tmp_path).exports()] == [digest(config)]


def test_a_repeated_layer_saved_as_a_symlink_is_the_same_blob(tmp_path: Path) -> None:
    same = layer("a", BIG)
    stream, config = saved_image([same, same], symlink_last=True)
    _, data = Store(tmp_path).add_image(digest(config), lambda: chunks(stream))
    assert [item["digest"] for item in json.loads(data)["layers"]] == [digest(same)] * 2


def test_a_stream_of_another_image_is_refused_and_stores_no_manifest(tmp_path: Path) -> None:
    stream, _ = saved_image([layer("a", 100)])
    other = digest(b"another config")
    store = Store(tmp_path)
    with pytest.raises(ExportError, match="another image's config"):
        store.add_image(other, lambda: chunks(stream))
    assert store.image_manifest(other) is None


@pytest.mark.parametrize("reference", ["latest", "sha256:xyz", "../../etc/passwd"])
def test_lookups_take_digests_only(tmp_path: Path, reference: str) -> None:
    store = Store(tmp_path)
    assert store.blob(reference) is None
    assert store.manifest(reference) is None
    assert store.image_manifest(reference) is None


def test_a_stream_without_manifest_json_is_an_error(tmp_path: Path) -> None:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w"):
        pass
    with pytest.raises(ExportError, match=r"manifest\.json"):
        Store(tmp_path).add_image(digest(b"c"), lambda: [buffer.getvalue()])
