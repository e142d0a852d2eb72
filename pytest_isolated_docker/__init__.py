"""pytest-isolated-docker: an isolated, disposable Docker daemon per test session or xdist worker.

The engine (settings, backends, daemon, TLS, images) imports without pytest; ``plugin`` holds the
pytest hooks and fixtures.
"""

from __future__ import annotations

from .daemon import DockerDaemon, Endpoint
from .errors import DaemonUnavailable, IsolatedDockerError, StartupError, UnsafeBackendRefused

__version__ = "0.1.0"

__all__ = [
    "DaemonUnavailable",
    "DockerDaemon",
    "Endpoint",
    "IsolatedDockerError",
    "StartupError",
    "UnsafeBackendRefused",
    "__version__",
]
