"""The coordination core: holders, leases, session claims and process identity, with real
processes (children killed with SIGKILL, one in a PID namespace of its own). No Docker engine."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from pytest_isolated_docker import coordination
from pytest_isolated_docker.coordination import (
    Holder,
    Lease,
    LockTimeout,
    ProcessIdentity,
    claim_session,
    created_first,
    dead_session_dirs,
    is_held,
    locked,
    release_session,
    session_alive,
)


@pytest.fixture(autouse=True)
def runtime_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    runtime = tmp_path / "runtime"
    runtime.mkdir()
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(runtime))
    return runtime


def _holding_child(code: str, *prefix: str) -> subprocess.Popen[str]:
    """A child process that runs ``code`` (which takes its holder), prints "held", then sleeps."""
    script = f"{code}\nprint('held', flush=True)\nimport time\ntime.sleep(300)\n"
    child = subprocess.Popen(
        [*prefix, sys.executable, "-c", script], stdout=subprocess.PIPE, text=True, env=os.environ
    )
    assert child.stdout is not None
    line = child.stdout.readline()
    if line.strip() != "held":
        child.kill()
        pytest.fail(f"the child did not take its holder: {line!r}")
    return child


@pytest.fixture
def children() -> Iterator[list[subprocess.Popen[str]]]:
    started: list[subprocess.Popen[str]] = []
    yield started
    for child in started:
        child.kill()
        child.wait()
        if child.stdout is not None:
            child.stdout.close()


def _kill(child: subprocess.Popen[str]) -> None:
    child.send_signal(signal.SIGKILL)
    child.wait()


def test_a_holder_is_held_until_released(tmp_path: Path) -> None:
    path = tmp_path / "x.holder"
    holder = Holder.take(path)
    assert holder is not None
    assert is_held(path)
    assert Holder.take(path) is None, "a second holder of the same file must be refused"
    holder.release()
    assert not is_held(path)
    assert not path.exists()


def test_a_killed_holders_lock_is_proof_of_death(
    tmp_path: Path, children: list[subprocess.Popen[str]]
) -> None:
    path = tmp_path / "child.holder"
    child = _holding_child(
        "from pathlib import Path\nfrom pytest_isolated_docker.coordination import Holder\n"
        f"h = Holder.take(Path({str(path)!r}))\nassert h is not None"
    )
    children.append(child)
    assert is_held(path)
    _kill(child)
    assert not is_held(path)


def test_lease_counts_live_holders_and_names_the_last_one_out(
    tmp_path: Path, children: list[subprocess.Popen[str]]
) -> None:
    lease = Lease(tmp_path / "users", "a test lease")
    mine = lease.acquire()
    child = _holding_child(
        "from pathlib import Path\nfrom pytest_isolated_docker.coordination import Lease\n"
        f"h = Lease(Path({str(tmp_path / 'users')!r}), 'x').acquire()"
    )
    children.append(child)
    assert lease.holders() == 2
    _kill(child)
    assert lease.holders() == 1, "a killed holder no longer counts"
    assert len(list((tmp_path / "users").glob("*.holder"))) == 1, "its file is removed"
    with lease.exclusive():
        assert lease.release(mine) is True


def test_release_is_not_last_while_another_holds(
    tmp_path: Path, children: list[subprocess.Popen[str]]
) -> None:
    lease = Lease(tmp_path / "users", "a test lease")
    mine = lease.acquire()
    children.append(
        _holding_child(
            "from pathlib import Path\nfrom pytest_isolated_docker.coordination import Lease\n"
            f"h = Lease(Path({str(tmp_path / 'users')!r}), 'x').acquire()"
        )
    )
    assert lease.release(mine) is False


def test_lock_timeout_is_a_clear_error(
    tmp_path: Path, children: list[subprocess.Popen[str]]
) -> None:
    path = tmp_path / "busy.lock"
    children.append(
        _holding_child(
            "from pathlib import Path\nfrom pytest_isolated_docker.coordination import locked\n"
            f"lock = locked(Path({str(path)!r}))\nlock.__enter__()"
        )
    )
    with (
        pytest.raises(LockTimeout, match=r"waited 0 s for the lock .*busy\.lock \(a test\)"),
        locked(path, timeout=0.1, purpose="a test"),
    ):
        pass


def test_session_claim_lives_with_its_process(
    children: list[subprocess.Popen[str]], runtime_dir: Path
) -> None:
    child = _holding_child(
        "from pytest_isolated_docker.coordination import claim_session\n"
        "claim_session('other-session')"
    )
    children.append(child)
    directory = coordination.sessions_root() / "other-session"
    assert session_alive(directory)
    assert directory not in dead_session_dirs()
    _kill(child)
    assert not session_alive(directory)
    assert directory in dead_session_dirs()


def test_the_last_process_of_a_session_removes_its_directory(
    children: list[subprocess.Popen[str]],
) -> None:
    directory = claim_session("shared-session")
    children.append(
        _holding_child(
            "from pytest_isolated_docker.coordination import claim_session\n"
            "claim_session('shared-session')"
        )
    )
    assert release_session("shared-session") is False, "the child still holds it"
    assert directory.exists()
    _kill(children[0])
    assert claim_session("shared-session") == directory
    assert release_session("shared-session") is True
    assert not directory.exists()


def test_a_process_exiting_without_cleanup_code_leaves_its_dir_to_atexit() -> None:
    subprocess.run(
        [
            sys.executable,
            "-c",
            "from pytest_isolated_docker.coordination import claim_session\n"
            "claim_session('short-lived')",
        ],
        check=True,
        env=os.environ,
    )
    assert not (coordination.sessions_root() / "short-lived").exists()


@pytest.mark.skipif(
    shutil.which("unshare") is None or os.geteuid() != 0, reason="needs root and unshare"
)
def test_a_session_in_another_pid_namespace_is_alive(
    children: list[subprocess.Popen[str]],
) -> None:
    """Its pid means nothing here (and is not in our /proc), yet its claim is seen as alive."""
    child = _holding_child(
        "import os\nfrom pytest_isolated_docker.coordination import claim_session\n"
        "assert os.getpid() < 10, os.getpid()\n"
        "claim_session('namespaced')",
        "unshare",
        "--pid",
        "--fork",
        "--mount-proc",
        "--kill-child",
    )
    children.append(child)
    directory = coordination.sessions_root() / "namespaced"
    assert session_alive(directory)
    assert directory not in dead_session_dirs()
    _kill(child)  # --kill-child: the namespace's init dies with unshare
    deadline = time.monotonic() + 10
    while session_alive(directory):
        assert time.monotonic() < deadline, "the namespace's process did not die"
        time.sleep(0.05)
    assert directory in dead_session_dirs()


def test_process_identity_tells_a_reused_pid_apart(children: list[subprocess.Popen[str]]) -> None:
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"], text=True)
    children.append(child)
    identity = ProcessIdentity.of(child.pid)
    assert identity.process() is not None
    impostor = ProcessIdentity(child.pid, identity.created - 100)
    assert impostor.process() is None
    assert impostor.kill() is False
    assert child.poll() is None, "a process that only shares the pid must not be signalled"
    assert identity.kill() is True
    child.wait(timeout=10)  # psutil reaped it already: the status is gone
    assert identity.process() is None
    assert ProcessIdentity.from_json(identity.to_json()) == identity
    assert ProcessIdentity.from_json({"pid": "x"}) is None


def test_runtime_id_is_stable_and_per_runtime_dir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = coordination.runtime_id()
    assert coordination.runtime_id() == first
    other = tmp_path / "other-runtime"
    other.mkdir()
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(other))
    assert coordination.runtime_id() != first
    assert oct((other / "pytest-isolated-docker").stat().st_mode)[-3:] == "700"


def test_created_first_chooses_one_caller(tmp_path: Path) -> None:
    marker = tmp_path / "engine-used"
    assert created_first(marker) is True
    assert created_first(marker) is False
    assert marker.stat().st_mode & 0o777 == 0o600
