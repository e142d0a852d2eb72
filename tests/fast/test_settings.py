"""The configuration surface: one resolver, precedence, and errors that name value and source."""

from __future__ import annotations

import pytest

from pytest_isolated_docker.settings import OPTIONS, SettingsError, resolve


def test_defaults() -> None:
    settings = resolve({}, {}, {})
    assert settings.backend == "dind"
    assert settings.allow_unsafe is False
    assert settings.unavailable == "error"
    assert settings.reset == "test"
    assert settings.scope == "worker"
    assert settings.sources["backend"].kind == "default"


def test_flag_beats_environment_beats_ini() -> None:
    env = {"PYTEST_DOCKER_BACKEND": "machine", "PYTEST_DOCKER_STARTUP_TIMEOUT": "7"}
    ini = {"backend": "socket", "startup_timeout": "9", "unavailable": "skip"}
    settings = resolve({"backend": "dind"}, env, ini)
    assert (settings.backend, settings.sources["backend"].kind) == ("dind", "flag")
    assert (settings.startup_timeout, settings.sources["startup_timeout"].kind) == (7.0, "env")
    assert (settings.unavailable, settings.sources["unavailable"].kind) == ("skip", "ini")


def test_lists_from_each_source() -> None:
    assert resolve({"preload": ["a:1", "b:2"]}, {}, {}).preload == ("a:1", "b:2")
    assert resolve({}, {"PYTEST_DOCKER_PRELOAD": "a:1, b:2"}, {}).preload == ("a:1", "b:2")
    assert resolve({}, {}, {"preload": ["a:1", "b:2"]}).preload == ("a:1", "b:2")


@pytest.mark.parametrize(
    ("raw", "expected"), [("1", True), ("true", True), ("yes", True), ("0", False), ("no", False)]
)
def test_booleans(raw: str, expected: bool) -> None:
    assert resolve({}, {"PYTEST_DOCKER_ALLOW_UNSAFE": raw}, {}).allow_unsafe is expected


def test_bad_choice_names_value_source_and_choices() -> None:
    with pytest.raises(SettingsError) as error:
        resolve({}, {"PYTEST_DOCKER_BACKEND": "bogus"}, {})
    message = str(error.value)
    assert "'bogus'" in message
    assert "environment variable PYTEST_DOCKER_BACKEND" in message
    assert "dind, socket, machine" in message


@pytest.mark.parametrize("raw", ["abc", "0", "-3", "inf", "nan"])
def test_malformed_timeout(raw: str) -> None:
    with pytest.raises(SettingsError, match=r"not a valid number of seconds for ini option"):
        resolve({}, {}, {"startup_timeout": raw})


def test_shared_daemon_defaults_to_no_reset_and_refuses_reset_per_test() -> None:
    assert resolve({"scope": "session"}, {}, {}).reset == "never"
    with pytest.raises(SettingsError, match="cannot be combined"):
        resolve({"scope": "session", "reset": "test"}, {}, {})


def test_every_option_has_flag_env_and_ini_names() -> None:
    for spec in OPTIONS:
        assert spec.flag.startswith("--docker-")
        assert spec.env.startswith("PYTEST_DOCKER_")
        assert spec.ini.startswith("docker_")
        assert spec.help


def test_bogus_backend_flag_is_a_usage_error(pytester: pytest.Pytester) -> None:
    result = pytester.runpytest_subprocess("--docker-backend=bogus")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        [
            "*'bogus' is not a valid value for command-line option --docker-backend*"
            "Valid values: dind, socket, machine.*"
        ]
    )


def test_bogus_backend_env_names_the_variable(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PYTEST_DOCKER_BACKEND", "bogus")
    result = pytester.runpytest_subprocess()
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        ["*environment variable PYTEST_DOCKER_BACKEND*dind, socket, machine*"]
    )


def test_bad_ini_value_names_the_key(pytester: pytest.Pytester) -> None:
    pytester.makeini("[pytest]\ndocker_unavailable = maybe\n")
    result = pytester.runpytest_subprocess()
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        ["*'maybe'*ini option docker_unavailable*Valid values: error, skip*"]
    )


def test_malformed_timeout_flag(pytester: pytest.Pytester) -> None:
    result = pytester.runpytest_subprocess("--docker-startup-timeout=soon")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*'soon'*--docker-startup-timeout*positive number*"])


def test_help_shows_one_group(pytester: pytest.Pytester) -> None:
    result = pytester.runpytest_subprocess("--help")
    result.stdout.fnmatch_lines(["pytest-isolated-docker:*"])
    text = result.stdout.str()
    for spec in OPTIONS:
        assert spec.flag in text
        assert spec.ini in text


def test_settings_defaults_match_the_option_table() -> None:
    """Settings() (used by library callers) and the resolver agree on every default."""
    from pytest_isolated_docker.settings import Settings

    resolved = resolve({}, {}, {})
    for spec in OPTIONS:
        assert getattr(Settings(), spec.name) == getattr(resolved, spec.name), spec.name
