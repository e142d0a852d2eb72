"""The machine backend with real VMs (QEMU) and real daemons: no mocks of Docker.

Each test runs an inner pytest in a subprocess (``pytester``) the way a user would, then checks
from the outside what it must not leave behind: QEMU processes, per-VM files, machines.
The docker-machine driver is tested against ``tests/standins/docker-machine``, a stand-in
executable (docker-machine cannot be installed here) that follows docker-machine's documented
output formats and gives a real dockerd; a test against the real binary runs when it is on PATH.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import docker
import pytest

from pytest_isolated_docker.coordination import cache_dir, state_root
from pytest_isolated_docker.images import build_vm_image

from .conftest import header_session, spawn_pytest

STANDINS = Path(__file__).parent / "standins"
PRELOAD = "--docker-preload=debian:bookworm-slim"
# Generous: a VM boots under TCG on a 2-core machine other work shares. Not a timing assertion.
STARTUP = "--docker-startup-timeout=400"
SUBPROCESS_TIMEOUT = 900


@pytest.fixture(scope="session")
def host() -> Iterator[docker.DockerClient]:
    client = docker.from_env(timeout=600)
    try:
        client.ping()
    except docker.errors.DockerException as exc:
        pytest.fail(f"the host engine does not answer ({exc}): run dev/provision-host")
    yield client
    client.close()


@pytest.fixture(scope="session")
def vm_image(host: docker.DockerClient) -> Path:
    """The VM image, built once (build_vm_image is cached and idempotent)."""
    return build_vm_image(host, quiet=True)


@pytest.fixture(autouse=True)
def shared_cache(monkeypatch: pytest.MonkeyPatch) -> None:
    """pytester gives the inner pytest a HOME of its own: keep the user cache (VM image, KVM
    probe) it would otherwise not find."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(cache_dir().parent))


def run_machine(pytester: pytest.Pytester, *args: str) -> pytest.RunResult:
    """An inner pytest run on the machine backend (the generous startup timeout) with ``args``."""
    return pytester.runpytest_subprocess(
        "--docker-backend=machine", STARTUP, *args, "-p", "no:cacheprovider",
        timeout=SUBPROCESS_TIMEOUT,
    )  # fmt: skip


def session_of(result: pytest.RunResult) -> str:
    match = re.search(r"isolated-docker: backend=\S+ .*session=(\S+)", result.stdout.str())
    assert match, result.stdout.str()
    return match.group(1)


def processes_mentioning(text: str) -> list[str]:
    found = []
    for proc in Path("/proc").glob("[0-9]*"):
        with contextlib.suppress(OSError):
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            if text in cmdline and "pytest" not in cmdline.split(" ")[0]:
                found.append(f"{proc.name}: {cmdline[:200]}")
    return found


def assert_nothing_left(session: str) -> None:
    """No QEMU process, per-VM directory or docker-machine state of ``session`` remains."""
    directory = state_root() / "sessions" / session
    leftovers = [str(p) for p in directory.glob("vm-*")] if directory.exists() else []
    leftovers += [str(p) for p in directory.glob("docker-machine-*")] if directory.exists() else []
    assert leftovers == []
    assert [p for p in processes_mentioning(f"pid-{session}") if "qemu" in p] == []


