"""Labels and names of the objects the plugin makes: what sweeps and ``prune`` look for."""

from __future__ import annotations

import dataclasses
import datetime
import os
import re
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from pytest_isolated_docker import labels
from pytest_isolated_docker.labels import Identity, host_id, new_session_id

# What the Docker engine accepts as a container, network or volume name.
DOCKER_NAME = re.compile(r"[a-zA-Z0-9][a-zA-Z0-9_.-]+")


@pytest.fixture(autouse=True)
def private_runtime_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """host_id() may keep state in the per-user runtime directory: keep it in tmp_path, and
    forget the cached id before and after."""
    runtime = tmp_path / "runtime"
    runtime.mkdir(mode=0o700)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(runtime))
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    host_id.cache_clear()
    yield
    host_id.cache_clear()


def test_label_keys_are_the_documented_ones() -> None:
    assert (labels.SESSION, labels.WORKER, labels.PID, labels.HOST, labels.ROLE) == (
        "pytest-isolated-docker.session",
        "pytest-isolated-docker.worker",
        "pytest-isolated-docker.pid",
        "pytest-isolated-docker.host",
        "pytest-isolated-docker.role",
    )


def test_labels_say_session_worker_process_host_and_role() -> None:
    identity = Identity("20250101000000-0123abcd", "gw1", 4242)
    assert identity.labels("dind") == {
        "pytest-isolated-docker.session": "20250101000000-0123abcd",
        "pytest-isolated-docker.worker": "gw1",
        "pytest-isolated-docker.pid": "4242",
        "pytest-isolated-docker.host": host_id(),
        "pytest-isolated-docker.role": "dind",
    }


def test_label_values_are_strings_and_the_host_is_named() -> None:
    values = Identity(new_session_id()).labels("volume").values()
    assert all(isinstance(value, str) and value for value in values)
    assert host_id() == host_id()


def test_identity_defaults_to_the_main_process() -> None:
    identity = Identity("s")
    assert (identity.worker, identity.pid) == ("main", os.getpid())
    assert identity.labels("r")[labels.PID] == str(os.getpid())
    with pytest.raises(dataclasses.FrozenInstanceError):
        identity.worker = "gw0"  # type: ignore[misc]


def test_name_format() -> None:
    identity = Identity("20250101000000-0123abcd", "gw3", 1)
    assert identity.name("dind") == "pid-20250101000000-0123abcd-gw3-dind"
    assert identity.name("dind") != Identity("20250101000000-0123abcd", "gw4", 1).name("dind")


@pytest.mark.parametrize("worker", ["main", "gw0", "gw17", "shared"])
def test_names_are_valid_docker_names(worker: str) -> None:
    name = Identity(new_session_id(), worker).name("data-volume")
    assert DOCKER_NAME.fullmatch(name), name


def test_session_ids_sort_by_start_time_and_are_unique() -> None:
    before = datetime.datetime.now().replace(microsecond=0)
    ids = [new_session_id() for _ in range(200)]
    after = datetime.datetime.now()
    assert len(set(ids)) == len(ids)
    for session_id in ids:
        assert re.fullmatch(r"\d{14}-[0-9a-f]{8}", session_id), session_id
        started = datetime.datetime.strptime(session_id[:14], "%Y%m%d%H%M%S")
        assert before <= started <= after
