"""The integration examples fail when their tool reaches another engine than the test's daemon.

Each example in examples/ checks where its container ran. Here they run with every tool pointed at
another daemon (the worker's, while each test gets a fresh daemon of its own), and every one of
them must fail on that check: an example whose check cannot fail would prove nothing.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from xml.etree import ElementTree

import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
INTEGRATIONS = (
    "test_testcontainers.py",
    "test_pytest_docker_tools.py",
    "test_cli_compose_whales.py",
)

# Deeper than the examples' own conftest.py, so these fixtures replace theirs.
MISDIRECTED = """
import pytest


def pytest_collection_modifyitems(items):
    for item in items:
        item.add_marker(pytest.mark.docker_daemon(fresh=True))


@pytest.fixture
def docker_env(docker_daemon, docker_test_daemon):
    # The worker's daemon, not the test's fresh one (started first: the plugin starts a daemon on
    # the engine named by DOCKER_HOST, which the testcontainers example sets from this).
    return docker_daemon.env


@pytest.fixture
def docker_client(docker_daemon, docker_test_daemon):
    client = docker_daemon.new_client()
    yield client
    client.close()
"""


def test_each_integration_example_fails_when_its_tool_reaches_another_daemon(
    pytester: pytest.Pytester,
) -> None:
    shutil.copy(EXAMPLES / "conftest.py", pytester.path / "conftest.py")
    target = pytester.mkdir("misdirected")
    for name in INTEGRATIONS:
        shutil.copy(EXAMPLES / name, target / name)
    (target / "conftest.py").write_text(MISDIRECTED)
    result = pytester.runpytest_subprocess(
        "-p",
        "no:cacheprovider",
        "--docker-preload",
        "debian:bookworm-slim",
        "--junitxml=report.xml",
        timeout=900,
    )
    result.assert_outcomes(failed=5)
    failures = {
        case.get("name"): failure.get("message", "")
        for case in ElementTree.parse(pytester.path / "report.xml").iter("testcase")
        for failure in case.iter("failure")
    }
    not_there = "is not in the isolated daemon: where did it run?"
    # The tool's engine is checked first where the example asks it (docker info), else where the
    # container is.
    assert failures["test_docker_cli_runs_in_the_isolated_daemon"].startswith("AssertionError")
    assert failures["test_python_on_whales_runs_in_the_isolated_daemon"].startswith(
        "AssertionError"
    )
    for name in (
        "test_docker_compose_runs_in_the_isolated_daemon",
        "test_pytest_docker_tools_container_runs_in_the_isolated_daemon",
        "test_testcontainers_runs_in_the_isolated_daemon",
    ):
        assert not_there in failures[name], failures[name]
