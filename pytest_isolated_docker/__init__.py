"""pytest-isolated-docker: an isolated, disposable Docker daemon per test session or xdist worker.

The engine (settings, backends, daemon, TLS, images) imports without pytest; ``plugin`` holds the
pytest hooks and fixtures.

The public names are imported when first used (PEP 562): importing the package, or loading the
plugin, imports neither docker-py nor cryptography (see :mod:`pytest_isolated_docker.lazy`).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .daemon import DockerDaemon, Endpoint
    from .errors import DaemonUnavailable, IsolatedDockerError, StartupError, UnsafeBackendRefused

__version__ = "0.1.0"

#: Each public name and the module that defines it.
_PUBLIC = {
    "DaemonUnavailable": ".errors",
    "DockerDaemon": ".daemon",
    "Endpoint": ".daemon",
    "IsolatedDockerError": ".errors",
    "StartupError": ".errors",
    "UnsafeBackendRefused": ".errors",
}


def __getattr__(name: str) -> Any:
    if name not in _PUBLIC:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(_PUBLIC[name], __name__), name)
    globals()[name] = value  # the next lookup does not come here
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_PUBLIC})


__all__ = [
    "DaemonUnavailable",
    "DockerDaemon",
    "Endpoint",
    "IsolatedDockerError",
    "StartupError",
    "UnsafeBackendRefused",
    "__version__",
]
