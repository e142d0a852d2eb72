"""Cross-process coordination: every lock, lease and liveness decision of the plugin lives here.

One rule answers "is it still running?": a process is alive exactly while it holds an ``flock``
on a file of its own (a *holder*). The kernel drops the lock when the process dies, however it
dies, so a holder that can be locked is proof of death; one that cannot is proof of life. This
works across PID namespaces and containers sharing the directory, on macOS, under ``hidepid``, and
is immune to pid reuse, which "``/proc/<pid>`` is readable" is not.

- :class:`Holder`: one held flock (a process's claim on something).
- :class:`Lease`: a counted lease, a directory of holders; ``release`` says who was last out.
- Session directories (:func:`claim_session`): every process using a session directory holds a
  holder in it; a directory none of whose holders is held belongs to a dead session.
- :class:`ProcessIdentity`: pid + creation time of a process this one started, so that a signal
  never reaches a process that merely reuses the pid.
- :func:`locked`: a mutex on a file (``filelock``) whose time-out is a clear error.

State that must not survive a reboot (sessions, leases, memos) lives under the runtime directory;
what is worth keeping (built images, VM snapshots, the registry cache) under the cache directory.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import fcntl
import json
import os
import secrets
import shutil
import signal
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import filelock
import psutil

from .errors import IsolatedDockerError

# Generous: a lock is held at most for a build or a pull, which have their own bounds.
LOCK_TIMEOUT = 900.0
HOLDER_SUFFIX = ".holder"
SESSIONS = "sessions"
HOLDERS = "holders"
# A session directory being made carries this prefix until its first holder is in place.
NEW_PREFIX = ".new-"
# How long a directory that is still being made is left alone by sweeps.
NEW_GRACE_SECONDS = 60.0


class LockTimeout(IsolatedDockerError):
    """A lock shared with other processes was not obtained in time."""


def runtime_root() -> Path:
    """Per-user runtime directory (0700): sessions, leases, memos; gone after a reboot.

    ``$XDG_RUNTIME_DIR/pytest-isolated-docker`` when that is set, else
    ``<tmp>/pytest-isolated-docker-<uid>``.
    """
    xdg = os.environ.get("XDG_RUNTIME_DIR", "")
    if xdg and os.path.isdir(xdg):
        root = Path(xdg) / "pytest-isolated-docker"
    else:
        root = Path(tempfile.gettempdir()) / f"pytest-isolated-docker-{os.getuid()}"
    root.mkdir(mode=0o700, exist_ok=True)
    if root.stat().st_uid != os.getuid():
        raise PermissionError(f"{root} belongs to another user; refusing to keep keys there")
    os.chmod(root, 0o700)
    return root


#: The name the rest of the code (and the tests) know the runtime directory by.
state_root = runtime_root


def runtime_id() -> str:
    """Identifies this runtime directory: processes that share it can judge each other's holders.

    Written once (atomically) into the runtime directory. Two containers made from one image share
    ``/etc/machine-id`` but not their ``/tmp``, so they get different ids; two PID namespaces on one
    file system share it, and their flocks are visible to each other.
    """
    path = runtime_root() / "runtime-id"
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        pass
    candidate = path.with_name(f"runtime-id.{secrets.token_hex(4)}.tmp")
    candidate.write_text(secrets.token_hex(8))
    with contextlib.suppress(FileExistsError):
        os.link(candidate, path)  # atomic, and never replaces an id another process wrote
    candidate.unlink()
    return path.read_text().strip()


def cache_dir() -> Path:
    """Per-user cache (``$XDG_CACHE_HOME/pytest-isolated-docker``): images, VM snapshots."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    path = Path(base) / "pytest-isolated-docker"
    path.mkdir(parents=True, exist_ok=True)
    return path


