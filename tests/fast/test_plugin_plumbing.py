"""The plugin's plumbing (options, lazy start, xdist, reports, factories, crash cleanup) through a
small fake backend registered like a real one: an entry point of a distribution on sys.path.

NOT a Docker engine: the fake backend's "daemon" is a tiny HTTP server that answers the handful
of API calls the plugin itself makes (ping, version, empty object lists), so that these tests run
in seconds with no engine. Everything Docker does is tested against real engines elsewhere.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

FAKE_BACKEND = '''
"""A fake backend for the plugin's own tests: NOT Docker (see test_plugin_plumbing.py)."""

import json
import os
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from pytest_isolated_docker.backends import Backend
from pytest_isolated_docker.daemon import Endpoint

ANSWERS = {
    "/_ping": "OK",
    "/version": {"Version": "fake-1.0", "ApiVersion": "1.41"},
    "/info": {"ID": "fake-engine"},
    "/containers/json": [],
    "/networks": [],
    "/volumes": {"Volumes": []},
}


def record(line):
    with open(os.environ["FAKE_BACKEND_LOG"], "a") as log:
        log.write(line + "\\n")


class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        path = self.path.split("?")[0]
        if path.startswith("/v1."):
            path = "/" + path.split("/", 2)[2]
        body = ANSWERS.get(path)
        if body is None:
            self.send_error(404)
            return
        data = body.encode() if isinstance(body, str) else json.dumps(body).encode()
        self.send_response(200)
        self.send_header("API-Version", "1.41")
        kind = "text/plain" if isinstance(body, str) else "application/json"
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


class FakeBackend(Backend):
    """Answers the plugin's own API calls; records its starts, stops and crash cleanups."""

    name = "fake"

    def start(self):
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        record(f"start {self.context.identity.worker} {self.instance}")
        return Endpoint(f"tcp://127.0.0.1:{self.server.server_address[1]}")

    def logs(self, tail):
        return "the fake daemon's last words"

    def stop(self):
        if getattr(self, "server", None) is not None:
            self.server.shutdown()
            self.server = None
            record(f"stop {self.context.identity.worker} {self.instance}")

    def leftovers(self):
        return []

    @classmethod
    def reap(cls, dead, dry_run=False):
        record(f"reap {dead.session_id}")
        return []
