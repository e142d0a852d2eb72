"""Which Docker engine is "the host engine": found the way the docker CLI finds it.

In order: ``DOCKER_HOST``; the context named by ``DOCKER_CONTEXT``; the current context of the
Docker configuration (``$DOCKER_CONFIG/config.json``, ``currentContext``); rootless Docker's
socket (``$XDG_RUNTIME_DIR/docker.sock``) when the system socket is absent; the system socket.
Docker Desktop, colima, OrbStack and ``dockerd-rootless-setuptool.sh`` all register a context,
so a user whose ``docker ps`` works gets the same engine here. Nothing is contacted to decide.

Every place that talks to the host engine asks :func:`resolve` (through the session's backend
context), and hands :meth:`Engine.environment` to processes it starts (the watchdog).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import lazy

if TYPE_CHECKING:
    import docker
    import docker.context
    import docker.errors
    import requests
else:
    docker = lazy.module("docker")
    requests = lazy.module("requests")

DEFAULT_SOCKET = "/var/run/docker.sock"
TLS_VARIABLES = ("DOCKER_HOST", "DOCKER_TLS_VERIFY", "DOCKER_CERT_PATH")


class EngineNotFound(LookupError):
    """The engine named by the environment or the Docker configuration does not exist."""


@dataclass(frozen=True)
class Engine:
    """How to reach an engine, and how it was found (for reports and doctor)."""

    url: str
    #: Why this engine: "DOCKER_HOST", "context NAME (DOCKER_CONTEXT)", ...
    found_by: str
    cert_path: str = ""
    tls_verify: bool = False

    def environment(self) -> dict[str, str]:
        """``DOCKER_HOST``/``DOCKER_TLS_VERIFY``/``DOCKER_CERT_PATH`` naming this engine, for
        ``docker.from_env(environment=...)`` and for subprocesses."""
        environment = {"DOCKER_HOST": self.url}
        if self.cert_path:
            environment["DOCKER_CERT_PATH"] = self.cert_path
        if self.tls_verify:
            environment["DOCKER_TLS_VERIFY"] = "1"
        return environment

    def describe(self) -> str:
        return f"{self.url} (found by {self.found_by})"


def _from_context(name: str, why: str) -> Engine:
    try:
        context = docker.context.ContextAPI.get_context(name)
    except docker.errors.ContextException as exc:
        raise EngineNotFound(f"the Docker context {name!r} ({why}) cannot be read: {exc}") from None
    if context is None:
        raise EngineNotFound(
            f"the Docker context {name!r} ({why}) does not exist: `docker context ls` lists the "
            "contexts there are"
        )
    host = context.Host or f"unix://{DEFAULT_SOCKET}"
    tls = (getattr(context, "tls_cfg", None) or {}).get("docker")
    cert_path = ""
    verify = False
    if tls is not None and getattr(context, "tls_path", None):
        cert_path = str(Path(context.tls_path) / "docker")
        verify = bool(tls.verify)
    return Engine(host, f"context {name} ({why})", cert_path, verify)


def _current_context_name() -> str:
    """The current context of the Docker configuration, read as docker-py's
    ``docker.context.config.get_current_context_name`` reads it (the first of its configuration
    files that exists; "default" when it names none or cannot be read), without importing
    docker-py: every pytest process resolves the engine, and most never need a client."""
    candidates = [
        os.path.join(os.environ["DOCKER_CONFIG"], "config.json")
        if os.environ.get("DOCKER_CONFIG")
        else "",
        os.path.join(os.path.expanduser("~"), ".docker", "config.json"),
        os.path.join(os.path.expanduser("~"), ".dockercfg"),
    ]
    path = next((c for c in candidates if c and os.path.exists(c)), None)
    if path is None:
        return "default"
    try:
        with open(path) as file:
            return str(json.load(file).get("currentContext", "default") or "default")
    except Exception:
        return "default"


def resolve(environ: Mapping[str, str] | None = None) -> Engine:
    """The engine the docker CLI would use with ``environ`` (default: this process's).

    Contexts are read from the Docker configuration this process sees (``DOCKER_CONFIG``).
    """
    env = os.environ if environ is None else environ
    host = env.get("DOCKER_HOST", "")
    if host:
        return Engine(
            host,
            "DOCKER_HOST",
            env.get("DOCKER_CERT_PATH", "")
            or (os.path.expanduser("~/.docker") if env.get("DOCKER_TLS_VERIFY") else ""),
            bool(env.get("DOCKER_TLS_VERIFY")),
        )
    name = env.get("DOCKER_CONTEXT", "")
    if name and name != "default":
        return _from_context(name, "DOCKER_CONTEXT")
    current = _current_context_name()
    if current != "default":
        return _from_context(current, "the current context of the Docker configuration")
    rootless = Path(env.get("XDG_RUNTIME_DIR", "") or "/nonexistent") / "docker.sock"
    if not os.path.exists(DEFAULT_SOCKET) and rootless.exists():
        return Engine(f"unix://{rootless}", "rootless Docker's socket ($XDG_RUNTIME_DIR)")
    return Engine(f"unix://{DEFAULT_SOCKET}", "the default socket")


def named(spec: str) -> Engine:
    """The engine of a ``--docker-engine`` value: a URL as it is, else a Docker context."""
    if "://" in spec:
        return Engine(spec, "--docker-engine")
    return _from_context(spec, "--docker-engine")


def local_engines(environ: Mapping[str, str] | None = None) -> list[Engine]:
    """The engines whose sockets are on this machine (the system's, rootless Docker's)."""
    env = os.environ if environ is None else environ
    found = []
    if os.path.exists(DEFAULT_SOCKET):
        found.append(Engine(f"unix://{DEFAULT_SOCKET}", "the default socket"))
    rootless = Path(env.get("XDG_RUNTIME_DIR", "") or "/nonexistent") / "docker.sock"
    if rootless.exists():
        found.append(Engine(f"unix://{rootless}", "rootless Docker's socket ($XDG_RUNTIME_DIR)"))
    return found


def from_environment(environment: Mapping[str, str], timeout: float = 60.0) -> docker.DockerClient:
    """A docker-py client of the engine ``environment`` names (``DOCKER_HOST`` and its TLS
    variables). An ``ssh://`` engine is reached through the ``ssh`` command, as the docker CLI
    reaches it: with the user's SSH configuration, agent and known hosts."""
    ssh = environment.get("DOCKER_HOST", "").startswith("ssh://")
    settings: dict[str, Any] = {
        "timeout": int(timeout),
        "environment": dict(environment),
        "use_ssh_client": ssh,
    }
    # requests lets REQUESTS_CA_BUNDLE / CURL_CA_BUNDLE of os.environ replace the CA of
    # DOCKER_CERT_PATH, which breaks a TLS engine; docker-py negotiates the API version before
    # its session can be told, so that is done on a probe client deaf to them.
    probe = docker.from_env(version="1.24", **settings)
    probe.api.trust_env = False
    try:
        version = probe.api.version(api_version=False)["ApiVersion"]
    except requests.exceptions.RequestException as exc:
        raise docker.errors.DockerException(
            f"Error while fetching server API version: {exc}"
        ) from exc
    finally:
        probe.close()
    client = docker.from_env(version=version, **settings)
    client.api.trust_env = False
    return client


def client(engine: Engine, timeout: float = 60.0) -> docker.DockerClient:
    """A docker-py client of ``engine`` (contacted only for its API version)."""
    return from_environment(engine.environment(), timeout)


__all__ = [
    "DEFAULT_SOCKET",
    "Engine",
    "EngineNotFound",
    "client",
    "from_environment",
    "local_engines",
    "named",
    "resolve",
]
