"""The configuration surface: one resolver, precedence, and errors that name value and source."""

from __future__ import annotations

import os
from typing import Any

import pytest

from pytest_isolated_docker.settings import (
    OPTIONS,
    OPTIONS_BY_NAME,
    Settings,
    SettingsError,
    Source,
    resolve,
    settings_from_environment,
)


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
    assert "dind, socket, machine, guarded" in message


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


@pytest.fixture(autouse=True)
def no_docker_settings_in_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """The inner pytest runs below read os.environ: a PYTEST_DOCKER_* variable of the caller's
    (PYTEST_DOCKER_UNAVAILABLE=skip, say) would decide before their ini or fail them."""
    for name in list(os.environ):
        if name.startswith("PYTEST_DOCKER_"):
            monkeypatch.delenv(name)


def test_bogus_backend_flag_is_a_usage_error(pytester: pytest.Pytester) -> None:
    result = pytester.runpytest_subprocess("--docker-backend=bogus")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        [
            "*'bogus' is not a valid value for command-line option --docker-backend*"
            "Valid values: dind, socket, machine, guarded.*"
        ]
    )


def test_bogus_backend_env_names_the_variable(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PYTEST_DOCKER_BACKEND", "bogus")
    result = pytester.runpytest_subprocess()
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        ["*environment variable PYTEST_DOCKER_BACKEND*dind, socket, machine, guarded*"]
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


# ---- precedence, option by option ---------------------------------------------------------------

# For every option: a command-line value, an environment value and an ini value, each as the
# plugin hands it to the resolver, and what each one resolves to. Adjacent sources differ, so a
# source that wins when it should not shows as a wrong value or a wrong source kind.
PRECEDENCE: dict[str, tuple[tuple[Any, Any], tuple[str, Any], tuple[Any, Any]]] = {
    "backend": (("dind", "dind"), ("machine", "machine"), ("socket", "socket")),
    "allow_unsafe": ((True, True), ("0", False), ("true", True)),
    "startup_timeout": (("5", 5.0), ("7", 7.0), ("9", 9.0)),
    "unavailable": (("skip", "skip"), ("error", "error"), ("skip", "skip")),
    "scope": (("worker", "worker"), ("session", "session"), ("worker", "worker")),
    "reset": (("never", "never"), ("test", "test"), ("never", "never")),
    "dind_image": (("f:1", "f:1"), ("e:1", "e:1"), ("i:1", "i:1")),
    "dind_storage": (("tmpfs:1g", "tmpfs:1g"), ("tmpfs:512m", "tmpfs:512m"), ("volume", "volume")),
    "dind_privileged": (("always", "always"), ("never", "never"), ("auto", "auto")),
    "machine_driver": (("virtualbox", "virtualbox"), ("generic", "generic"), ("qemu", "qemu")),
    "machine_opt": ((["-f"], ("-f",)), ("-e,-g", ("-e", "-g")), (["-i"], ("-i",))),
    "vm_image": (("/f", "/f"), ("/e", "/e"), ("/i", "/i")),
    "vm_boot": (("cold", "cold"), ("snapshot", "snapshot"), ("cold", "cold")),
    "preload": ((["f:1", "f:2"], ("f:1", "f:2")), ("e:1", ("e:1",)), (["i:1"], ("i:1",))),
    "preload_mode": (("stream", "stream"), ("template", "template"), ("stream", "stream")),
    "registry_mirror": (
        (["http://f"], ("http://f",)),
        ("http://e", ("http://e",)),
        (["http://i"], ("http://i",)),
    ),
    "host_mirror": (("false", False), ("yes", True), ("off", False)),
    "guard_allow_bind": (
        (["/f", "/g:ro"], ("/f", "/g:ro")),
        ("/e,/e2:ro", ("/e", "/e2:ro")),
        (["/i"], ("/i",)),
    ),
    "pull_through_cache": ((True, True), ("no", False), ("yes", True)),
    "pull_through_upstream": (
        ("https://f", "https://f"),
        ("https://e", "https://e"),
        ("https://i", "https://i"),
    ),
    "engine": (
        (["tcp://f:2375", "ctx"], ("tcp://f:2375", "ctx")),
        ("ssh://e,unix:///e.sock", ("ssh://e", "unix:///e.sock")),
        (["i"], ("i",)),
    ),
}


@pytest.mark.parametrize("value", ["ftp://x", "tcp://", " "])
def test_a_bad_engine_names_the_option_and_the_forms(value: str) -> None:
    with pytest.raises(SettingsError, match=r"--docker-engine"):
        resolve({"engine": [value]}, {}, {})


def test_precedence_table_covers_every_option() -> None:
    assert set(PRECEDENCE) == {spec.name for spec in OPTIONS}


@pytest.mark.parametrize("name", sorted(PRECEDENCE))
def test_flag_beats_env_beats_ini_beats_default(name: str) -> None:
    spec = OPTIONS_BY_NAME[name]
    (flag, from_flag), (env, from_env), (ini, from_ini) = PRECEDENCE[name]
    environment = {spec.env: env}

    def resolved(flags: dict[str, Any], environ: dict[str, str], inis: dict[str, Any]) -> Any:
        settings = resolve(flags, environ, inis)
        return getattr(settings, name), settings.sources[name]

    assert resolved({name: flag}, environment, {name: ini}) == (
        from_flag,
        Source("flag", spec.flag),
    )
    assert resolved({name: None}, environment, {name: ini}) == (from_env, Source("env", spec.env))
    assert resolved({}, {}, {name: ini}) == (from_ini, Source("ini", spec.ini))
    settings = resolve({}, {}, {})
    assert getattr(settings, name) == getattr(Settings(), name)
    assert settings.sources[name].kind == "default"


def test_empty_values_fall_through_to_the_next_source() -> None:
    """An empty variable (``PYTEST_DOCKER_BACKEND=``) or ini value, or a list flag given no
    items, is not set: the next source decides."""
    settings = resolve({"preload": []}, {"PYTEST_DOCKER_BACKEND": ""}, {"backend": "socket"})
    assert (settings.backend, settings.sources["backend"].kind) == ("socket", "ini")
    assert settings.sources["preload"].kind == "default"
    settings = resolve({}, {"PYTEST_DOCKER_PRELOAD": "e:1"}, {"backend": "", "preload": []})
    assert (settings.backend, settings.sources["backend"].kind) == ("dind", "default")
    assert (settings.preload, settings.sources["preload"].kind) == (("e:1",), "env")


def test_environment_is_read_only_through_the_prefix() -> None:
    settings = resolve({}, {"BACKEND": "machine", "DOCKER_BACKEND": "machine"}, {})
    assert settings.backend == "dind"
    assert settings_from_environment({"PYTEST_DOCKER_BACKEND": "machine"}).sources[
        "backend"
    ] == Source("env", "PYTEST_DOCKER_BACKEND")


# ---- lists --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("a:1", ("a:1",)),
        ("a:1,b:2", ("a:1", "b:2")),
        (" a:1 ,  b:2 ", ("a:1", "b:2")),
        ("a:1,,b:2,", ("a:1", "b:2")),
        (",", ()),
    ],
)
def test_list_options_are_comma_separated_in_the_environment(
    raw: str, expected: tuple[str, ...]
) -> None:
    for name in ("preload", "registry_mirror", "machine_opt"):
        spec = OPTIONS_BY_NAME[name]
        assert getattr(resolve({}, {spec.env: raw}, {}), name) == expected, name