ISOLATION_TEST = """
import os

import io
import tarfile
import time

import pytest
import requests

MARKER = "{marker}"
TLS_KEY = "/etc/pytest-isolated-docker/key.pem"

def test_root_of_the_daemons_host_is_not_the_real_host(docker_client, docker_daemon):
    assert docker_daemon.backend == "machine"
    out = docker_client.containers.run(
        "debian:bookworm-slim",
        ["sh", "-c", f"echo written > /host/tmp/{{MARKER}} && cat /host/tmp/{{MARKER}}"],
        volumes={{"/": {{"bind": "/host", "mode": "rw"}}}},
        remove=True,
    )
    assert out.strip() == b"written"
    # The file is on the daemon's host (seen by a second container, which also finds the TLS
    # terminator's key there readable by root only) ...
    seen = docker_client.containers.run(
        "debian:bookworm-slim",
        ["sh", "-c", f"ls /host/tmp/{{MARKER}} && stat -c %a /host{{TLS_KEY}}"],
        volumes={{"/": {{"bind": "/host", "mode": "ro"}}}}, remove=True,
    )
    assert seen.split() == [f"/host/tmp/{{MARKER}}".encode(), b"600"]
    # ... and not on the host pytest runs on.
    assert not os.path.exists(f"/tmp/{{MARKER}}")
    assert "qemu" in docker_daemon.describe()["mode"]


def test_containers_run_with_crun_on_the_default_bridge(docker_client):
    # The VM's dockerd runs its containers with crun (a C runtime: cheaper under TCG than runc),
    # on its default bridge network as anywhere else: an address, a default route through the
    # bridge's gateway, IPv6 disabled in the container as dockerd does.
    assert docker_client.info()["DefaultRuntime"] == "crun"
    container = docker_client.containers.run(
        "debian:bookworm-slim", ["sleep", "300"], detach=True
    )
    try:
        container.reload()
        assert container.attrs["HostConfig"]["Runtime"] == "crun"
        network = container.attrs["NetworkSettings"]["Networks"]["bridge"]
        assert network["IPAddress"].startswith("172.17.")
        gateway = bytes(int(part) for part in network["Gateway"].split("."))[::-1].hex().upper()
        code, routes = container.exec_run(["cat", "/proc/net/route"])
        assert code == 0
        default = [line.split() for line in routes.decode().splitlines()[1:]]
        assert ["eth0", "00000000", gateway] in [fields[:3] for fields in default]
        code, ipv6 = container.exec_run(["cat", "/proc/sys/net/ipv6/conf/all/disable_ipv6"])
        assert (code, ipv6.strip()) == (0, b"1")
        # dockerd's other self-executions (here: unpacking an archive into the container) still
        # reach dockerd through the VM's dockerd-reexec.
        archive = io.BytesIO()
        with tarfile.open(fileobj=archive, mode="w") as tar:
            info = tarfile.TarInfo("copied-in")
            info.size = len(MARKER)
            tar.addfile(info, io.BytesIO(MARKER.encode()))
        assert container.put_archive("/tmp", archive.getvalue())
        assert container.exec_run(["cat", "/tmp/copied-in"]) == (0, MARKER.encode())
    finally:
        container.remove(force=True)


def test_container_whose_shim_died_is_reported_exited(docker_client):
    # containerd cleans up after a shim that died: the VM's shim script hands that clean-up to
    # the real shim when the runtime still holds the container, which kills what the container
    # ran and reports it exited (128 + SIGKILL); dockerd then shows it exited and removes it.
    victim = docker_client.containers.run(
        "debian:bookworm-slim", ["sleep", "300"], detach=True
    )
    try:
        docker_client.containers.run(
            "debian:bookworm-slim",
            # "[c]" keeps the pattern from matching this command line itself.
            ["nsenter", "-t", "1", "-a", "pkill", "-KILL", "-f",
             f"[c]ontainerd-shim-runc-v2 .*-id {{victim.id}}"],
            privileged=True, pid_mode="host", remove=True,
        )
        deadline = time.monotonic() + 120
        victim.reload()
        while victim.status != "exited" and time.monotonic() < deadline:
            time.sleep(0.5)
            victim.reload()
        assert (victim.status, victim.attrs["State"]["ExitCode"]) == ("exited", 137)
    finally:
        victim.remove(force=True)


def test_client_without_certificate_is_refused(docker_daemon):
    # The VM's TLS terminator verifies the server side for us and requires a client certificate.
    url = docker_daemon.base_url.replace("tcp://", "https://") + "/_ping"
    with pytest.raises(requests.exceptions.SSLError):
        requests.get(url, verify=str(docker_daemon.endpoint.tls.ca_cert), timeout=60)
"""


def test_container_writing_to_root_of_its_host_does_not_touch_the_real_host(
    pytester: pytest.Pytester, vm_image: Path
) -> None:
    marker = f"pytest-isolated-docker-machine-{uuid.uuid4().hex}"
    pytester.makepyfile(ISOLATION_TEST.format(marker=marker))
    result = run_machine(pytester, PRELOAD)
    result.assert_outcomes(passed=4)
    result.stdout.fnmatch_lines(
        [
            "*machine qemu * vCPU, restored from a snapshot* at tcp://127.0.0.1:*"
            "leaks at teardown: 0*"
        ]
    )
    assert not Path(f"/tmp/{marker}").exists()
    assert_nothing_left(session_of(result))


