"""Ownership by label: the guard's answer to "may this session touch that object?".

An object is the daemon's own when it carries the daemon's label (``pytest-isolated-docker.daemon``
= this guard's instance), which the guard puts on everything created through it. Every route naming
a container, exec, network, volume or image, and every reference embedded in a body, is resolved
here through the engine (as the engine would resolve it: id, name, id prefix) and replaced by the
object's full id, so that the object the guard judged is the one the engine acts on.

Full container, network and exec ids once found to be own are cached: ids are never reused and
labels never change.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Mapping
from typing import Any
from urllib.parse import quote

from .engine import EngineClient
from .rules import NotFound, Refused

#: Networks every container may use, though nobody's own: their inspection shows own containers
#: only.
SHARED_NETWORKS = frozenset({"bridge", "none"})


def _path(kind: str, reference: str, suffix: str = "") -> str:
    return f"/{kind}/{quote(reference, safe='')}{suffix}"


class Ownership:
    """Looks objects up on the engine and tells the daemon's own from the others."""

    def __init__(self, engine: EngineClient, labels: Mapping[str, str], key: str) -> None:
        self.engine = engine
        self.labels = dict(labels)
        self.key = key
        self.value = self.labels[key]
        self._own: dict[str, set[str]] = {}
        self._lock = threading.Lock()

    # ---- labels and filters ---------------------------------------------------------------

    @property
    def label_filter(self) -> str:
        """The ``label`` filter selecting own objects."""
        return f"{self.key}={self.value}"

    def is_own(self, labels: Mapping[str, str] | None) -> bool:
        return (labels or {}).get(self.key) == self.value

    def labelled(self, labels: Mapping[str, str] | None) -> dict[str, str]:
        """``labels`` with the daemon's own set over them (never the caller's values)."""
        return {**(labels or {}), **self.labels}

    def restrict_filters(self, raw: str | None) -> str:
        """A ``filters`` query value that also selects own objects only (dockerd ANDs the
        ``label`` values)."""
        try:
            filters = json.loads(raw) if raw else {}
        except ValueError:
            raise Refused("ambiguous-query", f"the filters are not JSON: {raw!r}") from None
        if not isinstance(filters, dict):
            raise Refused("ambiguous-query", f"the filters are not a JSON object: {raw!r}")
        restricted: dict[str, dict[str, bool]] = {}
        for name, values in filters.items():
            if isinstance(values, dict):
                restricted[name] = {str(v): True for v, on in values.items() if on}
            elif isinstance(values, list):
                restricted[name] = {str(v): True for v in values}
            else:
                raise Refused("ambiguous-query", f"the filter {name!r} is neither list nor map")
        restricted.setdefault("label", {})[self.label_filter] = True
        return json.dumps(restricted)

    def _remember(self, kind: str, object_id: str) -> None:
        with self._lock:
            self._own.setdefault(kind, set()).add(object_id)

    def remember(self, kind: str, object_id: str) -> None:
        """Note the id the engine just gave to a ``kind`` of object made through the guard."""
        self._remember(kind, object_id)

    def _known(self, kind: str, reference: str) -> bool:
        with self._lock:
            return reference in self._own.get(kind, ())

    # ---- lookups ----------------------------------------------------------------------------

    def _inspect(self, kind: str, noun: str, reference: str, suffix: str = "/json") -> Any:
        status, info = self.engine.get(_path(kind, reference, suffix))
        if status == 404:
            raise NotFound(noun, reference)
        if status != 200 or not isinstance(info, dict):
            raise Refused("ownership", f"the engine did not describe the {noun} {reference!r}")
        return info

    def container_info(self, reference: str) -> dict[str, Any]:
        """The engine's inspection of an own container (refused for any other)."""
        info: dict[str, Any] = self._inspect("containers", "container", reference)
        if not self.is_own((info.get("Config") or {}).get("Labels")):
            raise Refused(
                "foreign-container",
                f"the container {reference!r} was not made through this guard (another session, "
                "another worker, or the host)",
            )
        self._remember("containers", info["Id"])
        return info

    def container(self, reference: str) -> str:
        """The full id of the own container ``reference`` names."""
        if self._known("containers", reference):
            return reference
        return str(self.container_info(reference)["Id"])

    def own_container_ids(self) -> set[str]:
        status, found = self.engine.get(
            "/containers/json?all=1&filters=" + quote(self.restrict_filters(None))
        )
        return {c["Id"] for c in found or []} if status == 200 else set()

    def exec(self, reference: str) -> str:
        """The id of an exec of an own container."""
        if self._known("exec", reference):
            return reference
        info = self._inspect("exec", "exec instance", reference)
        try:
            self.container(str(info.get("ContainerID", "")))
        except (Refused, NotFound):
            raise Refused(
                "foreign-exec", f"the exec {reference!r} runs in a container not made here"
            ) from None
        self._remember("exec", str(info["ID"]))
        return str(info["ID"])

    def network_info(self, reference: str, shared: bool = True) -> dict[str, Any]:
        """The inspection of an own network or, with ``shared``, of bridge/none."""
        info: dict[str, Any] = self._inspect("networks", "network", reference, "")
        if self.is_own(info.get("Labels")):
            return info
        if shared and info.get("Name") in SHARED_NETWORKS and info.get("Scope") == "local":
            return info
        if info.get("Name") == "host":
            raise Refused("host-namespace", "the host's network namespace is not given out")
        raise Refused(
            "foreign-network", f"the network {reference!r} was not made through this guard"
        )

    def network(self, reference: str, shared: bool = True) -> str:
        """The full id of an own network (or, with ``shared``, of bridge/none)."""
        if self._known("networks", reference):
            return reference
        info = self.network_info(reference, shared)
        if self.is_own(info.get("Labels")):
            self._remember("networks", str(info["Id"]))
        return str(info["Id"])

    def volume_exists(self, name: str) -> bool:
        """True for an own volume, False for none of that name; refused for another's."""
        try:
            info = self._inspect("volumes", "volume", name, "")
        except NotFound:
            return False
        if not self.is_own(info.get("Labels")):
            raise Refused("foreign-volume", f"the volume {name!r} was not made through this guard")
        return True

    def ensure_volume(self, name: str, labels: Mapping[str, str] | None = None) -> None:
        """Make the named volume a container asks for, labelled, unless it exists (own)."""
        if self.volume_exists(name):
            return
        status, answer = self.engine.request(
            "POST", "/volumes/create", {"Name": name, "Labels": self.labelled(labels)}
        )
        if status >= 300:
            message = (answer or {}).get("message", status) if isinstance(answer, dict) else status
            raise Refused("volume-create", f"the volume {name!r} could not be made: {message}")

    def image(self, reference: str) -> tuple[bool, bool]:
        """``(exists, own)`` for an image reference."""
        status, info = self.engine.get(_path("images", reference, "/json"))
        if status == 404:
            return False, False
        if status != 200 or not isinstance(info, dict):
            raise Refused("ownership", f"the engine did not describe the image {reference!r}")
        return True, self.is_own((info.get("Config") or {}).get("Labels"))

    def own_image(self, reference: str, action: str) -> None:
        exists, own = self.image(reference)
        if not exists:
            raise NotFound("image", reference)
        if not own:
            raise Refused(
                "image-read-only",
                f"the image {reference!r} is the host's: it can be run and inspected, not {action}",
            )

    def free_image_name(self, reference: str) -> None:
        """Refuse a tag that would move a name the host's images use."""
        exists, own = self.image(reference)
        if exists and not own:
            raise Refused(
                "image-read-only",
                f"the tag {reference!r} names a host image: re-tagging it would change the host's "
                "images",
            )


__all__ = ["SHARED_NETWORKS", "Ownership"]
