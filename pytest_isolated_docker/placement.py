"""Where a daemon goes: an engine of the pool (``--docker-engine``), the least loaded first.

The load of an engine is the number of daemons this machine's test runs keep on it right now:
each daemon holds a holder of its engine's :class:`~pytest_isolated_docker.coordination.Lease`
for its life, so a run that was killed stops counting at once. Backends never choose an engine:
they are handed one in their context. Another transport (a Kubernetes cluster, say) would be one
more kind of engine here.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

from .coordination import Holder, Lease, locked, runtime_root
from .engines import Engine, named


@dataclass
class Placement:
    """A daemon's place on an engine, held until :meth:`release`."""

    engine: Engine
    holder: Holder

    def release(self) -> None:
        self.holder.release()


class Pool:
    """The engines daemons may be placed on."""

    def __init__(self, engines: Sequence[Engine]) -> None:
        assert engines, "a pool has at least one engine"
        self.engines = list(engines)

    @classmethod
    def of(cls, specs: Sequence[str], default: Engine) -> Pool:
        """The engines named by ``--docker-engine`` values, or just ``default``.

        Raises :class:`~pytest_isolated_docker.engines.EngineNotFound` for an unknown context.
        """
        return cls([named(spec) for spec in dict.fromkeys(specs)] or [default])

    @property
    def is_pool(self) -> bool:
        return len(self.engines) > 1

    def environments(self) -> list[dict[str, str]]:
        return [engine.environment() for engine in self.engines]

    @staticmethod
    def _lease(engine: Engine) -> Lease:
        key = hashlib.sha256(engine.url.encode()).hexdigest()[:16]
        return Lease(runtime_root() / "placement" / key, f"the daemons placed on {engine.url}")

    def loads(self) -> list[int]:
        """How many daemons of this machine's runs each engine holds now."""
        return [self._lease(engine).holders() for engine in self.engines]

    def place(self) -> Placement:
        """Take a place on the least loaded engine (the first such one on a tie)."""
        if not self.is_pool:
            engine = self.engines[0]
            return Placement(engine, self._lease(engine).acquire())
        with locked(runtime_root() / "placement.lock", purpose="choosing an engine"):
            loads = self.loads()
            engine = self.engines[loads.index(min(loads))]
            return Placement(engine, self._lease(engine).acquire())


__all__ = ["Placement", "Pool"]