def test_list_options_from_ini_lines_or_words() -> None:
    assert resolve({}, {}, {"preload": ["a:1", " ", "b:2"]}).preload == ("a:1", "b:2")
    assert resolve({}, {}, {"preload": "a:1 b:2"}).preload == ("a:1", "b:2")


def test_repeated_flags_keep_their_order() -> None:
    flags = {"registry_mirror": ["http://b", "http://a", "http://c"]}
    assert resolve(flags, {}, {}).registry_mirror == ("http://b", "http://a", "http://c")


# ---- booleans and seconds -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [("on", True), ("TRUE", True), (" Yes ", True), ("off", False), ("False", False)],
)
def test_more_booleans(raw: str, expected: bool) -> None:
    assert resolve({}, {}, {"pull_through_cache": raw}).pull_through_cache is expected


@pytest.mark.parametrize(
    ("source", "where"),
    [
        ("env", "environment variable PYTEST_DOCKER_ALLOW_UNSAFE"),
        ("ini", "ini option docker_allow_unsafe"),
    ],
)
def test_bad_boolean_names_value_source_and_choices(source: str, where: str) -> None:
    env = {"PYTEST_DOCKER_ALLOW_UNSAFE": "maybe"} if source == "env" else {}
    ini = {"allow_unsafe": "maybe"} if source == "ini" else {}
    with pytest.raises(SettingsError) as error:
        resolve({}, env, ini)
    message = str(error.value)
    assert f"'maybe' is not a valid boolean for {where}" in message
    assert "true, false, 1, 0, yes, no" in message


@pytest.mark.parametrize(("raw", "expected"), [("2.5", 2.5), (" 60 ", 60.0), ("1e3", 1000.0)])
def test_seconds(raw: str, expected: float) -> None:
    assert resolve({"startup_timeout": raw}, {}, {}).startup_timeout == expected


TIMEOUT_FLAG, TIMEOUT_ENV = "--docker-startup-timeout", "PYTEST_DOCKER_STARTUP_TIMEOUT"


