"""One configuration resolver: command line > ``PYTEST_DOCKER_*`` environment > ini > default.

The option table below is the single source of truth: the pytest plugin registers flags and ini
keys from it, the resolver reads every source through it, and the docs list it. This module does not
import pytest: errors are :class:`SettingsError`, which the plugin turns into ``pytest.UsageError``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .registry import backend_names

ENV_PREFIX = "PYTEST_DOCKER_"
INI_PREFIX = "docker_"
FLAG_PREFIX = "--docker-"

#: Registered backends (entry points), the built-in ones first.
BACKENDS = backend_names()


class SettingsError(ValueError):
    """A configuration value is invalid; the message names the value, its source and the fix."""


@dataclass(frozen=True)
class Source:
    """Where a raw value came from, worded for error messages."""

    kind: str  # "flag" | "env" | "ini" | "default" | "keyword"
    name: str

    def __str__(self) -> str:
        return {
            "flag": f"command-line option {self.name}",
            "env": f"environment variable {self.name}",
            "ini": f"ini option {self.name}",
            "default": f"default of {self.name}",
            "keyword": self.name,
        }[self.kind]


def _parse_choice(choices: Sequence[str]) -> Callable[[str, Source], str]:
    def parse(raw: str, source: Source) -> str:
        value = raw.strip()
        if value not in choices:
            raise SettingsError(
                f"{raw!r} is not a valid value for {source}. Valid values: {', '.join(choices)}."
            )
        return value

    return parse


def _parse_bool(raw: str, source: Source) -> bool:
    value = raw.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off", ""):
        return False
    raise SettingsError(
        f"{raw!r} is not a valid boolean for {source}. Use one of: true, false, 1, 0, yes, no."
    )


def _parse_seconds(raw: str, source: Source) -> float:
    try:
        value = float(raw)
    except ValueError:
        value = float("nan")
    if not value > 0 or value == float("inf"):
        raise SettingsError(
            f"{raw!r} is not a valid number of seconds for {source}. "
            "Give a positive number, for example 60 or 2.5."
        )
    return value


def _parse_text(raw: str, source: Source) -> str:
    return raw.strip()


def _parse_allow_bind(raw: str, source: Source) -> str:
    value = raw.strip()
    path = value[:-3] if value.endswith((":ro", ":rw")) else value
    if not path.startswith("/") or ":" in path:
        raise SettingsError(
            f"{raw!r} is not a valid value for {source}. Give an absolute host path, optionally "
            "followed by ':ro' (read-only), for example /srv/fixtures:ro."
        )
    return value


def _parse_storage(raw: str, source: Source) -> str:
    value = raw.strip()
    kind, _, size = value.partition(":")
    if value == "volume" or (
        kind == "tmpfs" and size[:-1].isdigit() and size[-1:].lower() in ("k", "m", "g")
    ):
        return value
    raise SettingsError(
        f"{raw!r} is not a valid value for {source}. Use 'volume' or 'tmpfs:SIZE' with SIZE like "
        "512m or 2g."
    )


def _parse_engine(raw: str, source: Source) -> str:
    value = raw.strip()
    scheme, sep, rest = value.partition("://")
    if sep and (scheme not in ("tcp", "unix", "ssh", "http", "https") or not rest):
        raise SettingsError(
            f"{raw!r} is not a valid engine for {source}. Give a URL (tcp://HOST:PORT, "
            "unix:///PATH, ssh://USER@HOST) or the name of a Docker context."
        )
    if not value:
        raise SettingsError(f"an empty engine was given in {source}.")
    return value


@dataclass(frozen=True)
class OptionSpec:
    """One setting, declared once for its flag, environment variable and ini key."""

    name: str
    help: str
    default: Any
    parse: Callable[[str, Source], Any]
    choices: tuple[str, ...] = ()
    is_flag: bool = False  # a switch on the command line (no value)
    is_list: bool = False  # repeatable flag, ini line list, comma-separated env
    metavar: str | None = None

    @property
    def flag(self) -> str:
        return FLAG_PREFIX + self.name.replace("_", "-")

    @property
    def env(self) -> str:
        return ENV_PREFIX + self.name.upper()

    @property
    def ini(self) -> str:
        return INI_PREFIX + self.name

    @property
    def dest(self) -> str:
        return "docker_" + self.name


OPTIONS: tuple[OptionSpec, ...] = (
    OptionSpec(
        "backend",
        "Where the tests' Docker daemon comes from: 'dind' (a daemon in a container of the host "
        "engine, default), 'machine' (a disposable VM), 'guarded' (the host's engine behind a "
        "default-deny guard: own objects only) or 'socket' (the host's own engine: unsafe, needs "
        "--docker-allow-unsafe).",
        "dind",
        _parse_choice(BACKENDS),
        choices=BACKENDS,
    ),
    OptionSpec(
        "allow_unsafe",
        "Allow the 'socket' backend, which gives code under test root on the host.",
        False,
        _parse_bool,
        is_flag=True,
    ),
    OptionSpec(
        "startup_timeout",
        "Seconds to wait for a daemon to answer /_ping before failing with its log (default 120).",
        120.0,
        _parse_seconds,
        metavar="SECONDS",
    ),
    OptionSpec(
        "unavailable",
        "What a test that needs a daemon does when none can be had: 'error' (fail with the "
        "reason, default) or 'skip' (skip with the reason).",
        "error",
        _parse_choice(("error", "skip")),
        choices=("error", "skip"),
    ),
    OptionSpec(
        "scope",
        "'worker': one daemon per xdist worker (default); 'session': one daemon shared by all "
        "workers (then --docker-reset defaults to 'never').",
        "worker",
        _parse_choice(("worker", "session")),
        choices=("worker", "session"),
    ),
    OptionSpec(
        "reset",
        "'test': after each test that used the daemon remove its containers, networks and "
        "volumes (images stay: they are the cache); 'never': keep them.",
        None,
        _parse_choice(("test", "never")),
        choices=("test", "never"),
    ),
    OptionSpec(
        "dind_image",
        "Image of the dind backend: any image with dockerd and a POSIX shell "
        "(default docker:dind; build one offline with `pytest-isolated-docker build-image dind`).",
        "docker:dind",
        _parse_text,
        metavar="IMAGE",
    ),
    OptionSpec(
        "dind_storage",
        "Where the dind daemon keeps its data: 'volume' (a labelled volume on the host's disk, "
        "default) or 'tmpfs:SIZE' (in memory, e.g. tmpfs:2g).",
        "volume",
        _parse_storage,
        metavar="volume|tmpfs:SIZE",
    ),
    OptionSpec(
        "dind_privileged",
        "'auto': try --privileged and fall back to a capability recipe when the engine refuses "
        "it (default); 'always'; 'never'.",
        "auto",
        _parse_choice(("auto", "always", "never")),
        choices=("auto", "always", "never"),
    ),
    OptionSpec(
        "machine_driver",
        "VM driver of the machine backend: 'qemu' (built in, default) or any docker-machine "
        "driver name (needs docker-machine on PATH).",
        "qemu",
        _parse_text,
        metavar="DRIVER",
    ),
    OptionSpec(
        "machine_opt",
        "Extra option passed to `docker-machine create` (repeatable).",
        (),
        _parse_text,
        is_list=True,
        metavar="OPT",
    ),
    OptionSpec(
        "vm_image",
        "Directory holding vmlinuz, initrd.img and disk.img for the qemu driver "
        "(default: the image `pytest-isolated-docker build-image vm` caches).",
        "",
        _parse_text,
        metavar="DIR",
    ),
    OptionSpec(
        "vm_boot",
        "How the qemu driver starts a VM: 'snapshot' restores it from a snapshot of a VM booted "
        "once per VM image and QEMU version, then configures it (default; seconds instead of a "
        "full boot under emulation); 'cold' boots each VM from its kernel.",
        "snapshot",
        _parse_choice(("snapshot", "cold")),
        choices=("snapshot", "cold"),
    ),
    OptionSpec(
        "preload",
        "Image taken from the host engine and loaded into each isolated daemon as it starts "
        "(repeatable; comma-separated in the environment).",
        (),
        _parse_text,
        is_list=True,
        metavar="IMAGE",
    ),
    OptionSpec(
        "preload_mode",
        "How preloaded images get into a daemon: 'template' (default) starts each daemon from a "
        "data root made once per host and preload set, whose image layers are mounted read-only "
        "(dind; other backends stream); 'stream' loads them into each daemon (docker save | "
        "docker load).",
        "template",
        _parse_choice(("template", "stream")),
        choices=("template", "stream"),
    ),
    OptionSpec(
        "registry_mirror",
        "Registry mirror URL handed to the isolated daemons (repeatable).",
        (),
        _parse_text,
        is_list=True,
        metavar="URL",
    ),
    OptionSpec(
        "host_mirror",
        "Serve the host engine's images to daemons that start without any (dind): a Docker Hub "
        "name the host engine has (debian:bookworm-slim, me/app:1) is pulled from a registry "
        "mirror of the session, over mutual TLS, exported once per host into the user cache "
        "(default true); names the host lacks go on to the next mirror or upstream.",
        True,
        _parse_bool,
        metavar="BOOL",
    ),
    OptionSpec(
        "guard_allow_bind",
        "Host directory that containers may bind-mount through the guarded backend, besides "
        "pytest's basetemp (repeatable; PATH:ro for read-only; comma-separated in the "
        "environment).",
        (),
        _parse_allow_bind,
        is_list=True,
        metavar="PATH[:ro]",
    ),
    OptionSpec(
        "pull_through_cache",
        "Run one caching registry mirror per host (Debian's docker-registry, storage in the user "
        "cache) and hand it to every isolated daemon, so public images are fetched once per host.",
        False,
        _parse_bool,
        is_flag=True,
    ),
    OptionSpec(
        "pull_through_upstream",
        "Registry the pull-through cache fetches from (default https://registry-1.docker.io).",
        "https://registry-1.docker.io",
        _parse_text,
        metavar="URL",
    ),
    OptionSpec(
        "engine",
        "A host engine of the pool the daemons are spread over (repeatable; comma-separated in "
        "the environment): a URL (tcp://HOST:PORT, unix://PATH) or a Docker context's name. "
        "Each daemon goes to the least loaded engine. Default: the one engine the docker CLI "
        "would use (DOCKER_HOST, DOCKER_CONTEXT, the current context, the default socket).",
        (),
        _parse_engine,
        is_list=True,
        metavar="URL_OR_CONTEXT",
    ),
)

OPTIONS_BY_NAME = {spec.name: spec for spec in OPTIONS}


@dataclass(frozen=True)
class Settings:
    """The resolved, validated configuration of a test session."""

    backend: str = "dind"
    allow_unsafe: bool = False
    startup_timeout: float = 120.0
    unavailable: str = "error"
    scope: str = "worker"
    reset: str = "test"
    dind_image: str = "docker:dind"
    dind_storage: str = "volume"
    dind_privileged: str = "auto"
    machine_driver: str = "qemu"
    machine_opt: tuple[str, ...] = ()
    vm_image: str = ""
    vm_boot: str = "snapshot"
    preload: tuple[str, ...] = ()
    preload_mode: str = "template"
    registry_mirror: tuple[str, ...] = ()
    host_mirror: bool = True
    guard_allow_bind: tuple[str, ...] = ()
    pull_through_cache: bool = False
    pull_through_upstream: str = "https://registry-1.docker.io"
    engine: tuple[str, ...] = ()
    sources: Mapping[str, Source] = dataclasses.field(default_factory=dict, compare=False)

    def replace(self, **changes: Any) -> Settings:
        return dataclasses.replace(self, **changes)


def _resolve_one(
    spec: OptionSpec,
    flag_value: Any,
    env: Mapping[str, str],
    ini_value: Any,
) -> tuple[Any, Source]:
    if flag_value is not None and flag_value != [] and flag_value != ():
        source = Source("flag", spec.flag)
        if spec.is_flag:
            return bool(flag_value), source
        if spec.is_list:
            return tuple(spec.parse(str(v), source) for v in flag_value), source
        return spec.parse(str(flag_value), source), source
    if env.get(spec.env, "") != "":
        source = Source("env", spec.env)
        raw = env[spec.env]
        if spec.is_list:
            return tuple(spec.parse(v, source) for v in raw.split(",") if v.strip()), source
        return spec.parse(raw, source), source
    if ini_value not in (None, "", []):
        source = Source("ini", spec.ini)
        if spec.is_list:
            items = ini_value if isinstance(ini_value, list) else str(ini_value).split()
            return tuple(spec.parse(str(v), source) for v in items if str(v).strip()), source
        return spec.parse(str(ini_value), source), source
    return spec.default, Source("default", spec.flag)


def resolve(
    flags: Mapping[str, Any],
    env: Mapping[str, str],
    ini: Mapping[str, Any],
) -> Settings:
    """Resolve every option from its sources; raise :class:`SettingsError` on a bad value.

    ``flags`` maps option names to command-line values (``None`` when not given), ``ini`` maps
    option names to ini values (``None``/empty when not set).
    """
    values: dict[str, Any] = {}
    sources: dict[str, Source] = {}
    for spec in OPTIONS:
        values[spec.name], sources[spec.name] = _resolve_one(
            spec, flags.get(spec.name), env, ini.get(spec.name)
        )
    if values["reset"] is None:
        # A shared daemon is used by several workers at once: resetting it after one worker's
        # test would remove another worker's containers mid-test.
        values["reset"] = "never" if values["scope"] == "session" else "test"
    elif values["reset"] == "test" and values["scope"] == "session":
        raise SettingsError(
            f"'test' for {sources['reset']} cannot be combined with 'session' from "
            f"{sources['scope']}: a daemon shared by all workers cannot be emptied after one "
            "worker's test. Use --docker-reset=never, or --docker-scope=worker."
        )
    return Settings(**values, sources=sources)


def override(settings: Settings, options: Mapping[str, Any], origin: str) -> Settings:
    """``settings`` with ``options`` (names of the option table, Python values) replaced, each
    validated as its flag would be; ``origin`` names who asked (a factory, a marker) in errors."""
    values: dict[str, Any] = {}
    sources = dict(settings.sources)
    for name, value in options.items():
        spec = OPTIONS_BY_NAME.get(name)
        if spec is None:
            raise SettingsError(
                f"{origin} got the unknown option {name}={value!r}. Valid options: "
                f"{', '.join(OPTIONS_BY_NAME)}."
            )
        source = Source("keyword", f"{name}={value!r} of {origin}")
        if spec.is_list:
            items = [value] if isinstance(value, str) else list(value)
            values[name] = tuple(spec.parse(str(item), source) for item in items)
        elif isinstance(value, bool) or spec.is_flag:
            values[name] = _parse_bool(str(value), source)
        else:
            values[name] = spec.parse(str(value), source)
        sources[name] = source
    return dataclasses.replace(settings, **values, sources=sources)


def settings_from_environment(env: Mapping[str, str]) -> Settings:
    """Settings from ``PYTEST_DOCKER_*`` alone (for the command-line tool)."""
    return resolve({}, env, {})
