"""Crash-proof cleanup: a watchdog per pytest process, and a sweep of stale sessions.

The watchdog is a detached process (its own session, so Ctrl-C to pytest's process group does
not reach it) whose stdin is a pipe that only the pytest process holds open. When pytest dies in
any way (SIGKILL, out-of-memory, a CI timeout), the kernel closes the pipe, the watchdog reads
EOF and removes everything labelled with that process's pid, then, for the session's owner, kills
the session's VMs and removes the session directory. Nothing runs in a container and no host
socket is handed to anything.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import docker
import docker.errors

from .backends import describe_objects, list_objects
from .coordination import read_json, state_root, write_json
from .daemon import remove_objects
from .labels import HOST, PID, SESSION, host_id

OWNER_FILE = "owner.json"


def _process_start_time(pid: int) -> str | None:
    """The start time of ``pid`` (field 22 of /proc/PID/stat), to tell a reused pid apart."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]


def process_alive(pid: int, start_time: str | None = None) -> bool:
    current = _process_start_time(pid)
    if current is None:
        return False
    return start_time is None or current == start_time


def claim_session(session_dir: Path, pid: int) -> None:
    """Record the process owning a session directory (its controller)."""
    write_json(session_dir / OWNER_FILE, {"pid": pid, "start": _process_start_time(pid)})


def _session_owner_alive(session_dir: Path) -> bool:
    owner = read_json(session_dir / OWNER_FILE)
    if not owner:
        # Being created right now, or left by a crash before claiming: judge by age.
        try:
            return (time.time() - session_dir.stat().st_mtime) < 3600
        except OSError:
            return False
    return process_alive(int(owner["pid"]), owner.get("start"))


@dataclass
class Removal:
    """Something the sweep removed (or, with dry_run, would remove)."""

    what: str

    def __str__(self) -> str:
        return self.what


def kill_vms(session_dir: Path, dry_run: bool = False) -> list[Removal]:
    """Kill QEMU processes recorded in ``<session_dir>/vm-*/qemu.pid``."""
    removed: list[Removal] = []
    for pidfile in sorted(session_dir.glob("vm-*/qemu.pid")):
        try:
            pid = int(pidfile.read_text().strip())
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except (OSError, ValueError):
            continue
        if b"qemu" not in cmdline:
            continue  # the pid was reused by something that is not ours
        removed.append(Removal(f"qemu process {pid} ({pidfile.parent.name})"))
        if not dry_run:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    return removed


def remove_session_dir(session_dir: Path, dry_run: bool = False) -> list[Removal]:
    removed = kill_vms(session_dir, dry_run)
    if session_dir.exists():
        removed.append(Removal(f"session directory {session_dir}"))
        if not dry_run:
            shutil.rmtree(session_dir, ignore_errors=True)
    return removed


def _labelled(client: docker.DockerClient) -> dict[tuple[str, str], set[str]]:
    """(session, pid) pairs of this host's labelled objects, with what they are."""
    found: dict[tuple[str, str], set[str]] = {}
    for what, labels in list_objects(client, {"label": [SESSION, f"{HOST}={host_id()}"]}):
        key = (labels.get(SESSION, ""), labels.get(PID, ""))
        found.setdefault(key, set()).add(what)
    return found


def sweep(client: docker.DockerClient | None, dry_run: bool = False) -> list[Removal]:
    """Remove what sessions whose owning process is gone left on the host engine and on disk."""
    removed: list[Removal] = []
    if client is not None:
        for (session, pid), objects in sorted(_labelled(client).items()):
            if pid.isdigit() and process_alive(int(pid)):
                continue
            removed.extend(Removal(o) for o in sorted(objects))
            if not dry_run:
                remove_objects(client, {"label": [f"{SESSION}={session}", f"{PID}={pid}"]})
    sessions = state_root() / "sessions"
    for session_dir in sorted(sessions.glob("*")) if sessions.exists() else []:
        if not _session_owner_alive(session_dir):
            removed.extend(remove_session_dir(session_dir, dry_run))
    # Imported here: the machine backend's modules import this one.
    from .backends.machine.snapshot import unfinished_builds

    for build in unfinished_builds():
        removed.append(Removal(f"unfinished VM snapshot {build}"))
        if not dry_run:
            shutil.rmtree(build, ignore_errors=True)
    return removed


def _remove_labelled(labels: list[str], environment: Mapping[str, str] | None) -> list[str]:
    """Remove this host's objects carrying all ``labels``; return what was there."""
    filters = {"label": [*labels, f"{HOST}={host_id()}"]}
    try:
        client = docker.from_env(timeout=30, environment=dict(environment or os.environ))
    except docker.errors.DockerException:
        return []
    try:
        found = describe_objects(client, filters)
        if found:
            remove_objects(client, filters)
        return found
    except docker.errors.DockerException:
        return []
    finally:
        client.close()


def reap_session(session_id: str, environment: Mapping[str, str] | None = None) -> list[str]:
    """Remove whatever still carries the session's label (its processes are all done).

    ``environment`` says how to reach the host engine (default: this process's environment).
    """
    return _remove_labelled([f"{SESSION}={session_id}"], environment)


def reap_process(session_id: str, pid: int, owns_session: bool) -> list[Removal]:
    """What the watchdog does when process ``pid`` is gone."""
    labels = [f"{SESSION}={session_id}", f"{PID}={pid}"]
    removed = [Removal(o) for o in _remove_labelled(labels, None)]
    if owns_session:
        removed.extend(Removal(o) for o in reap_session(session_id))
        removed.extend(remove_session_dir(state_root() / "sessions" / session_id))
    return removed


class Watchdog:
    """Handle on the detached watchdog process of this pytest process."""

    def __init__(self, process: subprocess.Popen[bytes], pipe: IO[bytes]) -> None:
        self._process = process
        self._pipe = pipe

    @classmethod
    def start(cls, session_id: str, owns_session: bool) -> Watchdog:
        read_end, write_end = os.pipe()
        args = [
            sys.executable,
            "-m",
            "pytest_isolated_docker.reaper",
            "watch",
            "--session",
            session_id,
            "--pid",
            str(os.getpid()),
        ]
        if owns_session:
            args.append("--owns-session")
        process = subprocess.Popen(
            args,
            stdin=read_end,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
            close_fds=True,
        )
        os.close(read_end)
        os.set_inheritable(write_end, False)
        return cls(process, os.fdopen(write_end, "wb", buffering=0))

    def dismiss(self) -> None:
        """Normal end: everything was cleaned up in-process; tell the watchdog to just exit."""
        try:
            self._pipe.write(b"done")
            self._pipe.close()
        except OSError:
            pass
        try:
            self._process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self._process.kill()


def _watch(session_id: str, pid: int, owns_session: bool) -> int:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    received = b""
    while True:
        chunk = os.read(0, 64)
        if not chunk:
            break
        received += chunk
    if received == b"done":
        return 0
    reap_process(session_id, pid, owns_session)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pytest_isolated_docker.reaper")
    sub = parser.add_subparsers(dest="command", required=True)
    watch = sub.add_parser("watch")
    watch.add_argument("--session", required=True)
    watch.add_argument("--pid", type=int, required=True)
    watch.add_argument("--owns-session", action="store_true")
    args = parser.parse_args(argv)
    return _watch(args.session, args.pid, args.owns_session)


if __name__ == "__main__":
    sys.exit(main())
