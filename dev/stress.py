"""`make stress`: 4 workers x 25 tests, each making containers, networks and volumes.

Passes when, at the end, no object labelled pytest-isolated-docker.session is left and the host
engine's counts of containers, networks and volumes equal those before the run.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import docker

from pytest_isolated_docker.backends import describe_objects
from pytest_isolated_docker.labels import SESSION

WORKERS = int(os.environ.get("STRESS_WORKERS", "4"))
TESTS_PER_WORKER = int(os.environ.get("STRESS_TESTS_PER_WORKER", "25"))

SUITE = """
import pytest

@pytest.mark.parametrize("i", range({total}))
def test_objects(docker_client, i):
    network = docker_client.networks.create(f"stress-net-{{i}}")
    volume = docker_client.volumes.create(f"stress-volume-{{i}}")
    container = docker_client.containers.run(
        "debian:bookworm-slim", "sleep 60", detach=True, network=network.name,
        volumes={{volume.name: {{"bind": "/data", "mode": "rw"}}}},
    )
    docker_client.containers.create("debian:bookworm-slim", "true")
    assert len(docker_client.containers.list(all=True)) == 2, "reset must have emptied the daemon"
    container.reload()
    assert container.status == "running"
"""


def counts(client: docker.DockerClient) -> dict[str, int]:
    return {
        "containers": len(client.api.containers(all=True, quiet=True)),
        "networks": len(client.api.networks()),
        "volumes": len(client.api.volumes().get("Volumes") or []),
    }


def main() -> int:
    host = docker.from_env()
    before = counts(host)
    with tempfile.TemporaryDirectory() as directory:
        Path(directory, "test_stress.py").write_text(SUITE.format(total=WORKERS * TESTS_PER_WORKER))
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "pytest",
                "-p",
                "no:cacheprovider",
                "-c",
                os.devnull,
                "--rootdir",
                directory,
                "-n",
                str(WORKERS),
                "--docker-preload",
                "debian:bookworm-slim",
                "--docker-reset",
                "test",
                directory,
            ],
            cwd=directory,
            stdout=subprocess.PIPE,
            text=True,
        )
    print(result.stdout)
    session = result.stdout.split("session=", 1)[1].split()[0]
    after = counts(host)
    leftovers = describe_objects(host, {"label": [f"{SESSION}={session}"]})
    print(f"\nhost engine before: {before}")
    print(f"host engine after:  {after}")
    print(f"objects labelled with session {session} left: {len(leftovers)} {leftovers}")
    if before != after:
        print("(the counts differ: another run on this engine, or unlabelled objects leaked)")
    ok = result.returncode == 0 and before == after and not leftovers
    print("stress: OK, zero leaks" if ok else "stress: FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
