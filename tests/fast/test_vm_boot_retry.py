"""A VM boot that hangs (the guest kernel's soft lockup, seen under TCG) is made again, once.

The boot itself is replaced by ``hanging_boots`` (a stand-in of the plugin's own
``_take_snapshot``, which boots QEMU: no QEMU in this tier); what is tested is what the snapshot
cache does around it: a second attempt after one hang, an error after two, nothing left behind.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from pytest_isolated_docker.backends.machine import snapshot
from pytest_isolated_docker.backends.machine.vm import BOOT_ATTEMPTS, GuestHung, Machine

MACHINE = Machine(
    binary="qemu-system-x86_64",
    kernel=Path("vmlinuz"),
    initrd=Path("initrd.img"),
    accel="tcg",
    vcpus=2,
    memory_mib=2048,
    snapshot_boot=True,
)


@pytest.fixture(autouse=True)
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setattr(snapshot, "snapshot_key", lambda *args: "key")
    return tmp_path / "cache" / "pytest-isolated-docker" / "vm-snapshots"


def hanging_boots(hangs: int, boots: list[Path]) -> Callable[..., None]:
    """A boot that hangs ``hangs`` times, then makes a snapshot; each build dir it got is noted."""

    def take(machine: Machine, root_disk: Path, build: Path, *rest: object) -> None:
        boots.append(build)
        if len(boots) <= hangs:
            raise GuestHung("start", "the VM's kernel hung while it booted (CPU#0 stuck for 67 s)")
        (build / snapshot.STATE).write_text("memory")

    return take


def test_a_boot_that_hung_once_is_made_again(
    cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    boots: list[Path] = []
    monkeypatch.setattr(snapshot, "_take_snapshot", hanging_boots(1, boots))
    made, _ = snapshot.ensure_snapshot(MACHINE, tmp_path / "disk.img", tmp_path / "run", "vm", 60)
    assert len(boots) == 2
    assert boots[0] != boots[1]
    assert made.state.read_text() == "memory"
    assert sorted(p.name for p in cache.iterdir() if not p.name.endswith(".lock")) == ["key"]


def test_a_boot_that_keeps_hanging_is_an_error_and_leaves_no_build(
    cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    boots: list[Path] = []
    monkeypatch.setattr(snapshot, "_take_snapshot", hanging_boots(BOOT_ATTEMPTS, boots))
    with pytest.raises(GuestHung, match="hung while it booted"):
        snapshot.ensure_snapshot(MACHINE, tmp_path / "disk.img", tmp_path / "run", "vm", 60)
    assert len(boots) == BOOT_ATTEMPTS
    assert [p.name for p in cache.iterdir() if not p.name.endswith(".lock")] == []
