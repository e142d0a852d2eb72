"""Canonical requests: the path and query the guard judges are exactly the ones it forwards.

dockerd routes on the *decoded* path (``%2F`` is a ``/`` to it), cleans ``.``, ``..`` and double
slashes, and accepts an optional ``/vX.Y`` API version prefix. The guard does the same before
matching a route, refuses what cannot be read one way only (bad escapes, control characters,
``;`` in a query, absolute-form targets), and sends the engine the canonical form it matched, so
that no later reading of the raw bytes can differ from the guard's.
"""

from __future__ import annotations

import posixpath
import re
from dataclasses import dataclass, field
from urllib.parse import quote, unquote, unquote_plus, urlencode

from .rules import Refused

#: The oldest API version passed on. Older ones carry legacy semantics a guard should not have to
#: know (a host configuration in the body of ``start``, top-level host settings in ``create``).
MIN_API_VERSION = (1, 24)
_VERSION = re.compile(r"^/v([0-9]+)\.([0-9]+)(?=/|$)")
_BAD_ESCAPE = re.compile(r"%(?![0-9A-Fa-f]{2})")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
# Characters left as they are when the canonical path is sent on (image names hold ':' and '@').
_PATH_SAFE = "/:@!$&'()*+,;=-._~"


@dataclass
class Target:
    """A request target read the engine's way: API version, clean decoded path, query pairs."""

    version: str | None
    path: str
    query: list[tuple[str, str]] = field(default_factory=list)

    def upstream(self) -> str:
        """The target sent to the engine: canonical path, query re-encoded from the pairs."""
        prefix = f"/v{self.version}" if self.version else ""
        target = prefix + quote(self.path, safe=_PATH_SAFE)
        if self.query:
            target += "?" + urlencode(self.query)
        return target

    def values(self, name: str) -> list[str]:
        """Every value of query parameter ``name``."""
        return [value for key, value in self.query if key == name]

    def value(self, name: str) -> str | None:
        """The value of a query parameter that must appear at most once (None when absent).

        dockerd reads the first of repeated parameters; a guard reading another would disagree,
        so a repeat is refused.
        """
        found = self.values(name)
        if len(found) > 1:
            raise Refused("ambiguous-query", f"the query parameter {name!r} is repeated")
        return found[0] if found else None

    def replace(self, name: str, value: str | None) -> None:
        """Set (or, with None, drop) query parameter ``name``."""
        self.query = [(key, old) for key, old in self.query if key != name]
        if value is not None:
            self.query.append((name, value))


def _decode(text: str, plus: bool, what: str) -> str:
    if _BAD_ESCAPE.search(text):
        raise Refused("malformed-request", f"{what} has an invalid percent-escape: {text!r}")
    try:
        decoded = (unquote_plus if plus else unquote)(text, errors="strict")
    except UnicodeDecodeError:
        raise Refused("malformed-request", f"{what} is not UTF-8 once decoded: {text!r}") from None
    if _CONTROL.search(decoded):
        raise Refused("malformed-request", f"{what} holds control characters: {decoded!r}")
    return decoded


def canonical_path(raw: str) -> str:
    """Decode, collapse slashes, resolve ``.`` and ``..`` (never above ``/``), drop a trailing
    slash."""
    decoded = _decode(raw, plus=False, what="the path")
    if not decoded.startswith("/"):
        raise Refused("malformed-request", f"the path does not start with '/': {raw!r}")
    cleaned = posixpath.normpath(re.sub(r"/+", "/", decoded))
    return "/" + cleaned.lstrip("/")


def parse_query(raw: str) -> list[tuple[str, str]]:
    """Query pairs as Go's ``url.ParseQuery`` reads them; whatever it would read otherwise (a
    ``;`` separator, a bad escape) is refused."""
    if ";" in raw:
        raise Refused("malformed-request", "a ';' in the query is read differently by dockerd")
    pairs = []
    for part in raw.split("&"):
        if not part:
            continue
        key, _, value = part.partition("=")
        pairs.append(
            (_decode(key, plus=True, what="a query key"), _decode(value, True, "a query value"))
        )
    return pairs


def parse_target(raw: bytes) -> Target:
    """Read a request target (origin form only) into its canonical :class:`Target`."""
    try:
        text = raw.decode("ascii")
    except UnicodeDecodeError:
        raise Refused("malformed-request", "the request target is not ASCII") from None
    if not text.startswith("/") or "#" in text:
        raise Refused("malformed-request", f"only origin-form targets are served: {text!r}")
    raw_path, _, raw_query = text.partition("?")
    path = canonical_path(raw_path)
    version = None
    match = _VERSION.match(path)
    if match:
        major, minor = int(match.group(1)), int(match.group(2))
        if (major, minor) < MIN_API_VERSION:
            raise Refused(
                "old-api-version",
                f"API version {major}.{minor} is older than "
                f"{MIN_API_VERSION[0]}.{MIN_API_VERSION[1]}, whose legacy request forms the guard "
                "does not read",
            )
        version = f"{major}.{minor}"
        path = path[match.end() :] or "/"
    elif re.match(r"^/v[0-9.]*(/|$)", path):
        raise Refused("malformed-request", f"unreadable API version in {raw_path!r}")
    return Target(version, path, parse_query(raw_query))


__all__ = ["MIN_API_VERSION", "Target", "canonical_path", "parse_query", "parse_target"]
