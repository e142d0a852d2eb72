"""The dind image's contents and the dind backend's "--privileged refused" memo.

Real engines only: the ``docker top`` test starts a dind daemon, the memo round-trip test starts
one with the memo out of the way, and the doctor test runs the command-line tool. The memo helpers
take the engine's facts as plain values, so their unit tests need no engine.
"""

from __future__ import annotations

import collections.abc
import contextlib
import os
import subprocess
import sys
import time
from pathlib import Path

import docker
import pytest

from pytest_isolated_docker.backends.dind import (
    PRIVILEGE_MEMO_TTL,
    PRIVILEGED_REFUSED_HINTS,
    EngineFacts,
    describe_privilege_memo,
    privilege_memo_path,
    read_privilege_memo,
    write_privilege_memo,
)
from pytest_isolated_docker.daemon import DockerDaemon

from .conftest import api_daemon

ENGINE = EngineFacts("AAAA:BBBB:CCCC", "20.10.24+dfsg1", "6.1.0-13-amd64")
T0 = 1_800_000_000.0


@pytest.fixture(scope="module")
def daemon() -> collections.abc.Iterator[DockerDaemon]:
    """A dind daemon started through the engine API, without pytest's plugin layer."""
    with api_daemon(preload=["debian:bookworm-slim"]) as started:
        yield started


@contextlib.contextmanager
def memo_set_aside(path: Path) -> collections.abc.Iterator[None]:
    """Let a test own ``path``: whatever was there (a real memo, say) is put back afterwards."""
    saved = path.read_bytes() if path.exists() else None
    try:
        yield
    finally:
        if saved is None:
            path.unlink(missing_ok=True)
        else:
            path.write_bytes(saved)


# --- The image -----------------------------------------------------------------------------------


def test_docker_top_lists_the_processes_of_an_inner_container(daemon: DockerDaemon) -> None:
    # The inner dockerd answers `docker top` by running ps; the image must have it (procps).
    container = daemon.client.containers.run("debian:bookworm-slim", ["sleep", "30"], detach=True)
    try:
        top = container.top()
        titles = top["Titles"]
        command = titles.index("CMD")
        commands = [row[command] for row in top["Processes"]]
        assert "sleep 30" in commands, top
    finally:
        container.remove(force=True)


# --- The memo's helpers (no engine) --------------------------------------------------------------


def test_a_memo_is_read_back_with_its_reason_and_time(tmp_path: Path) -> None:
    path = write_privilege_memo(
        ENGINE, "unable to apply caps: operation not permitted", T0, tmp_path
    )
    assert path.parent == tmp_path
    assert ENGINE.engine_id not in path.name, "the file is named by a hash of the facts"
    memo = read_privilege_memo(ENGINE, T0 + 60, tmp_path)
    assert memo is not None
    assert memo["reason"] == "unable to apply caps: operation not permitted"
    assert memo["recorded"] == T0
    assert (memo["engine_id"], memo["version"], memo["kernel"]) == (
        ENGINE.engine_id,
        ENGINE.version,
        ENGINE.kernel,
    )
    # Still trusted just before it expires.
    assert read_privilege_memo(ENGINE, T0 + PRIVILEGE_MEMO_TTL - 1, tmp_path) is not None


def test_an_expired_memo_is_ignored_and_removed(tmp_path: Path) -> None:
    path = write_privilege_memo(ENGINE, "refused", T0, tmp_path)
    assert PRIVILEGE_MEMO_TTL == 24 * 3600
    assert read_privilege_memo(ENGINE, T0 + PRIVILEGE_MEMO_TTL + 1, tmp_path) is None
    assert not path.exists()


def test_a_memo_from_the_future_is_not_trusted(tmp_path: Path) -> None:
    """A clock set back must not stretch the memo's life past its expiry."""
    path = write_privilege_memo(ENGINE, "refused", T0 + 3600, tmp_path)
    assert read_privilege_memo(ENGINE, T0, tmp_path) is None
    assert not path.exists()


