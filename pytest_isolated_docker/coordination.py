"""Cross-process coordination: every file lock and shared directory of the plugin lives here.

xdist workers of one session share a session directory (CA, client certificate, a shared
daemon's lease); all sessions of one user share a cache directory (built images, probes).
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import filelock

# Generous: a lock is held at most for a build or a pull, which have their own bounds.
LOCK_TIMEOUT = 900.0


def state_root() -> Path:
    """Per-user runtime directory (0700) under which each session has its own directory."""
    root = Path(tempfile.gettempdir()) / f"pytest-isolated-docker-{os.getuid()}"
    root.mkdir(mode=0o700, exist_ok=True)
    if root.stat().st_uid != os.getuid():
        raise PermissionError(f"{root} belongs to another user; refusing to keep keys there")
    os.chmod(root, 0o700)
    return root


def session_dir(session_id: str) -> Path:
    path = state_root() / "sessions" / session_id
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    return path


def cache_dir() -> Path:
    """Per-user cache (``$XDG_CACHE_HOME/pytest-isolated-docker``): VM images, probes."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    path = Path(base) / "pytest-isolated-docker"
    path.mkdir(parents=True, exist_ok=True)
    return path


@contextlib.contextmanager
def locked(path: Path, timeout: float = LOCK_TIMEOUT) -> Iterator[None]:
    """Hold an exclusive lock on ``path`` (a file lock shared by processes)."""
    with filelock.FileLock(str(path), timeout=timeout):
        yield


def read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return {}
    return data if isinstance(data, dict) else {}


def write_json(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_name(path.name + f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=1, sort_keys=True))
    os.replace(tmp, path)
