"""The guard: the host's Docker engine behind a default-deny policy, one per daemon.

A policy engine in front of a real HTTP library (h11), not string matching:

* :mod:`.canonical` reads request targets as dockerd does (version prefix, percent-encoding,
  ``..``, double and trailing slashes) and forwards exactly what it matched;
* :mod:`.routes` serves a fixed table of endpoints and refuses every other (default deny);
* :mod:`.jsonread` reads request JSON as Go does (key case ignored, repeats), refusing anything
  that could be read two ways, against the schemas of :mod:`.schemas`;
* :mod:`.policy` holds the body rules (privileged, binds, namespaces, devices, ports, ...);
* :mod:`.ownership` tells the session's objects from everybody else's, by label;
* :mod:`.http` speaks HTTP on both sides with h11, streams answers and hijacked connections.

Every refusal is a 403 whose JSON ``message`` names the rule and what would allow the request.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path

from ..proxying import Connector
from .engine import EngineClient
from .http import GuardProxy
from .ownership import Ownership
from .policy import BindRoot, BindRules, Policy
from .routes import Judge
from .rules import Refused


def make_guard(
    socket_path: Path,
    connect: Connector,
    labels: Mapping[str, str],
    owner_key: str,
    bind_roots: Iterable[BindRoot],
    forbidden: Iterable[str],
) -> GuardProxy:
    """A guard (not started) on ``socket_path`` in front of the engine ``connect`` reaches.

    ``labels`` go on everything made through it; ``owner_key`` is the label whose value marks an
    object as its own; binds may come from ``bind_roots`` and never reach ``forbidden`` paths.
    """
    ownership = Ownership(EngineClient(connect), labels, owner_key)
    policy = Policy(ownership, BindRules(bind_roots, forbidden))
    return GuardProxy(socket_path, connect, Judge(policy))


__all__ = ["BindRoot", "GuardProxy", "Refused", "make_guard"]
