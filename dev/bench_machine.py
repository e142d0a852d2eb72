"""Benchmark rows of the machine backend (qemu driver), imported by dev/bench.py.

Each run starts a fresh VM the way the plugin does (``start_daemon``) and measures:
- VM ready: from the request to a client whose ``/_ping`` answered;
- container run inside: ``docker run --rm debian:bookworm-slim true`` in that VM, the image first
  streamed in from the host engine (the preload is not part of either number).
Runs are sequential: never more than one VM at a time on a shared 2-core machine.

    .venv/bin/python dev/bench_machine.py          # prints the rows
    BENCH_MACHINE_RUNS=3 .venv/bin/python dev/bench_machine.py
"""

from __future__ import annotations

import math
import os
import shutil
import sys
import time
from typing import Any

import docker

from pytest_isolated_docker.backends import BackendContext, start_daemon
from pytest_isolated_docker.images import build_vm_image, preload
from pytest_isolated_docker.labels import Identity, new_session_id
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


def rows() -> list[dict[str, Any]]:
    host = docker.from_env(timeout=600)
    context = BackendContext(
        Settings(backend="machine", startup_timeout=300), Identity(new_session_id())
    )
    try:
        build_vm_image(host, quiet=True)
        ready: list[float] = []
        container: list[float] = []
        accel = "?"
        for _ in range(max(RUNS, 5)):
            started = time.monotonic()
            daemon = start_daemon(context)
            try:
                ready.append(time.monotonic() - started)
                accel = daemon.describe().get("mode", "qemu").split(" vCPU")[0].rsplit(" ", 1)[0]
                preload(host, daemon.client, [IMAGE])
                started = time.monotonic()
                daemon.client.containers.run(IMAGE, ["true"], remove=True)
                container.append(time.monotonic() - started)
            finally:
                leaks = daemon.stop()
            if leaks:
                raise RuntimeError(f"the machine backend left {leaks}")
    finally:
        host.close()
        shutil.rmtree(context.session_dir, ignore_errors=True)
    return [
        _row(f"machine: VM ready ({accel})", ready, "<= 15 s p50 (TCG), <= 3 s with KVM"),
        _row(f"machine: container run inside ({accel})", container, "<= 3 s p50"),
    ]


if __name__ == "__main__":
    for row in rows():
        print(row, file=sys.stdout)
