"""The dind backend against the real host engine: isolation, TLS, reset, diagnostics, cleanup."""

from __future__ import annotations

import collections.abc
import contextlib
import os
import re
import socket
import ssl
import stat
import sys
from pathlib import Path

import docker
import pytest
import requests

from pytest_isolated_docker.daemon import DockerDaemon

from .conftest import api_daemon, labelled, session_of

RECORDING_TESTS = """
import os, pathlib

def test_create(docker_client):
    record = pathlib.Path(os.environ["RECORD_DIR"]) / os.environ.get("PYTEST_XDIST_WORKER", "main")
    record.write_text(docker_client.info()["ID"])
    docker_client.containers.create("debian:bookworm-slim", "true", name="left-by-previous-test")
    docker_client.networks.create("net-left-by-previous-test")
    docker_client.volumes.create("volume-left-by-previous-test")

def test_gone_in_the_next_test(docker_client):
    assert docker_client.containers.list(all=True) == []
    assert sorted(n.name for n in docker_client.networks.list()) == ["bridge", "host", "none"]
    assert docker_client.volumes.list() == []
    # images stay: they are the cache
    assert docker_client.images.get("debian:bookworm-slim")
"""


@pytest.fixture(scope="module")
def daemon() -> collections.abc.Iterator[DockerDaemon]:
    """A dind daemon started through the engine API, without pytest's plugin layer."""
    with api_daemon(preload=["debian:bookworm-slim"]) as started:
        yield started


def test_two_workers_get_two_daemons_and_tests_are_isolated(
    pytester: pytest.Pytester, host_engine: docker.DockerClient, tmp_path: Path
) -> None:
    pytester.makepyfile(test_one=RECORDING_TESTS, test_two=RECORDING_TESTS)
    result = _run(pytester, tmp_path, "-n", "2", "--dist", "loadfile")
    result.assert_outcomes(passed=4)
    ids = {p.name: p.read_text() for p in tmp_path.joinpath("records").iterdir()}
    assert set(ids) == {"gw0", "gw1"}
    assert ids["gw0"] != ids["gw1"], "each worker must have a daemon of its own"
    assert host_engine.info()["ID"] not in ids.values(), "the tests must not get the host engine"
    assert labelled(host_engine, session_of(result.stdout.str())) == []
    result.stdout.fnmatch_lines(
        ["*gw0: dind*leaks at teardown: 0*", "*gw1: dind*leaks at teardown: 0*"]
    )


def _run(pytester: pytest.Pytester, tmp_path: Path, *args: str) -> pytest.RunResult:
    records = tmp_path / "records"
    records.mkdir(exist_ok=True)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("RECORD_DIR", str(records))
        return pytester.runpytest_subprocess(
            "--docker-preload", "debian:bookworm-slim", *args, timeout=300
        )


def test_published_on_loopback_only(daemon: DockerDaemon, host_engine: docker.DockerClient) -> None:
    assert daemon.base_url.startswith("tcp://127.0.0.1:")
    port = daemon.base_url.rsplit(":", 1)[1]
    (container,) = host_engine.containers.list(
        filters={"label": "pytest-isolated-docker.role=dind", "publish": f"{port}/tcp"}
    )
    bindings = container.attrs["NetworkSettings"]["Ports"]["2376/tcp"]
    assert {b["HostIp"] for b in bindings} == {"127.0.0.1"}


