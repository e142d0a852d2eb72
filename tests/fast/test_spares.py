"""The spare pool's bookkeeping: which used daemon is parked, renewed, or finished.

The daemons here are plain stand-ins (the pool only reads ``renewable`` and hands them to the
callables); starting, renewing and stopping real daemons is tested in tests/test_dind.py.
"""

from __future__ import annotations

import threading
from typing import Any, cast

from pytest_isolated_docker.daemon import DockerDaemon
from pytest_isolated_docker.settings import Settings, resolve
from pytest_isolated_docker.spares import PARKED_PER_SETTINGS, Spares


class StandIn:
    def __init__(self, name: str, renewable: bool = True) -> None:
        self.name = name
        self.renewable = renewable

    def __repr__(self) -> str:
        return self.name


class Pool:
    """A Spares whose start, finish and renew record what they were asked."""

    def __init__(self, renewable: bool = True, renew_fails: bool = False) -> None:
        self.renewable = renewable
        self.renew_fails = renew_fails
        self.lock = threading.Lock()
        self.started: list[str] = []
        self.finished: list[tuple[str, str]] = []
        self.renewed: list[str] = []
        self.spares = Spares(self.start, self.finish, self.renew)

    def start(self, settings: Settings) -> DockerDaemon:
        with self.lock:
            name = f"new{len(self.started)}"
            self.started.append(name)
        return cast(DockerDaemon, StandIn(name, self.renewable))

    def finish(self, daemon: DockerDaemon, label: str) -> None:
        with self.lock:
            self.finished.append((repr(daemon), label))

    def renew(self, daemon: DockerDaemon, label: str) -> DockerDaemon | None:
        if self.renew_fails:
            self.finish(daemon, label)
            return None
        with self.lock:
            self.renewed.append(repr(daemon))
        return cast(DockerDaemon, StandIn(f"{daemon!r}+", self.renewable))


def settings(**flags: Any) -> Settings:
    return resolve(flags, {}, {})


def test_a_used_daemon_is_renewed_into_the_next_spare_instead_of_a_new_start() -> None:
    pool, same = Pool(), settings()
    used = pool.spares.take(same)
    pool.spares.retire(used, "fresh for test_a")
    assert pool.finished == []  # parked, not stopped
    pool.spares.prepare(same)
    spare = pool.spares.take(same)
    assert repr(spare) == "new0+"
    assert pool.started == ["new0"]
    assert pool.renewed == ["new0"]
    pool.spares.close()


def test_a_daemon_not_renewable_or_not_handed_out_here_is_finished() -> None:
    pool, same = Pool(renewable=False), settings()
    used = pool.spares.take(same)
    pool.spares.retire(used, "fresh")
    worker = cast(DockerDaemon, StandIn("worker"))
    pool.spares.retire(worker, "worker")  # the worker's daemon was never a spare
    pool.spares.close()
    assert sorted(pool.finished) == [("new0", "fresh"), ("worker", "worker")]
    assert pool.renewed == []


def test_parked_daemons_are_capped_per_settings_and_kept_apart_by_settings() -> None:
    pool, one, other = Pool(), settings(), settings(reset="never")
    used = [pool.spares.take(one) for _ in range(PARKED_PER_SETTINGS + 1)]
    for daemon in used:
        pool.spares.retire(daemon, "")
    pool.spares.prepare(other)  # other settings: a new start, not a parked one
    assert repr(pool.spares.take(other)) == f"new{len(used)}"
    pool.spares.close()
    assert pool.renewed == []
    # One over the cap was finished at once; the parked ones at the end.
    assert sorted(name for name, _ in pool.finished) == sorted(repr(d) for d in used)


def test_the_end_finishes_parked_daemons_with_their_labels() -> None:
    pool, same = Pool(), settings()
    pool.spares.retire(pool.spares.take(same), "fresh for test_a")
    pool.spares.close()
    assert pool.finished == [("new0", "fresh for test_a")]


def test_a_failed_renewal_starts_a_new_spare() -> None:
    pool, same = Pool(renew_fails=True), settings()
    pool.spares.retire(pool.spares.take(same), "fresh")
    pool.spares.prepare(same)
    assert repr(pool.spares.take(same)) == "new1"
    assert pool.finished == [("new0", "fresh")]
    pool.spares.close()


def test_a_swapped_daemon_is_parked_under_the_settings_of_the_spare_it_was() -> None:
    """A reset's swap hands back the object of the spare it took, standing for the used
    daemon: it is parked under the spare's settings."""
    pool, same = Pool(), settings()
    pool.spares.prepare(same)
    taken = None
    while taken is None:
        taken = pool.spares.ready(same)
    pool.spares.retire(taken, "")
    pool.spares.prepare(same)
    assert repr(pool.spares.take(same)) == "new0+"
    pool.spares.close()
