"""First and second container of a VM restored from a snapshot holding the preloaded image,
for VM images compared side by side (alternating, so that a busy host weighs on each alike).

For each run and image: start a machine daemon with ``--docker-preload=debian:bookworm-slim``
from that VM image, then time ``containers.run(IMAGE, ["true"], remove=True)`` twice, with the
CPU seconds QEMU spent on each. The first run of each image makes its snapshot and is not counted.
Snapshots go to a cache of their own (``BENCH_VM_CACHE``, default a temporary directory).

    .venv/bin/python dev/bench_vm_first_container.py RUNS NAME=VM_IMAGE_DIR [NAME=DIR ...]
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import sys
import tempfile
import time

from pytest_isolated_docker.backends import BackendContext
from pytest_isolated_docker.labels import Identity, new_session_id
from pytest_isolated_docker.lifecycle import start_daemon
from pytest_isolated_docker.settings import Settings

IMAGE = "debian:bookworm-slim"


def _cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as handle:
        fields = handle.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def measure(vm_image: str) -> dict[str, float]:
    """Ready, first and second container (seconds), and QEMU's CPU seconds for each container."""
    settings = Settings(backend="machine", startup_timeout=300, vm_image=vm_image, preload=(IMAGE,))
    context = BackendContext(settings, Identity(new_session_id()))
    daemon = start_daemon(context)
    result = {"ready": daemon.startup_seconds}
    try:
        # vm-<hex instance>/, not vm-<instance>-snapshot/
        (pid_file,) = context.session_dir.glob("vm-*[!t]/qemu.pid")
        pid = int(pid_file.read_text())
        for name in ("first", "second"):
            cpu, started = _cpu_seconds(pid), time.monotonic()
            daemon.client.containers.run(IMAGE, ["true"], remove=True)
            result[name] = time.monotonic() - started
            result[f"{name}_cpu"] = _cpu_seconds(pid) - cpu
    finally:
        daemon.stop()
        shutil.rmtree(context.session_dir, ignore_errors=True)
    return {key: round(value, 2) for key, value in result.items()}


def main(runs: int, images: dict[str, str]) -> None:
    os.environ["XDG_CACHE_HOME"] = os.environ.get("BENCH_VM_CACHE") or tempfile.mkdtemp(
        prefix="bench-vm-cache-"
    )
    for directory in images.values():
        measure(directory)  # makes the snapshot
    results: dict[str, list[dict[str, float]]] = {name: [] for name in images}
    for _ in range(runs):
        for name, directory in images.items():
            results[name].append(measure(directory))
            print(json.dumps({"image": name, **results[name][-1]}), flush=True)
    for name, rows in results.items():
        p50 = {key: statistics.median(row[key] for row in rows) for key in rows[0]}
        print(f"{name}: p50 of {len(rows)} runs {json.dumps(p50)}")


if __name__ == "__main__":
    main(int(sys.argv[1]), dict(arg.split("=", 1) for arg in sys.argv[2:]))