'''

ENTRY_POINTS = "[pytest_isolated_docker.backends]\nfake = fake_backend:FakeBackend\n"

TESTS = """
import pytest

def test_docker(docker_client):
    assert docker_client.version()["Version"] == "fake-1.0"

def test_plain_one():
    pass

def test_plain_two():
    pass

def test_plain_three():
    pass
"""


@pytest.fixture
def fake(pytester: pytest.Pytester, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Installs the fake backend (module + dist-info on PYTHONPATH); returns its event log."""
    site = tmp_path / "site"
    (site / "fake_backend-0.dist-info").mkdir(parents=True)
    (site / "fake_backend.py").write_text(FAKE_BACKEND)
    (site / "fake_backend-0.dist-info" / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: fake-backend\nVersion: 0\n"
    )
    (site / "fake_backend-0.dist-info" / "entry_points.txt").write_text(ENTRY_POINTS)
    log = tmp_path / "events.log"
    log.touch()
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")]))
    monkeypatch.setenv("FAKE_BACKEND_LOG", str(log))
    monkeypatch.setenv("PYTEST_DOCKER_BACKEND", "fake")
    # No engine is needed, and none may be touched: the host engine is somewhere that is not.
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/no-engine.sock")
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))
    for name in list(os.environ):
        if name.startswith("PYTEST_DOCKER_") and name != "PYTEST_DOCKER_BACKEND":
            monkeypatch.delenv(name)
    return log


def _events(log: Path, kind: str) -> list[str]:
    return [line for line in log.read_text().splitlines() if line.startswith(kind + " ")]


def _run(pytester: pytest.Pytester, *args: str) -> pytest.RunResult:
    return pytester.runpytest_subprocess("-p", "no:randomly", "-p", "no:cacheprovider", *args)


def test_a_registered_backend_is_a_valid_choice_and_runs(
    pytester: pytest.Pytester, fake: Path
) -> None:
    pytester.makepyfile(TESTS)
    result = _run(pytester)
    result.assert_outcomes(passed=4)
    result.stdout.fnmatch_lines(
        [
            "isolated-docker: backend=fake scope=worker reset=test session=*",
            "main: fake  at tcp://127.0.0.1:*, engine fake-1.0, ready in * s, 1 resets removed 0 "
            "objects, leaks at teardown: 0",
        ]
    )
    assert len(_events(fake, "start")) == 1
    assert len(_events(fake, "stop")) == 1


def test_an_unregistered_backend_is_a_usage_error_naming_the_registered_ones(
    pytester: pytest.Pytester, fake: Path
) -> None:
    pytester.makepyfile(TESTS)
    result = _run(pytester, "--docker-backend=nope")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        ["*'nope' is not a valid value for command-line option --docker-backend. "
         "Valid values: dind, socket, machine, guarded, fake.*"]
    )  # fmt: skip


def test_collect_only_starts_nothing(pytester: pytest.Pytester, fake: Path) -> None:
    pytester.makepyfile(TESTS)
    _run(pytester, "--collect-only").assert_outcomes()
    assert _events(fake, "start") == []


def test_deselected_docker_tests_start_nothing(pytester: pytest.Pytester, fake: Path) -> None:
    pytester.makepyfile(TESTS)
    _run(pytester, "-k", "plain").assert_outcomes(passed=3, deselected=1)
    assert _events(fake, "start") == []


def test_two_workers_one_docker_test_one_start(pytester: pytest.Pytester, fake: Path) -> None:
    pytester.makepyfile(TESTS)
    _run(pytester, "-n", "2").assert_outcomes(passed=4)
    assert len(_events(fake, "start")) == 1
    assert len(_events(fake, "stop")) == 1


def test_each_worker_starts_for_its_own_docker_tests(pytester: pytest.Pytester, fake: Path) -> None:
    pytester.makepyfile(
        test_a="def test_a(docker_client):\n    pass\n",
        test_b="def test_b(docker_env):\n    assert docker_env['DOCKER_HOST']\n",
    )
    _run(pytester, "-n", "2", "--dist", "loadfile").assert_outcomes(passed=2)
    assert sorted(line.split()[1] for line in _events(fake, "start")) == ["gw0", "gw1"]


def test_a_failing_test_reports_the_daemon_log_also_through_getfixturevalue(
    pytester: pytest.Pytester, fake: Path
) -> None:
    pytester.makepyfile(
        "def test_fails(request):\n"
        "    client = request.getfixturevalue('docker_client')\n"
        "    assert client.version()['Version'] == 'another'\n"
    )
    result = _run(pytester)
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        ["*- docker daemon log (last 50 lines) -*", "the fake daemon's last words"]
    )
    assert len(_events(fake, "start")) == 1


def test_factories_and_marker_start_daemons_of_their_own(
    pytester: pytest.Pytester, fake: Path
) -> None:
    pytester.makeconftest(
        "from pytest_isolated_docker import factories\n"
        "module_daemon = factories.docker_daemon(scope='module', startup_timeout=30)\n"
        "module_client = factories.docker_client('module_daemon')\n"
    )
    body = textwrap.dedent(
        """
        import pytest

        def test_one(module_client, docker_client):
            pass

        def test_two(module_client):
            pass

        @pytest.mark.docker_daemon(fresh=True)
        def test_fresh(docker_client):
            pass
        """
    )
    pytester.makepyfile(test_first=body, test_second=body)
    result = _run(pytester)
    result.assert_outcomes(passed=6)
    # The worker's daemon, one per module, one per fresh test.
    assert len(_events(fake, "start")) == 1 + 2 + 2
    assert len(_events(fake, "stop")) == 5
    result.stdout.fnmatch_lines(["*[[]module_daemon (module)[]]"])
    result.stdout.fnmatch_lines(["*[[]fresh for *test_fresh[]]"])


def test_a_killed_session_is_reaped_through_every_registered_backend(
    pytester: pytest.Pytester, fake: Path
) -> None:
    pytester.makepyfile(
        "import pathlib, time\n"
        "def test_slow(docker_client):\n"
        "    pathlib.Path('started').touch()\n"
        "    time.sleep(300)\n"
    )
    process = subprocess.Popen(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider"],
        cwd=pytester.path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 60
        while not (pytester.path / "started").exists():
            assert process.poll() is None, process.communicate()[0].decode()
            assert time.monotonic() < deadline, "the test did not start"
            time.sleep(0.05)
    finally:
        process.send_signal(signal.SIGKILL)
        output = process.communicate()[0].decode()
    session = output.split("session=", 1)[1].split()[0]
    deadline = time.monotonic() + 15
    while f"reap {session}" not in _events(fake, "reap"):
        assert time.monotonic() < deadline, f"not reaped: {fake.read_text()}"
        time.sleep(0.1)
    sessions = Path(os.environ["XDG_RUNTIME_DIR"]) / "pytest-isolated-docker" / "sessions"
    assert not (sessions / session).exists()
