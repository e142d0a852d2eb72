"""Backends: where a daemon comes from. One small interface (``base``), found by name through
the entry-point registry; ``dind``, ``socket`` and ``machine`` are registered like any other."""

from __future__ import annotations

from .. import registry
from .base import (
    Backend,
    BackendContext,
    DeadSession,
    ReapIncomplete,
    describe_objects,
    list_objects,
)


def backend_class(name: str) -> type[Backend]:
    """The backend registered as ``name``."""
    cls = registry.load(name)
    if not (isinstance(cls, type) and issubclass(cls, Backend)):
        raise TypeError(
            f"the entry point {name!r} of {registry.GROUP!r} gives {cls!r}, not a Backend class"
        )
    return cls


def all_backends() -> list[type[Backend]]:
    """Every registered backend (for the reaper and doctor)."""
    return [backend_class(name) for name in registry.backend_names()]


__all__ = [
    "Backend",
    "BackendContext",
    "DeadSession",
    "ReapIncomplete",
    "all_backends",
    "backend_class",
    "describe_objects",
    "list_objects",
]
