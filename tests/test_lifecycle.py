"""When daemons start and what a reset keeps: counted from the host engine's own events."""

from __future__ import annotations

import time

import docker
import pytest

from .conftest import dind_starts, labelled, session_of

DOCKER_AND_PLAIN_TESTS = """
def test_docker(docker_client):
    assert docker_client.ping()

def test_plain_one():
    pass

def test_plain_two():
    pass
"""


def _run(pytester: pytest.Pytester, *args: str) -> tuple[pytest.RunResult, float]:
    since = time.time() - 1
    return pytester.runpytest_subprocess(*args, timeout=300), since


def test_collect_only_starts_no_daemon(
    pytester: pytest.Pytester, host_engine: docker.DockerClient
) -> None:
    pytester.makepyfile(DOCKER_AND_PLAIN_TESTS)
    result, since = _run(pytester, "--collect-only")
    assert result.ret == 0
    session = session_of(result.stdout.str())
    assert dind_starts(host_engine, session, since) == 0
    assert labelled(host_engine, session) == []


def test_deselecting_every_docker_test_starts_no_daemon(
    pytester: pytest.Pytester, host_engine: docker.DockerClient
) -> None:
    pytester.makepyfile(DOCKER_AND_PLAIN_TESTS)
    result, since = _run(pytester, "-k", "plain")
    result.assert_outcomes(passed=2, deselected=1)
    assert dind_starts(host_engine, session_of(result.stdout.str()), since) == 0


def test_two_workers_and_one_docker_test_start_one_daemon(
    pytester: pytest.Pytester, host_engine: docker.DockerClient
) -> None:
    pytester.makepyfile(DOCKER_AND_PLAIN_TESTS)
    result, since = _run(pytester, "-n", "2")
    result.assert_outcomes(passed=3)
    session = session_of(result.stdout.str())
    assert dind_starts(host_engine, session, since) == 1
    assert labelled(host_engine, session) == []


MODULE_FIXTURE_TESTS = """
import pytest

@pytest.fixture(scope="module")
def database(docker_daemon):
    container = docker_daemon.client.containers.run(
        "debian:bookworm-slim", "sleep 300", detach=True, name="module-database"
    )
    yield container
    container.remove(force=True)

@pytest.mark.parametrize("n", range(3))
def test_sees_the_module_container_and_only_its_own(database, docker_client, n):
    before = sorted(c.name for c in docker_client.containers.list(all=True))
    assert before == ["module-database"]
    assert docker_client.volumes.list() == [] and len(docker_client.networks.list()) == 3
    docker_client.containers.create("debian:bookworm-slim", "true", name=f"made-by-test-{n}")
    docker_client.networks.create(f"net-of-test-{n}")
    docker_client.volumes.create(f"volume-of-test-{n}")
    database.reload()
    assert database.status == "running"
"""


def test_reset_keeps_what_wider_fixtures_made(
    pytester: pytest.Pytester, host_engine: docker.DockerClient
) -> None:
    pytester.makepyfile(MODULE_FIXTURE_TESTS)
    result = pytester.runpytest_subprocess(
        "-p", "no:randomly", "--docker-preload", "debian:bookworm-slim", timeout=300
    )
    result.assert_outcomes(passed=3)
    # Three resets removed a container, a network and a volume each.
    result.stdout.fnmatch_lines(["*3 resets removed 9 objects, leaks at teardown: 0*"])


FACTORY_TESTS = """
import pytest
from pytest_isolated_docker import factories

module_daemon = factories.docker_daemon(scope="module", preload=["debian:bookworm-slim"])
module_client = factories.docker_client("module_daemon")

IDS = {}

@pytest.mark.parametrize("n", range(2))
def test_module_daemon(module_client, docker_client, request, n):
    module_id = module_client.info()["ID"]
    IDS.setdefault(request.module.__name__, set()).add(module_id)
    assert module_id != docker_client.info()["ID"], "the factory daemon must not be the worker's"
    assert module_client.images.get("debian:bookworm-slim")
    module_client.containers.create("debian:bookworm-slim", "true")

def test_one_daemon_per_module():
    assert len(IDS[__name__]) == 1
"""


def test_factory_gives_each_module_its_own_daemon(
    pytester: pytest.Pytester, host_engine: docker.DockerClient
) -> None:
    pytester.makepyfile(test_first=FACTORY_TESTS, test_second=FACTORY_TESTS)
    result, since = _run(pytester, "-p", "no:randomly")
    result.assert_outcomes(passed=6)
    session = session_of(result.stdout.str())
    # The worker's daemon and one per module: three dind containers in all.
    assert dind_starts(host_engine, session, since) == 3
    result.stdout.fnmatch_lines(["*module_daemon (module)*", "*module_daemon (module)*"])
    assert labelled(host_engine, session) == []


def test_factory_option_errors_name_the_fixture(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        "from pytest_isolated_docker import factories\n"
        "own = factories.docker_daemon(scope='module', dind_storage='floppy')\n"
        "def test_one(own):\n    pass\n"
    )
    result = pytester.runpytest_subprocess(timeout=120)
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(
        ["*'floppy' is not a valid value for dind_storage='floppy' of*'own'*"]
    )


def test_marker_with_unknown_option_is_a_clear_failure(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        "import pytest\n"
        "@pytest.mark.docker_daemon(colour='blue')\n"
        "def test_one(docker_client):\n    pass\n"
    )
    result = pytester.runpytest_subprocess(timeout=120)
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(
        ["*@pytest.mark.docker_daemon got the unknown option colour='blue'*"]
    )


def test_a_per_test_daemon_failure_names_its_own_backend(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        "import pytest\n"
        "@pytest.mark.docker_daemon(backend='socket')\n"
        "def test_one(docker_client):\n    pass\n"
    )
    result = pytester.runpytest_subprocess(timeout=120)
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*no socket daemon:*--docker-allow-unsafe*"])