def test_client_without_certificate_is_refused(daemon: DockerDaemon) -> None:
    assert daemon.endpoint.tls is not None
    url = daemon.base_url.replace("tcp://", "https://") + "/_ping"
    # The server is verified, but we present no client certificate.
    session = requests.Session()
    session.trust_env = False
    with pytest.raises(requests.exceptions.SSLError):
        session.get(url, verify=str(daemon.endpoint.tls.ca_cert), timeout=5)
    # Plain HTTP gets no API either.
    host, port = daemon.base_url.removeprefix("tcp://").split(":")
    with socket.create_connection((host, int(port)), timeout=5) as raw:
        raw.sendall(b"GET /_ping HTTP/1.1\r\nHost: x\r\n\r\n")
        assert b"OK" not in raw.recv(4096)
    # And with the certificate it answers.
    context = ssl.create_default_context(cafile=str(daemon.endpoint.tls.ca_cert))
    context.load_cert_chain(
        str(daemon.endpoint.tls.client_cert), str(daemon.endpoint.tls.client_key)
    )
    with (
        socket.create_connection((host, int(port)), timeout=5) as raw,
        context.wrap_socket(raw, server_hostname=host) as tls,
    ):
        tls.sendall(b"GET /_ping HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        assert b"OK" in tls.recv(4096)


def test_private_keys_are_0600(daemon: DockerDaemon) -> None:
    tls = daemon.endpoint.tls
    assert tls is not None
    session_dir = tls.cert_dir.parent
    for key in (tls.client_key, session_dir / "ca-key.pem"):
        assert stat.S_IMODE(key.stat().st_mode) == 0o600, key
    assert stat.S_IMODE(session_dir.stat().st_mode) == 0o700


def test_env_drives_the_docker_cli(daemon: DockerDaemon) -> None:
    import subprocess

    env = {**os.environ, **daemon.env}
    out = subprocess.run(
        ["docker", "info", "--format", "{{.ID}}"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stdout.strip() == daemon.client.info()["ID"]


def test_reset_removes_objects_but_keeps_images(daemon: DockerDaemon) -> None:
    client = daemon.client
    for _ in range(3):
        client.containers.create("debian:bookworm-slim", "true")
    client.networks.create("reset-net")
    client.volumes.create("reset-volume")
    stats = daemon.reset()
    assert (stats.containers, stats.networks, stats.volumes) == (3, 1, 1)
    assert client.containers.list(all=True) == []
    assert client.images.get("debian:bookworm-slim")


def test_fresh_marker_gives_a_daemon_of_its_own(pytester: pytest.Pytester, tmp_path: Path) -> None:
    pytester.makepyfile(
        """
        import pytest

        def test_session(docker_daemon, docker_client):
            assert docker_client.info()["ID"] == docker_daemon.client.info()["ID"]

        @pytest.mark.docker_daemon(fresh=True)
        def test_fresh(docker_daemon, docker_test_daemon, docker_client):
            assert docker_test_daemon is not docker_daemon
            assert docker_client.info()["ID"] != docker_daemon.client.info()["ID"]
            assert docker_client.info()["ID"] == docker_test_daemon.client.info()["ID"]

        @pytest.mark.docker_daemon(bogus=1)
        def test_bad_marker(docker_client):
            pass
        """
    )
    result = _run(pytester, tmp_path, "-p", "no:randomly")
    result.assert_outcomes(passed=2, errors=1)
    result.stdout.fnmatch_lines(
        [
            "*@pytest.mark.docker_daemon got the unknown option bogus=1*",
            "*leaks at teardown: 0 [[]fresh for *test_fresh[]]*",
        ]
    )


def test_fresh_daemons_are_started_ahead_and_stopped_off_the_critical_path(
    pytester: pytest.Pytester, tmp_path: Path, host_engine: docker.DockerClient
) -> None:
    """While one fresh test runs, the next one's daemon starts; each test gets its own."""
    pytester.makepyfile(
        """
        import time
        import pytest

        SEEN = []

        @pytest.fixture
        def began():
            return time.time()

        @pytest.mark.docker_daemon(fresh=True)
        @pytest.mark.parametrize("i", range(3))
        def test_fresh(began, docker_test_daemon, docker_client, i):
            assert docker_client.containers.list(all=True) == []
            docker_client.containers.create("debian:bookworm-slim", ["true"])
            engine = docker_client.info()["ID"]
            assert engine not in SEEN
            SEEN.append(engine)
            if i > 0:  # started while the test before ran
                assert docker_test_daemon.ready_at < began
            time.sleep(3)  # time enough for the next test's spare to start
        """
    )
    result = _run(pytester, tmp_path, "-p", "no:randomly")
    result.assert_outcomes(passed=3)
    result.stdout.fnmatch_lines(["*leaks at teardown: 0 [[]fresh for *test_fresh[[]2[]][]]*"])
    assert labelled(host_engine, session_of(result.stdout.str())) == []


def test_used_fresh_daemons_are_renewed_in_place_into_the_next_spares(
    pytester: pytest.Pytester, tmp_path: Path, host_engine: docker.DockerClient
) -> None:
    """A used daemon becomes a later test's spare in the same container: a new engine, nothing
    of the old one (containers, networks, volumes, tags, firewall rules), the preloaded image
    intact."""
    pytester.makepyfile(
        """
        import docker
        import pytest

        SEEN = []
        HOST = docker.from_env()

        @pytest.mark.docker_daemon(fresh=True)
        @pytest.mark.parametrize("i", range(6))
        def test_fresh(docker_test_daemon, docker_client, i):
            assert docker_client.containers.list(all=True) == []
            # The dind container's firewall as a brand-new daemon's (its hostname, the daemon's
            # name, is the container's short ID): compared across the tests below.
            dind = HOST.containers.get(docker_client.info()["Name"])
            rules = dind.exec_run(["iptables-save"]).output.decode().splitlines()
            with open(f"firewall-{i}", "w") as seen:
                seen.write("\\n".join(r for r in rules if not r.startswith("#")))
            assert docker_client.networks.list(names=["mine"]) == []
            assert docker_client.volumes.list() == []
            assert docker_client.images.get("debian:bookworm-slim").tags == [
                "debian:bookworm-slim"
            ]
            engine = docker_client.info()["ID"]
            assert engine not in SEEN
            SEEN.append(engine)
            with open("endpoints", "a") as seen:
                seen.write(docker_test_daemon.base_url + "\\n")
            network = docker_client.networks.create("mine")
            network.reload()
            # The first network's subnet: the one a brand-new daemon picks, unless the interfaces
            # of a daemon before it were left in the container.
            with open("subnets", "a") as seen:
                seen.write(network.attrs["IPAM"]["Config"][0]["Subnet"] + "\\n")
            docker_client.volumes.create("data")
            docker_client.containers.run(
                "debian:bookworm-slim", "sleep 300", detach=True, network="mine",
                volumes={"data": {"bind": "/data"}}, ports={"80/tcp": None},
            )
            docker_client.images.get("debian:bookworm-slim").tag("mine", "1")
            docker_client.images.remove("debian:bookworm-slim")
        """
    )
    result = _run(pytester, tmp_path, "-p", "no:randomly")
    result.assert_outcomes(passed=6)
    endpoints = (pytester.path / "endpoints").read_text().split()
    assert len(set(endpoints)) < len(endpoints), endpoints  # some were renewed in place
    subnets = (pytester.path / "subnets").read_text().split()
    assert len(set(subnets)) == 1, subnets
    firewalls = [(pytester.path / f"firewall-{i}").read_text() for i in range(6)]
    assert "DOCKER" in firewalls[0], firewalls[0]
    assert all(firewall == firewalls[0] for firewall in firewalls), firewalls
    result.stdout.fnmatch_lines(["*renewed in place*leaks at teardown: 0 [[]fresh for *"])
    assert labelled(host_engine, session_of(result.stdout.str())) == []


def test_a_daemon_whose_containers_wrote_into_its_container_is_not_renewed(
    pytester: pytest.Pytester, tmp_path: Path, host_engine: docker.DockerClient
) -> None:
    """Files a test's container wrote through a bind mount of a dind path would outlive a
    renewal: such a daemon is replaced by a new container, and no later test sees them."""
    pytester.makepyfile(
        """
        import pytest

        @pytest.mark.docker_daemon(fresh=True)
        @pytest.mark.parametrize("i", range(5))
        def test_fresh(docker_client, i):
            seen = docker_client.containers.run(
                "debian:bookworm-slim", ["sh", "-c", f"ls /srv/x; touch /srv/x/from-{i}"],
                volumes={"/srv/x": {"bind": "/srv/x"}}, remove=True,
            )
            assert seen == b""
        """
    )
    result = _run(pytester, tmp_path, "-p", "no:randomly")
    result.assert_outcomes(passed=5)
    assert "renewed in place" not in result.stdout.str()
    assert labelled(host_engine, session_of(result.stdout.str())) == []


def test_a_reset_with_many_containers_swaps_in_a_spare_unless_a_wider_fixture_holds_it(
    pytester: pytest.Pytester, tmp_path: Path, host_engine: docker.DockerClient
) -> None:
    many = """
        import time
        import pytest

        @pytest.mark.parametrize("i", range(4))
        def test_many(docker_client, i):
            assert docker_client.containers.list(all=True) == []
            with open("engines-{name}", "a") as seen:
                seen.write(docker_client.info()["ID"] + "\\n")
            for _ in range(6):
                docker_client.containers.run("debian:bookworm-slim", "sleep 300", detach=True)
            time.sleep(2)  # time enough for a spare to start
        """
    pytester.makepyfile(
        test_a_swaps=many.format(name="a"),
        test_b_held=many.format(name="b")
        + """
        @pytest.fixture(scope="module", autouse=True)
        def module_address(docker_daemon):
            return docker_daemon.base_url
        """,
    )
    result = _run(pytester, tmp_path, "-p", "no:randomly")
    result.assert_outcomes(passed=8)
    swapped = (pytester.path / "engines-a").read_text().split()
    held = (pytester.path / "engines-b").read_text().split()
    # The first heavy reset removes its containers and has a spare started; later ones swap.
    assert len(set(swapped)) >= 3, swapped
    assert len(set(held)) == 1, held
    result.stdout.fnmatch_lines(["main: dind *, 8 resets removed 48 objects, leaks at teardown: 0"])
    assert "swapped out" not in result.stdout.str()  # nothing leaked
    assert labelled(host_engine, session_of(result.stdout.str())) == []


def test_failing_test_gets_the_daemon_log(pytester: pytest.Pytester, tmp_path: Path) -> None:
    pytester.makepyfile(
        """
        def test_fails(docker_client):
            docker_client.ping()
            assert False, "on purpose"
        """
    )
    result = _run(pytester, tmp_path)
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*docker daemon log (last 50 lines)*", "*API listen on*"])


def test_image_without_dockerd(pytester: pytest.Pytester, host_engine: docker.DockerClient) -> None:
    pytester.makepyfile("def test_one(docker_client): pass")
    result = pytester.runpytest_subprocess(
        "--docker-dind-image=debian:bookworm-slim", "--docker-startup-timeout=30", timeout=120
    )
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(
        ["*[[]ready[]] the daemon stopped before answering*exited*", "*dockerd*not found*"]
    )
    assert labelled(host_engine, session_of(result.stdout.str())) == []


def test_missing_unpullable_image(
    pytester: pytest.Pytester, host_engine: docker.DockerClient
) -> None:
    pytester.makepyfile("def test_one(docker_client): pass")
    result = pytester.runpytest_subprocess(
        "--docker-dind-image=pytest-isolated-docker/no-such-image:1", timeout=120
    )
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(
        ["*[[]pull[]]*cannot be pulled: pytest-isolated-docker/no-such-image:1**build-image dind*"]
    )
    assert labelled(host_engine, session_of(result.stdout.str())) == []


@pytest.mark.parametrize(("mode", "outcome"), [("error", "errors"), ("skip", "skipped")])
def test_engine_unreachable(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, mode: str, outcome: str
) -> None:
    with contextlib.closing(socket.socket()) as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # nothing listens there once closed
    monkeypatch.setenv("DOCKER_HOST", f"tcp://127.0.0.1:{port}")
    pytester.makepyfile("def test_one(docker_client): pass")
    result = pytester.runpytest_subprocess(f"--docker-unavailable={mode}", "-rs", timeout=120)
    result.assert_outcomes(**{outcome: 1})
    result.stdout.fnmatch_lines(
        ["*host's Docker engine at * does not answer*point DOCKER_HOST*at a running engine*"]
    )


def test_session_scope_shares_one_daemon(
    pytester: pytest.Pytester, host_engine: docker.DockerClient, tmp_path: Path
) -> None:
    pytester.makepyfile(
        test_one=RECORDING_TESTS.split("def test_gone")[0],
        test_two=RECORDING_TESTS.split("def test_gone")[0]
        .replace("test_create", "test_other")
        .replace('name="left-by-previous-test"', 'name="from-the-other-worker"')
        .replace('"net-left-by-previous-test"', '"net-2"')
        .replace('"volume-left-by-previous-test"', '"volume-2"'),
    )
    result = _run(pytester, tmp_path, "-n", "2", "--dist", "loadfile", "--docker-scope=session")
    result.assert_outcomes(passed=2)
    ids = {p.name: p.read_text() for p in tmp_path.joinpath("records").iterdir()}
    assert set(ids) == {"gw0", "gw1"}
    assert ids["gw0"] == ids["gw1"], "both workers must share the session's daemon"
    assert ids["gw0"] != host_engine.info()["ID"], "the tests must not get the host engine"
    assert labelled(host_engine, session_of(result.stdout.str())) == []
    result.stdout.fnmatch_lines(["*dind*leaks at teardown: 0 (shared by the session)*"] * 2)


def test_our_docker_client_wins_over_other_plugins(
    pytester: pytest.Pytester, tmp_path: Path
) -> None:
    """pytest-docker-tools defines ``docker_client`` on the host engine: ours must win anyway."""
    pytest.importorskip("pytest_docker_tools")
    pytester.makepyfile(
        """
        import docker

        def test_isolated(docker_client):
            host = docker.from_env()
            assert docker_client.info()["ID"] != host.info()["ID"], "got the host engine"
        """
    )
    result = _run(pytester, tmp_path, "-p", "pytest_docker_tools")
    result.assert_outcomes(passed=1)


def test_daemons_start_on_the_host_engine_even_after_a_test_moved_docker_host(
    pytester: pytest.Pytester, tmp_path: Path
) -> None:
    """The host engine is the one the session began with, whatever tests do to os.environ."""
    pytester.makepyfile(
        """
        import os
        import pytest

        def test_careless(docker_env):
            os.environ.update(docker_env)  # never undone: DOCKER_HOST is now the isolated daemon

        @pytest.mark.docker_daemon(fresh=True)
        def test_fresh_daemon(docker_client):
            assert docker_client.ping()
        """
    )
    result = _run(pytester, tmp_path, "-p", "no:randomly")
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(["*leaks at teardown: 0 [[]fresh for *test_fresh_daemon[]]*"])


IN_CONTAINER_TEST = """
def test_reaches_its_daemon(docker_client, docker_daemon):
    assert docker_client.ping()
    print("endpoint:", docker_daemon.base_url)
"""


def test_pytest_in_a_container_of_the_host_engine_uses_the_container_network(
    host_engine: docker.DockerClient, tmp_path: Path
) -> None:
    """CI jobs often run pytest in a container of the engine they test with (the engine's socket
    mounted): 127.0.0.1 there is the job's container, so the daemon is reached at its container
    address. The job container here is the dind image (it has the libraries this venv's Python
    needs) running this very venv and checkout, mounted read-only at the same paths."""
    work = tmp_path / "job"
    work.mkdir()
    (work / "test_in_container.py").write_text(IN_CONTAINER_TEST)
    checkout = Path(__file__).resolve().parent.parent
    mounts = {
        str(Path(sys.base_prefix).resolve()): {
            "bind": str(Path(sys.base_prefix).resolve()),
            "mode": "ro",
        },
        str(checkout): {"bind": str(checkout), "mode": "ro"},
        str(work): {"bind": str(work), "mode": "rw"},
        "/var/run/docker.sock": {"bind": "/var/run/docker.sock", "mode": "rw"},
    }
    job = host_engine.containers.run(
        os.environ["PYTEST_DOCKER_DIND_IMAGE"],
        entrypoint=[
            sys.executable,
            "-m",
            "pytest",
            "-p",
            "no:cacheprovider",
            "-s",
            "-v",
            str(work),
        ],
        environment={"PYTEST_DOCKER_DIND_IMAGE": os.environ["PYTEST_DOCKER_DIND_IMAGE"]},
        volumes=mounts,
        working_dir=str(work),
        labels={"pytest-isolated-docker-tests.job": "1"},
        detach=True,
    )
    try:
        status = job.wait(timeout=600)
        output = job.logs().decode(errors="replace")
    finally:
        job.remove(force=True)
    assert status["StatusCode"] == 0, output
    endpoint = re.search(r"endpoint: \w+://([0-9.]+):2376", output)
    assert endpoint, output
    assert endpoint.group(1) != "127.0.0.1"
    assert labelled(host_engine, session_of(output)) == []
