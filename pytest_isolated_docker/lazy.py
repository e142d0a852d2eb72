"""Third-party modules imported when first used, not when the package is imported.

docker-py (with requests, urllib3 and paramiko) and cryptography take about 0.2 s to import. Every
pytest process loads the plugin, and most never need them: the pytest-xdist controller, a run
without Docker tests, ``--collect-only``. A module of the package that uses one of them names it
as::

    if TYPE_CHECKING:
        import docker
        import docker.errors
    else:
        docker = lazy.module("docker")

and uses it as before (``docker.errors.NotFound``, ``docker.DockerClient``): the type checker sees
the real module, and the module is imported at the first attribute read, in whatever function
needs it first. ``tests/fast/test_lazy_imports.py`` checks that loading the plugin, and a whole run
without Docker tests, imports none of them.

This module imports no other module of the package.
"""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import Any


class LazyModule:
    """Stands for the module ``name``: imports it at the first attribute access, then passes every
    attribute read, write and deletion on to it (so ``monkeypatch.setattr`` through it patches
    the module itself, as it did when the name was bound to the module)."""

    __slots__ = ("_lazy_name",)

    def __init__(self, name: str) -> None:
        object.__setattr__(self, "_lazy_name", name)

    def _lazy_load(self) -> ModuleType:
        # import_module waits for a module another thread is still importing, and costs a
        # dictionary lookup once the module is imported.
        return importlib.import_module(self._lazy_name)

    def __getattr__(self, attribute: str) -> Any:
        module = self._lazy_load()
        try:
            return getattr(module, attribute)
        except AttributeError:
            pass
        # A submodule its package does not import itself (``import docker.errors`` imported it).
        submodule = f"{self._lazy_name}.{attribute}"
        try:
            return importlib.import_module(submodule)
        except ModuleNotFoundError as exc:
            if exc.name != submodule:
                raise
        raise AttributeError(f"module {self._lazy_name!r} has no attribute {attribute!r}")

    def __setattr__(self, attribute: str, value: Any) -> None:
        setattr(self._lazy_load(), attribute, value)

    def __delattr__(self, attribute: str) -> None:
        delattr(self._lazy_load(), attribute)

    def __dir__(self) -> list[str]:
        return dir(self._lazy_load())

    def __repr__(self) -> str:
        return f"<module {self._lazy_name!r}, imported when first used>"


def module(name: str) -> Any:
    """The module ``name``, imported when an attribute of it is first used."""
    return LazyModule(name)


__all__ = ["LazyModule", "module"]