WORKER_TEST = """
import os

def test_record_daemon(docker_client):
    # VMs restored from one snapshot share dockerd's engine ID; the labels each VM's dockerd
    # gets after its restore name the VM.
    worker = os.environ["PYTEST_XDIST_WORKER"]
    with open(os.path.join("{out}", worker), "w") as handle:
        handle.write(" ".join(sorted(docker_client.info()["Labels"])))
"""


def test_two_workers_get_two_vms(pytester: pytest.Pytester, vm_image: Path, tmp_path: Path) -> None:
    out = tmp_path / "ids"
    out.mkdir()
    pytester.makepyfile(WORKER_TEST.format(out=out))
    result = pytester.runpytest_subprocess(
        "--docker-backend=machine", "-n", "2", "--dist=each", STARTUP, "-p", "no:cacheprovider",
        timeout=SUBPROCESS_TIMEOUT,
    )  # fmt: skip
    result.assert_outcomes(passed=2)
    ids = {path.name: path.read_text() for path in out.iterdir()}
    assert sorted(ids) == ["gw0", "gw1"]
    assert ids["gw0"] != ids["gw1"]
    assert_nothing_left(session_of(result))


NEEDS_DAEMON = """
def test_needs_daemon(docker_client):
    docker_client.ping()
"""