@contextlib.contextmanager
def locked(path: Path, timeout: float = LOCK_TIMEOUT, purpose: str = "") -> Iterator[None]:
    """Hold an exclusive lock on ``path`` (a mutex shared by processes).

    A time-out raises :class:`LockTimeout` naming the lock, what it guards and what to do.
    """
    lock = filelock.FileLock(str(path), timeout=timeout)
    try:
        lock.acquire()
    except filelock.Timeout:
        raise LockTimeout(
            f"waited {timeout:.0f} s for the lock {path}"
            + (f" ({purpose})" if purpose else "")
            + ": another test run holds it and has not finished. Wait for that run, or stop it; "
            "a lock held by a process that died is released by the kernel at once."
        ) from None
    try:
        yield
    finally:
        lock.release()


class Holder:
    """An ``flock`` held on a file by this process for as long as the holder is open."""

    def __init__(self, path: Path, fd: int) -> None:
        self.path = path
        self._fd: int | None = fd

    @classmethod
    def take(cls, path: Path) -> Holder | None:
        """Lock ``path`` (created if needed) without waiting; None when another holds it."""
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return None
        return cls(path, fd)

    @property
    def fd(self) -> int:
        """The locked descriptor (to hand to a child process that must hold the lock too)."""
        assert self._fd is not None, "released"
        return self._fd

    def release(self, unlink: bool = True) -> None:
        """Drop the lock (and, by default, the file: a holder file left behind means nothing)."""
        if self._fd is None:
            return
        if unlink:
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()
        os.close(self._fd)
        self._fd = None


def is_held(path: Path) -> bool:
    """True while some process holds ``path``'s flock (this one included); False for a missing
    file or one nobody holds: the proof that its holder is gone."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


class Lease:
    """A counted lease: a directory of holder files, one per holding process.

    Whoever releases last (no other holder alive) is told so, under the lease's mutex, and is the
    one who stops the shared thing. Holders of killed processes are dead at once and their files
    are removed by the next count.
    """

    def __init__(self, directory: Path, purpose: str) -> None:
        self.directory = directory
        self.purpose = purpose
        self._mutex = directory.with_name(directory.name + ".lock")

    @contextlib.contextmanager
    def exclusive(self, timeout: float = LOCK_TIMEOUT) -> Iterator[None]:
        """The lease's mutex: decisions about starting and stopping are made under it."""
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        with locked(self._mutex, timeout, self.purpose):
            yield

    def acquire(self) -> Holder:
        """A holder of this lease for this process (call under :meth:`exclusive`, or not).

        The holder file is locked under a temporary name and then renamed into place, so that
        a count never sees it unlocked (and removes it as dead).
        """
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        token = secrets.token_hex(8)
        staging = self.directory / f".{token}.tmp"
        holder = Holder.take(staging)
        assert holder is not None, "a fresh random file cannot be locked by another process"
        final = self.directory / f"{token}{HOLDER_SUFFIX}"
        os.rename(staging, final)
        holder.path = final
        return holder

    def holders(self) -> int:
        """How many live processes hold the lease; dead holders' files are removed."""
        alive = 0
        for path in self.directory.glob(f"*{HOLDER_SUFFIX}"):
            if is_held(path):
                alive += 1
            else:
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
        return alive

    def release(self, holder: Holder) -> bool:
        """Drop ``holder``; True when no other live process holds the lease (last one out).

        Call it under :meth:`exclusive` so that nobody joins between the count and the stop.
        """
        holder.release()
        return self.holders() == 0


def die_with_parent() -> None:
    """For ``preexec_fn``: the child gets SIGKILL when the thread that started it dies, so a
    helper process (a VM, an SSH tunnel) cannot outlive a killed pytest even before the crash
    watchdog runs. Linux only; elsewhere the watchdog alone stops it."""
    with contextlib.suppress(AttributeError):  # no prctl: not Linux
        if _LIBC is not None:
            _LIBC.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() == 1:
        # The parent died between the fork and the line above: no signal will come.
        os._exit(1)


# Loaded in the parent: the child between its fork and the prctl above does as little as can be.
_PR_SET_PDEATHSIG = 1
try:
    _LIBC: ctypes.CDLL | None = ctypes.CDLL(None, use_errno=True)
except OSError:
    _LIBC = None