@pytest.mark.parametrize(
    ("flags", "env", "ini", "raw", "where"),
    [
        ({"startup_timeout": "soon"}, {}, {}, "soon", f"command-line option {TIMEOUT_FLAG}"),
        ({"startup_timeout": ""}, {}, {}, "", f"command-line option {TIMEOUT_FLAG}"),
        ({}, {TIMEOUT_ENV: "-inf"}, {}, "-inf", f"environment variable {TIMEOUT_ENV}"),
        ({}, {}, {"startup_timeout": "1e999"}, "1e999", "ini option docker_startup_timeout"),
    ],
)
def test_bad_seconds_name_value_and_source(
    flags: dict[str, Any], env: dict[str, str], ini: dict[str, Any], raw: str, where: str
) -> None:
    with pytest.raises(SettingsError) as error:
        resolve(flags, env, ini)
    message = str(error.value)
    assert f"{raw!r} is not a valid number of seconds for {where}" in message
    assert "positive number" in message


# ---- choices: every message names the value, its source and the valid values -----------------

CHOICES = {
    "backend": "dind, socket, machine, guarded",
    "unavailable": "error, skip",
    "scope": "worker, session",
    "reset": "test, never",
    "dind_privileged": "auto, always, never",
    "vm_boot": "snapshot, cold",
    "preload_mode": "template, stream",
}


def test_choice_table_covers_every_choice_option() -> None:
    assert {spec.name for spec in OPTIONS if spec.choices} == set(CHOICES)


@pytest.mark.parametrize("source", ["flag", "env", "ini"])
@pytest.mark.parametrize("name", sorted(CHOICES))
def test_bad_choice_from_any_source(name: str, source: str) -> None:
    dashed = name.replace("_", "-")
    where = {
        "flag": f"command-line option --docker-{dashed}",
        "env": f"environment variable PYTEST_DOCKER_{name.upper()}",
        "ini": f"ini option docker_{name}",
    }[source]
    flags = {name: "Bogus"} if source == "flag" else {}
    env = {f"PYTEST_DOCKER_{name.upper()}": "Bogus"} if source == "env" else {}
    ini = {name: "Bogus"} if source == "ini" else {}
    with pytest.raises(SettingsError) as error:
        resolve(flags, env, ini)
    assert str(error.value) == (
        f"'Bogus' is not a valid value for {where}. Valid values: {CHOICES[name]}."
    )


def test_choices_are_case_sensitive_but_trimmed() -> None:
    assert resolve({}, {"PYTEST_DOCKER_BACKEND": " machine\n"}, {}).backend == "machine"
    with pytest.raises(SettingsError, match="'Machine'"):
        resolve({}, {"PYTEST_DOCKER_BACKEND": "Machine"}, {})


# ---- the dind storage spec ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("volume", "volume"),
        ("tmpfs:512m", "tmpfs:512m"),
        ("tmpfs:2g", "tmpfs:2g"),
        ("tmpfs:2G", "tmpfs:2G"),
        ("tmpfs:65536k", "tmpfs:65536k"),
        (" tmpfs:1g\n", "tmpfs:1g"),
    ],
)
def test_dind_storage(raw: str, expected: str) -> None:
    assert resolve({}, {"PYTEST_DOCKER_DIND_STORAGE": raw}, {}).dind_storage == expected


@pytest.mark.parametrize(
    "raw",
    [
        "tmpfs",
        "tmpfs:",
        "tmpfs:512",
        "tmpfs:g",
        "tmpfs:2t",
        "tmpfs:2gb",
        "tmpfs:1.5g",
        "tmpfs:-1g",
        "tmpfs 2g",
        "tmpfs=2g",
        "volume:big",
        "Volume",
        "disk",
    ],
)
def test_bad_dind_storage_names_value_source_and_forms(raw: str) -> None:
    with pytest.raises(SettingsError) as error:
        resolve({"dind_storage": raw}, {}, {})
    message = str(error.value)
    assert f"{raw!r} is not a valid value for command-line option --docker-dind-storage" in message
    assert "'volume' or 'tmpfs:SIZE'" in message


# ---- reset and scope ----------------------------------------------------------------------------


def test_reset_follows_scope_unless_given() -> None:
    settings = resolve({}, {"PYTEST_DOCKER_SCOPE": "session"}, {})
    assert (settings.reset, settings.sources["reset"].kind) == ("never", "default")
    assert resolve({}, {}, {"scope": "worker"}).reset == "test"
    assert resolve({"reset": "never"}, {}, {}).reset == "never"
    assert resolve({}, {}, {"scope": "session", "reset": "never"}).reset == "never"


def test_reset_per_test_on_a_shared_daemon_names_both_sources() -> None:
    with pytest.raises(SettingsError) as error:
        resolve({}, {"PYTEST_DOCKER_RESET": "test"}, {"scope": "session"})
    message = str(error.value)
    assert message.startswith(
        "'test' for environment variable PYTEST_DOCKER_RESET cannot be combined with 'session' "
        "from ini option docker_scope"
    )
    assert "--docker-reset=never" in message
    assert "--docker-scope=worker" in message
