"""The plugin in a whole pytest session: these runs reach sessionstart, where the plugin sweeps
the host engine for stale sessions, so they belong to the engine suite, not tests/fast."""

from __future__ import annotations

import pytest


def test_fixtures_are_documented(pytester: pytest.Pytester) -> None:
    pytester.makepyfile("def test_nothing(): pass")
    result = pytester.runpytest_subprocess("--fixtures")
    result.stdout.fnmatch_lines(
        [
            "docker_daemon [[]session scope[]]*",
            "*isolated Docker daemon*",
        ]
    )
    text = result.stdout.str()
    for name in ("docker_client", "docker_env", "docker_test_daemon"):
        assert name in text


def test_plugin_does_nothing_for_tests_without_docker(pytester: pytest.Pytester) -> None:
    """A run whose tests ask for no daemon starts none (nothing in the summary)."""
    pytester.makepyfile("def test_plain(): pass")
    result = pytester.runpytest_subprocess()
    result.assert_outcomes(passed=1)
    assert "isolated docker daemons" not in result.stdout.str()
