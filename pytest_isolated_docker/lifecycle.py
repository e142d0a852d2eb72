"""Starting a daemon: launch through its backend, wait until it answers, preload, or undo it all;
and renewing a used one in place."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from . import lazy
from .backends import Backend, BackendContext, backend_class
from .daemon import DockerDaemon, phase, wait_until_ready
from .errors import StartupError

if TYPE_CHECKING:
    import docker.errors
    import requests.exceptions
else:
    docker = lazy.module("docker")
    requests = lazy.module("requests")


def start_daemon(
    context: BackendContext, backend: type[Backend] | Backend | None = None
) -> DockerDaemon:
    """Start a daemon with ``backend`` (a class, an instance such as a lease on a shared daemon,
    or by default the configured backend) and wait until it answers. Whatever the backend made is
    removed again if any step fails, Ctrl-C included."""
    # Claimed before anything exists: a sweep judges a session with objects and no claimed
    # directory dead.
    _ = context.session_dir
    if backend is None:
        backend = backend_class(context.settings.backend)
    instance = backend(context) if isinstance(backend, type) else backend
    started = time.monotonic()
    try:
        endpoint = instance.start()
        api_version = wait_until_ready(
            endpoint, context.settings.startup_timeout, instance.failure, instance.diagnostics
        )
        daemon = DockerDaemon(instance, endpoint, api_version, time.monotonic() - started)
        _preload(daemon, instance)
    except BaseException:
        instance.stop()
        raise
    return daemon


def _preload(daemon: DockerDaemon, instance: Backend) -> None:
    with phase("preload", "Check the host engine's disk and the daemon log."):
        daemon.preload_seconds = instance.preload(daemon.client)


def renew_daemon(used: DockerDaemon) -> DockerDaemon | None:
    """A fresh daemon in place of ``used`` (see :meth:`Backend.renew`), ready and preloaded as
    from :func:`start_daemon`; ``used`` lets go of its backend. None when its backend cannot
    renew it, ``used`` untouched (stop it). When the renewal fails half-way, the error is raised
    and ``used`` still owns what is left, for its :meth:`~DockerDaemon.stop`."""
    instance = used.backend_instance
    if not isinstance(instance, Backend) or not instance.renewable:
        return None
    old_identity = used.client.info().get("ID")
    started = time.monotonic()
    endpoint = instance.renew()
    if endpoint is None:
        return None
    timeout = instance.settings.startup_timeout
    while True:
        waited = time.monotonic() - started
        api_version = wait_until_ready(
            endpoint, max(timeout - waited, 0.0), instance.failure, instance.diagnostics
        )
        daemon = DockerDaemon(instance, endpoint, api_version, 0.0)
        # Until the old daemon is gone, it answers on the same endpoint.
        try:
            identity = daemon.client.info().get("ID")
        except (docker.errors.DockerException, requests.exceptions.RequestException):
            identity = old_identity  # the old one, going away
        if identity != old_identity:
            break
        daemon.client.close()
        if time.monotonic() - started > timeout:
            raise StartupError(
                "ready",
                f"the daemon at {endpoint.base_url} was not renewed after {timeout:.1f} s "
                "(--docker-startup-timeout)",
                instance.diagnostics(),
            )
        time.sleep(0.01)
    daemon.startup_seconds = time.monotonic() - started
    daemon.renewed = True
    used.hand_over()
    try:
        _preload(daemon, instance)
    except BaseException:
        daemon.stop()
        raise
    return daemon
