"""Loading the plugin imports neither docker-py nor what it brings (requests, urllib3, paramiko)
nor cryptography: they cost about 0.2 s, and the pytest-xdist controller, a run without Docker
tests and ``--collect-only`` never need them. Checked in real interpreters (subprocesses), since
this test process has imported them long ago. No Docker engine is needed."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

HEAVY = ("docker", "requests", "urllib3", "paramiko", "cryptography")


def imported_after(code: str) -> list[str]:
    """Which of :data:`HEAVY` a fresh interpreter has imported after running ``code``."""
    script = f"{code}\nimport sys\nprint(__import__('json').dumps(sorted(sys.modules)))\n"
    output = subprocess.run(
        [sys.executable, "-c", script], check=True, capture_output=True, text=True
    ).stdout
    modules = set(json.loads(output.splitlines()[-1]))
    return [name for name in HEAVY if name in modules]


def test_loading_the_plugin_imports_none_of_them() -> None:
    assert imported_after("import pytest_isolated_docker.plugin") == []


def test_the_public_names_are_there_and_import_none_of_them() -> None:
    code = """
    import pytest_isolated_docker
    from pytest_isolated_docker import *
    from pytest_isolated_docker import DockerDaemon, Endpoint, StartupError, __version__
    assert DockerDaemon.__module__ == "pytest_isolated_docker.daemon"
    assert pytest_isolated_docker.DaemonUnavailable.__module__ == "pytest_isolated_docker.errors"
    assert set(pytest_isolated_docker.__all__) <= set(dir(pytest_isolated_docker))
    try:
        pytest_isolated_docker.NoSuchName
    except AttributeError:
        pass
    else:
        raise AssertionError("an unknown name must raise AttributeError")
    """
    assert imported_after(textwrap.dedent(code)) == []


def test_what_the_controller_asks_of_the_backends_imports_none_of_them() -> None:
    """The report header and pytest_configure ask every backend class for its header lines and
    flags, and resolve the host engine: none of it needs docker-py."""
    code = """
    from pytest_isolated_docker import engines
    from pytest_isolated_docker.backends import all_backends
    for cls in all_backends():
        cls.header_lines(), cls.unsafe, cls.uses_host_mirror
    engines.resolve()
    """
    assert imported_after(textwrap.dedent(code)) == []


def test_a_lazy_module_is_the_module_once_used() -> None:
    code = """
    from pytest_isolated_docker import lazy
    docker = lazy.module("docker")
    import sys
    assert "docker" not in sys.modules
    import docker.errors as errors
    assert docker.errors is errors and docker.errors.NotFound is errors.NotFound
    assert lazy.module("docker.context").ContextAPI is sys.modules["docker"].context.ContextAPI
    docker.marker = 1  # writes go to the module (monkeypatch through it patches docker)
    assert sys.modules["docker"].marker == 1
    del docker.marker
    assert not hasattr(sys.modules["docker"], "marker")
    try:
        docker.no_such_thing
    except AttributeError:
        pass
    else:
        raise AssertionError("an unknown attribute must raise AttributeError")
    """
    assert "docker" in imported_after(textwrap.dedent(code))


# ---- whole runs ------------------------------------------------------------------------------

#: Each pytest process of the run records, as it ends, which of HEAVY it imported.
RECORDER = """
import json, sys

def pytest_unconfigure(config):
    # Not PYTEST_XDIST_WORKER: an outer xdist run (make unit-fast) hands it down to this one.
    workerinput = getattr(config, "workerinput", None)
    who = workerinput["workerid"] if workerinput is not None else "controller"
    heavy = [name for name in {heavy!r} if name in sys.modules]
    with open({record!r}, "a") as file:
        file.write(json.dumps([who, heavy]) + "\\n")
"""


def _run(pytester: pytest.Pytester, *args: str) -> dict[str, list[str]]:
    record = pytester.path / "imported.jsonl"
    pytester.makeconftest(RECORDER.format(heavy=HEAVY, record=str(record)))
    # pytest-docker-tools (a test dependency of this project) imports docker-py in its own
    # plugin: keep it out, so that only this plugin is judged.
    result = pytester.runpytest_subprocess("-p", "no:docker_tools", "-p", "no:randomly", *args)
    assert result.ret == 0, result.stdout.str()
    lines = record.read_text().splitlines()
    return dict(json.loads(line) for line in lines)


@pytest.fixture
def no_engine(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No engine at all: a run that tried to reach one would fail."""
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path / 'no-engine.sock'}")
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))


@pytest.mark.usefixtures("no_engine")
@pytest.mark.parametrize("args", [[], ["--collect-only"]], ids=["plain", "collect"])
def test_a_run_without_docker_tests_imports_none_of_them(
    pytester: pytest.Pytester, args: list[str]
) -> None:
    pytester.makepyfile("def test_plain(): pass\ndef test_other(): pass\n")
    assert _run(pytester, *args) == {"controller": []}


@pytest.mark.usefixtures("no_engine")
def test_neither_the_xdist_controller_nor_its_workers_import_them(
    pytester: pytest.Pytester,
) -> None:
    pytest.importorskip("xdist")
    pytester.makepyfile("def test_plain(): pass\ndef test_other(): pass\n")
    assert _run(pytester, "-n", "2") == {"controller": [], "gw0": [], "gw1": []}


@pytest.mark.usefixtures("no_engine")
def test_the_record_does_show_an_import(pytester: pytest.Pytester) -> None:
    """The checks above can fail: a test that asks for a daemon imports docker-py (it then
    fails or skips, there being no engine; either way the record shows the import)."""
    pytester.makepyfile("def test_docker(docker_client): pass\n")
    record = pytester.path / "imported.jsonl"
    pytester.makeconftest(RECORDER.format(heavy=HEAVY, record=str(record)))
    pytester.runpytest_subprocess(
        "-p", "no:docker_tools", "--docker-unavailable=skip", "--docker-startup-timeout=5"
    )
    imported = dict(json.loads(line) for line in record.read_text().splitlines())
    assert "docker" in imported["controller"], imported


def test_a_watchdog_dismissed_before_its_first_heartbeat_imports_none_of_them() -> None:
    """A run shorter than FIRST_BEAT_DELAY: its watchdog never loads an engine client (the
    engine named here does not exist: contacting it would fail the call, not hang it)."""
    code = """
    import os
    read_end, write_end = os.pipe()
    os.write(write_end, b"done")
    os.close(write_end)
    os.dup2(read_end, 0)
    from pytest_isolated_docker.labels import Identity
    from pytest_isolated_docker.watchdog import watch
    identity = Identity("20990101000000-0badcafe", "gw0", 1)
    assert watch(identity, [{"DOCKER_HOST": "unix:///nonexistent/docker.sock"}]) == 0
    """
    assert imported_after(textwrap.dedent(code)) == []
