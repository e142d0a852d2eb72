"""The host engine found as the docker CLI finds it, against the real engine."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import docker
import pytest

from .conftest import labelled, session_of
from .fast.test_engines import make_context

# In a mount namespace of its own: the engine's socket is bound to a path only the context names,
# and /var/run is covered by an empty tmpfs, so the default socket is gone for this run.
ONLY_THROUGH_CONTEXT = """
set -eu
touch "$ENGINE_SOCKET"
mount --bind /var/run/docker.sock "$ENGINE_SOCKET"
mount -t tmpfs tmpfs /var/run
test ! -e /var/run/docker.sock
exec "$@"
"""


@pytest.mark.skipif(
    shutil.which("unshare") is None or os.geteuid() != 0, reason="needs root and unshare"
)
def test_a_run_whose_engine_only_the_current_context_names(
    pytester: pytest.Pytester, host_engine: docker.DockerClient, tmp_path: Path
) -> None:
    config = tmp_path / "docker-config"
    socket_path = tmp_path / "engine.sock"
    make_context(config, "only-here", f"unix://{socket_path}")
    (config / "config.json").write_text(json.dumps({"currentContext": "only-here"}))
    pytester.makepyfile(
        "def test_docker(docker_client):\n"
        "    out = docker_client.containers.run('debian:bookworm-slim', 'echo hi', remove=True)\n"
        "    assert out == b'hi\\n'\n"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("DOCKER_HOST", "DOCKER_CONTEXT")}
    env.update(DOCKER_CONFIG=str(config), ENGINE_SOCKET=str(socket_path))
    result = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "sh", "-c", ONLY_THROUGH_CONTEXT,
         "sh", sys.executable, "-m", "pytest", "-p", "no:cacheprovider",
         "--docker-preload", "debian:bookworm-slim"],
        cwd=pytester.path, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert (
        f"isolated-docker: host engine unix://{socket_path} (found by context only-here "
        "(the current context of the Docker configuration))" in output
    )
    assert "1 passed" in output
    assert labelled(host_engine, session_of(output)) == []
