"""Where backends come from: the ``pytest_isolated_docker.backends`` entry-point group.

The built-in backends register there exactly as a third party's would (see ``pyproject.toml``):

.. code-block:: toml

    [project.entry-points."pytest_isolated_docker.backends"]
    mybackend = "my_package.module:MyBackend"

Listing names imports nothing; a backend's module is imported when it is first used. This module
imports no other module of the package, so that the settings can offer the names as choices.
"""

from __future__ import annotations

import functools
from importlib.metadata import EntryPoint, entry_points
from typing import Any

GROUP = "pytest_isolated_docker.backends"
#: Shown first, in this order; other backends follow by name.
BUILT_IN = ("dind", "socket", "machine", "guarded")


class BackendNotFound(LookupError):
    """No backend of that name is registered."""


@functools.cache
def _entry_points() -> dict[str, EntryPoint]:
    return {ep.name: ep for ep in entry_points(group=GROUP)}


def backend_names() -> tuple[str, ...]:
    """Names of the registered backends, the built-in ones first."""
    found = _entry_points()
    return tuple(name for name in BUILT_IN if name in found) + tuple(
        sorted(name for name in found if name not in BUILT_IN)
    )


def load(name: str) -> Any:
    """The class registered under ``name`` (its module is imported now)."""
    try:
        entry_point = _entry_points()[name]
    except KeyError:
        raise BackendNotFound(
            f"no backend named {name!r} is registered in the entry-point group {GROUP!r}. "
            f"Registered: {', '.join(backend_names()) or 'none (is the package installed?)'}."
        ) from None
    return entry_point.load()