@dataclass(frozen=True)
class ProcessIdentity:
    """A process as this host sees it: pid and creation time (a reused pid has another)."""

    pid: int
    created: float

    @classmethod
    def of(cls, pid: int) -> ProcessIdentity:
        return cls(pid, psutil.Process(pid).create_time())

    def to_json(self) -> dict[str, Any]:
        return {"pid": self.pid, "created": self.created}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ProcessIdentity | None:
        try:
            return cls(int(data["pid"]), float(data["created"]))
        except (KeyError, TypeError, ValueError):
            return None

    def process(self) -> psutil.Process | None:
        """The process if it is still this one and visible from here; None otherwise."""
        try:
            process = psutil.Process(self.pid)
            if abs(process.create_time() - self.created) > 0.01:
                return None
        except psutil.Error:
            return None
        return process

    def kill(self) -> bool:
        """SIGKILL the process if it is still this one; True when it was."""
        process = self.process()
        if process is None:
            return False
        with contextlib.suppress(psutil.Error):
            process.kill()
            process.wait(timeout=30)
        return True


# ---- session directories --------------------------------------------------------------------

_claims: dict[str, Holder] = {}
_claims_lock = threading.Lock()


def sessions_root() -> Path:
    path = runtime_root() / SESSIONS
    path.mkdir(mode=0o700, exist_ok=True)
    return path


def claim_session(session_id: str) -> Path:
    """The session's directory, made if needed, with this process holding a holder in it.

    Idempotent per process. The directory appears under its final name only once a holder in it
    is held, so that no sweep ever sees a live session's directory unclaimed. At exit the process
    drops its holder and, when it was the last, removes the directory.
    """
    with _claims_lock:
        final = sessions_root() / session_id
        if session_id in _claims and final.is_dir():
            return final
        while True:
            if final.is_dir():
                holder = Lease(final / HOLDERS, "the session directory").acquire()
                if final.is_dir():  # not swept between the check and the claim
                    break
                holder.release()
                continue
            staging = final.with_name(f"{NEW_PREFIX}{session_id}-{secrets.token_hex(4)}")
            staging.mkdir(mode=0o700)
            holder = Lease(staging / HOLDERS, "the session directory").acquire()
            try:
                os.rename(staging, final)
            except OSError:  # another process of the session made it first
                holder.release()
                shutil.rmtree(staging, ignore_errors=True)
                continue
            holder.path = final / HOLDERS / holder.path.name
            break
        _claims[session_id] = holder
        return final


def release_session(session_id: str, remove: bool = True) -> bool:
    """Drop this process's claim; with ``remove``, delete the directory if no other process
    holds it. True when the directory is gone."""
    with _claims_lock:
        holder = _claims.pop(session_id, None)
        directory = sessions_root() / session_id
        if holder is not None:
            holder.release()
        if remove and directory.is_dir() and not session_alive(directory):
            shutil.rmtree(directory, ignore_errors=True)
        return not directory.exists()


def session_alive(directory: Path) -> bool:
    """True while any process holds the session directory."""
    return Lease(directory / HOLDERS, "the session directory").holders() > 0


def dead_session_dirs() -> list[Path]:
    """Session directories no live process holds (and stale half-made ones)."""
    found = []
    for directory in sorted(sessions_root().iterdir()):
        if not directory.is_dir():
            continue
        if directory.name.startswith(NEW_PREFIX):
            with contextlib.suppress(OSError):
                if time.time() - directory.stat().st_mtime < NEW_GRACE_SECONDS:
                    continue
        if not session_alive(directory):
            found.append(directory)
    return found


@atexit.register
def _release_claims() -> None:
    for session_id in list(_claims):
        release_session(session_id)


def created_first(path: Path) -> bool:
    """Create the empty file ``path`` (0600): True for the one process that created it, False
    for every other (it existed). Chooses one process of several for a once-only task."""
    try:
        os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
    except FileExistsError:
        return False
    return True


# ---- small JSON state files -----------------------------------------------------------------


def read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return {}
    return data if isinstance(data, dict) else {}


def write_json(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_name(path.name + f".{secrets.token_hex(4)}.tmp")
    tmp.write_text(json.dumps(data, indent=1, sort_keys=True))
    os.replace(tmp, path)
