"""Starting a daemon: launch through its backend, wait until it answers, preload, or undo it all."""

from __future__ import annotations

import time

from .backends import Backend, BackendContext, backend_class
from .daemon import DockerDaemon, phase, wait_until_ready


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
        with phase("preload", "Check the host engine's disk and the daemon log."):
            daemon.preload_seconds = instance.preload(daemon.client)
    except BaseException:
        instance.stop()
        raise
    return daemon
