"""Benchmark rows of the machine backend (qemu driver), imported by dev/bench.py.

Runs are sequential: never more than one VM at a time on a shared 2-core machine.
- snapshot made: the one-off boot that makes the VM snapshot (once per image and QEMU version;
  measured in a snapshot cache of its own, so the user's cache is not touched);
- VM ready (restored): from the request to a client whose ``/_ping`` answered, the VM restored
  from that snapshot (the default, ``--docker-vm-boot=snapshot``);
- VM ready (cold boot): the same with ``--docker-vm-boot=cold``, for comparison;
- preload streamed: ``debian:bookworm-slim`` streamed from the host engine into a restored VM
  (a snapshot without images: what a cold-booted VM still does);
- container run inside: ``docker run --rm debian:bookworm-slim true``, the first in a restored VM
  whose image was streamed in;
- with ``--docker-preload=debian:bookworm-slim``, side by side: the snapshot holding the image made
  (once per preload set), the VM ready (restored from it), its preload (the image is on the disk:
  only checked) and its first container.

    .venv/bin/python dev/bench_machine.py          # prints the rows
    BENCH_MACHINE_RUNS=3 .venv/bin/python dev/bench_machine.py
"""

from __future__ import annotations

import math
import os
import re
import shutil
import sys
import tempfile
import time
from typing import Any

import docker

from pytest_isolated_docker.backends import BackendContext
from pytest_isolated_docker.daemon import DockerDaemon
from pytest_isolated_docker.images import build_vm_image, preload
from pytest_isolated_docker.labels import Identity, new_session_id
from pytest_isolated_docker.lifecycle import start_daemon
from pytest_isolated_docker.settings import Settings

IMAGE = "debian:bookworm-slim"
RUNS = int(os.environ.get("BENCH_MACHINE_RUNS", "5"))


def _percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[max(0, math.ceil(fraction * len(ordered)) - 1)]


def _row(name: str, values: list[float], target: str) -> dict[str, Any]:
    return {
        "name": name,
        "p50": round(_percentile(values, 0.5), 2),
        "p90": round(_percentile(values, 0.9), 2),
        "runs": len(values),
        "target": target,
    }


def _start(context: BackendContext) -> tuple[DockerDaemon, float]:
    started = time.monotonic()
    return start_daemon(context), time.monotonic() - started


def _stop(daemon: DockerDaemon) -> None:
    leaks = daemon.stop()
    if leaks:
        raise RuntimeError(f"the machine backend left {leaks}")


def _made(daemon: DockerDaemon) -> list[float]:
    made_in = re.search(r"made in ([0-9.]+) s", daemon.describe()["mode"])
    if made_in is None:
        raise RuntimeError(f"the first VM did not make the snapshot: {daemon.describe()['mode']}")
    return [float(made_in.group(1))]


def _first_container(daemon: DockerDaemon) -> float:
    started = time.monotonic()
    daemon.client.containers.run(IMAGE, ["true"], remove=True)
    return time.monotonic() - started


def rows() -> list[dict[str, Any]]:
    host = docker.from_env(timeout=600)
    times: dict[str, list[float]] = {
        key: []
        for key in ("restored", "cold", "streamed", "container", "pre_ready", "pre_disk", "pre_run")
    }
    accel = "?"
    with tempfile.TemporaryDirectory(prefix="bench-machine-cache-") as own_cache:
        saved_cache = os.environ.get("XDG_CACHE_HOME")
        # The VM image stays where it is; only the snapshots (and KVM probe) go to our cache.
        image = str(build_vm_image(host, quiet=True))
        os.environ["XDG_CACHE_HOME"] = own_cache
        contexts = {
            name: BackendContext(
                Settings(
                    backend="machine",
                    startup_timeout=300,
                    vm_image=image,
                    vm_boot=boot,
                    preload=images,
                ),
                Identity(new_session_id()),
            )
            for name, boot, images in (
                ("snapshot", "snapshot", ()),
                ("cold", "cold", ()),
                ("preloaded", "snapshot", (IMAGE,)),
            )
        }
        try:
            daemon, _ = _start(contexts["snapshot"])
            made = _made(daemon)
            _stop(daemon)
            daemon, _ = _start(contexts["preloaded"])
            made_preloaded = _made(daemon)
            _stop(daemon)
            for _ in range(max(RUNS, 5)):
                daemon, seconds = _start(contexts["snapshot"])
                try:
                    times["restored"].append(seconds)
                    accel = daemon.describe()["mode"].split(" ")[1]
                    times["streamed"].append(preload(host, daemon.client, [IMAGE]))
                    times["container"].append(_first_container(daemon))
                finally:
                    _stop(daemon)
                daemon, _ = _start(contexts["preloaded"])
                try:
                    times["pre_ready"].append(daemon.startup_seconds)
                    times["pre_disk"].append(daemon.preload_seconds)
                    times["pre_run"].append(_first_container(daemon))
                finally:
                    _stop(daemon)
            for _ in range(3):
                daemon, seconds = _start(contexts["cold"])
                times["cold"].append(seconds)
                _stop(daemon)
        finally:
            host.close()
            for context in contexts.values():
                shutil.rmtree(context.session_dir, ignore_errors=True)
            if saved_cache is None:
                os.environ.pop("XDG_CACHE_HOME", None)
            else:
                os.environ["XDG_CACHE_HOME"] = saved_cache
    with_image = f"--docker-preload={IMAGE}"
    return [
        _row(f"machine: VM snapshot made, once per image ({accel})", made, "(one-off)"),
        _row(
            f"machine: VM ready, restored from the snapshot ({accel})",
            times["restored"],
            "<= 15 s p50 (TCG), <= 3 s with KVM",
        ),
        _row(f"machine: VM ready, cold boot ({accel})", times["cold"], "(for comparison)"),
        _row(f"machine: preload {IMAGE} streamed into the VM ({accel})", times["streamed"], "-"),
        _row(f"machine: container run inside ({accel})", times["container"], "(no target)"),
        _row(
            f"machine: VM snapshot holding {IMAGE} made, once per preload set ({accel})",
            made_preloaded,
            "(one-off)",
        ),
        _row(
            f"machine: VM ready, restored, {with_image} ({accel})",
            times["pre_ready"],
            "<= 3 s p50 (TCG)",
        ),
        _row(
            f"machine: preload {IMAGE} from the snapshot's disk ({accel})",
            times["pre_disk"],
            "<= 2 s p50 (TCG)",
        ),
        _row(
            f"machine: first container, {with_image} ({accel})",
            times["pre_run"],
            "<= 1.5 s p50 (TCG)",
        ),
    ]


if __name__ == "__main__":
    for row in rows():
        print(row, file=sys.stdout)
