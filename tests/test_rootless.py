"""The dind backend on a rootless engine: Debian's dockerd-rootless.sh run by a user of its own.

Setting one up takes what a user's machine would have: a user with subordinate ids, its runtime
directory, and /dev/net/tun usable by it (slirp4netns); the engine has no image at first, so the
dind image and the preloaded ones come from this machine's system engine.
"""

from __future__ import annotations

import collections.abc
import contextlib
import os
import pwd
import shutil
import signal
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

import docker
import pytest

from .conftest import labelled, session_of

USER = "pid-rootless"
CONTRIB = "/usr/share/docker.io/contrib"
EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def _missing() -> str | None:
    if os.geteuid() != 0:
        return "needs root (to make the rootless engine's user)"
    for tool in ("rootlesskit", "slirp4netns", "newuidmap", "useradd"):
        if shutil.which(tool) is None:
            return f"needs {tool}"
    if not Path(CONTRIB, "dockerd-rootless.sh").exists():
        return f"needs {CONTRIB}/dockerd-rootless.sh (Debian's docker.io)"
    return None


pytestmark = pytest.mark.skipif(_missing() is not None, reason=str(_missing()))


def _accepts(path: Path) -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        try:
            probe.connect(str(path))
        except OSError:
            return False
    return True


@pytest.fixture(scope="module")
def rootless_engine() -> collections.abc.Iterator[str]:
    """The URL of a rootless engine started for these tests (stopped and removed after)."""
    created = False
    try:
        pwd.getpwnam(USER)
    except KeyError:
        subprocess.run(["useradd", "--create-home", USER], check=True)
        created = True
    user = pwd.getpwnam(USER)
    runtime = Path(f"/run/user/{user.pw_uid}")
    runtime.mkdir(parents=True, exist_ok=True)
    os.chown(runtime, user.pw_uid, user.pw_gid)
    runtime.chmod(0o700)
    tun = Path("/dev/net/tun")
    tun_mode = stat.S_IMODE(tun.stat().st_mode)
    tun.chmod(0o666)  # slirp4netns opens it as the user
    log = runtime.parent / f"{USER}-dockerd.log"
    environment = (
        f"XDG_RUNTIME_DIR={runtime} HOME={user.pw_dir} "
        f"PATH={CONTRIB}:/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin"
    )
    with log.open("wb") as output:
        process = subprocess.Popen(
            [
                "su",
                USER,
                "-s",
                "/bin/sh",
                "-c",
                f"cd && exec env {environment} dockerd-rootless.sh",
            ],
            stdout=output,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    url = f"unix://{runtime}/docker.sock"
    try:
        deadline = time.monotonic() + 60
        while not _accepts(runtime / "docker.sock"):
            if process.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"the rootless engine did not start: {log.read_text()[-3000:]}")
            time.sleep(0.2)
        with contextlib.closing(docker.DockerClient(base_url=url)) as client:
            client.ping()
        yield url
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        tun.chmod(tun_mode)
        shutil.rmtree(Path(user.pw_dir) / ".local" / "share" / "docker", ignore_errors=True)
        shutil.rmtree(runtime / "docker", ignore_errors=True)
        log.unlink(missing_ok=True)
        if created:
            subprocess.run(["userdel", "--remove", USER], check=False, capture_output=True)


def test_the_examples_pass_with_dind_on_a_rootless_engine(rootless_engine: str) -> None:
    env = {**os.environ, "DOCKER_HOST": rootless_engine}
    env.pop("DOCKER_CONTEXT", None)
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-p", "no:randomly",
         str(EXAMPLES), "--rootdir", str(EXAMPLES)],
        capture_output=True, text=True, env=env, timeout=600,
    )  # fmt: skip
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "9 passed" in output, output
    assert f"isolated-docker: host engine {rootless_engine} (found by DOCKER_HOST)" in output
    with contextlib.closing(docker.DockerClient(base_url=rootless_engine)) as client:
        assert "name=rootless" in " ".join(client.info()["SecurityOptions"])
        assert labelled(client, session_of(output)) == []