@pytest.mark.parametrize(
    "other",
    [
        EngineFacts(ENGINE.engine_id, "24.0.7", ENGINE.kernel),
        EngineFacts(ENGINE.engine_id, ENGINE.version, "6.1.0-18-amd64"),
        EngineFacts("DDDD:EEEE:FFFF", ENGINE.version, ENGINE.kernel),
    ],
    ids=["engine-version", "kernel", "engine-id"],
)
def test_a_memo_applies_only_to_the_same_engine_version_and_kernel(
    tmp_path: Path, other: EngineFacts
) -> None:
    path = write_privilege_memo(ENGINE, "refused", T0, tmp_path)
    assert privilege_memo_path(other, tmp_path) != path
    assert read_privilege_memo(other, T0 + 60, tmp_path) is None
    assert path.exists(), "asking about another engine leaves this one's memo alone"
    assert read_privilege_memo(ENGINE, T0 + 60, tmp_path) is not None


def test_a_memo_whose_facts_do_not_match_its_name_is_ignored(tmp_path: Path) -> None:
    other = EngineFacts(ENGINE.engine_id, "24.0.7", ENGINE.kernel)
    written = write_privilege_memo(other, "refused", T0, tmp_path)
    written.rename(privilege_memo_path(ENGINE, tmp_path))
    assert read_privilege_memo(ENGINE, T0 + 60, tmp_path) is None


def test_the_doctor_line_tells_age_expiry_and_how_to_retry(tmp_path: Path) -> None:
    path = write_privilege_memo(ENGINE, "refused", T0, tmp_path)
    memo = read_privilege_memo(ENGINE, T0 + 600, tmp_path)
    assert memo is not None
    line = describe_privilege_memo(memo, path, T0 + 600)
    assert line == (
        f"--privileged was refused by this engine (engine {ENGINE.engine_id} {ENGINE.version}) "
        f"10 min ago: dind containers use the capability recipe; the memo expires in 23.8 h "
        f"(remove {path} to retry now)"
    )


# --- The memo against the real host engine -------------------------------------------------------


def test_a_refusal_is_memoised_for_this_engine(host_engine: docker.DockerClient) -> None:
    """With no memo, ``auto`` tries --privileged; a refusal leaves a memo, a success none."""
    path = privilege_memo_path(EngineFacts.of(host_engine))
    with memo_set_aside(path):
        path.unlink(missing_ok=True)
        with api_daemon(dind_privileged="auto") as started:
            mode = started.describe()["mode"]
        memo = read_privilege_memo(EngineFacts.of(host_engine))
        if mode == "privileged":
            assert memo is None
        else:
            assert mode == "capabilities (--privileged refused by the engine)"
            assert memo is not None
            assert any(hint in memo["reason"] for hint in PRIVILEGED_REFUSED_HINTS), memo
            assert abs(time.time() - memo["recorded"]) < 300


def test_doctor_prints_a_live_memo_as_a_note(host_engine: docker.DockerClient) -> None:
    engine = EngineFacts.of(host_engine)
    path = privilege_memo_path(engine)
    with memo_set_aside(path):
        write_privilege_memo(engine, "refused (written by test_dind_image)", time.time() - 90)
        env = {k: v for k, v in os.environ.items() if k != "PYTEST_DOCKER_DIND_PRIVILEGED"}
        result = subprocess.run(
            [sys.executable, "-m", "pytest_isolated_docker.cli", "doctor", "--backend", "dind"],
            capture_output=True,
            text=True,
            env=env,
            timeout=300,
        )
        output = result.stdout + result.stderr
        notes = [line.strip() for line in result.stdout.splitlines() if "note: --priv" in line]
        assert notes == [
            f"note: --privileged was refused by this engine (engine {engine.engine_id} "
            f"{engine.version}) 1 min ago: dind containers use the capability recipe; the memo "
            f"expires in 24.0 h (remove {path} to retry now)"
        ], output
        # Under the dind row: after it, before the next backend's row.
        lines = result.stdout.splitlines()
        note_at = next(i for i, line in enumerate(lines) if "note: --priv" in line)
        row_at = max(i for i, line in enumerate(lines[:note_at]) if not line.startswith(" "))
        assert lines[row_at].startswith("dind "), output
