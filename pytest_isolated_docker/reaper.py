"""Crash-proof cleanup: what a dead process or session left, engine heartbeats, and the sweep.

The watchdog of each pytest process (:mod:`.watchdog`) calls :func:`reap_process` when the process
dies in any way (SIGKILL, out-of-memory, a CI timeout): it removes everything labelled with that
process's pid and, once no process of the session is left, the session's remains. Nothing runs in
a container and no host socket is handed to anything.

While its process lives, the watchdog renews a *heartbeat* on the host engine: a labelled volume
made anew every few seconds. It is how a run that cannot see this process (another container or
machine on the same engine) proves this session dead: by a heartbeat the engine says is old.

The sweep removes a session only when its death is proven (:func:`proven_dead`): by its session
directory, which nobody holds any more, when it lives in this runtime directory; by an expired
heartbeat otherwise. "This process cannot see its pid" is never proof. What a dead session left is
removed by each registered backend (:meth:`Backend.reap`) and then by its labels; the reaper knows
no backend by name.
"""

from __future__ import annotations

import contextlib
import datetime
import re
import shutil
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from . import engines, lazy
from .backends import DeadSession, ReapIncomplete, all_backends, describe_objects, list_objects
from .coordination import dead_session_dirs, session_alive, sessions_root
from .daemon import remove_objects
from .labels import HOST, PID, ROLE, SESSION, Identity, host_id

if TYPE_CHECKING:
    import docker
    import docker.errors
else:
    docker = lazy.module("docker")

HEARTBEAT_ROLE = "heartbeat"
HEARTBEAT_INTERVAL = 5.0
#: A heartbeat older than this (by the engine's clock) proves its session dead.
HEARTBEAT_EXPIRY = 30.0
#: How long a watchdog whose process died waits for the rest of the session to end.
SESSION_END_WAIT = 30.0


# ---- heartbeats -----------------------------------------------------------------------------

_TIMESTAMP = re.compile(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d+))?(Z|[+-]\d\d:\d\d)$")


def parse_engine_time(text: str) -> datetime.datetime:
    """An RFC 3339 time as the engine writes it (nanoseconds, ``Z`` or an offset)."""
    match = _TIMESTAMP.match(text.strip())
    if match is None:
        raise ValueError(f"not an RFC 3339 time: {text!r}")
    seconds, fraction, zone = match.groups()
    micro = (fraction or "0")[:6].ljust(6, "0")
    zone = "+00:00" if zone == "Z" else zone
    return datetime.datetime.fromisoformat(f"{seconds}.{micro}{zone}")


def beat(client: docker.DockerClient, identity: Identity) -> None:
    """Renew ``identity``'s heartbeat: a new heartbeat volume, then the older ones removed."""
    labels = identity.labels(HEARTBEAT_ROLE)
    newest = client.volumes.create(
        name=identity.name(f"heartbeat-{time.time_ns()}"), labels=labels
    ).name
    mine = [f"{SESSION}={identity.session_id}", f"{PID}={identity.pid}", f"{ROLE}={HEARTBEAT_ROLE}"]
    for volume in client.api.volumes(filters={"label": mine}).get("Volumes") or []:
        if volume["Name"] != newest:
            with contextlib.suppress(docker.errors.NotFound, docker.errors.APIError):
                client.api.remove_volume(volume["Name"], force=True)


def beat_quietly(client: docker.DockerClient, identity: Identity) -> None:
    """:func:`beat`, an engine that does not answer now ignored (asked again at the next beat)."""
    with contextlib.suppress(docker.errors.DockerException, OSError):
        beat(client, identity)


def heartbeat_age(client: docker.DockerClient, session_id: str) -> float | None:
    """Seconds since the session's newest heartbeat, by the engine's clock; None without one."""
    filters = {"label": [f"{SESSION}={session_id}", f"{ROLE}={HEARTBEAT_ROLE}"]}
    volumes = client.api.volumes(filters=filters).get("Volumes") or []
    if not volumes:
        return None
    now = parse_engine_time(client.info()["SystemTime"])
    newest = max(parse_engine_time(v["CreatedAt"]) for v in volumes)
    return (now - newest).total_seconds()


# ---- deciding death -------------------------------------------------------------------------


@dataclass(frozen=True)
class Evidence:
    """What a sweep knows of a session that left something behind."""

    #: Its objects' host label is this runtime directory's: its holders can be judged here.
    local: bool
    #: Some process holds its session directory (meaningful only when local).
    holders_alive: bool
    #: Seconds since its newest heartbeat by the engine's clock; None when it has none.
    heartbeat_age: float | None


def proven_dead(evidence: Evidence) -> bool:
    """Dead only on proof: nobody holds its local directory, or its heartbeat expired."""
    if evidence.local:
        return not evidence.holders_alive
    return evidence.heartbeat_age is not None and evidence.heartbeat_age > HEARTBEAT_EXPIRY


# ---- removing a dead session ----------------------------------------------------------------


