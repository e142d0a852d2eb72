"""The plugin in whole pytest sessions that use no daemon: it documents its fixtures, and a run
that needs no daemon neither starts one nor talks to any engine. No Docker engine is needed."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest


@pytest.fixture
def listening_engine(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[list[bytes]]:
    """DOCKER_HOST points at a unix socket that records every connection made to it."""
    path = tmp_path / "engine.sock"
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(path))
    server.listen(8)
    server.settimeout(0.2)
    seen: list[bytes] = []
    stop = threading.Event()

    def accept() -> None:
        while not stop.is_set():
            try:
                connection, _ = server.accept()
            except TimeoutError:
                continue
            with connection:
                connection.settimeout(1)
                try:
                    seen.append(connection.recv(4096))
                except OSError:
                    seen.append(b"")

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    monkeypatch.setenv("DOCKER_HOST", f"unix://{path}")
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))
    yield seen
    stop.set()
    thread.join()
    server.close()


def test_fixtures_are_documented(pytester: pytest.Pytester) -> None:
    pytester.makepyfile("def test_nothing(): pass")
    result = pytester.runpytest_subprocess("--fixtures")
    result.stdout.fnmatch_lines(["docker_daemon [[]session scope[]]*", "*isolated Docker daemon*"])
    text = result.stdout.str()
    for name in ("docker_client", "docker_env", "docker_test_daemon"):
        assert name in text


@pytest.mark.parametrize(
    "args", [[], ["--collect-only"], ["-n", "2"]], ids=["plain", "collect", "xdist"]
)
def test_a_run_without_docker_tests_touches_no_engine(
    pytester: pytest.Pytester, listening_engine: list[bytes], args: list[str]
) -> None:
    pytester.makepyfile("def test_plain(): pass\ndef test_other(): pass\n")
    result = pytester.runpytest_subprocess(*args)
    assert result.ret == 0
    assert "isolated docker daemons" not in result.stdout.str()
    assert listening_engine == [], f"the engine was contacted: {listening_engine}"


def test_the_listening_engine_does_record_a_contact(
    pytester: pytest.Pytester, listening_engine: list[bytes]
) -> None:
    """The check above can fail: a run that needs a daemon asks that engine at once."""
    pytester.makepyfile("def test_docker(docker_client): pass\n")
    pytester.runpytest_subprocess("--docker-startup-timeout=5")
    assert any(b"GET /" in request for request in listening_engine), listening_engine
