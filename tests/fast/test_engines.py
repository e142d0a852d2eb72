"""Finding the host engine as the docker CLI does (no engine is contacted)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from pytest_isolated_docker import engines


def make_context(config: Path, name: str, host: str, tls: bool = False) -> Path:
    """A context laid out as `docker context create` writes it; returns its TLS directory."""
    digest = hashlib.sha256(name.encode()).hexdigest()
    meta = config / "contexts" / "meta" / digest
    meta.mkdir(parents=True)
    endpoint = {"Host": host, "SkipTLSVerify": False}
    (meta / "meta.json").write_text(
        json.dumps({"Name": name, "Metadata": {}, "Endpoints": {"docker": endpoint}})
    )
    tls_dir = config / "contexts" / "tls" / digest / "docker"
    if tls:
        tls_dir.mkdir(parents=True)
        for file in ("ca.pem", "cert.pem", "key.pem"):
            (tls_dir / file).write_text("not read here")
    return tls_dir


@pytest.fixture
def config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    directory = tmp_path / "docker-config"
    directory.mkdir()
    monkeypatch.setenv("DOCKER_CONFIG", str(directory))
    for name in ("DOCKER_HOST", "DOCKER_CONTEXT", "DOCKER_TLS_VERIFY", "DOCKER_CERT_PATH"):
        monkeypatch.delenv(name, raising=False)
    return directory


def test_docker_host_wins_over_every_context(config: Path) -> None:
    make_context(config, "desktop", "unix:///somewhere/docker.sock")
    (config / "config.json").write_text(json.dumps({"currentContext": "desktop"}))
    engine = engines.resolve(
        {"DOCKER_HOST": "tcp://10.9.9.9:2376", "DOCKER_TLS_VERIFY": "1", "DOCKER_CONTEXT": "x"}
    )
    assert engine.url == "tcp://10.9.9.9:2376"
    assert engine.found_by == "DOCKER_HOST"
    assert engine.environment()["DOCKER_TLS_VERIFY"] == "1"
    assert engine.environment()["DOCKER_CERT_PATH"].endswith(".docker")


def test_docker_context_names_the_context(config: Path) -> None:
    tls_dir = make_context(config, "remote", "tcp://10.1.2.3:2376", tls=True)
    make_context(config, "desktop", "unix:///somewhere/docker.sock")
    (config / "config.json").write_text(json.dumps({"currentContext": "desktop"}))
    engine = engines.resolve({"DOCKER_CONTEXT": "remote"})
    assert engine.url == "tcp://10.1.2.3:2376"
    assert engine.found_by == "context remote (DOCKER_CONTEXT)"
    assert engine.environment() == {
        "DOCKER_HOST": "tcp://10.1.2.3:2376",
        "DOCKER_CERT_PATH": str(tls_dir),
        "DOCKER_TLS_VERIFY": "1",
    }


def test_the_current_context_is_used_without_docker_host(config: Path) -> None:
    make_context(config, "colima", "unix:///home/me/.colima/default/docker.sock")
    (config / "config.json").write_text(json.dumps({"currentContext": "colima"}))
    engine = engines.resolve({})
    assert engine.url == "unix:///home/me/.colima/default/docker.sock"
    assert "context colima" in engine.found_by
    assert engine.environment() == {"DOCKER_HOST": engine.url}


def test_an_unknown_context_is_a_clear_error(config: Path) -> None:
    with pytest.raises(engines.EngineNotFound, match=r"'nope' \(DOCKER_CONTEXT\) does not exist"):
        engines.resolve({"DOCKER_CONTEXT": "nope"})


def test_the_default_context_means_the_default_socket(
    config: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(engines, "DEFAULT_SOCKET", str(tmp_path / "present.sock"))
    (tmp_path / "present.sock").touch()
    assert engines.resolve({"DOCKER_CONTEXT": "default"}).url == f"unix://{tmp_path}/present.sock"


def test_rootless_socket_when_there_is_no_system_socket(
    config: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(engines, "DEFAULT_SOCKET", str(tmp_path / "absent.sock"))
    runtime = tmp_path / "run-user-1000"
    runtime.mkdir()
    (runtime / "docker.sock").touch()
    engine = engines.resolve({"XDG_RUNTIME_DIR": str(runtime)})
    assert engine.url == f"unix://{runtime}/docker.sock"
    assert "rootless" in engine.found_by
    # With the system socket present, that one is the default (as for the CLI).
    (tmp_path / "absent.sock").touch()
    assert engines.resolve({"XDG_RUNTIME_DIR": str(runtime)}).url.endswith("absent.sock")


CONFIGS = {
    "none": {},
    "no current context": {"config.json": {"auths": {}}},
    "a current context": {"config.json": {"currentContext": "colima"}},
    "the default context": {"config.json": {"currentContext": "default"}},
    "an empty name": {"config.json": {"currentContext": ""}},
    "not JSON": {"config.json": "{not json"},
    "not an object": {"config.json": ["currentContext"]},
    "legacy file only": {"legacy": {"currentContext": "old"}},
    "home only": {"home": {"currentContext": "home-context"}},
    "DOCKER_CONFIG wins over home": {
        "config.json": {"currentContext": "from-env"},
        "home": {"currentContext": "home-context"},
    },
}


@pytest.mark.parametrize("layout", CONFIGS.values(), ids=CONFIGS.keys())
def test_the_current_context_is_read_as_docker_py_reads_it(
    layout: dict[str, object], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The plugin reads the current context's name without docker-py (not to import it in
    processes that need no client): it must read what docker-py reads."""
    import docker.context.config

    home, config = tmp_path / "home", tmp_path / "docker-config"
    (home / ".docker").mkdir(parents=True)
    config.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("DOCKER_CONFIG", str(config))
    places = {
        "config.json": config / "config.json",
        "home": home / ".docker" / "config.json",
        "legacy": home / ".dockercfg",
    }
    for place, content in layout.items():
        text = content if isinstance(content, str) else json.dumps(content)
        places[place].write_text(text)
    expected = docker.context.config.get_current_context_name() or "default"
    assert engines._current_context_name() == expected
    monkeypatch.delenv("DOCKER_CONFIG")
    expected = docker.context.config.get_current_context_name() or "default"
    assert engines._current_context_name() == expected