def reap(dead: DeadSession, dry_run: bool = False) -> list[str]:
    """Remove what ``dead`` left: each backend's part, then anything still carrying its label,
    then its directory (kept, and said so, when a backend could not remove all it made)."""
    removed: list[str] = []
    kept: list[str] = []
    for backend in all_backends():
        try:
            removed += backend.reap(dead, dry_run)
        except ReapIncomplete as exc:
            kept.append(str(exc))
        except (docker.errors.DockerException, OSError) as exc:
            kept.append(f"the {backend.name} backend's cleanup failed: {exc}")
    if dead.engine is not None:
        filters = {"label": [f"{SESSION}={dead.session_id}"]}
        with contextlib.suppress(docker.errors.DockerException):
            found = list_objects(dead.engine, filters)
            if found and not dry_run:
                remove_objects(dead.engine, filters)
            # Heartbeats are the plugin's bookkeeping, not something the session left.
            removed += [
                what
                for what, labels in found
                if what not in removed and labels.get(ROLE) != HEARTBEAT_ROLE
            ]
    directory = dead.directory
    if directory is not None and directory.exists():
        if kept:
            removed.append(f"kept session directory {directory}: " + "; ".join(kept))
        else:
            removed.append(f"session directory {directory}")
            if not dry_run:
                shutil.rmtree(directory, ignore_errors=True)
    return removed


def _engine_sessions(client: docker.DockerClient) -> dict[str, set[str]]:
    """Each session that has labelled objects on the engine, with their host labels."""
    found: dict[str, set[str]] = {}
    for _, labels in list_objects(client, {"label": [SESSION]}):
        found.setdefault(labels.get(SESSION, ""), set()).add(labels.get(HOST, ""))
    found.pop("", None)
    return found


def sweep(client: docker.DockerClient | None, dry_run: bool = False) -> list[str]:
    """Remove what sessions proven dead left, on the host engine and on disk; return what."""
    removed: list[str] = []
    dead_dirs = {directory.name: directory for directory in dead_session_dirs()}
    if client is not None:
        for session, hosts in sorted(_engine_sessions(client).items()):
            directory = sessions_root() / session
            local = hosts == {host_id()}
            # Each kind of proof is gathered only where it counts (the engine is asked about
            # heartbeats only for sessions of other runtime directories).
            evidence = Evidence(
                local=local,
                holders_alive=local and directory.is_dir() and session_alive(directory),
                heartbeat_age=None if local else heartbeat_age(client, session),
            )
            if proven_dead(evidence):
                dead_dirs.pop(session, None)
                path = directory if directory.is_dir() else None
                removed += reap(DeadSession(session, path, client), dry_run)
    for session, directory in sorted(dead_dirs.items()):
        removed += reap(DeadSession(session, directory, client), dry_run)
    for backend in all_backends():
        removed += backend.sweep_host(dry_run)
    return removed


def unproven_sessions(client: docker.DockerClient) -> list[str]:
    """Sessions with objects on the engine whose death cannot be proven from here (for prune)."""
    unknown = []
    for session, hosts in sorted(_engine_sessions(client).items()):
        if hosts != {host_id()} and heartbeat_age(client, session) is None:
            unknown.append(session)
    return unknown


# ---- what a process's end leaves ------------------------------------------------------------


def engine_client(environment: Mapping[str, str] | None) -> docker.DockerClient | None:
    """A client of the host engine if it answers now, else None."""
    try:
        if environment is None:
            environment = engines.resolve().environment()
        client = engines.from_environment(environment, timeout=30)
    except (docker.errors.DockerException, engines.EngineNotFound):
        return None
    try:
        client.ping()
    except docker.errors.DockerException:
        client.close()
        return None
    return client


def remove_labelled(client: docker.DockerClient | None, labels: list[str]) -> list[str]:
    """Remove the containers, networks and volumes on ``client``'s engine that carry all of
    ``labels``; what was found. An engine that does not answer (or None) removes nothing."""
    if client is None:
        return []
    filters = {"label": labels}
    try:
        found = describe_objects(client, filters)
        if found:
            remove_objects(client, filters)
    except docker.errors.DockerException:
        return []
    return found


def end_session(
    session_id: str, directory: Path, environments: Sequence[Mapping[str, str]]
) -> list[str]:
    """What the session's owner does last: remove whatever the session's processes left on each
    engine (they have all ended) and its directory. ``environments`` name the engines."""
    removed: list[str] = []
    for environment in environments:
        client = engine_client(environment)
        try:
            dead = DeadSession(session_id, directory if directory.exists() else None, client)
            removed += reap(dead)
        finally:
            if client is not None:
                client.close()
    return removed


def reap_process(session_id: str, pid: int, environments: Sequence[Mapping[str, str]]) -> list[str]:
    """What the watchdog does when process ``pid`` is gone: remove what it made on each engine,
    then, once no process of the session is left (or after a bounded wait), what the session
    left."""
    clients = [client for env in environments if (client := engine_client(env)) is not None]
    try:
        removed: list[str] = []
        for client in clients:
            removed += remove_labelled(client, [f"{SESSION}={session_id}", f"{PID}={pid}"])
        directory = sessions_root() / session_id
        deadline = time.monotonic() + SESSION_END_WAIT
        while directory.is_dir() and session_alive(directory):
            if time.monotonic() > deadline:
                return removed  # the session goes on; its owner (or a later sweep) finishes it
            time.sleep(0.2)
        for client in clients or [None]:
            path = directory if directory.is_dir() else None
            removed += reap(DeadSession(session_id, path, client))
        return removed
    finally:
        for client in clients:
            client.close()


__all__ = [
    "HEARTBEAT_EXPIRY",
    "Evidence",
    "beat",
    "beat_quietly",
    "end_session",
    "engine_client",
    "proven_dead",
    "reap",
    "remove_labelled",
    "sweep",
]