def test_qemu_missing_is_a_clear_error(
    pytester: pytest.Pytester, vm_image: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    empty = tmp_path / "bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    pytester.makepyfile(NEEDS_DAEMON)
    result = pytester.runpytest_subprocess(
        "--docker-backend=machine", "-p", "no:cacheprovider", timeout=SUBPROCESS_TIMEOUT
    )
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(
        ["*qemu-system-x86_64 not found on PATH*apt-get install qemu-system-x86*"]
    )
    assert_nothing_left(session_of(result))


def test_qemu_img_missing_is_a_clear_error_unless_booting_cold(
    pytester: pytest.Pytester, vm_image: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Snapshots need qemu-img for their disk overlay; a cold boot does not."""
    only_qemu = tmp_path / "bin"
    only_qemu.mkdir()
    qemu = shutil.which("qemu-system-x86_64")
    assert qemu is not None
    (only_qemu / "qemu-system-x86_64").symlink_to(qemu)
    monkeypatch.setenv("PATH", str(only_qemu))
    pytester.makepyfile(NEEDS_DAEMON)
    result = pytester.runpytest_subprocess(
        "--docker-backend=machine", "-p", "no:cacheprovider", timeout=SUBPROCESS_TIMEOUT
    )
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(
        ["*qemu-img not found on PATH*apt-get install qemu-utils*--docker-vm-boot=cold*"]
    )
    assert "qemu-system-x86_64 not found" not in result.stdout.str()
    assert_nothing_left(session_of(result))
    cold = pytester.runpytest_subprocess(
        "--docker-backend=machine", "--docker-vm-boot=cold", STARTUP, "-p", "no:cacheprovider",
        timeout=SUBPROCESS_TIMEOUT,
    )  # fmt: skip
    cold.assert_outcomes(passed=1)
    cold.stdout.fnmatch_lines(["*machine qemu * vCPU, cold boot at tcp://*leaks at teardown: 0*"])
    assert_nothing_left(session_of(cold))


def test_vm_image_missing_is_a_clear_error(pytester: pytest.Pytester, tmp_path: Path) -> None:
    empty = tmp_path / "no-image"
    empty.mkdir()
    pytester.makepyfile(NEEDS_DAEMON)
    result = pytester.runpytest_subprocess(
        "--docker-backend=machine", f"--docker-vm-image={empty}", "-p", "no:cacheprovider",
        timeout=SUBPROCESS_TIMEOUT,
    )  # fmt: skip
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(
        ["*lacks vmlinuz, initrd.img, disk.img*pytest-isolated-docker build-image vm*"]
    )
    assert_nothing_left(session_of(result))


@pytest.mark.parametrize("boot", ["snapshot", "cold"])
def test_vm_that_dies_fails_fast_with_its_console(
    pytester: pytest.Pytester, vm_image: Path, tmp_path: Path, boot: str
) -> None:
    """A root disk that is not ext4: the guest panics, QEMU exits, and the error shows the
    console; the startup timeout (400 s) is not waited out (the test would then time out).
    With snapshots, it is the snapshot's boot that fails, and no snapshot is kept."""
    broken = tmp_path / "broken-image"
    broken.mkdir()
    for name in ("vmlinuz", "initrd.img"):
        (broken / name).symlink_to(vm_image / name)
    with (broken / "disk.img").open("wb") as disk:
        disk.truncate(64 * 1024 * 1024)
    pytester.makepyfile(NEEDS_DAEMON)
    result = pytester.runpytest_subprocess(
        "--docker-backend=machine", f"--docker-vm-image={broken}", f"--docker-vm-boot={boot}",
        STARTUP, "-p", "no:cacheprovider", timeout=SUBPROCESS_TIMEOUT,
    )  # fmt: skip
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(
        [
            "*QEMU exited with code * while booting*",
            "*last 50 lines of the VM's log*",
            "*initramfs: cannot mount the root disk /dev/vda*",
        ]
    )
    assert_nothing_left(session_of(result))
    assert snapshots_of(broken / "disk.img") == []


def snapshots_of(root_disk: Path) -> list[Path]:
    """Snapshot directories (finished or being built) made from ``root_disk``."""
    found = []
    for directory in (cache_dir() / "vm-snapshots").glob("*"):
        meta = directory / "meta.json"
        if meta.exists() and json.loads(meta.read_text())["root_disk"] == str(root_disk):
            found.append(directory)
    return found


def test_snapshot_is_made_once_and_a_killed_build_leaves_nothing(
    pytester: pytest.Pytester, vm_image: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A snapshot cache of its own (and an image copy: a snapshot belongs to its disk). The first
    run is killed while it makes the snapshot; the next makes it (and removes the dead build);
    the third restores from it without making one."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("XDG_CACHE_HOME", str(cache))
    image = tmp_path / "image"
    image.mkdir()
    for name in ("vmlinuz", "initrd.img", "disk.img"):
        subprocess.run(["cp", "--sparse=always", str(vm_image / name), str(image)], check=True)
    snapshots = cache / "pytest-isolated-docker" / "vm-snapshots"
    pytester.makepyfile(NEEDS_DAEMON)
    args = ("--docker-backend=machine", f"--docker-vm-image={image}", STARTUP)

    process = spawn_pytest(pytester.path, *args)
    session = header_session(process)
    deadline = time.monotonic() + 120
    while not list(snapshots.glob("*.build-*")):
        assert time.monotonic() < deadline, "no snapshot build started"
        time.sleep(0.1)
    process.kill()
    process.communicate()
    deadline = time.monotonic() + 30
    while [p for p in processes_mentioning(f"pid-{session}") if "qemu" in p]:
        assert time.monotonic() < deadline, "the snapshot's QEMU outlived its pytest"
        time.sleep(0.2)
    unfinished = list(snapshots.glob("*.build-*"))
    assert unfinished != []  # until prune or the next run removes it
    pruning = subprocess.run(
        [sys.executable, "-m", "pytest_isolated_docker.cli", "prune", "--dry-run"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert f"would remove: unfinished VM snapshot {unfinished[0]}" in pruning.stdout

    made = pytester.runpytest_subprocess(
        *args, "-p", "no:cacheprovider", timeout=SUBPROCESS_TIMEOUT
    )
    made.assert_outcomes(passed=1)
    made.stdout.fnmatch_lines(["*restored from a snapshot (made in * s) at tcp://*"])
    assert list(snapshots.glob("*.build-*")) == []
    assert len(list(snapshots.glob("*/meta.json"))) == 1
    assert_nothing_left(session)
    assert_nothing_left(session_of(made))

    reused = pytester.runpytest_subprocess(
        *args, "-p", "no:cacheprovider", timeout=SUBPROCESS_TIMEOUT
    )
    reused.assert_outcomes(passed=1)
    reused.stdout.fnmatch_lines(["*qemu * vCPU, restored from a snapshot at tcp://*"])
    assert len(list(snapshots.glob("*/meta.json"))) == 1


# --- preloaded images from the snapshot's disk --------------------------------------------

PRELOADED_TEST = """
import pytest

IMAGE = "debian:bookworm-slim"
DAEMON_LABELS = set()


def check_and_remove(docker_client, docker_daemon):
    assert "snapshot holding the preloaded images" in docker_daemon.describe()["mode"]
    # dockerd runs in the snapshot, so VMs restored from it share its engine ID (key.json); each
    # gets its own daemon.json, which the running dockerd reloads: its labels are its own.
    DAEMON_LABELS.add(tuple(sorted(docker_client.info()["Labels"])))
    assert docker_client.images.get(IMAGE).id == "{image_id}"
    out = docker_client.containers.run(IMAGE, ["echo", "from the disk"], remove=True)
    assert out == b"from the disk\\n"
    docker_client.images.remove(IMAGE, force=True)
    assert IMAGE not in [t for i in docker_client.images.list() for t in i.tags]


def test_session_vm(docker_client, docker_daemon):
    check_and_remove(docker_client, docker_daemon)


@pytest.mark.docker_daemon(fresh=True)
def test_next_vm(docker_client, docker_daemon):
    check_and_remove(docker_client, docker_daemon)


def test_two_sets_of_daemon_labels():
    assert len(DAEMON_LABELS) == 2
"""


def test_preloaded_image_is_on_the_vms_disk_and_a_removal_stays_in_that_vm(
    pytester: pytest.Pytester, vm_image: Path, host: docker.DockerClient
) -> None:
    """Both VMs (the session's and a fresh one, in either order) find the image at start, from
    the snapshot made for the preload set; each removes it, which the other does not see."""
    image_id = host.images.get("debian:bookworm-slim").id
    pytester.makepyfile(PRELOADED_TEST.format(image_id=image_id))
    result = run_machine(pytester, PRELOAD)
    result.assert_outcomes(passed=3)
    result.stdout.fnmatch_lines(["*restored from a snapshot holding the preloaded images*"])
    assert_nothing_left(session_of(result))
    assert any(
        json.loads(meta.read_text()).get("images") == {"debian:bookworm-slim": image_id}
        for meta in (cache_dir() / "vm-snapshots").glob("*/meta.json")
    )


def test_snapshot_with_images_is_made_again_for_another_preload_set(
    pytester: pytest.Pytester, vm_image: Path, host: docker.DockerClient, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    """A snapshot cache of its own: one preload set makes a snapshot, the same set reuses it,
    another set (an extra name, even of the same image) makes another. A rebuilt VM image
    (another root disk) or a rebuilt image (another ID) changes the key too."""
    from pytest_isolated_docker.backends.machine.snapshot import snapshot_key
    from pytest_isolated_docker.backends.machine.vm import Machine

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    snapshots = tmp_path / "cache" / "pytest-isolated-docker" / "vm-snapshots"
    extra = f"pytest-isolated-docker-test/preload:{uuid.uuid4().hex[:8]}"
    host.images.get("debian:bookworm-slim").tag(extra)
    pytester.makepyfile(NEEDS_DAEMON)
    args = ("--docker-backend=machine", f"--docker-vm-image={vm_image}", PRELOAD, STARTUP,
            "-p", "no:cacheprovider")  # fmt: skip
    try:
        for preload, made in (((), True), ((), False), ((f"--docker-preload={extra}",), True)):
            result = pytester.runpytest_subprocess(*args, *preload, timeout=SUBPROCESS_TIMEOUT)
            result.assert_outcomes(passed=1)
            made_line = "*holding the preloaded images (made in * s) at tcp://*"
            if made:
                result.stdout.fnmatch_lines([made_line])
            else:
                result.stdout.fnmatch_lines(["*holding the preloaded images at tcp://*"])
            assert_nothing_left(session_of(result))
    finally:
        host.images.remove(extra)
    holding = sorted(
        sorted(json.loads(meta.read_text())["images"]) for meta in snapshots.glob("*/meta.json")
    )
    assert holding == [["debian:bookworm-slim"], ["debian:bookworm-slim", extra]]

    machine = Machine("qemu-system-x86_64", vm_image / "vmlinuz", vm_image / "initrd.img",
                      "tcg", 2, 2048, True)  # fmt: skip
    disk = tmp_path / "disk.img"
    disk.write_bytes(b"root")
    images = (("debian:bookworm-slim", "sha256:1"),)
    key = snapshot_key(machine, disk, images)
    assert snapshot_key(machine, disk, (("debian:bookworm-slim", "sha256:2"),)) != key
    assert snapshot_key(machine, disk, ()) != key
    os.utime(disk, ns=(1, 1))  # the VM image rebuilt
    assert snapshot_key(machine, disk, images) != key


# --- docker-machine drivers -----------------------------------------------------------------

MACHINE_TEST = """
import os

def test_daemon_of_the_machine(docker_client, docker_daemon, docker_env):
    assert docker_daemon.backend == "machine"
    info = docker_client.info()
    assert any(label.startswith("pytest-isolated-docker.session=") for label in info["Labels"])
    assert "https://mirror.invalid/" in info["RegistryConfig"]["Mirrors"]
    cert_path = docker_env["DOCKER_CERT_PATH"]
    assert os.path.exists(os.path.join(cert_path, "ca.pem"))
    assert "/machines/" in cert_path and "docker-machine-" in cert_path
    out = docker_client.containers.run("debian:bookworm-slim", ["echo", "inside"], remove=True)
    assert out == b"inside\\n"
"""


@pytest.fixture
def standin_on_path(monkeypatch: pytest.MonkeyPatch, host: docker.DockerClient) -> None:
    from pytest_isolated_docker.images import build_dind_image

    monkeypatch.setenv("STANDIN_DIND_IMAGE", build_dind_image(host, quiet=True))
    monkeypatch.setenv("PATH", f"{STANDINS}{os.pathsep}{os.environ['PATH']}")


def standin_containers(host: docker.DockerClient, session: str) -> list[str]:
    containers = host.containers.list(all=True, filters={"label": "standin-docker-machine=1"})
    return [c.name for c in containers if session in (c.name or "")]


@pytest.mark.usefixtures("standin_on_path")
def test_docker_machine_driver_contract_with_standin(
    pytester: pytest.Pytester, host: docker.DockerClient
) -> None:
    pytester.makepyfile(MACHINE_TEST)
    result = pytester.runpytest_subprocess(
        "--docker-backend=machine", "--docker-machine-driver=standin-dind",
        "--docker-machine-opt=--standin-memory 512", "--docker-registry-mirror",
        "https://mirror.invalid/", PRELOAD, "-p", "no:cacheprovider", timeout=SUBPROCESS_TIMEOUT,
    )  # fmt: skip
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["*docker-machine standin-dind at tcp://127.0.0.1:*leaks*: 0*"])
    session = session_of(result)
    assert standin_containers(host, session) == []
    assert_nothing_left(session)


SLOW_MACHINE_TEST = """
import time

def test_slow(docker_client):
    open("started", "w").close()
    time.sleep(300)
"""


@pytest.mark.usefixtures("standin_on_path")
def test_kill_9_during_a_docker_machine_session_removes_the_machine(
    pytester: pytest.Pytester, host: docker.DockerClient
) -> None:
    """The crash cleanup runs `docker-machine rm` before it deletes the storage path (the only
    record docker-machine has of the machine): the stand-in's machine container goes with it."""
    pytester.makepyfile(SLOW_MACHINE_TEST)
    process = spawn_pytest(
        pytester.path, "--docker-backend=machine", "--docker-machine-driver=standin-dind", STARTUP
    )
    session = header_session(process)
    try:
        deadline = time.monotonic() + SUBPROCESS_TIMEOUT
        while not (pytester.path / "started").exists():
            assert time.monotonic() < deadline, "the test did not start"
            time.sleep(0.2)
        assert standin_containers(host, session), "the stand-in machine should run"
    finally:
        process.kill()
        process.communicate()
    deadline = time.monotonic() + 30
    while standin_containers(host, session) or (state_root() / "sessions" / session).exists():
        assert time.monotonic() < deadline, (
            f"left after kill -9: {standin_containers(host, session)}, "
            f"{list((state_root() / 'sessions').glob(session + '*'))}"
        )
        time.sleep(0.2)


@pytest.mark.usefixtures("standin_on_path")
def test_docker_machine_unknown_driver_is_a_clear_error(
    pytester: pytest.Pytester, host: docker.DockerClient
) -> None:
    pytester.makepyfile(NEEDS_DAEMON)
    result = pytester.runpytest_subprocess(
        "--docker-backend=machine", "--docker-machine-driver=no-such-driver",
        "-p", "no:cacheprovider", timeout=SUBPROCESS_TIMEOUT,
    )  # fmt: skip
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(
        [
            "*docker-machine create -d no-such-driver* failed with code 1*",
            '*Driver "no-such-driver" not found*',
        ]
    )
    session = session_of(result)
    assert standin_containers(host, session) == []
    assert_nothing_left(session)


def test_docker_machine_missing_is_a_clear_error(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    pytester.makepyfile(NEEDS_DAEMON)
    result = pytester.runpytest_subprocess(
        "--docker-backend=machine", "--docker-machine-driver=virtualbox",
        "-p", "no:cacheprovider", timeout=SUBPROCESS_TIMEOUT,
    )  # fmt: skip
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*docker-machine not found on PATH*--docker-machine-driver=qemu*"])
    assert_nothing_left(session_of(result))


@pytest.mark.skipif(
    shutil.which("docker-machine") is None, reason="the real docker-machine is not on PATH"
)
def test_docker_machine_driver_with_real_binary(pytester: pytest.Pytester) -> None:
    """Against the real docker-machine, with the driver named by PYTEST_DOCKER_MACHINE_DRIVER
    (default virtualbox) and its options in PYTEST_DOCKER_MACHINE_OPT."""
    driver = os.environ.get("PYTEST_DOCKER_MACHINE_DRIVER") or "virtualbox"
    pytester.makepyfile(NEEDS_DAEMON)
    result = pytester.runpytest_subprocess(
        "--docker-backend=machine", f"--docker-machine-driver={driver}", STARTUP,
        "-p", "no:cacheprovider", timeout=SUBPROCESS_TIMEOUT,
    )  # fmt: skip
    result.assert_outcomes(passed=1)
    assert_nothing_left(session_of(result))


# --- interruptions -----------------------------------------------------------------------------


def _wait_for_vm(session: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    directory = state_root() / "sessions" / session
    while not list(directory.glob("vm-*/qemu.pid")):
        assert time.monotonic() < deadline, "no VM was started"
        time.sleep(0.1)


def test_ctrl_c_while_the_vm_boots_leaves_nothing(
    pytester: pytest.Pytester, vm_image: Path
) -> None:
    pytester.makepyfile(NEEDS_DAEMON)
    process = spawn_pytest(pytester.path, "--docker-backend=machine", STARTUP)
    session = header_session(process)
    _wait_for_vm(session)
    process.send_signal(signal.SIGINT)
    output = process.communicate(timeout=SUBPROCESS_TIMEOUT)[0].decode(errors="replace")
    assert process.returncode in (pytest.ExitCode.INTERRUPTED, pytest.ExitCode.TESTS_FAILED), output
    assert_nothing_left(session)


def test_kill_9_while_the_vm_boots_takes_the_vm_down(
    pytester: pytest.Pytester, vm_image: Path
) -> None:
    """QEMU dies with the process that started it (parent-death signal); the crash reaper then
    removes the per-VM directory."""
    pytester.makepyfile(NEEDS_DAEMON)
    process = spawn_pytest(pytester.path, "--docker-backend=machine", STARTUP)
    session = header_session(process)
    _wait_for_vm(session)
    process.kill()
    process.communicate()
    deadline = time.monotonic() + 30
    while True:
        try:
            assert_nothing_left(session)
            break
        except AssertionError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def test_vm_images_of_older_recipes_are_removed_after_a_build(
    host: docker.DockerClient, tmp_path: Path
) -> None:
    """After a build, the images of other recipe keys go (directory and build image in the
    engine), except one whose build holds its lock; partial builds (dot dirs) are left to the
    build that owns their key."""
    from pytest_isolated_docker.coordination import locked
    from pytest_isolated_docker.images import VM_REPOSITORY, _remove_older_vm_images

    vm = tmp_path / "vm"
    current, old, busy, partial = (vm / n for n in ("current", "old", "busy", ".current-x"))
    for directory in (current, old, busy, partial):
        directory.mkdir(parents=True)
        (directory / "disk.img").write_bytes(b"disk")
    old_key = f"old-{uuid.uuid4().hex[:8]}"
    old = old.rename(vm / old_key)
    host.images.get("debian:bookworm-slim").tag(VM_REPOSITORY, old_key)
    with locked(vm / "busy.lock"):
        _remove_older_vm_images(host, keep=current)
    assert sorted(p.name for p in vm.iterdir() if p.is_dir()) == [".current-x", "busy", "current"]
    with pytest.raises(docker.errors.ImageNotFound):
        host.images.get(f"{VM_REPOSITORY}:{old_key}")
    assert host.images.get("debian:bookworm-slim")
